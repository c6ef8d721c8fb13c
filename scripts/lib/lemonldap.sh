# shellcheck shell=bash
# LemonLDAP::NG (Debian bookworm's 2.16) as a second real OpenID Connect provider for the
# end-to-end tests. testkit/src/lemonldap.rs runs it (nginx + llng-fastcgi-server on
# loopback, from a state directory of its own); this file only installs it.
#
# Source it (after common.sh, or on its own: it sources common.sh); it defines functions and
# changes no shell options.

# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# What the portal needs with --no-install-recommends, and nothing else (each one was found
# missing by starting the portal without it):
PORTCULLIS_LEMONLDAP_PACKAGES=(
    lemonldap-ng                # the portal, handler and manager libraries
    lemonldap-ng-fastcgi-server # /usr/sbin/llng-fastcgi-server
    nginx                       # in front of it (the portal speaks FastCGI only)
    libgd-securityimage-perl    # the portal loads its captcha module at start, used or not
    libimage-magick-perl        #   (GD::SecurityImage with use_magick => 1)
    libstring-random-perl       # the OpenID Connect issuer (String::Random)
    libio-string-perl           # every issuer (Lemonldap::NG::Portal::Main::Issuer: IO::String)
)
# Not needed: libemail-sender-perl and libmime-tools-perl (only for the mail-sending
# plugins, which the launcher's configuration leaves off, and for lemonldap-ng-cli, which
# the launcher does not use).

# ensure_lemonldap: install the packages above unless they are all there already (then it
# returns at once: dpkg-query only). apt-get update runs first only when something is
# missing. Needs root to install; otherwise prints the missing packages and returns 1.
# The packages' maintainer scripts would start nginx (port 80) and llng-fastcgi-server as
# system services: while installing, a temporary /usr/sbin/policy-rc.d refuses that, unless
# the machine already has one (Debian's container images do). PORTCULLIS_POLICY_RC_D
# overrides its path (for tests of this function).
ensure_lemonldap() {
    if _lemonldap_installed; then
        return 0
    fi
    local policy="${PORTCULLIS_POLICY_RC_D:-/usr/sbin/policy-rc.d}" made_policy=0 rc=0
    if [[ "$(id -u)" == 0 && ! -e "$policy" ]]; then
        printf '#!/bin/sh\n# portcullis ensure_lemonldap: no service starts while installing\nexit 101\n' \
            >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    ensure_apt "${PORTCULLIS_LEMONLDAP_PACKAGES[@]}" || rc=$?
    if ((made_policy)); then
        rm -f "$policy"
    fi
    ((rc == 0)) || return "$rc"
    if [[ ! -x /usr/sbin/llng-fastcgi-server || ! -x /usr/sbin/nginx ]]; then
        printf 'error: LemonLDAP::NG packages installed but /usr/sbin/llng-fastcgi-server or /usr/sbin/nginx is missing\n' >&2
        return 1
    fi
}

# lemonldap_version: print the installed LemonLDAP::NG version (e.g. 2.16.1+ds-deb12u10).
lemonldap_version() {
    dpkg-query -W -f='${Version}\n' lemonldap-ng 2>/dev/null
}

# True when every package is installed (one dpkg-query call).
_lemonldap_installed() {
    local status
    status="$(dpkg-query -W -f='${Status}\n' "${PORTCULLIS_LEMONLDAP_PACKAGES[@]}" 2>/dev/null)" || return 1
    [[ "$(grep -c 'ok installed' <<<"$status")" == "${#PORTCULLIS_LEMONLDAP_PACKAGES[@]}" ]]
}
