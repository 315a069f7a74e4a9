# certswap %preun: on erase (not upgrade), stop and disable the units.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now certswap.service certswap-status.timer >/dev/null 2>&1 || :
fi
