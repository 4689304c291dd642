"""Helpers shared by bench/tcp.py and bench/ops.py: a process's CPU time from /proc,
and waiting for a port to accept."""
import os, socket, time

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid, with_children=False):
    """utime+stime of a process (all its threads) from /proc/PID/stat; with
    `with_children`, also its reaped children (cutime+cstime) and live ones (socat
    forks a child per connection)."""
    total = 0
    pids = [pid] + (children(pid) if with_children else [])
    for p in pids:
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(f[11]) + int(f[12])
        if with_children:
            total += int(f[13]) + int(f[14])
    return total / CLK


def children(pid):
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"port {port} never opened")
