"""TLS helpers for bench/run.py: certificates, the load generators' OpenSSL settings,
hey's output, probes (negotiated group and cipher, resumption, simian's handshake
counters) and the TLS library version lines. Python 3.11 standard library only; no
dependency on run.py.

The TLS workloads themselves (what runs, how it is measured) are in run.py, next to the
plain ones; see bench/README.md, "TLS workloads".
"""

import os
import re
import socket
import ssl
import subprocess

TLS_WORKLOADS = ["tls-handshake", "tls-handshake-rsa", "tls-resume", "tls-ka-small", "tls-64m", "tls-idle"]
# direct: the origin speaks plain HTTP; haproxy-splice: TLS records cannot be spliced
TLS_TARGETS = ["simian", "haproxy", "nginx"]
SNI = "bench.test"
GROUP = "X25519"
# The one TLS 1.3 suite the OpenSSL-based load generators (wrk, client.py) offer, so every
# proxy encrypts bulk data with the same cipher (HAProxy prefers its own order, AES-256
# first, the others follow the client's). Browsers and Go put AES-128-GCM first too.
CIPHERSUITE = "TLS_AES_128_GCM_SHA256"
STATS_PATH = "/simian-status"

WORKLOAD_TITLES = {
    "tls-handshake": "TLS 1.3 full handshakes, ECDSA P-256 (hey, new connection per GET)",
    "tls-handshake-rsa": "TLS 1.3 full handshakes, RSA-2048 (hey, new connection per GET)",
    "tls-resume": "TLS 1.3 resumed handshakes (wrk `Connection: close`, tickets)",
    "tls-ka-small": "small keep-alive GETs over TLS (wrk -c50)",
    "tls-64m": "64 MiB responses over TLS (4 conns, 1 MiB reads)",
    "tls-idle": "idle keep-alive TLS connections",
}


