#!/usr/bin/env bash
# Fresh-machine set-up, idempotent: Debian packages (Chromium and chromedriver for the console's
# browser tests among them), cargo-pgrx 0.18.0, `cargo pgrx init`, promtool
# (unpacked from Debian's prometheus package), and the extension built and installed into the
# system Postgres 15. Every step checks first and skips what is already done, so a second run takes
# seconds. Run as root on Debian 12 (the only requirement is the Rust toolchain).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo redis-server nats-server python3 python3-venv
  # tests/tests/console.rs: headless Chromium through chromedriver, and a font for its screenshots.
  chromium chromium-driver fonts-dejavu-core)
# Independent implementations the tests check our wire formats against (PyPI, pinned).
PY_PACKAGES=(standardwebhooks==1.1.0 aiosmtpd==1.4.6)
CARGO_PGRX_VERSION=0.18.0

t0=$SECONDS
[ "$(id -u)" = 0 ] || die "run as root (it installs Debian packages and writes to the Postgres directories)"

step "Debian packages"
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  note "all present (${APT_PACKAGES[*]})"
else
  note "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Debian starts a default Postgres cluster (port 5432) and Redis (6379) when it installs them;
  # the project runs its own on private ports and needs neither. policy-rc.d (Debian's switch for
  # "do not start services from package scripts") keeps the packages installed here from starting
  # anything. Nothing is ever stopped or disabled: a service already on this machine is its
  # owner's. A policy-rc.d the machine already has is left as it is.
  policy=/usr/sbin/policy-rc.d
  ours=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# scripts/setup.sh (fraiseql_observers): no service starts while it installs packages\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    ours=1
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$ours" = 1 ]; then
    rm -f "$policy"
    trap - EXIT
  fi
fi
[ -x "$PG_CONFIG" ] || die "pg_config not found at $PG_CONFIG (pgrx.toml: pg_config)"

step "cargo-pgrx $CARGO_PGRX_VERSION"
if cargo pgrx --version 2>/dev/null | grep -q "$CARGO_PGRX_VERSION"; then
  note "already installed"
else
  note "cargo install cargo-pgrx --version $CARGO_PGRX_VERSION --locked (about 5 minutes)"
  cargo install cargo-pgrx --version "$CARGO_PGRX_VERSION" --locked --quiet
fi

step "cargo pgrx init --pg$PG_VERSION"
if grep -q "^pg$PG_VERSION = \"$PG_CONFIG\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml" 2>/dev/null; then
  note "already initialised"
else
  cargo pgrx init "--pg$PG_VERSION" "$PG_CONFIG"
fi

step "test tools in .venv (${PY_PACKAGES[*]})"
venv="$ROOT/.venv"
if "$venv/bin/python" -c "import standardwebhooks, aiosmtpd" 2>/dev/null; then
  note "already installed"
else
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
fi

step "promtool in .tools (Debian's prometheus package, unpacked, not installed)"
# worker/tests/deploy.rs runs `promtool check rules` and `promtool test rules` on deploy/. Only
# the binary is taken out of the .deb: installing the package would add a Prometheus service.
promtool="$ROOT/.tools/promtool"
if "$promtool" --version >/dev/null 2>&1; then
  note "already present ($("$promtool" --version 2>&1 | head -n1))"
else
  tmp="$(mktemp -d)"
  # apt downloads as its sandbox user _apt, which must be able to write there.
  chown _apt "$tmp" 2>/dev/null || true
  # On a machine whose packages were all present, apt-get update has not run: the package index
  # may be empty, so update once if the first download fails.
  (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null) \
    || { note "not in the package index: apt-get update" && apt-get update -qq \
      && (cd "$tmp" && apt-get download -qq prometheus); } \
    || die "apt-get download prometheus failed (Debian 12's prometheus package carries promtool)"
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
  install -D -m 0755 "$tmp/root/usr/bin/promtool" "$promtool"
  rm -rf "$tmp"
  note "$("$promtool" --version 2>&1 | head -n1)"
fi

step "build and install the extension (release)"
"$ROOT/scripts/install-extension.sh"

note "set-up done in $((SECONDS - t0)) s"
