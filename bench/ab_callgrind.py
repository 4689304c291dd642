#!/usr/bin/env python3
"""Instructions per request of two simian binaries, counted by callgrind (repeatable
on a noisy machine, unlike time): small keep-alive GETs through one worker (epoll
driver, as valgrind runs io_uring poorly) to an nginx origin. Per-request cost is
(Ir at N2 requests - Ir at N1) / (N2 - N1), so start-up and shutdown cancel out.

    python3 bench/ab_callgrind.py OLD_BINARY NEW_BINARY [--tls] [--rules]

--tls runs the same requests over TLS (keep-alive; handshakes cancel out too).
--rules gives NEW's entry the request rules of issue 14's measure (Host, two
RequestHeader rules, one ResponseHeader rule, a RateLimit that never triggers);
with the same binary twice it prices the rules alone.
"""
import os, re, signal, socket, ssl, subprocess, sys, tempfile, time

N1, N2, CONNS = 2000, 6000, 4

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def wait_port(port, limit=60):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"port {port} never opened")

def client(port, n, tls):
    ctx = None
    if tls:
        ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    conns = []
    for _ in range(CONNS):
        s = socket.create_connection(("127.0.0.1", port))
        if ctx: s = ctx.wrap_socket(s, server_hostname="bench.test")
        conns.append(s)
    req = b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n"
    for i in range(n):
        s = conns[i % CONNS]
        s.sendall(req)
        got = b""
        while not got.endswith(b"..........\n"):
            d = s.recv(65536)
            if not d: sys.exit("closed")
            got += d
    for s in conns: s.close()

RULES = ("Host bench\nRequestHeader set X-Real-IP %{client}\n"
         "RequestHeader set X-Route %{route}\n"
         "ResponseHeader set Strict-Transport-Security max-age=63072000\n"
         "RateLimit 1000000/s burst 1000000\n")

def run(binary, work, n, tls, extra=""):
    port = free_port()
    conf = open(os.path.join(work, "origin.port")).read().strip()
    tls_lines = f"TLSCertificate {work}/cert.pem {work}/key.pem\n" if tls else ""
    cfg = os.path.join(work, f"s{port}.conf")
    open(cfg, "w").write(
        f"[PROXY_DEFAULTS]\nListen 127.0.0.1:{port}{' tls' if tls else ''}\n{tls_lines}Threads 1\n"
        f"AccessLog off\n[PROXY_ENTRY]\nMatch ^/\nServerList 127.0.0.1:{conf}\n{extra}")
    out = os.path.join(work, f"cg.{port}")
    env = dict(os.environ, MONOIO_FORCE_LEGACY_DRIVER="1")
    p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                          binary, "-c", cfg], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    client(port, n, tls)
    p.send_signal(signal.SIGTERM); p.wait()
    for line in open(out):
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1])
    sys.exit("no callgrind totals")

def main():
    old, new = sys.argv[1], sys.argv[2]
    tls = "--tls" in sys.argv
    work = tempfile.mkdtemp(prefix="simian-ab-")
    oport = free_port()
    open(os.path.join(work, "origin.port"), "w").write(str(oport))
    open(os.path.join(work, "nginx.conf"), "w").write(f"""
worker_processes 1; daemon off; pid {work}/nginx.pid; error_log {work}/nginx.err warn;
events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 600s;
  client_body_temp_path {work}/b; proxy_temp_path {work}/p; fastcgi_temp_path {work}/f;
  uwsgi_temp_path {work}/u; scgi_temp_path {work}/s;
  server {{ listen 127.0.0.1:{oport}; location = /small {{ default_type text/plain;
    return 200 "simian bench: small fixed response, 64 bytes of body..........\\n"; }} }} }}
""")
    if tls:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", f"{work}/key.pem", "-out", f"{work}/cert.pem", "-days", "30",
                        "-subj", "/CN=bench.test", "-addext", "subjectAltName=DNS:bench.test"],
                       check=True, capture_output=True)
    ng = subprocess.Popen(["nginx", "-c", f"{work}/nginx.conf"], stderr=subprocess.DEVNULL)
    try:
        wait_port(oport)
        rules = RULES if "--rules" in sys.argv else ""
        for name, b, extra in (("old", old, ""), ("new", new, rules)):
            a = run(b, work, N1, tls, extra); z = run(b, work, N2, tls, extra)
            print(f"{name}: {(z - a) / (N2 - N1):,.0f} instructions per request ({b})")
    finally:
        ng.terminate()

main()
