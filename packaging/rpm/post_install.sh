# simian %post ($1: 1 on install, 2 on upgrade). The log directory (not packaged:
# see Cargo.toml), then the unit enabled on first install without starting it
# (the default configuration is an example to edit first); an upgrade restarts a
# running simian from %postun. Works without a running systemd.
install -d -o simian -g simian -m 0750 /var/log/simian
if [ "$1" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
	systemctl enable simian.service >/dev/null 2>&1 || true
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
