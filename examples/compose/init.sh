#!/bin/sh
# init.sh [OUT]: makes the secrets, keys and certificates of the docker compose demo. The
# compose service `init` runs it (OUT=/out, three volumes below it) before anything else
# starts; it keeps whatever is there already, so a restart of the stack keeps sessions' keys,
# the client secret Keycloak imported and the CA your browser may trust.
#
#   OUT/portcullis/  cookie_secret, client_secret, signing_key.pem   (portcullis, uid 10001)
#   OUT/keycloak/    client_secret, a copy for the realm import      (Keycloak, uid 1000)
#   OUT/certs/       ca.pem, ca-key.pem, tls.pem, tls-key.pem        (Envoy, uid 101)
#   OUT/redis/       redis.conf with the password portcullis has     (Redis, uid 999)
#
# The TLS certificate covers the demo's host names and `jwks-tls`, the internal name Grafana
# fetches the JWKS from. Needs openssl and portcullis (PORTCULLIS=path, default: on PATH).
set -eu

OUT="${1:-/out}"
PORTCULLIS="${PORTCULLIS:-portcullis}"
DNS_NAMES="auth.localhost grafana.localhost cockpit.localhost keycloak.localhost jwks-tls"

umask 077
mkdir -p "$OUT/portcullis" "$OUT/keycloak" "$OUT/certs" "$OUT/redis"
p="$OUT/portcullis" k="$OUT/keycloak" c="$OUT/certs" r="$OUT/redis"

say() { printf 'init: %s\n' "$*"; }

# --- portcullis ---------------------------------------------------------------------------
if [ ! -s "$p/cookie_secret" ]; then
    head -c 32 /dev/urandom | base64 >"$p/cookie_secret.tmp"
    mv "$p/cookie_secret.tmp" "$p/cookie_secret"
    say "made $p/cookie_secret"
fi
if [ ! -s "$p/client_secret" ]; then
    openssl rand -hex 32 >"$p/client_secret.tmp"
    mv "$p/client_secret.tmp" "$p/client_secret"
    say "made $p/client_secret"
fi
if [ ! -s "$p/signing_key.pem" ]; then
    rm -f "$p/signing_key.pem"
    "$PORTCULLIS" keygen -o "$p/signing_key.pem"
fi
# Keycloak reads the same client secret when it imports the realm.
cp "$p/client_secret" "$k/client_secret"
# The session store: both portcullis replicas share sessions in Redis, with a password.
if [ ! -s "$p/redis_password" ]; then
    openssl rand -hex 32 >"$p/redis_password.tmp"
    mv "$p/redis_password.tmp" "$p/redis_password"
    say "made $p/redis_password"
fi
# Redis reads its password from a config file (not its command line, which `ps` shows);
# appendonly keeps sessions across a restart of Redis.
printf 'requirepass %s\nappendonly yes\n' "$(cat "$p/redis_password")" >"$r/redis.conf"

# --- certificates -------------------------------------------------------------------------
if [ ! -s "$c/ca.pem" ] || [ ! -s "$c/ca-key.pem" ]; then
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$c/ca-key.pem"
    openssl req -x509 -new -key "$c/ca-key.pem" -sha256 -days 3650 \
        -subj "/O=portcullis compose demo/CN=portcullis compose demo CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$c/ca.pem"
    rm -f "$c/tls.pem"
    say "made a new CA, $c/ca.pem"
fi
covers_all_names() {
    sans="$(openssl x509 -in "$c/tls.pem" -noout -ext subjectAltName 2>/dev/null)" || return 1
    for name in $DNS_NAMES; do
        case "$sans" in *"DNS:$name"*) ;; *) return 1 ;; esac
    done
}
if [ ! -s "$c/tls.pem" ] || [ ! -s "$c/tls-key.pem" ] ||
    ! openssl verify -CAfile "$c/ca.pem" "$c/tls.pem" >/dev/null 2>&1 ||
    ! openssl x509 -in "$c/tls.pem" -noout -checkend 86400 >/dev/null 2>&1 ||
    ! covers_all_names; then
    san=""
    for name in $DNS_NAMES; do san="${san:+$san,}DNS:$name"; done
    ext="$c/leaf.ext"
    printf '%s\n' \
        "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" \
        "subjectAltName=$san" >"$ext"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$c/tls-key.pem"
    openssl req -new -key "$c/tls-key.pem" -subj "/CN=auth.localhost" -out "$c/tls.csr"
    openssl x509 -req -in "$c/tls.csr" -CA "$c/ca.pem" -CAkey "$c/ca-key.pem" \
        -CAcreateserial -days 825 -sha256 -extfile "$ext" -out "$c/tls.pem" 2>/dev/null
    rm -f "$c/tls.csr" "$ext" "$c/ca.srl"
    say "made $c/tls.pem for $DNS_NAMES"
fi

# --- who may read what --------------------------------------------------------------------
chmod 0755 "$c"
chmod 0644 "$c/ca.pem" "$c/tls.pem"
chmod 0600 "$c/ca-key.pem" "$c/tls-key.pem" "$p"/* "$k"/* "$r"/*
if [ "$(id -u)" = 0 ]; then
    chown -R 10001:10001 "$p"   # the portcullis image's user
    chown -R 1000:1000 "$k"     # Keycloak's
    chown 101:101 "$c/tls-key.pem" # Envoy's (envoy and jwks-tls)
    chown -R 999:999 "$r"       # the redis image's
fi
say "ready; the browser's CA is $c/ca.pem (docker compose cp init:$c/ca.pem .)"
