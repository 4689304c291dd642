#!/usr/bin/env bash
# Check the packaged unit (packaging/simian.service) under a real systemd: start,
# SIGUSR2 binary upgrade (`systemctl kill -s USR2`), reload, stop.
#
# systemd runs as PID 1 of its own PID, mount and network namespaces (root only),
# so it neither sees nor touches the host's services. Usage:
#   bash packaging/systemd-upgrade-check.sh [path/to/simian]   (default: target/release/simian)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(readlink -f "${1:-target/release/simian}")
[ -x "$BIN" ] || { echo "no simian binary at $BIN (cargo build --release)"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "skipped: needs root"; exit 0; }
SYSTEMD=/lib/systemd/systemd
[ -x "$SYSTEMD" ] || { echo "skipped: no $SYSTEMD"; exit 0; }

# Not under /tmp: the namespace gets its own /tmp, /var/tmp and /run, so that
# nothing systemd does at start can touch the host's.
W=$(mktemp -d "$PWD/target/systemd-check.XXXXXX")
cat > "$W/proxy.conf" <<CONF
[PROXY_DEFAULTS]
    Listen 127.0.0.1:18080
    HealthURL /healthz
[PROXY_ENTRY]
    Name app
    Match ^/
    ServerList 127.0.0.1:18081
CONF
# The packaged unit, with this binary and config, run as root (no simian user
# here) and without the sandboxing a container may not allow.
# The binary and the file are copied into the namespace's /run first: /tmp and
# /var/tmp (where a checkout may live) are hidden there.
RUNDIR=/run/simian-check
sed -e "s|/usr/bin/simian|$RUNDIR/simian|g" -e "s|/etc/simian/proxy.conf|$RUNDIR/proxy.conf|g" \
    packaging/simian.service > "$W/simian.service"
cat > "$W/sandbox.conf" <<'DROPIN'
[Service]
User=root
Group=root
ProtectSystem=no
PrivateDevices=no
PrivateTmp=no
ProtectHome=no
ProtectKernelTunables=no
ProtectKernelModules=no
ProtectKernelLogs=no
ProtectControlGroups=no
ProtectClock=no
ProtectHostname=no
DROPIN
cat > "$W/check.target" <<'TARGET'
[Unit]
Description=simian unit check
TARGET

cat > "$W/inside.sh" <<INSIDE
set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/system/simian.service.d $RUNDIR
cp $BIN $RUNDIR/simian
cp $W/proxy.conf $RUNDIR/proxy.conf
# Nothing but the unit under test runs: no tmpfiles, no timers.
for u in systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service systemd-tmpfiles-clean.timer systemd-tmpfiles-clean.service; do
    ln -s /dev/null /run/systemd/system/\$u
done
cp $W/simian.service $W/check.target /run/systemd/system/
cp $W/sandbox.conf /run/systemd/system/simian.service.d/
# Everything is copied: now hide the host's temporary directories and journal.
for d in /tmp /var/tmp /var/log/journal; do [ -d \$d ] && mount -t tmpfs tmpfs \$d; done
ip link set lo up
exec $SYSTEMD --system --unit=check.target --log-target=kmsg
INSIDE
unshare --pid --fork --mount --net --mount-proc --propagation private bash "$W/inside.sh" >/dev/null 2>&1 &
UNSHARE=$!
cleanup() {
    pkill -9 -f "$SYSTEMD --system --unit=check.target" || true
    kill -9 "$UNSHARE" 2>/dev/null || true
    wait "$UNSHARE" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
for _ in $(seq 50); do
    PID1=$(pgrep -f "$SYSTEMD --system --unit=check.target" || true)
    [ -n "$PID1" ] && break
    sleep 0.1
done
[ -n "$PID1" ] || { echo "systemd did not start"; exit 1; }
ns() { nsenter -t "$PID1" -m -p -n "$@"; }
for _ in $(seq 100); do ns systemctl is-system-running >/dev/null 2>&1 && break; sleep 0.1; done
# A backend inside the namespace.
ns python3 -m http.server 18081 --bind 127.0.0.1 >/dev/null 2>&1 &
sleep 0.5

prop() { ns systemctl show simian -p "$1" --value; }
echo "== systemd-analyze verify"
ns systemd-analyze verify /run/systemd/system/simian.service 2>&1 | grep -v "man simian" || true
echo "== systemctl start simian (Type=$(prop Type), NotifyAccess=$(prop NotifyAccess))"
ns systemctl start simian
MAIN1=$(prop MainPID); echo "active: $(prop ActiveState)/$(prop SubState), MainPID=$MAIN1"
ns curl -sf -o /dev/null http://127.0.0.1:18080/ && echo "serving"
echo "== systemctl kill -s USR2 simian"
ns systemctl kill -s USR2 simian
for _ in $(seq 100); do [ "$(prop MainPID)" != "$MAIN1" ] && break; sleep 0.1; done
sleep 1
MAIN2=$(prop MainPID); echo "active: $(prop ActiveState)/$(prop SubState), MainPID=$MAIN2"
[ "$MAIN2" != "$MAIN1" ] && [ "$(prop ActiveState)" = active ] || { ns journalctl -u simian --no-pager | tail -20; echo "FAIL: main PID did not move"; exit 1; }
ns test ! -e "/proc/$MAIN1" && echo "old process $MAIN1 exited"
ns curl -sf -o /dev/null http://127.0.0.1:18080/ && echo "serving"
echo "== systemctl reload simian"
ns systemctl reload simian
echo "active: $(prop ActiveState)/$(prop SubState), MainPID=$(prop MainPID)"
echo "== systemctl stop simian"
ns systemctl stop simian
echo "state: $(prop ActiveState), result: $(prop Result), main process exit: $(prop ExecMainCode)/$(prop ExecMainStatus)"
[ "$(prop Result)" = success ] || { ns systemctl status simian --no-pager -l | tail -20; echo FAIL; exit 1; }
echo "== OK: the unit follows the upgrade (main PID $MAIN1 -> $MAIN2), reloads and stops cleanly"
