#!/usr/bin/env python3
"""Soak test of simian (issue 13 item 4; not run in CI). See bench/README.md, "Soak".

    python3 bench/soak.py                      # 30 minutes
    python3 bench/soak.py --minutes 0.5        # smoke test
    python3 bench/soak.py --minutes 120 --json soak.json --pin 1

Starts three backends (this script re-executed with `--backend PORT`: a threaded
HTTP/1.1 keep-alive server that serves `GET /size/N`, echoes `POST /echo` bodies and
echoes bytes after a WebSocket `101`; every answer carries `X-Backend: PORT` and the
request's `X-Req`), and simian in front of them with a configuration written to a
temporary directory (one http listener, one entry over the three backends,
`WeightedRoundRobin`, health checks, a `StatisticsURL`). Then, for `--minutes`, client
processes send mixed traffic:

    get-small     keep-alive GETs, 0 to 100 KiB bodies, 1 to 30 per connection
    get-1m        keep-alive GETs of 1 MiB bodies, 1 to 4 per connection
    get-close     GETs with `Connection: close` (the answer must end with a close)
    post-cl       POSTs with a Content-Length body (up to 256 KiB), echoed back
    post-chunked  POSTs with a chunked body (up to ~300 KiB), echoed back
    ws            WebSocket upgrades, then 1 to 8 echo round trips, then a half-close
    bad           malformed requests, each on its own connection: they must get a 4xx
                  and a close (garbage, oversized heads, bad framing...)
    stats         the statistics URL, read by the sampler every 10 s
    flush         the GETs sent before the start and end fd counts (see below)

while it sends SIGHUP to simian every 10 s (alternating two valid configurations that
differ in one weight) and SIGKILLs one backend every 60 s (in turn), restarting it
`--down` seconds later on the same port. Every answer is checked: status, `X-Req`
(the answer is this request's), the body byte for byte, the close where one is due.

A failure is blamed on the killed backend when it is the kind a kill causes (a 502, a
reset, a close, a cut body) and either the answer's `X-Backend` is the killed port and
the request started before or within `--kill-window` seconds (default 1) of the kill and
failed after it, or it has no `X-Backend` and failed within that window after the kill.
Every other failure counts against simian.

simian's RSS, open fds and CPU time are sampled every 10 s, with its statistics (JSON):
the reload counters and the first backend's weight, which must follow the SIGHUPs. The
report gives the requests by kind, the failures (blamed on a killed backend or not),
the bad requests and what they got, the reloads, RSS at minute 1 (half-way through a
shorter run) and at the end, the fds at the start and the end, and a summary of
simian's log. The start and end fd counts are taken with no traffic: after a 10 s
warm-up and after the soak, the script waits `--settle` seconds, then sends 40 GETs one
at a time on new connections, which makes every worker close the pooled backend
connections it no longer reuses (older than 4 s), and counts. It exits 1 when a target
is missed:

    failures not due to a killed backend    0
    bad requests not answered 4xx + close   0
    RSS growth after minute 1               < 5 %  (--rss-growth)
    fds at the end, pipes aside             <= at the start + 2 (--fd-slack; pipes are a
                                            pool of at most 64 per thread)
    simian alive at the end, every reload accepted and in effect, no panic in its log

Everything runs in a temporary directory (removed after a pass, kept after a failure or
with --keep-work), with a private copy of the simian binary, so a `cargo build` during
the soak cannot swap it.

Python 3 standard library only (taskset for --pin).
"""

import argparse
import base64
import hashlib
import json
import multiprocessing
import os
import random
import re
import resource
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20
PATTERN_SEED = 13
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
STATS_PATH = "/simian-status"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def now():
    # CLOCK_MONOTONIC is system-wide on Linux: comparable between the processes.
    return time.monotonic()


def pattern(n):
    """The bytes every backend serves for GET /size/N: the first N of this block."""
    return random.Random(PATTERN_SEED).randbytes(n)


# ============================================================================ backend


def backend_main(port):
    """`soak.py --backend PORT`: the origin. One thread per connection."""
    block = pattern(4 * MIB)
    tag = str(port).encode()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            sock = self.request
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rf = sock.makefile("rb", buffering=65536)
            try:
                while self.one(sock, rf):
                    pass
            except (OSError, ValueError, EOFError):
                pass  # malformed request, reset, ... : just close
            finally:
                rf.close()

        def one(self, sock, rf):
            line = rf.readline(65537)
            if not line:
                return False
            method, target, version = line.split()
            headers = {}
            while True:
                h = rf.readline(65537)
                if not h:
                    return False
                if h in (b"\r\n", b"\n"):
                    break
                name, _, value = h.partition(b":")
                headers[name.strip().lower()] = value.strip()
            body = b""
            if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                body = read_chunked(rf)
            elif b"content-length" in headers:
                n = int(headers[b"content-length"])
                body = rf.read(n)
                if len(body) < n:
                    return False
            close = headers.get(b"connection", b"").lower() == b"close" or version == b"HTTP/1.0"
            common = b"X-Backend: " + tag + b"\r\nX-Req: " + headers.get(b"x-req", b"-") + b"\r\n"
            if close:
                common += b"Connection: close\r\n"
            if method == b"GET" and target.startswith(b"/size/"):
                n = int(target[6:])
                head = b"HTTP/1.1 200 OK\r\n" + common + b"Content-Length: %d\r\n\r\n" % n
                if n <= 65536:
                    sock.sendall(head + block[:n])
                else:
                    sock.sendall(head)
                    sock.sendall(memoryview(block)[:n])
            elif method == b"POST" and target.startswith(b"/echo"):
                sock.sendall(b"HTTP/1.1 200 OK\r\n" + common + b"Content-Length: %d\r\n\r\n" % len(body))
                sock.sendall(body)
            elif (method == b"GET" and target.startswith(b"/ws")
                  and headers.get(b"upgrade", b"").lower() == b"websocket"):
                accept = base64.b64encode(hashlib.sha1(headers.get(b"sec-websocket-key", b"") + WS_GUID).digest())
                sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Accept: " + accept + b"\r\n" + common + b"\r\n")
                while True:  # echo until EOF (bytes already buffered in rf come first)
                    data = rf.read1(65536)
                    if not data:
                        break
                    sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                return False
            elif target == b"/health":
                sock.sendall(b"HTTP/1.1 200 OK\r\n" + common + b"Content-Length: 3\r\n\r\nok\n")
            else:
                sock.sendall(b"HTTP/1.1 404 Not Found\r\n" + common + b"Content-Length: 10\r\n\r\nnot found\n")
            return not close

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True  # restarted on the same port, TIME_WAIT or not
        daemon_threads = True
        request_queue_size = 1024

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    with Server(("127.0.0.1", port), Handler) as srv:
        srv.serve_forever(poll_interval=0.5)


