#!/usr/bin/env python3
"""Operations costs (issue 5): the price of the access log and statistics on small
keep-alive GETs, and the time from SIGHUP to a new 10,000-entry config serving.

    python3 bench/ops.py [--runs 3] [--duration 8]

simian pinned on CPU 1 with one thread, wrk and the origin nginx on CPU 0.
"""
import argparse, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import cpu_seconds, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIMIAN = os.path.join(ROOT, "target/release/simian")






def get(port, path):
    s = socket.create_connection(("127.0.0.1", port), 2)
    s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    data = b""
    while True:
        k = s.recv(65536)
        if not k:
            break
        data += k
    s.close()
    return data.split(b"\r\n\r\n", 1)[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="simian-ops-bench-")
    procs = []

    def start(cmd, cpu_, err):
        p = subprocess.Popen(["taskset", "-c", str(cpu_)] + cmd, stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(work, err), "w"))
        procs.append(p)
        return p

    try:
        conf = os.path.join(work, "nginx.conf")
        open(conf, "w").write(f"""daemon off; master_process off; worker_processes 1;
pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 100000000; client_body_temp_path {work}; proxy_temp_path {work};
  fastcgi_temp_path {work}; uwsgi_temp_path {work}; scgi_temp_path {work};
  server {{ listen 127.0.0.1:29001; location / {{ return 200 "A\\n"; }} }}
  server {{ listen 127.0.0.1:29002; location / {{ return 200 "B\\n"; }} }} }}
""")
        start(["nginx", "-c", conf], 0, "nginx.err")
        wait_port(29001)
        base = "[PROXY_ENTRY]\n    Name web\n    Match ^/\n    ServerList 127.0.0.1:29001\n"
        off = os.path.join(work, "off.conf")
        open(off, "w").write("[PROXY_DEFAULTS]\n    Listen 127.0.0.1:29010\n    Threads 1\n" + base)
        on = os.path.join(work, "on.conf")
        open(on, "w").write("[PROXY_DEFAULTS]\n    Listen 127.0.0.1:29011\n    Threads 1\n"
                            f"    StatisticsURL /stats\n    AccessLog {work}/access.log\n" + base)
        s_off = start([SIMIAN, "-c", off], 1, "off.err")
        s_on = start([SIMIAN, "-c", on], 1, "on.err")
        wait_port(29010)
        wait_port(29011)
        res = {"off": [], "on": []}
        for r in range(a.runs):
            for name, p, port in [("off", s_off, 29010), ("on", s_on, 29011)]:
                c0 = cpu_seconds(p.pid)
                out = subprocess.run(["taskset", "-c", "0", "wrk", "-t1", "-c50", f"-d{a.duration}s",
                                      f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
                c1 = cpu_seconds(p.pid)
                rps = float(out.split("Requests/sec:")[1].split()[0])
                reqs = int(out.split(" requests in")[0].split()[-1])
                res[name].append((rps, (c1 - c0) * 1e6 / reqs))
                print(f"  [run {r + 1}] log+stats {name:3}: {rps:8.0f} req/s {(c1 - c0) * 1e6 / reqs:5.1f} us CPU/req", file=sys.stderr)
        med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in res.items()}
        lines = sum(1 for _ in open(f"{work}/access.log"))
        print("\n## Access log + statistics on vs off (small keep-alive GETs, wrk -t1 -c50, "
              f"{a.runs} x {a.duration} s, medians)\n")
        print("| simian | req/s | CPU us/req |\n|---|--:|--:|")
        for k in ("off", "on"):
            print(f"| access log + StatisticsURL {k} | {med[k][0]:.0f} | {med[k][1]:.1f} |")
        print(f"\nreq/s on/off: {med['on'][0] / med['off'][0]:.3f}; CPU per request on/off: "
              f"{med['on'][1] / med['off'][1]:.3f}; access log lines written: {lines}")
        for p in (s_off, s_on):
            p.send_signal(signal.SIGTERM)
            p.wait(10)

        # SIGHUP with 10,000 entries: the last entry routes /probe; the reload moves it
        # from A to B. Time from the signal to the first answer from B.
        def big(server):
            t = ["[PROXY_DEFAULTS]\n    Listen 127.0.0.1:29020\n    Threads 1\n"]
            for i in range(9999):
                t.append(f"[PROXY_ENTRY]\n    Name e{i}\n    Match ^/svc{i}/\n    ServerList 127.0.0.1:29001\n")
            t.append(f"[PROXY_ENTRY]\n    Name probe\n    Match ^/probe\n    ServerList {server}\n")
            return "".join(t)
        path = os.path.join(work, "big.conf")
        open(path, "w").write(big("127.0.0.1:29001"))
        t0 = time.time()
        p = start([SIMIAN, "-c", path], 1, "big.err")
        wait_port(29020)
        startup = time.time() - t0
        assert get(29020, "/probe") == b"A\n"
        times = []
        for r in range(a.runs):
            target, other = (b"B\n", "127.0.0.1:29002") if r % 2 == 0 else (b"A\n", "127.0.0.1:29001")
            open(path, "w").write(big(other))
            t0 = time.time()
            p.send_signal(signal.SIGHUP)
            while get(29020, "/probe") != target:
                pass
            times.append(time.time() - t0)
            print(f"  [run {r + 1}] SIGHUP -> new config serving: {times[-1] * 1000:.0f} ms", file=sys.stderr)
        print(f"\n## SIGHUP with 10,000 entries\n\nstart-up to listening: {startup * 1000:.0f} ms; "
              f"SIGHUP to the new config serving: median {statistics.median(times) * 1000:.0f} ms "
              f"(runs: {', '.join(f'{t * 1000:.0f}' for t in times)} ms)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
