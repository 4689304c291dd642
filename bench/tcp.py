#!/usr/bin/env python3
"""Bulk TCP throughput through simian's tcp mode vs HAProxy `mode tcp` and socat.

One 1 GiB stream per run (origin nginx sends a file; the client reads 1 MiB at a
time); proxy pinned on CPU 1, origin and client on CPU 0. Reports MB/s and the
proxy's CPU seconds per GiB (utime+stime of the whole process from /proc), median
of N runs, targets interleaved.

    python3 bench/tcp.py [--runs 3] [--size-mib 1024]
"""
import argparse, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import cpu_seconds, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIMIAN = os.path.join(ROOT, "target/release/simian")








def fetch(port, path):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    n = 0
    while True:
        k = s.recv_into(view)
        if k == 0:
            break
        n += k
    s.close()
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=1024)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="simian-tcp-bench-")
    procs = []

    def start(cmd, cpu, **kw):
        p = subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(work, f"{len(procs)}.err"), "w"), **kw)
        procs.append(p)
        return p

    try:
        big = os.path.join(work, "big.bin")
        with open(big, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(a.size_mib):
                f.write(chunk)
        conf = os.path.join(work, "nginx.conf")
        open(conf, "w").write(f"""daemon off; master_process off; worker_processes 1;
pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{ worker_connections 1024; }}
http {{ access_log off; sendfile on; client_body_temp_path {work}; proxy_temp_path {work};
  fastcgi_temp_path {work}; uwsgi_temp_path {work}; scgi_temp_path {work};
  server {{ listen 127.0.0.1:28001; location / {{ root {work}; }} }} }}
""")
        start(["nginx", "-c", conf], 0)
        hcfg = os.path.join(work, "haproxy.cfg")
        open(hcfg, "w").write("""global
    nbthread 1
    maxconn 1000
    maxpipes 100
defaults
    mode tcp
    timeout connect 3s
    timeout client 60s
    timeout server 60s
frontend plain
    bind 127.0.0.1:28003
    default_backend o
frontend spliced
    bind 127.0.0.1:28004
    option splice-request
    option splice-response
    default_backend o
backend o
    server s 127.0.0.1:28001
""")
        targets = {
            "direct": (None, 28001),
            "simian splice on": (start([SIMIAN, "--threads", "1", "forward", "--splice", "on", "127.0.0.1:28010", "--", "127.0.0.1:28001"], 1), 28010),
            "simian splice off": (start([SIMIAN, "--threads", "1", "forward", "--splice", "off", "127.0.0.1:28011", "--", "127.0.0.1:28001"], 1), 28011),
            "haproxy mode tcp": None,
            "haproxy mode tcp + splice": None,
            "socat": (start(["socat", "TCP-LISTEN:28012,reuseaddr,fork", "TCP:127.0.0.1:28001"], 1), 28012),
        }
        hp = start(["haproxy", "-f", hcfg], 1)
        targets["haproxy mode tcp"] = (hp, 28003)
        targets["haproxy mode tcp + splice"] = (hp, 28004)
        for _, port in targets.values():
            wait_port(port)
        results = {k: [] for k in targets}
        for r in range(a.runs):
            for name, (p, port) in targets.items():
                c0 = cpu_seconds(p.pid, with_children=True) if p else 0
                t0 = time.time()
                n = subprocess.run(["taskset", "-c", "0", sys.executable, __file__, "--fetch", str(port)],
                                   capture_output=True, text=True).stdout.strip()
                dt = time.time() - t0
                c1 = cpu_seconds(p.pid, with_children=True) if p else 0
                got = int(n or 0)
                if got < a.size_mib << 20:
                    print(f"  {name}: short read {got}", file=sys.stderr)
                gib = got / (1 << 30)
                results[name].append((got / dt / 1e6, (c1 - c0) / gib if gib else 0))
                print(f"  [run {r + 1}] {name:28} {got / dt / 1e6:8.0f} MB/s  {(c1 - c0) / gib:5.2f} CPU s/GiB", file=sys.stderr)
        hap = statistics.median(x[0] for x in results["haproxy mode tcp + splice"])
        print(f"\n1 stream of {a.size_mib} MiB, medians of {a.runs} (proxy on CPU 1, origin nginx + client on CPU 0)\n")
        print("| target | MB/s | CPU s/GiB | MB/s vs HAProxy+splice |")
        print("|---|--:|--:|--:|")
        for name, rs in results.items():
            mbs = statistics.median(x[0] for x in rs)
            cpu = statistics.median(x[1] for x in rs)
            print(f"| {name} | {mbs:.0f} | {'-' if name == 'direct' else f'{cpu:.2f}'} | {mbs / hap:.2f} |")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--fetch":
        print(fetch(int(sys.argv[2]), "/big.bin"))
    else:
        main()
