# certswap %post: the state directory, root only; units installed, not enabled
# (configure /etc/certswap/certswap.toml, then
# `systemctl enable --now certswap.service certswap-status.timer`).
install -d -m 0700 -o root -g root /var/lib/certswap
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || :; fi
