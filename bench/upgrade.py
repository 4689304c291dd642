#!/usr/bin/env python3
"""Binary upgrades under load (issue 15, SPEC section 11): wrk with 50 keep-alive
connections and a second wrk sending `Connection: close` requests at the same time,
with 10 SIGUSR2 upgrades in a row, against the same load without upgrades.

    python3 bench/upgrade.py [--runs 3] [--duration 20] [--upgrades 10]

simian (release build, one worker) pinned on CPU 1; wrk and the origin nginx on
CPU 0. Each run is a pair (without, with), interleaved. Reports socket errors,
non-2xx answers and the latency percentiles of both wrk instances.
"""
import argparse, os, re, shutil, signal, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIMIAN = os.path.join(ROOT, "target/release/simian")
ORIGIN, PROXY = 29101, 29100


def read_pid(path):
    try:
        return int(open(path).read().strip())
    except (OSError, ValueError):
        return None


def alive(pid):
    try:
        st = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return st.rsplit(")", 1)[1].split()[0] != "Z"


def dur_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v if unit == "ms" else v * 1000


def parse_wrk(out):
    r = {"requests": 0, "errors": 0, "non2xx": 0}
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["errors"] = sum(int(x) for x in m.groups())
        r["error_detail"] = m.group(0)
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    for p in ("50", "90", "99"):
        m = re.search(rf"^\s+{p}(?:\.000)?%\s+(\S+)", out, re.M)
        r[f"p{p}"] = dur_ms(m.group(1)) if m else float("nan")
    return r


def one_run(work, duration, upgrades, pid_file):
    """wrk keep-alive + wrk close for `duration` s; `upgrades` SIGUSR2 spread over it."""
    ka = subprocess.Popen(["taskset", "-c", "0", "wrk", "-t1", "-c50", f"-d{duration}s", "--latency",
                           f"http://127.0.0.1:{PROXY}/"], stdout=subprocess.PIPE, text=True)
    close = subprocess.Popen(["taskset", "-c", "0", "wrk", "-t1", "-c4", f"-d{duration}s", "--latency",
                              "-H", "Connection: close", f"http://127.0.0.1:{PROXY}/"],
                             stdout=subprocess.PIPE, text=True)
    took = []
    if upgrades:
        time.sleep(1.0)
        gap = (duration - 3.0) / upgrades
        for _ in range(upgrades):
            t0 = time.time()
            old = read_pid(pid_file)
            os.kill(old, signal.SIGUSR2)
            while read_pid(pid_file) in (None, old):
                if time.time() - t0 > 15:
                    raise SystemExit("upgrade did not happen within 15 s; see " + work)
                time.sleep(0.005)
            took.append(time.time() - t0)
            while alive(old) and time.time() - t0 < 30:
                time.sleep(0.01)
            time.sleep(max(0.0, gap - (time.time() - t0)))
    out_ka, out_close = ka.communicate()[0], close.communicate()[0]
    return parse_wrk(out_ka), parse_wrk(out_close), took


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--upgrades", type=int, default=10)
    ap.add_argument("--simian", default=SIMIAN, help="the binary (default target/release/simian)")
    a = ap.parse_args()
    for tool in ("wrk", "nginx", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed")
    if not os.path.exists(a.simian):
        raise SystemExit("build first: cargo build --release")
    work = tempfile.mkdtemp(prefix="simian-upgrade-bench-")
    procs = []
    try:
        conf = os.path.join(work, "nginx.conf")
        open(conf, "w").write(f"""daemon off; master_process off; worker_processes 1;
pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 100000000; client_body_temp_path {work}; proxy_temp_path {work};
  fastcgi_temp_path {work}; uwsgi_temp_path {work}; scgi_temp_path {work};
  server {{ listen 127.0.0.1:{ORIGIN}; location / {{ return 200 "hello\\n"; }} }} }}
""")
        procs.append(subprocess.Popen(["taskset", "-c", "0", "nginx", "-c", conf],
                                      stderr=open(os.path.join(work, "nginx.stderr"), "w")))
        wait_port(ORIGIN)
        sconf = os.path.join(work, "simian.conf")
        open(sconf, "w").write(f"""[PROXY_DEFAULTS]
    Listen 127.0.0.1:{PROXY}
    Threads 1
    ShutdownTimeout 10s
[PROXY_ENTRY]
    Name app
    Match ^/
    ServerList 127.0.0.1:{ORIGIN}
""")
        pid_file = os.path.join(work, "simian.pid")
        first = subprocess.Popen(["taskset", "-c", "1", a.simian, "-c", sconf, "--pid-file", pid_file],
                                 stderr=open(os.path.join(work, "simian.log"), "w"))
        procs.append(first)
        wait_port(PROXY)
        time.sleep(0.3)
        rows = []
        for run in range(a.runs):
            for ups in (0, a.upgrades):
                ka, cl, took = one_run(work, a.duration, ups, pid_file)
                rows.append((ups, ka, cl, took))
                print(f"run {run + 1}, {ups:2d} upgrades: keep-alive {ka['requests']} req, "
                      f"errors {ka['errors']}, non-2xx {ka['non2xx']}, p50 {ka['p50']:.2f} ms, "
                      f"p99 {ka['p99']:.2f} ms | close {cl['requests']} req, errors {cl['errors']}, "
                      f"non-2xx {cl['non2xx']}, p99 {cl['p99']:.2f} ms"
                      + (f" | SIGUSR2 -> new pid file: median {statistics.median(took) * 1000:.0f} ms,"
                         f" max {max(took) * 1000:.0f} ms" if took else ""), flush=True)
        print()
        print("| | upgrades | requests (ka + close) | socket errors | non-2xx | ka p50 | ka p99 | close p99 |")
        print("|---|---|---|---|---|---|---|---|")
        for ups in (0, a.upgrades):
            sel = [r for r in rows if r[0] == ups]
            med = lambda f: statistics.median(f(r) for r in sel)
            print(f"| {'with' if ups else 'without'} | {ups} per run x {len(sel)} | "
                  f"{sum(r[1]['requests'] + r[2]['requests'] for r in sel):,} | "
                  f"{sum(r[1]['errors'] + r[2]['errors'] for r in sel)} | "
                  f"{sum(r[1]['non2xx'] + r[2]['non2xx'] for r in sel)} | "
                  f"{med(lambda r: r[1]['p50']):.2f} ms | {med(lambda r: r[1]['p99']):.2f} ms | "
                  f"{med(lambda r: r[2]['p99']):.2f} ms |")
        log = open(os.path.join(work, "simian.log")).read()
        print(f"\nupgrades logged: {log.count('sockets taken over from the previous process')}, "
              f"failed: {log.count('upgrade failed')}")
    finally:
        pid = read_pid(os.path.join(work, "simian.pid"))
        if pid and alive(pid):
            os.kill(pid, signal.SIGTERM)
        for p in procs:
            p.terminate()
        time.sleep(0.5)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
