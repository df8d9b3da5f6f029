#!/usr/bin/env bash
# Build the extension (release) with `cargo pgrx package` and install it into the system Postgres.
# Files are replaced by rename, never overwritten in place: a server that has the old library
# mapped keeps running on it (overwriting a loaded .so crashed its background worker), and only
# files whose content changed are touched, so a second run installs nothing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cd "$ROOT"
out="$ROOT/target/pgrx-package"
cargo pgrx package -p fraiseql_observers --pg-config "$PG_CONFIG" --out-dir "$out" >&2

changed=0
while IFS= read -r -d '' f; do
  dest="/${f#"$out"/}"
  if ! cmp -s "$f" "$dest"; then
    install -d "$(dirname "$dest")"
    cp "$f" "$dest.fraiseql-new"
    mv -f "$dest.fraiseql-new" "$dest"
    note "installed $dest"
    changed=1
  fi
done < <(find "$out" -type f -print0)
[ "$changed" = 1 ] || note "extension files unchanged"
