#!/usr/bin/env bash
# Packaging test (issue 7): build the .deb and the .rpm with packaging/build.sh,
# check what they hold, then install, check, remove and purge the .deb on this
# machine. Needs root (it runs dpkg -i); installs the tools it needs with apt-get.
# It purges the package again on exit, and leaves only the `simian` system user.
#   bash packaging/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "packaging/test.sh must run as root (it installs the .deb)" >&2
    exit 1
fi
pkg_state() { dpkg-query -W -f='${db:Status-Status}' simian 2>/dev/null || true; }
if [ -n "$(pkg_state)" ] && [ "$(pkg_state)" != not-installed ]; then
    if [ -n "${CI:-}" ]; then
        echo "simian is already installed here: purging it first (CI)"
        dpkg --purge simian >/dev/null
    else
        echo "simian is already installed here; 'dpkg --purge simian' first (this test installs and purges it)" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
need=()
command -v rpm >/dev/null || need+=(rpm)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v man >/dev/null || need+=(man-db)
command -v groff >/dev/null || need+=(groff-base)
command -v logrotate >/dev/null || need+=(logrotate)
command -v adduser >/dev/null || need+=(adduser)
command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
if [ ${#need[@]} -gt 0 ]; then
    echo "== apt-get install ${need[*]}"
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
# check NAME COMMAND...: run COMMAND, quiet unless it fails.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then ok "$name"; else bad "$name"; printf '%s\n' "$out" | sed 's/^/     /'; fi
}
# contains NAME LISTING PATH...: every PATH is a line of LISTING.
contains() {
    local name=$1 listing=$2 p missing=()
    shift 2
    for p in "$@"; do
        grep -qxF -- "$p" <<<"$listing" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then ok "$name"; else bad "$name: missing ${missing[*]}"; fi
}

cleanup() {
    if [ -n "$(pkg_state)" ] && [ "$(pkg_state)" != not-installed ]; then
        dpkg --purge simian >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

echo "== packaging/build.sh"
mapfile -t pkgs < <(bash packaging/build.sh | tail -n 2)
deb=${pkgs[0]:-}
rpm=${pkgs[1]:-}
[ -f "$deb" ] && [ -f "$rpm" ] || { echo "FAIL build.sh did not print two package paths" >&2; exit 1; }
echo "deb: $deb"
echo "rpm: $rpm"

echo "== source files"
check "maintainer scripts parse (sh -n)" sh -c 'for f in packaging/debian/* packaging/rpm/*.sh; do sh -n "$f" || exit 1; done'
man_warnings() { # the man page renders at 80 columns with no warning on stderr
    local err
    err=$(MANWIDTH=80 man --warnings -l "$1" 2>&1 >/dev/null)
    [ -z "$err" ] || { printf '%s\n' "$err"; return 1; }
    [ "$(MANWIDTH=80 man -l "$1" 2>/dev/null | wc -l)" -gt 100 ]
}
check "man page renders without warnings: packaging/simian.8" man_warnings packaging/simian.8

echo "== .deb contents (dpkg-deb -c)"
deb_files=$(dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|')
contains "dpkg-deb -c lists every file" "$deb_files" \
    /usr/bin/simian \
    /etc/simian/proxy.conf \
    /lib/systemd/system/simian.service \
    /usr/share/man/man8/simian.8.gz \
    /etc/logrotate.d/simian \
    /usr/share/doc/simian/README.md \
    /usr/share/doc/simian/configuration.md
contains "conffiles: proxy.conf and logrotate" "$(dpkg-deb -I "$deb" conffiles)" \
    /etc/simian/proxy.conf /etc/logrotate.d/simian
contains "maintainer scripts in the .deb" "$(dpkg-deb --ctrl-tarfile "$deb" | tar -t | sed 's|^\./||')" \
    postinst prerm postrm

echo "== .rpm contents (rpm -qlp)"
rpm_files=$(rpm -qlp "$rpm" 2>/dev/null)
contains "rpm -qlp lists every file" "$rpm_files" \
    /usr/bin/simian \
    /etc/simian/proxy.conf \
    /usr/lib/systemd/system/simian.service \
    /usr/share/man/man8/simian.8 \
    /etc/logrotate.d/simian \
    /usr/share/doc/simian/README.md \
    /usr/share/doc/simian/configuration.md
contains "rpm: proxy.conf is %config(noreplace)" \
    "$(rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm" 2>/dev/null)" "cn /etc/simian/proxy.conf"
rpm_scripts=$(rpm -qp --scripts "$rpm" 2>/dev/null)
check "rpm scriptlets: user, log dir, enable, stop" sh -c 'for w in "preinstall scriptlet" useradd "postinstall scriptlet" "install -d -o simian -g simian -m 0750 /var/log/simian" "systemctl enable" "preuninstall scriptlet" "systemctl stop" "postuninstall scriptlet"; do printf "%s" "$1" | grep -qF -- "$w" || { echo "no $w"; exit 1; }; done' _ "$rpm_scripts"
check "rpm -K: digests" rpm -K --nosignature "$rpm"
rpm_root=$(mktemp -d)
check "rpm unpacks (rpm -i --root, no scripts)" sh -c 'rpm -i --root "$1" --nodeps --noscripts --nosignature "$2" && [ -x "$1/usr/bin/simian" ] && "$1/usr/bin/simian" --check -c "$1/etc/simian/proxy.conf"' _ "$rpm_root" "$rpm"
rm -rf "$rpm_root"

echo "== dpkg -i"
check "dpkg -i" dpkg -i "$deb"
check "status: installed" test "$(pkg_state)" = installed
check "user simian created (system, no login)" sh -c 'getent passwd simian | grep -q ":/usr/sbin/nologin$" && [ "$(id -u simian)" -lt 1000 ] && getent group simian >/dev/null'
check "/var/log/simian: simian:simian 750" sh -c '[ "$(stat -c "%U:%G %a" /var/log/simian)" = "simian:simian 750" ]'
check "unit enabled (multi-user.target.wants link)" test -L /etc/systemd/system/multi-user.target.wants/simian.service
check "/usr/bin/simian --check -c /etc/simian/proxy.conf" /usr/bin/simian --check -c /etc/simian/proxy.conf
check "--check as the simian user (as ExecStartPre runs it)" setpriv --reuid simian --regid simian --init-groups /usr/bin/simian --check -c /etc/simian/proxy.conf
check "simian --version" sh -c '/usr/bin/simian --version | grep -q "^simian "'
smoke() { # run as the service would (user simian, installed config on a free port):
    # it serves, logs to /var/log/simian, survives SIGHUP, and exits 0 on SIGTERM
    local dir port pid i code=1
    dir=$(mktemp -d) && chmod 755 "$dir"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    sed "s/^Listen 127.0.0.1:8080$/Listen 127.0.0.1:$port/" /etc/simian/proxy.conf >"$dir/proxy.conf"
    chmod 644 "$dir/proxy.conf"
    setpriv --reuid simian --regid simian --init-groups /usr/bin/simian -c "$dir/proxy.conf" --threads 1 &
    pid=$!
    fetch() { # any HTTP answer will do (the entry's backends are not running: 502)
        python3 - "http://127.0.0.1:$port$1" 2>/dev/null <<'PY'
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=2).read()
except urllib.error.HTTPError:
    pass
PY
    }
    for i in $(seq 50); do fetch /simian-status && break; sleep 0.1; done
    if fetch /simian-status && kill -HUP "$pid" && sleep 0.5 && fetch "/packaging-test-$$" && kill -0 "$pid"; then
        for i in $(seq 50); do grep -q "GET /packaging-test-$$ " /var/log/simian/access.log 2>/dev/null && break; sleep 0.1; done
        if grep -q "GET /packaging-test-$$ " /var/log/simian/access.log; then code=0; else echo "no request in /var/log/simian/access.log"; fi
    else
        echo "simian did not serve on 127.0.0.1:$port or died on SIGHUP"
    fi
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then echo "still running 10 s after SIGTERM"; kill -KILL "$pid"; code=1; fi
    wait "$pid" || { echo "exit status $? after SIGTERM"; code=1; }
    rm -rf "$dir"
    return $code
}
check "runs as simian: serves, logs to /var/log/simian, SIGHUP, SIGTERM exits 0" smoke
quiet() { # COMMAND succeeds and prints nothing (systemd-analyze verify only warns about unknown keys)
    local out
    out=$("$@" 2>&1) && [ -z "$out" ] || { printf '%s\n' "$out"; return 1; }
}
check "systemd-analyze verify simian.service (no error, no warning)" quiet systemd-analyze verify /lib/systemd/system/simian.service
unit_has() { # the unit holds each of these lines exactly
    local l
    for l in "$@"; do grep -qxF -- "$l" /lib/systemd/system/simian.service || { echo "no line: $l"; return 1; }; done
}
check "unit: notify (upgrades move the main PID), check before start and reload, drain longer than ShutdownTimeout" unit_has \
    "Type=notify" "NotifyAccess=all" "User=simian" "Group=simian" \
    "ExecStartPre=/usr/bin/simian --check -c /etc/simian/proxy.conf" \
    "ExecStart=/usr/bin/simian -c /etc/simian/proxy.conf" \
    "ExecReload=/usr/bin/simian --check -c /etc/simian/proxy.conf" \
    'ExecReload=/bin/kill -HUP $MAINPID' \
    "KillSignal=SIGTERM" "TimeoutStopSec=45"
check "unit: capabilities, limits, sandbox" unit_has \
    "AmbientCapabilities=CAP_NET_BIND_SERVICE" "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" \
    "LimitNOFILE=1048576" "ProtectSystem=strict" "ProtectHome=yes" "NoNewPrivileges=yes" \
    "PrivateTmp=yes" "ReadWritePaths=/var/log/simian"
check "man page renders without warnings: installed simian.8.gz" man_warnings /usr/share/man/man8/simian.8.gz
check "logrotate accepts /etc/logrotate.d/simian" sh -c 'out=$(logrotate -d /etc/logrotate.d/simian 2>&1) && ! printf "%s" "$out" | grep -qi "^error"'

echo "== dpkg -r keeps the edited conffile, dpkg --purge removes it"
marker="## edited by packaging/test.sh $$"
echo "$marker" >>/etc/simian/proxy.conf
check "edited conffile still passes --check" /usr/bin/simian --check -c /etc/simian/proxy.conf
check "dpkg -r simian" dpkg -r simian
check "binary, unit and man page gone after -r" sh -c '[ ! -e /usr/bin/simian ] && [ ! -e /lib/systemd/system/simian.service ] && [ ! -e /usr/share/man/man8/simian.8.gz ]'
check "status after -r: config-files" test "$(pkg_state)" = config-files
check "edited conffile kept after -r" grep -qxF "$marker" /etc/simian/proxy.conf
check "dpkg -i again keeps the edited conffile" sh -c 'dpkg -i "$1" >/dev/null && grep -qxF "$2" /etc/simian/proxy.conf' _ "$deb" "$marker"
check "dpkg --purge simian" dpkg --purge simian
check "conffiles, log dir and unit links gone after --purge" sh -c '[ ! -e /etc/simian ] && [ ! -e /etc/logrotate.d/simian ] && [ ! -e /var/log/simian ] && [ ! -e /etc/systemd/system/multi-user.target.wants/simian.service ] && [ ! -e /etc/systemd/system/simian.service ]'
check "package gone" sh -c '[ -z "$1" ] || [ "$1" = not-installed ]' _ "$(pkg_state)"

echo "packaging: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
