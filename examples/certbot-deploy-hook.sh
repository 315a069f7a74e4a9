#!/bin/sh
# certbot deploy hook: hand every renewed lineage to certswap, which installs
# it on the sites it belongs to and proves the live server serves it.
#
# Install (certbot runs every executable in this directory after each
# successful renewal, with RENEWED_LINEAGE and RENEWED_DOMAINS set):
#
#   install -m 0755 certbot-deploy-hook.sh \
#       /etc/letsencrypt/renewal-hooks/deploy/50-certswap
#
# or per run:  certbot renew --deploy-hook "certswap deploy-hook"
#
# The directory's hooks run for every certificate certbot renews; a renewal
# that belongs to no certswap site exits 2 and certbot reports the hook as
# failed. On hosts where certbot also renews other certificates (a mail
# server's), set the hook per certificate instead: certbot stores
#   certbot certonly --cert-name www.example.com --deploy-hook "certswap deploy-hook" ...
# in that lineage's renewal config and runs it for that one only.
#
# Point nginx/apache at their own copies (e.g. /etc/nginx/ssl/SITE.pem), not
# at /etc/letsencrypt/live/...: certswap refuses targets that are symlinks,
# and copying is what makes the swap atomic and verifiable. Do not add a
# "systemctl reload nginx" hook as well: certswap reloads.
#
# Exit status: 0 when every matching site serves the new certificate; 1 when
# certswap refused it (nothing changed); 2 when no configured site matches
# (nothing changed) or the environment is wrong; 3 when the install was
# rolled back. certbot logs a non-zero status as a failed hook.
set -eu

# One result per site ("verified: ..." or the reason) in certbot's log;
# `--json` prints one JSON object per site instead.
exec /usr/bin/certswap deploy-hook
