#!/bin/sh
# acme.sh reload command: let certswap install the renewed certificate.
#
# acme.sh runs the reload command after every issue/renewal (and once at
# --install-cert) inside the domain's directory, exporting CERT_PATH,
# CERT_KEY_PATH, CA_CERT_PATH, CERT_FULLCHAIN_PATH and Le_Domain — the
# files acme.sh keeps in ~/.acme.sh/DOMAIN[_ecc]/. certswap reads them from
# there, so give acme.sh no --cert-file/--key-file/--fullchain-file of its
# own (it would overwrite the server's files non-atomically first):
#
#   acme.sh --install-cert -d www.example.com \
#       --reloadcmd "/usr/local/bin/acme-sh-reloadcmd.sh"
#
# or without this file:  --reloadcmd "certswap deploy-hook"
#
# acme.sh stores the command in the domain's conf and reports a non-zero
# exit as "Reload error for: DOMAIN" (acme.sh 3.x fails the run).
# Running --install-cert again with the same certificate is refused by
# certswap ("not later than the installed one", exit 1): nothing is
# changed.
set -eu

exec /usr/bin/certswap deploy-hook
