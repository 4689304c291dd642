# simian %preun ($1: 0 on removal, 1 on upgrade): stop and disable on removal.
if [ "$1" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then
	systemctl --no-reload disable simian.service >/dev/null 2>&1 || true
	if [ -d /run/systemd/system ]; then
		systemctl stop simian.service >/dev/null 2>&1 || true
	fi
fi
exit 0
