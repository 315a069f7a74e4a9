# certswap %postun: reload systemd; on upgrade restart a running agent.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then systemctl try-restart certswap.service >/dev/null 2>&1 || :; fi
fi