def read_chunked(rf):
    out = bytearray()
    while True:
        line = rf.readline(1024)
        if not line.endswith(b"\n"):
            raise ValueError("chunk size line")
        n = int(line.split(b";")[0].strip(), 16)
        if n == 0:
            while True:  # trailers
                t = rf.readline(65537)
                if t in (b"\r\n", b"\n"):
                    return bytes(out)
                if not t:
                    raise EOFError
        data = rf.read(n)
        if len(data) < n:
            raise EOFError
        out += data
        if rf.read(2) != b"\r\n":
            raise ValueError("chunk end")


# ============================================================================ client


class Fail(Exception):
    """A request that did not get the right answer. what: status, eof, reset, timeout,
    short (body cut), mismatch (wrong body or X-Req), protocol, no-close, connect."""

    def __init__(self, what, detail="", status=None, tag=None):
        super().__init__(f"{what}: {detail}")
        self.what, self.detail, self.status, self.tag = what, detail, status, tag


class Conn:
    """A client connection to simian with a read buffer."""

    def __init__(self, addr, timeout):
        try:
            self.sock = socket.create_connection(addr, timeout=timeout)
        except OSError as e:
            raise Fail("connect", str(e))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.sendall(data)

    def fill(self, what="eof"):
        d = self.sock.recv(262144)
        if not d:
            raise Fail(what, "connection closed")
        self.buf += d

    def read_head(self):
        """(status, {lowercase name: value}) of the next response head."""
        start = 0
        while True:
            i = self.buf.find(b"\r\n\r\n", start)
            if i >= 0:
                break
            if len(self.buf) > 131072:
                raise Fail("protocol", "response head over 128 KiB")
            start = max(0, len(self.buf) - 3)
            self.fill("eof" if not self.buf else "short")
        head = bytes(self.buf[:i])
        del self.buf[:i + 4]
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise Fail("protocol", f"status line {lines[0][:80]!r}")
        headers = {}
        for h in lines[1:]:
            name, _, value = h.partition(b":")
            name = name.strip().lower().decode("latin-1")
            value = value.strip().decode("latin-1")
            headers[name] = headers[name] + "," + value if name in headers else value
        return int(parts[1]), headers

    def read_exact(self, n):
        while len(self.buf) < n:
            self.fill("short")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            if len(self.buf) > 4096:
                raise Fail("protocol", "chunk line too long")
            self.fill("short")

    def read_body(self, status, headers, head_request=False):
        if head_request or status < 200 or status in (204, 304):
            return b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            out = bytearray()
            while True:
                line = self.read_line()
                try:
                    n = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise Fail("protocol", f"chunk size {line[:40]!r}")
                if n == 0:
                    while self.read_line():
                        pass
                    return bytes(out)
                out += self.read_exact(n)
                if self.read_exact(2) != b"\r\n":
                    raise Fail("protocol", "chunk not followed by CRLF")
        if "content-length" in headers:
            return self.read_exact(int(headers["content-length"]))
        out = bytearray(self.buf)  # delimited by the close
        self.buf.clear()
        while True:
            d = self.sock.recv(262144)
            if not d:
                return bytes(out)
            out += d

    def expect_close(self, timeout=5.0):
        """True when the peer closes (FIN or reset) with nothing more to read."""
        if self.buf:
            return False
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False


