# simian %postun ($1: 0 on removal, 1 on upgrade): forget the unit, and restart
# a running simian on the new binary after an upgrade. The user stays, as do
# the log files (rpm removes /var/log/simian only when it is empty).
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
	if [ "$1" -ge 1 ]; then
		systemctl try-restart simian.service >/dev/null 2>&1 || true
	fi
fi
exit 0
