#!/usr/bin/env bash
# Build and run examples/lemonldap/check.rs: LemonLDAP::NG's OpenID Connect behaviour as
# the test kit's launcher (testkit/src/lemonldap.rs) sets it up (what README.md's "Observed"
# section records).
#
#   examples/lemonldap/check.sh              # the whole walk-through
#   CHECK_STARTS=10 examples/lemonldap/check.sh   # only start/stop timings
#
# Installs the Debian packages first when run as root (scripts/lib/lemonldap.sh). The
# throwaway crate lives in target/lemonldap-check (its own Cargo.lock, copied from the
# repository's so the same versions are used).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
# shellcheck source=scripts/lib/lemonldap.sh
source "$here/../../scripts/lib/lemonldap.sh"
ensure_lemonldap

crate="$ROOT/target/lemonldap-check"
mkdir -p "$crate"
cat >"$crate/Cargo.toml" <<TOML
[package]
name = "lemonldap-check"
version = "0.0.0"
edition = "2024"
publish = false

[workspace]

[dependencies]
tokio = { version = "1", features = ["rt", "macros", "time"] }
reqwest = { version = "0.12", default-features = false, features = ["rustls-tls", "cookies", "json"] }
serde_json = "1"
base64 = "0.22"
ring = "0.17"
testkit = { path = "$ROOT/testkit" }

[[bin]]
name = "check"
path = "$here/check.rs"
TOML
[[ -f "$crate/Cargo.lock" ]] || cp "$ROOT/Cargo.lock" "$crate/Cargo.lock"
cargo build --quiet --manifest-path "$crate/Cargo.toml" --target-dir "$crate/target"
exec "$crate/target/debug/check" "$@"
