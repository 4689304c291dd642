#!/usr/bin/env python3
"""Where a proxy's CPU goes: user space and kernel, for simian, HAProxy and
bench/floor/relay.c (the system calls any proxy must make and nothing else), in
interleaved rounds. bench/FLOOR.md explains the result.

    python3 bench/floor.py [--workload small|64m] [--rounds 8] [--duration 3] [--simian PATH]

small: `wrk -t1 -c50` keep-alive GETs of /small, against HAProxy and the relay.
64m:   bench/client.py get of /64m.bin on 4 connections, against spliced HAProxy and
       the relay in splice mode (`relay -s`).

Layout as bench/run.py's one-core table: each proxy alone on CPU 1, the origin nginx
and `wrk -t1 -c50` on CPU 0. Needs root-free tools only: nginx, haproxy, wrk, gcc
(bench/run.py installs the first three).
"""
import argparse, os, shutil, signal, statistics, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import wait_port  # noqa: E402
from run import cpu_split, parse_wrk, render  # noqa: E402  (bench/run.py's helpers)

HERE = os.path.dirname(os.path.abspath(__file__))


def write_conf(template, dest, values):
    with open(dest, "w") as f:
        f.write(render(template, values))


def wrk(port, duration):
    """Requests served and p99 (µs) of one wrk run; a socket error or a non-2xx
    answer ends the measurement (CPU per request of failed requests means nothing)."""
    out = subprocess.run(["taskset", "-c", "0", "wrk", "-t1", "-c50", f"-d{duration:g}s", "--latency",
                          f"http://127.0.0.1:{port}/small"], capture_output=True, text=True).stdout
    res = parse_wrk(out)
    if res["requests"] is None or res["errors"]:
        sys.exit(f"wrk on port {port}: {res.get('error_text') or 'no result'}\n{out}")
    return res["requests"], res["p99_us"]


def client_64m(port, duration):
    """MiB moved by bench/client.py get in `duration` seconds; (MiB, MiB/s)."""
    import json
    out = subprocess.run(["taskset", "-c", "0", sys.executable, os.path.join(HERE, "client.py"), "get",
                          "--path", "/64m.bin", "--port", str(port), "--conns", "4", "--duration",
                          f"{duration:g}"], capture_output=True, text=True).stdout
    j = json.loads(out.strip().splitlines()[-1])
    if j["errors"]:
        sys.exit(f"client errors: {j['errors'][:2]}")
    return j["bytes"] / 2**20, j["mib_per_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=["small", "64m"], default="small")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--simian", default="target/release/simian")
    p.add_argument("--port-base", type=int, default=29000)
    a = p.parse_args()
    for tool in ("nginx", "haproxy", "wrk", "gcc", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (bench/run.py installs nginx, haproxy and wrk)")
    work = tempfile.mkdtemp(prefix="simian-floor-")
    os.chmod(work, 0o755)  # the origin's nginx worker (not root) reads www/
    os.makedirs(f"{work}/www")
    os.makedirs(f"{work}/origin-tmp")
    b = a.port_base
    v = {"WORK": work, "THREADS": 1, "ORIGIN1": b + 11, "ORIGIN2": b + 12, "ORIGIN3": b + 13,
         "SINK": b + 14, "ORIGIN_WORKERS": 1, "SPLICE": "auto", "HAPROXY_GLOBAL_EXTRA": "",
         "HAPROXY_DEFAULTS_EXTRA": "", "NAME": "floor", "LISTEN_TLS": "", "SIMIAN_TLS": "",
         "HAPROXY_BIND_TLS": "", "NGINX_LISTEN_TLS": "", "NGINX_TLS": ""}
    write_conf("origin-nginx.conf", f"{work}/origin.conf", dict(v, PORT=0))
    write_conf("simian.conf", f"{work}/simian.conf", dict(v, PORT=b + 1))
    big = a.workload == "64m"
    ha = dict(v, PORT=b + 2)
    if big:
        ha.update(HAPROXY_GLOBAL_EXTRA="    maxpipes 500",
                  HAPROXY_DEFAULTS_EXTRA="    option splice-request\n    option splice-response")
        with open(f"{work}/www/64m.bin", "wb") as f:
            block = os.urandom(2**20)
            for _ in range(64):
                f.write(block)
        os.chmod(f"{work}/www/64m.bin", 0o644)
    write_conf("haproxy.cfg", f"{work}/haproxy.cfg", ha)
    relay = f"{work}/relay"
    subprocess.run(["gcc", "-O2", "-o", relay, os.path.join(HERE, "floor", "relay.c")], check=True)
    origins = [str(b + 11), str(b + 12), str(b + 13)]
    procs = []

    def start(cpu, argv):
        procs.append(subprocess.Popen(["taskset", "-c", cpu] + argv, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))
        return procs[-1].pid

    try:
        start("0", ["nginx", "-c", f"{work}/origin.conf", "-p", work])
        targets = {
            "simian": (b + 1, start("1", [a.simian, "-c", f"{work}/simian.conf"])),
            "haproxy": (b + 2, start("1", ["haproxy", "-db", "-f", f"{work}/haproxy.cfg"])),
            "relay": (b + 5, start("1", [relay] + (["-s"] if big else []) + [str(b + 5)] + origins)),
        }
        for port, _ in targets.values():
            wait_port(port)
        for port, _ in targets.values():
            # warm-up: connections, pools, caches
            client_64m(port, 1) if big else wrk(port, 1)
        rows = {t: [] for t in targets}
        unit = "MiB" if big else "request"
        for r in range(a.rounds):
            for t, (port, pid) in targets.items():
                u0, s0 = cpu_split([pid])
                if big:
                    units, rate = client_64m(port, a.duration)
                    extra = 0.0
                else:
                    units, extra = wrk(port, a.duration)
                    rate = units / a.duration
                u1, s1 = cpu_split([pid])
                row = (rate, (u1 - u0) * 1e6 / units, (s1 - s0) * 1e6 / units, extra)
                rows[t].append(row)
                print(f"round {r + 1} {t:8} {row[0]:8.0f} {unit}/s  user {row[1]:6.2f} µs  "
                      f"kernel {row[2]:6.2f} µs" + ("" if big else f"  p99 {row[3]:6.0f} µs"), flush=True)
        print(f"\n| proxy | {unit}s/s | CPU per {unit} (µs) | user space | kernel |"
              + ("" if big else " p99 (µs) |") + " CPU ÷ HAProxy |")
        print("|---|---:|---:|---:|---:|" + ("" if big else "---:|") + "---:|")
        med = {t: [statistics.median(x[i] for x in rows[t]) for i in range(4)] for t in rows}
        ha_cpu = med["haproxy"][1] + med["haproxy"][2]
        for t, m in med.items():
            print(f"| {t} | {m[0]:,.0f} | {m[1] + m[2]:.2f} | {m[1]:.2f} | {m[2]:.2f} | "
                  + ("" if big else f"{m[3]:,.0f} | ") + f"{(m[1] + m[2]) / ha_cpu:.2f} |")
        print(f"\nmedians of {a.rounds} interleaved rounds of {a.duration:g} s")
    finally:
        for pr in procs:
            try:
                os.killpg(pr.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pr in procs:
            try:
                pr.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(pr.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
