#!/usr/bin/env python3
"""What request rules cost a request (issue 14's measure): small keep-alive GETs
(wrk, 50 connections) through simian pinned to one core, once through a plain entry
and once through an entry with Host, two RequestHeader rules, one ResponseHeader
rule and a RateLimit that never triggers; runs interleaved, medians reported. CPU
is simian's own (utime + stime from /proc) per request.

    python3 bench/rules.py [--simian target/release/simian] [--runs 5] [--duration 8]
"""
import argparse, os, socket, statistics, subprocess, sys, tempfile, time

RULES = ("Host 127.0.0.1 localhost\n"
         "RequestHeader set X-Real-IP %{client}\n"
         "RequestHeader set X-Route %{route}\n"
         "ResponseHeader set Strict-Transport-Security max-age=63072000\n"
         "RateLimit 10000000/s burst 10000000\n")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(port):
    end = time.time() + 20
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"port {port} never opened")


def cpu_seconds(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def run(simian, work, origin, extra, duration, cpu, load_cpu):
    port = free_port()
    conf = os.path.join(work, f"s{port}.conf")
    open(conf, "w").write(
        f"[PROXY_DEFAULTS]\nListen 127.0.0.1:{port}\nThreads 1\nAccessLog off\nIdleTimeout 600s\n"
        f"[PROXY_ENTRY]\nName origin\nMatch ^/\nServerList 127.0.0.1:{origin}\n{extra}")
    p = subprocess.Popen(["taskset", "-c", cpu, simian, "-c", conf],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        subprocess.run(["taskset", "-c", load_cpu, "wrk", "-t1", "-c50", "-d1s",
                        f"http://127.0.0.1:{port}/small"], capture_output=True)
        c0 = cpu_seconds(p.pid)
        out = subprocess.run(["taskset", "-c", load_cpu, "wrk", "-t1", "-c50", f"-d{duration}s",
                              f"http://127.0.0.1:{port}/small"], capture_output=True, text=True).stdout
        c1 = cpu_seconds(p.pid)
    finally:
        p.terminate(); p.wait()
    reqs = next(int(l.split()[0]) for l in out.splitlines() if "requests in" in l)
    if " Non-2xx" in out or "Socket errors" in out:
        sys.exit(f"errors in the run:\n{out}")
    return reqs / duration, (c1 - c0) / reqs * 1e6


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--simian", default="target/release/simian")
    a.add_argument("--runs", type=int, default=5)
    a.add_argument("--duration", type=int, default=8)
    a.add_argument("--cpu", default="0")
    a.add_argument("--load-cpu", default="1")
    args = a.parse_args()
    work = tempfile.mkdtemp(prefix="simian-rules-")
    origin = free_port()
    open(os.path.join(work, "nginx.conf"), "w").write(f"""
worker_processes 1; daemon off; pid {work}/nginx.pid; error_log {work}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 600s;
  client_body_temp_path {work}/b; proxy_temp_path {work}/p; fastcgi_temp_path {work}/f;
  uwsgi_temp_path {work}/u; scgi_temp_path {work}/s;
  server {{ listen 127.0.0.1:{origin}; location = /small {{ default_type text/plain;
    return 200 "simian bench: small fixed response, 64 bytes of body..........\\n"; }} }} }}
""")
    ng = subprocess.Popen(["taskset", "-c", args.load_cpu, "nginx", "-c", f"{work}/nginx.conf"],
                          stderr=subprocess.DEVNULL)
    try:
        wait_port(origin)
        res = {"plain": [], "rules": []}
        for i in range(args.runs):
            for name, extra in (("plain", ""), ("rules", RULES)):
                rps, cpu = run(args.simian, work, origin, extra, args.duration, args.cpu, args.load_cpu)
                res[name].append((rps, cpu))
                print(f"run {i + 1} {name}: {rps:,.0f} req/s, {cpu:.2f} µs CPU per request", flush=True)
    finally:
        ng.terminate()
    med = {k: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v))
           for k, v in res.items()}
    print(f"\nmedians of {args.runs}: plain {med['plain'][0]:,.0f} req/s at {med['plain'][1]:.2f} µs; "
          f"rules {med['rules'][0]:,.0f} req/s at {med['rules'][1]:.2f} µs")
    print(f"rules / plain: CPU per request {med['rules'][1] / med['plain'][1]:.3f}x, "
          f"req/s {med['rules'][0] / med['plain'][0]:.3f}x")


main()