def classify_os_error(e):
    if isinstance(e, Fail):
        return e
    if isinstance(e, socket.timeout):
        return Fail("timeout", str(e) or "timed out")
    if isinstance(e, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return Fail("reset", str(e))
    return Fail("reset" if isinstance(e, OSError) else "protocol", f"{type(e).__name__}: {e}")


# The malformed requests: (name, bytes, expected status). Each is sent alone on a new
# connection, except "after-valid" (a good GET first, then garbage on the same one).
def bad_requests():
    big = b"a" * 70000
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    return [
        ("garbage", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 not http at all\r\n\r\n", 400),
        ("bad-request-line", b"GET /size/1 HTTP/1.1 extra\r\nHost: soak\r\n\r\n", 400),
        ("space-before-colon", b"GET /size/1 HTTP/1.1\r\nHost : soak\r\n\r\n", 400),
        ("obs-fold", b"GET /size/1 HTTP/1.1\r\nHost: soak\r\nX-A: b\r\n c\r\n\r\n", 400),
        ("oversized-head", b"GET /size/1 HTTP/1.1\r\nHost: soak\r\nX-Big: " + big + b"\r\n\r\n", 431),
        ("too-many-headers", b"GET /size/1 HTTP/1.1\r\nHost: soak\r\n" + many + b"\r\n", 431),
        ("cl-and-te", b"POST /echo HTTP/1.1\r\nHost: soak\r\nContent-Length: 5\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("two-cl", b"POST /echo HTTP/1.1\r\nHost: soak\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
        ("bad-cl", b"POST /echo HTTP/1.1\r\nHost: soak\r\nContent-Length: 5x\r\n\r\nhello", 400),
        ("bad-chunk-size", b"POST /echo HTTP/1.1\r\nHost: soak\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"zz\r\nhello\r\n0\r\n\r\n", 400),
        ("after-valid", b"\x00\x01garbage after a good request\r\n\r\n", 400),
    ]


class Worker:
    KINDS = ["get-small", "get-1m", "get-close", "post-cl", "post-chunked", "ws", "bad"]
    # how often each kind of operation is picked (an operation is one connection:
    # several requests for the keep-alive kinds, one session for ws)
    WEIGHTS = [30, 6, 20, 12, 12, 10, 10]

    def __init__(self, idx, port, deadline, seed, timeout):
        self.idx, self.addr, self.deadline, self.timeout = idx, ("127.0.0.1", port), deadline, timeout
        self.rng = random.Random(seed * 1000 + idx)
        self.block = pattern(4 * MIB)
        self.seq = 0
        self.counts = {k: {"requests": 0, "ok": 0, "failed": 0} for k in self.KINDS}
        self.failures = []  # (kind, t0, t1, what, status, tag, detail)
        self.bad = {}  # name: {status: count}; "not-closed", "error: ..."
        self.ws_rounds = 0
        self.bytes_in = 0

    def rid(self):
        self.seq += 1
        return f"{self.idx}-{self.seq}"

    def done(self, kind, t0, fail=None):
        c = self.counts[kind]
        c["requests"] += 1
        if fail is None:
            c["ok"] += 1
        else:
            c["failed"] += 1
            if len(self.failures) < 100000:
                self.failures.append((kind, t0, now(), fail.what, fail.status, fail.tag, fail.detail[:200]))

    def check(self, status, headers, rid, want_status=200):
        tag = headers.get("x-backend")
        tag = int(tag) if tag and tag.isdigit() else None
        if status != want_status:
            raise Fail("status", f"{status}", status=status, tag=tag)
        if headers.get("x-req") != rid:
            raise Fail("mismatch", f"X-Req {headers.get('x-req')!r} for request {rid}", status, tag)
        return tag

    def run(self, stop):
        ops = [self.op_get_small, self.op_get_1m, self.op_get_close, self.op_post_cl,
               self.op_post_chunked, self.op_ws, self.op_bad]
        while not stop.is_set() and now() < self.deadline:
            self.rng.choices(ops, self.WEIGHTS)[0]()

    # -- keep-alive GETs

    def keepalive(self, kind, sizes):
        conn = None
        try:
            for n in sizes:
                if now() >= self.deadline:
                    break
                t0 = now()
                try:
                    if conn is None:
                        conn = Conn(self.addr, self.timeout)
                    rid = self.rid()
                    conn.send(f"GET /size/{n} HTTP/1.1\r\nHost: soak\r\nX-Req: {rid}\r\n\r\n".encode())
                    status, headers = conn.read_head()
                    tag = None
                    try:
                        tag = self.check(status, headers, rid)
                        body = conn.read_body(status, headers)
                    except Fail as f:
                        f.tag = f.tag or tag
                        raise
                    except Exception as e:
                        f = classify_os_error(e)
                        f.tag = tag
                        raise f
                    if len(body) != n:
                        raise Fail("short", f"{len(body)} of {n} bytes", status, tag)
                    if body != self.block[:n]:
                        raise Fail("mismatch", f"body of /size/{n} differs", status, tag)
                    self.bytes_in += n
                    self.done(kind, t0)
                    if headers.get("connection", "").lower() == "close":
                        conn.close()
                        conn = None
                except Exception as e:
                    self.done(kind, t0, classify_os_error(e))
                    if conn:
                        conn.close()
                    conn = None
        finally:
            if conn:
                conn.close()

    def op_get_small(self):
        r = self.rng
        sizes = [r.choice((r.randrange(0, 2048), r.randrange(0, 2048), r.randrange(2048, 65536),
                           r.randrange(65536, 102400))) for _ in range(r.randrange(1, 31))]
        self.keepalive("get-small", sizes)

    def op_get_1m(self):
        self.keepalive("get-1m", [MIB] * self.rng.randrange(1, 5))

    # -- Connection: close

    def op_get_close(self):
        t0 = now()
        n = self.rng.choice((0, 100, 1000, 20000, 200000))
        conn = None
        tag = None
        try:
            conn = Conn(self.addr, self.timeout)
            rid = self.rid()
            conn.send(f"GET /size/{n} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\nX-Req: {rid}\r\n\r\n".encode())
            status, headers = conn.read_head()
            tag = self.check(status, headers, rid)
            body = conn.read_body(status, headers)
            if body != self.block[:n]:
                raise Fail("short" if len(body) < n else "mismatch", f"{len(body)} of {n} bytes", status, tag)
            if not conn.expect_close():
                raise Fail("no-close", "no close after a Connection: close answer", status, tag)
            self.done("get-close", t0)
        except Exception as e:
            f = classify_os_error(e)
            f.tag = f.tag or tag
            self.done("get-close", t0, f)
        finally:
            if conn:
                conn.close()

    # -- POSTs

    def post(self, kind, chunked):
        r = self.rng
        conn = None
        try:
            for _ in range(r.randrange(1, 6)):
                if now() >= self.deadline:
                    break
                t0 = now()
                tag = None
                try:
                    if conn is None:
                        conn = Conn(self.addr, self.timeout)
                    rid = self.rid()
                    if chunked:
                        sizes = [r.choice((r.randrange(1, 4096), r.randrange(1, 40000), r.randrange(65536, 140000)))
                                 for _ in range(r.randrange(1, 6))]
                    else:
                        sizes = [r.choice((0, r.randrange(1, 4096), r.randrange(4096, 65536),
                                           r.randrange(65536, 262144)))]
                    off = r.randrange(0, MIB)
                    body = self.block[off:off + sum(sizes)]
                    if chunked:
                        out, pos = [], 0
                        for s in sizes:
                            out.append(b"%x\r\n" % s + body[pos:pos + s] + b"\r\n")
                            pos += s
                        conn.send(f"POST /echo HTTP/1.1\r\nHost: soak\r\nTransfer-Encoding: chunked\r\n"
                                  f"X-Req: {rid}\r\n\r\n".encode())
                        for piece in out:
                            conn.send(piece)
                        conn.send(b"0\r\n\r\n")
                    else:
                        conn.send(f"POST /echo HTTP/1.1\r\nHost: soak\r\nContent-Length: {len(body)}\r\n"
                                  f"X-Req: {rid}\r\n\r\n".encode() + body[:1000])
                        conn.send(body[1000:])
                    status, headers = conn.read_head()
                    tag = self.check(status, headers, rid)
                    got = conn.read_body(status, headers)
                    if got != body:
                        differs = " (differs)" if len(got) == len(body) else ""
                        raise Fail("short" if len(got) < len(body) else "mismatch",
                                   f"echo of {len(body)} bytes: got {len(got)}{differs}", status, tag)
                    self.done(kind, t0)
                    if headers.get("connection", "").lower() == "close":
                        conn.close()
                        conn = None
                except Exception as e:
                    f = classify_os_error(e)
                    f.tag = f.tag or tag
                    self.done(kind, t0, f)
                    if conn:
                        conn.close()
                    conn = None
        finally:
            if conn:
                conn.close()

    def op_post_cl(self):
        self.post("post-cl", False)

    def op_post_chunked(self):
        self.post("post-chunked", True)

    # -- WebSocket

    def op_ws(self):
        r = self.rng
        t0 = now()
        conn = None
        tag = None
        try:
            conn = Conn(self.addr, self.timeout)
            rid = self.rid()
            key = base64.b64encode(r.randbytes(16))
            conn.send(b"GET /ws HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key +
                      f"\r\nX-Req: {rid}\r\n\r\n".encode())
            status, headers = conn.read_head()
            tag = self.check(status, headers, rid, 101)
            want = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
            if headers.get("sec-websocket-accept") != want or headers.get("upgrade", "").lower() != "websocket":
                raise Fail("protocol", f"101 without the right Upgrade/Sec-WebSocket-Accept: {headers}", status, tag)
            for _ in range(r.randrange(1, 9)):
                n = r.choice((r.randrange(1, 1024), r.randrange(1024, 32768), r.randrange(65536, 131072)))
                off = r.randrange(0, MIB)
                msg = self.block[off:off + n]
                conn.send(msg)
                if conn.read_exact(n) != msg:
                    raise Fail("mismatch", f"echo of {n} bytes differs", status, tag)
                self.ws_rounds += 1
            conn.sock.shutdown(socket.SHUT_WR)  # half-close: must reach the backend, whose close comes back
            if not conn.expect_close():
                raise Fail("no-close", "tunnel not closed after the half-close", status, tag)
            self.done("ws", t0)
        except Exception as e:
            f = classify_os_error(e)
            f.tag = f.tag or tag
            self.done("ws", t0, f)
        finally:
            if conn:
                conn.close()

    # -- bad requests

    def op_bad(self):
        name, data, want = self.rng.choice(bad_requests())
        t0 = now()
        conn = None
        key = None
        seen = self.bad.setdefault(name, {"expected": want})
        try:
            conn = Conn(self.addr, self.timeout)
            if name == "after-valid":
                rid = self.rid()
                conn.send(f"GET /size/10 HTTP/1.1\r\nHost: soak\r\nX-Req: {rid}\r\n\r\n".encode())
                status, headers = conn.read_head()
                self.check(status, headers, rid)
                if conn.read_body(status, headers) != self.block[:10]:
                    raise Fail("mismatch", "body of the good request before the garbage")
            try:
                conn.send(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # simian may answer and close before the whole oversized head is sent
            status, headers = conn.read_head()
            conn.read_body(status, headers)
            key = str(status)
            if not 400 <= status < 500:
                raise Fail("status", f"{name}: {status}", status)
            if not conn.expect_close():
                key += " not closed"
                raise Fail("no-close", f"{name}: {status} but the connection stayed open", status)
            self.done("bad", t0)
        except Exception as e:
            f = classify_os_error(e)
            if key is None:
                key = f"{f.what}: {f.detail[:60]}"
            if not f.detail.startswith(name):
                f.detail = f"{name}: {f.detail}"
            self.done("bad", t0, f)
        finally:
            seen[key] = seen.get(key, 0) + 1
            if conn:
                conn.close()

    def result(self):
        return {"counts": self.counts, "failures": self.failures, "bad": self.bad,
                "ws_rounds": self.ws_rounds, "bytes_in": self.bytes_in}


def client_process(idx, port, deadline, seed, timeout, stop, queue):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    w = Worker(idx, port, deadline, seed, timeout)
    try:
        w.run(stop)
    finally:
        queue.put(w.result())


# ============================================================================ harness


def proc_cpu(pid):
    """utime + stime of the whole process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        x = f.read()
    fields = x[x.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def tcp_sockets():
    """{inode: (local port, remote port, state)} of the machine's TCP sockets."""
    out = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    x = line.split()
                    out[x[9]] = (int(x[1].rsplit(":", 1)[1], 16), int(x[2].rsplit(":", 1)[1], 16), x[3])
        except OSError:
            pass
    return out


def fd_breakdown(pid, port, backend_ports):
    """{"socket": n, "pipe": n, ..., "total": n}, and the sockets split by what they are:
    "socket listen", "socket client" (accepted on simian's port), "socket backend"
    (to a backend: pooled, in use, or a health check), "socket other"."""
    out = {"total": 0}
    tcp = tcp_sockets()
    d = f"/proc/{pid}/fd"
    for fd in os.listdir(d):
        try:
            t = os.readlink(f"{d}/{fd}")
        except OSError:
            continue
        kind = t.split(":")[0] if t.startswith(("socket:", "pipe:")) else "file" if t.startswith("/") else t
        out[kind] = out.get(kind, 0) + 1
        out["total"] += 1
        if kind == "socket":
            lp, rp, st = tcp.get(t[8:-1], (None, None, None))
            sub = ("socket listen" if st == "0A" else "socket client" if lp == port
                   else "socket backend" if rp in backend_ports else "socket other")
            out[sub] = out.get(sub, 0) + 1
    return out


def http_get(port, path, timeout=5.0, headers=""):
    """(status, body) of one GET, on a connection we close (no TIME_WAIT on simian's port)."""
    c = Conn(("127.0.0.1", port), timeout)
    try:
        c.send(f"GET {path} HTTP/1.1\r\nHost: soak\r\n{headers}\r\n".encode())
        status, h = c.read_head()
        return status, c.read_body(status, h)
    finally:
        c.close()


def port_free(port, strict):
    s = socket.socket()
    try:
        if not strict:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def pick_ports(base):
    """simian's port (free of TIME_WAIT too: simian binds without SO_REUSEADDR), then 3
    backend ports (SO_REUSEADDR), all above base."""
    p, out = base, []
    while len(out) < 4:
        if p > base + 500:
            sys.exit(f"no free ports in {base}..{base + 500}")
        if port_free(p, strict=not out):
            out.append(p)
        p += 1
    return out[0], out[1:]


def prom_value(text, name, labels=""):
    """Sum of the samples of metric `name` whose label set contains `labels`."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else None


CONFIG = """\
# simian under soak (bench/soak.py), variant {variant}
[PROXY_DEFAULTS]
Listen 127.0.0.1:{port}
StatisticsURL {stats}
{threads}AttemptsCount 3
OfflineTimeOut 3s
ConnectTimeout 2s
BackendTimeout 30s
IdleTimeout 60s
HeadTimeout 10s
ShutdownTimeout 5s
AccessLog {access}

[PROXY_ENTRY]
Name soak
Match ^/
LoadBalancer WeightedRoundRobin
ServerList 127.0.0.1:{b0} weight={w} 127.0.0.1:{b1} 127.0.0.1:{b2}
HealthCheck /health
HealthCheckInterval 2s
"""


class Soak:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="simian-soak-")
        self.port, self.bports = pick_ports(args.port_base)
        self.backends = [None] * 3
        self.simian = None
        self.clients = []
        self.events = []  # (t, what, detail) relative to the soak's start
        self.kills = []  # (monotonic t, port)
        self.samples = []
        self.probe_counts = {k: {"requests": 0, "ok": 0, "failed": 0} for k in ("stats", "flush")}
        self.probe_failures = []
        self.block = pattern(MIB)
        self.t0 = None
        self.weights = (1, 2)  # weight= of the first backend in variants A and B
        self.reloads = 0
        self.last_reload = None

    # -- processes

    def start_backend(self, i):
        logf = open(os.path.join(self.work, f"backend-{self.bports[i]}.log"), "ab")
        argv = [sys.executable, os.path.abspath(__file__), "--backend", str(self.bports[i])]
        self.backends[i] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        logf.close()
        deadline = now() + 15
        while now() < deadline:
            if self.backends[i].poll() is not None:
                raise RuntimeError(f"backend {self.bports[i]} exited with {self.backends[i].returncode}")
            try:
                st, _ = http_get(self.bports[i], "/health", 1.0)
                if st == 200:
                    return
            except (Fail, OSError):
                pass
            time.sleep(0.02)
        raise RuntimeError(f"backend {self.bports[i]} not ready")

    def write_configs(self):
        self.confs = []
        for variant, w in zip("AB", self.weights):
            text = CONFIG.format(variant=variant, port=self.port, stats=STATS_PATH, w=w,
                                 b0=self.bports[0], b1=self.bports[1], b2=self.bports[2],
                                 threads=f"Threads {self.args.threads}\n" if self.args.threads else "",
                                 access=os.path.join(self.work, "access.log") if self.args.access_log else "off")
            path = os.path.join(self.work, f"simian-{variant}.conf")
            with open(path, "w") as f:
                f.write(text)
            self.confs.append(path)
        # simian reads one path: the reloads copy variant A or B over it
        self.conf = os.path.join(self.work, "simian.conf")
        shutil.copyfile(self.confs[0], self.conf)
        for c in self.confs:
            r = subprocess.run([self.bin, "--check", "-c", c], capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"simian --check {c} failed:\n{r.stdout}{r.stderr}")

    def start_simian(self):
        # a private copy: a concurrent `cargo build` cannot replace the binary under us
        self.bin = os.path.join(self.work, "simian")
        shutil.copy2(self.args.simian, self.bin)
        self.write_configs()
        argv = [self.bin, "-c", self.conf]
        if self.args.pin is not None:
            argv = ["taskset", "-c", self.args.pin] + argv
        self.simian_log = os.path.join(self.work, "simian.log")
        logf = open(self.simian_log, "ab")
        self.simian = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        logf.close()
        deadline = now() + 15
        while now() < deadline:
            if self.simian.poll() is not None:
                raise RuntimeError(f"simian exited with {self.simian.returncode}:\n{tail(self.simian_log)}")
            try:
                if http_get(self.port, STATS_PATH, 1.0)[0] == 200:
                    return
            except (Fail, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"simian not ready on port {self.port}:\n{tail(self.simian_log)}")

    def start_clients(self, seconds, seed):
        ctx = multiprocessing.get_context("fork")
        self.queue = ctx.Queue()
        self.stop_ev = ctx.Event()
        deadline = now() + seconds
        self.clients = [ctx.Process(target=client_process,
                                    args=(i, self.port, deadline, seed, self.args.timeout, self.stop_ev, self.queue),
                                    daemon=True)
                        for i in range(self.args.clients)]
        for p in self.clients:
            p.start()

    def stop_clients(self):
        """Stop the client processes; their merged results."""
        self.stop_ev.set()
        results = []
        deadline = now() + self.args.timeout + 30
        while len(results) < len(self.clients) and now() < deadline:
            try:
                results.append(self.queue.get(timeout=1.0))
            except Exception:
                if not any(p.is_alive() for p in self.clients) and self.queue.empty():
                    break
        for p in self.clients:
            p.join(5)
            if p.is_alive():
                p.kill()
        if len(results) < len(self.clients):
            log(f"warning: {len(self.clients) - len(results)} client process(es) sent no result")
        self.clients = []
        return merge(results)

    def cleanup(self):
        for p in self.clients:
            if p.is_alive():
                p.kill()
        for b in self.backends:
            if b and b.poll() is None:
                b.kill()
                b.wait()
        if self.simian and self.simian.poll() is None:
            self.simian.send_signal(signal.SIGTERM)
            try:
                self.simian.wait(10)
            except subprocess.TimeoutExpired:
                self.simian.kill()
                self.simian.wait()

    # -- measurements

    def sample(self, phase):
        pid = self.simian.pid
        s = {"t": round(now() - self.t0, 2) if self.t0 else 0.0, "phase": phase}
        try:
            s["rss_kib"] = read_status(pid, "VmRSS")
            s["threads"] = read_status(pid, "Threads")
            s["cpu_s"] = proc_cpu(pid)
            s["fds"] = fd_breakdown(pid, self.port, self.bports)
        except OSError:  # simian is gone
            s.update(rss_kib=None, fds=None)
            self.samples.append(s)
            return s
        t0 = now()
        c = self.probe_counts["stats"]
        c["requests"] += 1
        try:
            status, body = http_get(self.port, STATS_PATH + "?format=json", self.args.timeout)
            if status != 200:
                raise Fail("status", str(status), status)
            st = json.loads(body)
            c["ok"] += 1
            s["reloads_ok"] = st["reloads"]["success"]
            s["reloads_failed"] = st["reloads"]["failure"]
            s["client_connections"] = st.get("client_connections")
            servers = st["routes"][0]["servers"]
            s["weight0"] = servers[0]["weight"]
            s["servers_up"] = sum(1 for x in servers if x["up"])
            s["served_2xx"] = [x["requests"]["2xx"] for x in servers]
        except Exception as e:
            f = classify_os_error(e) if isinstance(e, (Fail, OSError)) else Fail("protocol", f"stats: {e!r}")
            c["failed"] += 1
            self.probe_failures.append(("stats", t0, now(), f.what, f.status, None, f.detail[:200]))
        s["weight0_expected"] = self.weights[self.reloads % 2]
        s["since_reload"] = round(now() - self.last_reload, 2) if self.last_reload else None
        self.samples.append(s)
        return s

    def quiet_sample(self, phase):
        """simian with no traffic, its backend pools flushed: wait --settle seconds (a
        pooled backend connection idle 4 s is not reused), count the fds, then send GETs
        one at a time on new connections (each worker's pool closes the connections it
        finds too old when a request looks for one), and sample. Each pool then holds
        about one connection per backend."""
        time.sleep(self.args.settle)
        before = fd_breakdown(self.simian.pid, self.port, self.bports)
        c = self.probe_counts["flush"]
        for i in range(self.args.flush_requests):
            t0 = now()
            c["requests"] += 1
            try:
                status, body = http_get(self.port, f"/size/{i}", self.args.timeout)
                if status != 200 or body != self.block[:i]:
                    raise Fail("status" if status != 200 else "mismatch", f"flush GET: {status}", status)
                c["ok"] += 1
            except Exception as e:
                f = classify_os_error(e)
                c["failed"] += 1
                self.probe_failures.append(("flush", t0, now(), f.what, f.status, None, f.detail[:200]))
        time.sleep(0.5)
        s = self.sample(phase)
        s["fds_before_flush"] = before
        return s

    # -- the run

    def run(self):
        a = self.args
        duration = a.minutes * 60.0
        log(f"work directory {self.work}; simian port {self.port}, backends {self.bports}")
        for i in range(3):
            self.start_backend(i)
        self.start_simian()
        log(f"simian pid {self.simian.pid} ({a.simian}{', pinned to CPU ' + a.pin if a.pin is not None else ''})")
        self.fds_launch = fd_breakdown(self.simian.pid, self.port, self.bports)

        # warm-up: every kind of traffic once, so pools (buffers, pipes) exist; then quiet
        log(f"warm-up {a.warmup:g} s, then {a.settle:g} s quiet")
        self.start_clients(a.warmup, a.seed + 1)
        time.sleep(a.warmup)
        warm = self.stop_clients()
        self.start_quiet = self.quiet_sample("start (quiet)")

        log(f"soak {a.minutes:g} min: {a.clients} client processes, SIGHUP every {a.reload_every:g} s, "
            f"a backend SIGKILLed every {a.kill_every:g} s (down {a.down:g} s)")
        self.t0 = now()
        self.loadavg = [loadavg()]
        self.start_clients(duration, a.seed)
        # schedule: samples from 0 every 10 s; reloads from 5 s; kills from min(30 s, 40% of the run)
        sched = []
        t = 0.0
        while t < duration:
            sched.append((t, "sample"))
            t += a.sample_every
        t = a.reload_every / 2
        while t < duration:
            sched.append((t, "reload"))
            t += a.reload_every
        t = min(30.0, duration * 0.4)
        while t < duration - 1:
            sched.append((t, "kill"))
            t += a.kill_every
        sched.sort()
        baseline_t = min(60.0, duration / 2)
        self.baseline_t = baseline_t
        kill_no = 0
        pending_restart = []  # (t, index)
        while sched or pending_restart:
            nxt = min([x[0] for x in sched[:1]] + [x[0] for x in pending_restart])
            delay = self.t0 + nxt - now()
            if delay > 0:
                time.sleep(delay)
            if self.simian.poll() is not None:
                self.event("simian exited", f"code {self.simian.returncode}")
                log(f"simian exited with {self.simian.returncode}: stopping")
                break
            if pending_restart and pending_restart[0][0] <= nxt:
                _, i = pending_restart.pop(0)
                self.start_backend(i)
                self.event("restart", f"backend {self.bports[i]}")
                continue
            _, what = sched.pop(0)
            if what == "sample":
                s = self.sample("soak")
                if s["rss_kib"] is not None:
                    log(f"  t={s['t']:6.1f}s RSS {s['rss_kib'] / 1024:6.1f} MiB  fds {s['fds']['total']:4d}  "
                        f"CPU {s['cpu_s']:7.1f} s  client conns {fmt_num(s.get('client_connections'))}  "
                        f"reloads ok {fmt_num(s.get('reloads_ok'))}  weight {fmt_num(s.get('weight0'))}")
            elif what == "reload":
                self.reloads += 1
                shutil.copyfile(self.confs[self.reloads % 2], self.conf)
                self.simian.send_signal(signal.SIGHUP)
                self.last_reload = now()
                self.event("reload", f"variant {'AB'[self.reloads % 2]}")
            elif what == "kill":
                i = kill_no % 3
                kill_no += 1
                b = self.backends[i]
                t_kill = now()
                b.kill()
                b.wait()
                self.kills.append((t_kill, self.bports[i]))
                self.event("kill", f"backend {self.bports[i]}")
                pending_restart.append((t_kill - self.t0 + a.down, i))
        self.end_live = self.samples[-1] if self.samples else None
        # one last sample under traffic, at the very end
        if self.simian.poll() is None:
            delay = self.t0 + duration - now()
            if delay > 0:
                time.sleep(delay)
            self.end_live = self.sample("end")
        result = self.stop_clients()
        self.reloads_sent = self.reloads
        alive = self.simian.poll() is None
        self.end_quiet = self.quiet_sample("end (quiet)") if alive else None
        return warm, result, alive

    def event(self, what, detail):
        t = now() - self.t0
        self.events.append((round(t, 2), what, detail))
        log(f"  t={t:6.1f}s {what} {detail}")


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def fmt_num(v):
    return "-" if v is None else f"{v:g}"


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def merge(results):
    out = {"counts": {k: {"requests": 0, "ok": 0, "failed": 0} for k in Worker.KINDS},
           "failures": [], "bad": {}, "ws_rounds": 0, "bytes_in": 0}
    for r in results:
        for k, c in r["counts"].items():
            for f, v in c.items():
                out["counts"][k][f] += v
        out["failures"] += r["failures"]
        out["ws_rounds"] += r["ws_rounds"]
        out["bytes_in"] += r["bytes_in"]
        for name, seen in r["bad"].items():
            o = out["bad"].setdefault(name, {})
            for k, v in seen.items():
                o[k] = v if k == "expected" else o.get(k, 0) + v
    return out


# failures a killed backend can cause: its answer cut, its connection reset or closed,
# or simian's 502 for a request it had sent there
KILL_KINDS = {"eof", "reset", "short"}


def blame(f, kills, window):
    """The port of the killed backend this failure is due to, or None."""
    kind, t0, t1, what, status, tag, detail = f
    if not (what in KILL_KINDS or (what == "status" and status == 502)):
        return None
    for t_kill, port in kills:
        if tag is not None:
            # its answer came from that backend, which was still up when the request
            # started (the kill takes a moment to close its sockets), and it failed after
            if tag == port and t0 <= t_kill + window and t1 >= t_kill:
                return port
        elif t0 <= t_kill + window and t_kill <= t1 <= t_kill + window:
            return port
    return None


def report(soak, warm, res, alive, args):
    a = args
    kills = soak.kills
    failures = res["failures"] + soak.probe_failures
    blamed, other = [], []
    for f in failures:
        (blamed if blame(f, kills, a.kill_window) is not None else other).append(f)
    counts = dict(res["counts"])
    counts.update(soak.probe_counts)
    by_kind = {k: {**c, "killed_backend": 0, "other": 0} for k, c in counts.items()}
    for f in blamed:
        by_kind[f[0]]["killed_backend"] += 1
    for f in other:
        by_kind[f[0]]["other"] += 1
    total = {x: sum(c[x] for c in by_kind.values()) for x in ("requests", "ok", "failed", "killed_backend", "other")}

    bad_total = counts["bad"]["requests"]
    bad_wrong = by_kind["bad"]["other"]  # a bad request cut by a kill is not simian's fault either

    soak_samples = [s for s in soak.samples if s["phase"] in ("soak", "end") and s["rss_kib"]]
    base = min(soak_samples, key=lambda s: abs(s["t"] - soak.baseline_t)) if soak_samples else None
    end = soak.end_live
    rss_growth = None
    if base and end and end.get("rss_kib"):
        rss_growth = (end["rss_kib"] - base["rss_kib"]) * 100.0 / base["rss_kib"]
    fd_start = soak.start_quiet["fds"]
    fd_end = soak.end_quiet["fds"] if soak.end_quiet else None
    last = soak.end_quiet or (soak.samples[-1] if soak.samples else {})
    reloads_ok = last.get("reloads_ok")
    reloads_failed = last.get("reloads_failed")

    # every sample taken 1 s or more after the last SIGHUP shows that reload's weight
    weight_checked = [x for x in soak.samples
                      if "weight0" in x and (x["since_reload"] is None or x["since_reload"] >= 1)]
    weight_wrong = [x for x in weight_checked if x["weight0"] != x["weight0_expected"]]
    logs = log_summary(soak.simian_log)
    cpu = None
    live = [x for x in soak.samples if x["phase"] in ("soak", "end") and x.get("cpu_s") is not None]
    if len(live) >= 2 and live[-1]["t"] > live[0]["t"]:
        cpu = (live[-1]["cpu_s"] - live[0]["cpu_s"]) / (live[-1]["t"] - live[0]["t"]) * 100

    # after the soak, every backend is up and takes some of the flush GETs
    q, e = soak.end_quiet or {}, soak.end_live or {}
    serving = (q.get("servers_up") == 3 and len(q.get("served_2xx", [])) == 3 and len(e.get("served_2xx", [])) == 3
               and all(x > y for x, y in zip(q["served_2xx"], e["served_2xx"])))

    targets = {
        "failures not due to a killed backend = 0": len(other) == 0,
        "bad requests answered 4xx + close: all": bad_wrong == 0 and bad_total > 0,
        f"RSS growth after minute 1 < {a.rss_growth:g}%": rss_growth is not None and rss_growth < a.rss_growth,
        f"fds at the end <= at the start + {a.fd_slack} (pipes aside: a pool of at most 64 per thread)":
            fd_end is not None and non_pipe(fd_end) <= non_pipe(fd_start) + a.fd_slack,
        "simian alive at the end": alive,
        "every reload accepted and in effect": (reloads_ok is not None and reloads_ok >= soak.reloads_sent
                                                and not reloads_failed and weight_checked and not weight_wrong),
        "every backend up and serving at the end (killed ones included)": serving,
        "no panic in simian's log": logs["panics"] == 0,
    }
    data = {
        "minutes": a.minutes, "clients": a.clients, "simian": a.simian, "pin": a.pin, "threads": a.threads,
        "port": soak.port, "backends": soak.bports, "work": soak.work,
        "loadavg_start": soak.loadavg[0], "loadavg_end": loadavg(),
        "requests": total, "by_kind": by_kind,
        "warmup_requests": sum(c["requests"] for c in warm["counts"].values()),
        "warmup_failures": len(warm["failures"]),
        "bad_requests": res["bad"], "ws_round_trips": res["ws_rounds"],
        "mib_received": round(res["bytes_in"] / MIB, 1),
        "kills": [{"t": round(t - soak.t0, 2), "port": p} for t, p in kills],
        "reloads_sent": soak.reloads_sent, "reloads_ok": reloads_ok, "reloads_failed": reloads_failed,
        "rss_kib": {"baseline_t": base["t"] if base else None, "baseline": base["rss_kib"] if base else None,
                    "end": end.get("rss_kib") if end else None,
                    "growth_pct": None if rss_growth is None else round(rss_growth, 2),
                    "max": max((s["rss_kib"] for s in soak_samples), default=None),
                    "quiet_start": soak.start_quiet["rss_kib"],
                    "quiet_end": soak.end_quiet["rss_kib"] if soak.end_quiet else None},
        "fds": {"launch": soak.fds_launch, "start": fd_start, "end": fd_end,
                "start_before_flush": soak.start_quiet.get("fds_before_flush"),
                "end_before_flush": soak.end_quiet.get("fds_before_flush") if soak.end_quiet else None,
                "min_live": min((s["fds"]["total"] for s in soak_samples), default=None),
                "max_live": max((s["fds"]["total"] for s in soak_samples), default=None)},
        "weight_samples_checked": len(weight_checked), "weight_samples_wrong": len(weight_wrong),
        "simian_cpu_pct": None if cpu is None else round(cpu, 1), "log": logs,
        "samples": soak.samples, "events": soak.events,
        "failures_other": [fail_dict(f, soak.t0) for f in other[:200]],
        "failures_killed_backend": [fail_dict(f, soak.t0) for f in blamed[:200]],
        "targets": targets, "pass": all(targets.values()),
    }

    out = [f"simian soak: {a.minutes:g} min, {a.clients} client processes, simian {a.simian}"
           f"{', pinned to CPU ' + a.pin if a.pin is not None else ''} ({soak.start_quiet.get('threads')} threads); "
           f"{len(kills)} backend kills, {soak.reloads_sent} reloads; load average {soak.loadavg[0]} at the start, "
           f"{loadavg()} at the end", ""]
    out.append(f"{'kind':<14}{'requests':>10}{'ok':>10}{'failed':>8}{'killed bk':>11}{'other':>7}")
    for k, c in list(by_kind.items()) + [("total", total)]:
        out.append(f"{k:<14}{c['requests']:>10}{c['ok']:>10}{c['failed']:>8}{c['killed_backend']:>11}{c['other']:>7}")
    out.append(f"  ({res['ws_rounds']} WebSocket echo round trips, {res['bytes_in'] / MIB:.0f} MiB of GET bodies; "
               f"warm-up: {data['warmup_requests']} requests, {data['warmup_failures']} failed)")
    out.append("")
    out.append("bad requests (expected status: what came back):")
    for name, seen in sorted(res["bad"].items()):
        got = ", ".join(f"{k} ×{v}" for k, v in sorted(seen.items()) if k != "expected")
        out.append(f"  {name:<20} {seen['expected']}: {got}")
    out.append("")
    for t, what, detail in soak.events:
        if what == "simian exited":
            out.append(f"SIMIAN EXITED at {t:.1f}s ({detail}); log: {soak.simian_log}")
    if kills:
        out.append("kills: " + ", ".join(f"{p} at {t - soak.t0:.0f}s" for t, p in kills))
    out.append(f"reloads: {soak.reloads_sent} SIGHUPs, simian counted {fmt_num(reloads_ok)} ok, "
               f"{fmt_num(reloads_failed)} failed; the new weight seen in {len(weight_checked) - len(weight_wrong)} "
               f"of {len(weight_checked)} statistics samples")
    if cpu is not None:
        out.append(f"simian CPU: {cpu:.0f}% of one core on average during the soak")
    out.append("simian log: " + ", ".join(f"{v} {k}" for k, v in logs["levels"].items())
               + (f"; {logs['panics']} PANIC lines" if logs["panics"] else ""))
    for m, n in logs["top"]:
        out.append(f"  {n:>7} × {m}")
    if base and end:
        out.append(f"RSS: {base['rss_kib'] / 1024:.1f} MiB at {base['t']:.0f}s, {end['rss_kib'] / 1024:.1f} MiB "
                   f"at the end ({rss_growth:+.1f}%), max {data['rss_kib']['max'] / 1024:.1f} MiB; "
                   f"quiet: {soak.start_quiet['rss_kib'] / 1024:.1f} MiB before, "
                   + (f"{soak.end_quiet['rss_kib'] / 1024:.1f} MiB after" if soak.end_quiet else "- after"))
    out.append(f"fds: at launch {soak.fds_launch['total']}; quiet, pools flushed: start {fd_start['total']} "
               f"({fd_desc(fd_start)}), end {fd_end['total'] if fd_end else '-'} "
               f"({fd_desc(fd_end) if fd_end else 'simian gone'}); under traffic "
               f"{data['fds']['min_live']}..{data['fds']['max_live']}")
    held = [x["fds_before_flush"].get("socket backend", 0) if x else "-" for x in (soak.start_quiet, soak.end_quiet)]
    out.append(f"  backend connections still open after {a.settle:g} s without traffic, before the flush: "
               f"{held[0]} at the start, {held[1]} at the end")
    if other:
        out.append("")
        out.append(f"failures not due to a killed backend ({len(other)}, first 20):")
        for f in other[:20]:
            out.append("  " + fail_line(f, soak.t0))
    if blamed:
        out.append("")
        out.append(f"failures due to a killed backend ({len(blamed)}, first 10):")
        for f in blamed[:10]:
            out.append("  " + fail_line(f, soak.t0))
    out.append("")
    for name, ok in targets.items():
        out.append(f"  [{'ok' if ok else 'MISSED'}] {name}")
    out.append("PASS" if data["pass"] else f"FAIL (simian log and configs kept in {soak.work})")
    return data, "\n".join(out)


def log_summary(path, top=8):
    """simian's log: lines per level, the most frequent warn/error messages (numbers
    and addresses folded), lines mentioning a panic."""
    levels, msgs, panics = {}, {}, 0
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if "panic" in line.lower():
                    panics += 1
                parts = line.split(" ", 3)
                if len(parts) < 4 or not parts[2].endswith(":"):
                    levels["other"] = levels.get("other", 0) + 1
                    continue
                level = parts[2][:-1]
                levels[level] = levels.get(level, 0) + 1
                if level not in ("info", "debug", "trace"):
                    m = re.sub(r"\d+", "N", f"{level}: {parts[3].strip()}")[:160]
                    msgs[m] = msgs.get(m, 0) + 1
    except OSError:
        pass
    return {"levels": levels, "panics": panics,
            "top": sorted(msgs.items(), key=lambda x: -x[1])[:top]}


def non_pipe(fds):
    return fds["total"] - fds.get("pipe", 0)


def fd_desc(fds):
    subs = [f"{fds[k]} {k[7:]}" for k in ("socket listen", "socket client", "socket backend", "socket other")
            if fds.get(k)]
    main = [f"{v} {k}" + (f" ({', '.join(subs)})" if k == "socket" and subs else "")
            for k, v in sorted(fds.items(), key=lambda x: -x[1]) if k != "total" and not k.startswith("socket ")]
    return ", ".join(main)


def fail_dict(f, t0):
    kind, a, b, what, status, tag, detail = f
    return {"kind": kind, "t_start": round(a - t0, 3), "t_end": round(b - t0, 3), "what": what,
            "status": status, "backend": tag, "detail": detail}


def fail_line(f, t0):
    kind, a, b, what, status, tag, detail = f
    return (f"t={a - t0:7.2f}..{b - t0:7.2f}s {kind:<13} {what:<9} backend {tag or '?':<6} {detail}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--minutes", type=float, default=30.0, help="length of the soak (fractions allowed; default 30)")
    p.add_argument("--simian", default=None, help="simian binary (default: target/release/simian)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.add_argument("--pin", metavar="CPUS", help="taskset simian to these CPUs (e.g. 1)")
    p.add_argument("--threads", type=int, help="simian's Threads (default: auto)")
    p.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    p.add_argument("--reload-every", type=float, default=10.0, help="seconds between SIGHUPs (default 10)")
    p.add_argument("--kill-every", type=float, default=60.0, help="seconds between backend kills (default 60)")
    p.add_argument("--down", type=float, default=2.0, help="seconds a killed backend stays down (default 2)")
    p.add_argument("--kill-window", type=float, default=1.0,
                   help="seconds after a kill in which an untagged 502/reset is blamed on it (default 1)")
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS/fd samples (default 10)")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of traffic before the start (default 10)")
    p.add_argument("--settle", type=float, default=6.0,
                   help="quiet seconds before the start and end fd counts (default 6: a pooled backend "
                        "connection is not reused after 4 s idle)")
    p.add_argument("--flush-requests", type=int, default=40,
                   help="GETs that flush simian's backend pools before the fd counts (default 40)")
    p.add_argument("--timeout", type=float, default=20.0, help="client socket timeout in seconds (default 20)")
    p.add_argument("--rss-growth", type=float, default=5.0, help="RSS growth target in %% (default 5)")
    p.add_argument("--fd-slack", type=int, default=2,
                   help="fds (pipes aside) the end may have over the start (a health check in flight; "
                        "default 2)")
    p.add_argument("--port-base", type=int, default=28100, help="first port tried (default 28100)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--access-log", action="store_true", help="turn simian's access log on (in the work directory)")
    p.add_argument("--keep-work", action="store_true", help="keep the work directory (configs, logs)")
    args = p.parse_args()

    if args.backend:
        return backend_main(args.backend)

    if args.simian is None:
        args.simian = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                   "target", "release", "simian")
    args.simian = os.path.abspath(args.simian)
    if not os.access(args.simian, os.X_OK):
        sys.exit(f"{args.simian}: not found (cargo build --release, or --simian PATH)")
    if args.pin is not None and shutil.which("taskset") is None:
        sys.exit("--pin needs taskset (util-linux)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def on_term(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)

    soak = Soak(args)
    ok = False
    try:
        warm, res, alive = soak.run()
        data, text = report(soak, warm, res, alive, args)
        ok = data["pass"]
        print(text, flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(data, f, indent=1)
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        soak.cleanup()
        if ok and not args.keep_work:
            shutil.rmtree(soak.work, ignore_errors=True)
        else:
            log(f"work directory kept: {soak.work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