def make_certs(work):
    """Self-signed ECDSA P-256 and RSA-2048 certificates for bench.test (and 127.0.0.1),
    each as cert.pem + key.pem (simian, nginx) and cert+key concatenated (HAProxy)."""
    out = {}
    for kind, newkey in (("ecdsa", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
                         ("rsa", ["-newkey", "rsa:2048"])):
        d = os.path.join(work, "tls", kind)
        os.makedirs(d, exist_ok=True)
        cert, key, both = (os.path.join(d, n) for n in ("cert.pem", "key.pem", "cert+key.pem"))
        subprocess.run(["openssl", "req", "-x509", *newkey, "-nodes", "-days", "30", "-sha256",
                        "-subj", f"/CN={SNI}", "-addext", f"subjectAltName=DNS:{SNI},IP:127.0.0.1",
                        "-keyout", key, "-out", cert],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(both, "w") as f:
            f.write(open(cert).read() + open(key).read())
        for p in (cert, key, both):
            os.chmod(p, 0o644)  # nginx master reads them as root; nothing secret here
        out[kind] = {"cert": cert, "key": key, "combined": both}
    return out


def write_client_openssl_conf(work):
    """An OPENSSL_CONF for the OpenSSL-based load generators (wrk, client.py, s_client
    probes): Debian's defaults (TLS >= 1.2, SECLEVEL 2) plus Groups = X25519 and one TLS
    1.3 suite. OpenSSL 3 loads it in every SSL_CTX_new, so it applies to programs that
    have no option for groups (wrk) as well."""
    path = os.path.join(work, "tls", "client-openssl.cnf")
    with open(path, "w") as f:
        f.write("openssl_conf = bench_client\n\n[bench_client]\nssl_conf = bench_ssl\n\n"
                "[bench_ssl]\nsystem_default = bench_default\n\n[bench_default]\n"
                "MinProtocol = TLSv1.2\nCipherString = DEFAULT@SECLEVEL=2\n"
                f"Groups = {GROUP}\nCiphersuites = {CIPHERSUITE}\n")
    return path


def client_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tls_get(port, path, timeout=2.0, ctx=None, session=None):
    """One GET over a new TLS connection, the client closing first (no TIME_WAIT on the
    server's port). Returns (status bytes or None, body, the SSLSocket's session,
    session_reused)."""
    ctx = ctx or client_context()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=SNI, session=session) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {SNI}\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
            if m:
                while len(body) < int(m.group(1)):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    body += chunk
            # TLS 1.3 tickets arrive after the handshake: they have been read with the response
            status = data.split(b" ", 2)[1] if data.startswith(b"HTTP/1.") else None
            return status, body, s.session, s.session_reused


def simian_handshakes(port):
    """simian's simian_tls_handshakes_total by result (success = full, resumed, failure),
    summed over listeners; None if unreadable. The read itself is one full handshake."""
    try:
        _, body, _, _ = tls_get(port, STATS_PATH)
    except (OSError, ssl.SSLError):
        return None
    out = {"success": 0, "resumed": 0, "failure": 0}
    for m in re.finditer(rb'^simian_tls_handshakes_total\{[^}]*result="(\w+)"[^}]*\}\s+(\d+)', body, re.M):
        k = m.group(1).decode()
        out[k] = out.get(k, 0) + int(m.group(2))
    return out


def resumption_check(port):
    """Whether a TLS 1.3 ticket from one connection resumes the next (Python ssl client)."""
    try:
        ctx = client_context()
        _, _, sess, _ = tls_get(port, "/small", ctx=ctx)
        _, _, _, reused = tls_get(port, "/small", ctx=ctx, session=sess)
        return "yes" if reused else "NO (full handshake again)"
    except (OSError, ssl.SSLError) as e:
        return f"? ({e})"


def s_client(port, conf=None):
    """What `openssl s_client` negotiates: protocol, suite, signature, key exchange group.
    conf: an OPENSSL_CONF (the load generators' settings), else OpenSSL's defaults."""
    env = dict(os.environ)
    if conf:
        env["OPENSSL_CONF"] = conf
    try:
        r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", SNI, "-brief"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=10, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"? ({e})"
    fields = {}
    for line in r.stdout.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            fields[k.strip()] = v.strip()
    if "Protocol version" not in fields:
        return "handshake failed: " + " ".join(r.stdout.split())[:200]
    return (f"{fields.get('Protocol version')}, {fields.get('Ciphersuite')}, "
            f"{fields.get('Signature type', '?')} signature, key exchange {fields.get('Server Temp Key', '?')}")


def parse_hey(out):
    """hey's summary: successes (2xx), errors (non-2xx + the error distribution), wall
    time, latency percentiles."""
    res = {"ok": 0, "errors": 0, "total_s": None, "p50_us": None, "p99_us": None}
    m = re.search(r"Total:\s+([\d.]+) secs", out)
    if m:
        res["total_s"] = float(m.group(1))
    for pct, key in (("50", "p50_us"), ("99", "p99_us")):
        m = re.search(rf"^\s+{pct}% in ([\d.]+) secs", out, re.M)
        if m:
            res[key] = float(m.group(1)) * 1e6
    detail = []
    for code, n in re.findall(r"^\s+\[(\d{3})\]\s+(\d+) responses", out, re.M):
        if code.startswith("2"):
            res["ok"] += int(n)
        else:
            res["errors"] += int(n)
            detail.append(f"{code} x{n}")
    err = out.split("Error distribution:", 1)
    if len(err) == 2:
        for n, msg in re.findall(r"^\s+\[(\d+)\]\s+(.*)$", err[1], re.M):
            res["errors"] += int(n)
            detail.append(f"{n} x {msg[:150]}")
    if detail:
        res["error_text"] = "; ".join(detail[:3])
    return res


def version_lines(haproxy, nginx, repo):
    """The TLS libraries of every side, as their own -vv / -V / version output says."""
    def run(argv):
        try:
            r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
            return r.stdout
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"? ({e})"
    lines = []
    hv = [l.strip() for l in run([haproxy, "-vv"]).splitlines()
          if re.match(r"\s*(Built with|Running on) OpenSSL version", l)]
    lines.append("HAProxy `-vv`: " + "; ".join(hv or ["? (no OpenSSL line)"]))
    nv = [l.strip() for l in run([nginx, "-V"]).splitlines() if "OpenSSL" in l]
    lines.append("nginx `-V`: " + "; ".join(nv or ["? (no OpenSSL line)"]))
    lines.append("load generators: `openssl version`: " + run(["openssl", "version"]).strip()
                 + f"; Python ssl: {ssl.OPENSSL_VERSION} (wrk and client.py use this libssl3); "
                 + "hey " + (run(["dpkg-query", "-W", "-f", "${Version}", "hey"]).strip() or "?")
                 + " (Go crypto/tls)")
    try:
        lock = open(os.path.join(repo, "Cargo.lock")).read()
        vs = [f"{n} {m.group(1)}" for n in ("rustls", "aws-lc-rs", "aws-lc-sys")
              for m in [re.search(rf'name = "{n}"\nversion = "([^"]+)"', lock)] if m]
        lines.append("simian: " + ", ".join(vs) + " (from Cargo.lock)")
    except OSError:
        pass
    return lines
