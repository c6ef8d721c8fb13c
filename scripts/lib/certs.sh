#!/usr/bin/env bash
# certs.sh DIR: make sure DIR holds a local CA (ca.pem, ca-key.pem) and a TLS certificate
# signed by it (tls.pem, tls-key.pem) for localhost, *.localhost, the demo hosts and
# 127.0.0.1. Idempotent; the Rust test harness calls it. See ensure_certs in common.sh.
set -euo pipefail

if (($# != 1)); then
    echo "usage: $0 DIR" >&2
    exit 64
fi

# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ensure_certs "$1"
