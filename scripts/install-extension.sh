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
# Every released version's install script (extension/sql/fraiseql_observers--<version>.sql) next
# to the current one: `CREATE EXTENSION ... VERSION '<version>'` installs an older release, which
# the upgrade test does. cargo pgrx package copies the update scripts (--<from>--<to>.sql) itself.
extdir="$out$("$PG_CONFIG" --sharedir)/extension"
for f in "$ROOT"/extension/sql/fraiseql_observers--*.sql; do
  case "$(basename "$f")" in
    *--*--*) ;;
    *) cp "$f" "$extdir/" ;;
  esac
done

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
