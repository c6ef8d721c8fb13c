# shellcheck shell=bash
# Cockpit single sign-on helpers for scripts/demo and the Cockpit end-to-end tests.
#
# Source it (after common.sh or on its own); it defines functions and changes no shell
# options. Both edit the PAM stack of Cockpit, /etc/pam.d/cockpit (PORTCULLIS_PAM_FILE
# overrides the path, for tests of these functions), which is global state shared with
# every other user of the machine. So:
#   * portcullis's lines live in a marked block, "# BEGIN portcullis-cockpit NAME" ...
#     "# END portcullis-cockpit NAME"; writing replaces the block with the same NAME, in
#     place, and keeps every other line byte for byte. Several blocks (the demo's, a test's)
#     can coexist: each pam_exec line is `sufficient`, so one that fails is ignored and the
#     next is tried.
#   * every read-modify-write holds an exclusive flock on the directory that holds the file
#     (/etc/pam.d), so the demo and concurrent test processes never interleave edits; the
#     new file is written next to the old one and renamed over it, so PAM never reads a
#     half-written file.

# The block goes right after this line when it is there (Debian and Fedora both start the
# auth stack with it), else before the first auth line.
PORTCULLIS_PAM_ANCHOR_RE='^[[:space:]]*auth[[:space:]]+required[[:space:]]+pam_sepermit\.so'

# cockpit_pam_block NAME BIN JWKS ISSUER AUDIENCE...: print portcullis's PAM block. ISSUER is
# portcullis's authenticate_url origin, the `iss` of every token it signs.
#
# The pam_listfile line repeats Cockpit's own disallowed-users check *before* our
# `sufficient` line: a success there ends the auth stack at once, so Cockpit's
# check further down (which normally denies root) would never run.
cockpit_pam_block() {
    local name="$1" bin="$2" jwks="$3" issuer="$4" aud args=""
    shift 4
    for aud in "$@"; do
        args+=" --audience $aud"
    done
    printf '# BEGIN portcullis-cockpit %s (written by portcullis; replaced as a whole)\n' "$name"
    printf 'auth       required     pam_listfile.so item=user sense=deny file=/etc/cockpit/disallowed-users onerr=succeed\n'
    printf 'auth       sufficient   pam_exec.so expose_authtok quiet %s pam-verify --jwks %s --issuer %s --replay-dir /run/portcullis-pam%s\n' \
        "$bin" "$jwks" "$issuer" "$args"
    printf '# END portcullis-cockpit %s\n' "$name"
}

# cockpit_pam_write NAME BIN JWKS ISSUER AUDIENCE...: install (or replace) block NAME.
cockpit_pam_write() {
    local name="$1" bin="$2" jwks="$3" issuer="$4"
    shift 4
    local arg
    # PAM splits its arguments on white space: paths with spaces cannot work.
    for arg in "$name" "$bin" "$jwks" "$issuer" "$@"; do
        if [[ -z "$arg" || "$arg" =~ [[:space:]] ]]; then
            printf 'error: cockpit_pam_write: empty argument or white space in %q\n' "$arg" >&2
            return 1
        fi
    done
    _cockpit_pam_edit "$name" "$(cockpit_pam_block "$name" "$bin" "$jwks" "$issuer" "$@")"
}

# cockpit_pam_remove NAME: remove block NAME, if present.
cockpit_pam_remove() {
    _cockpit_pam_edit "${1:?usage: cockpit_pam_remove NAME}" ""
}

# _cockpit_pam_edit NAME BLOCK: under the lock, drop block NAME and, when BLOCK is not
# empty, put BLOCK where the old block was (else right after the anchor line, else before
# the first auth line, else at the end). Every other line is kept as it is.
_cockpit_pam_edit() {
    local name="$1" block="$2"
    local file="${PORTCULLIS_PAM_FILE:-/etc/pam.d/cockpit}"
    if [[ ! "$name" =~ ^[A-Za-z0-9_-]+$ ]]; then
        printf 'error: bad PAM block name %q\n' "$name" >&2
        return 1
    fi
    if [[ ! -f "$file" ]]; then
        printf 'error: %s does not exist (is cockpit-ws installed?)\n' "$file" >&2
        return 1
    fi
    (
        flock 9 || exit 1
        tmp="$file.portcullis-tmp.$$"
        # Values go in through the environment: awk -v would interpret backslashes.
        PAM_BLOCK_NAME="$name" PAM_BLOCK="$block" PAM_ANCHOR="$PORTCULLIS_PAM_ANCHOR_RE" awk '
            BEGIN { name = ENVIRON["PAM_BLOCK_NAME"]; block = ENVIRON["PAM_BLOCK"]
                    anchor = ENVIRON["PAM_ANCHOR"]
                    begin_re = "^# BEGIN portcullis-cockpit " name "( |$)"
                    end_re = "^# END portcullis-cockpit " name "( |$)" }
            skipping && $0 ~ end_re { skipping = 0; next }
            skipping { next }
            $0 ~ begin_re { skipping = 1; if (!old) old = n + 1; next }
            {
                line[++n] = $0
                if (!after_anchor && $0 ~ anchor) after_anchor = n + 1
                if (!first_auth && $0 ~ /^[[:space:]]*-?auth[[:space:]]/) first_auth = n
            }
            END {
                if (skipping) {
                    print "error: unterminated portcullis-cockpit block " name > "/dev/stderr"
                    exit 1
                }
                at = old ? old : after_anchor ? after_anchor : first_auth ? first_auth : n + 1
                for (i = 1; i <= n + 1; i++) {
                    if (i == at && block != "") print block
                    if (i <= n) print line[i]
                }
            }
        ' "$file" >"$tmp" || {
            rm -f "$tmp"
            exit 1
        }
        if cmp -s "$tmp" "$file"; then
            rm -f "$tmp"
            exit 0
        fi
        if ! { chmod --reference="$file" "$tmp" && chown --reference="$file" "$tmp" &&
            mv -f "$tmp" "$file"; }; then
            rm -f "$tmp"
            exit 1
        fi
    ) 9<"$(dirname "$file")"
}
