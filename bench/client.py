#!/usr/bin/env python3
"""Large-body HTTP/1.1 client, upload sink and idle-connection holder for bench/run.py.

Python 3.11 standard library only. Subcommands:

  get   --port P --path /64m.bin --conns 4 --duration 8
        Each connection sends GET requests one after another over keep-alive and reads
        every response with recv_into() on a 1 MiB buffer (wrk reads 8 KiB at a time and
        caps near 1 GiB/s on this kind of machine). Counts body bytes of complete
        responses; prints one JSON line.
  post  --port P --path /upload --size 67108864 --conns 4 --duration 8
        Same, uploading SIZE-byte bodies (Content-Length, sent 1 MiB per sendall()).
  sink  --port P
        Upload sink: a threaded HTTP/1.1 server that reads every request body to the end
        (recv_into a 1 MiB buffer, then discards it) and only then answers 200 "ok".
        Keep-alive. Used because nginx's `return 200` answers before reading the body
        and discards it afterwards, which lets a proxy see the response early.
  idle  --port P --n 5000 --path /small
        Opens N keep-alive connections, sends one GET on each and reads its response,
        prints "ready N", then holds them idle (sending nothing) until stdin closes.

`get` and `idle` take --tls: the same over TLS (Python's ssl module, SNI bench.test, no
certificate verification; the groups and suites offered are OpenSSL's, or those of the
OPENSSL_CONF that bench/run.py sets: X25519 only).

Only Content-Length framing is supported (every server used by the benchmark sends it);
anything else is reported as an error.
"""

import argparse
import json
import resource
import socket
import socketserver
import ssl
import sys
import threading
import time

MIB = 1 << 20
HOST = "127.0.0.1"
SNI = "bench.test"
TLS_CTX = None  # set by --tls


class ProtocolError(Exception):
    pass


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def connect(port):
    s = socket.create_connection((HOST, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if TLS_CTX is not None:
        s = TLS_CTX.wrap_socket(s, server_hostname=SNI)  # handshake done here
    return s


def use_tls():
    global TLS_CTX
    TLS_CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    TLS_CTX.check_hostname = False
    TLS_CTX.verify_mode = ssl.CERT_NONE


def parse_head(head):
    """head: bytes up to and excluding the blank line. Returns (status, headers dict)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        k, sep, v = line.partition(b":")
        if not sep:
            raise ProtocolError(f"bad header line {line[:80]!r}")
        headers[k.strip().lower()] = v.strip()
    return status, headers


def read_response(sock, mv):
    """Reads one response on sock with recv_into(mv). Returns (status, body_len, close)."""
    head = bytearray()
    while True:
        n = sock.recv_into(mv)
        if n == 0:
            raise ProtocolError("connection closed before the response head")
        head += mv[:n]
        end = head.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(head) > 65536:
            raise ProtocolError("response head too long")
    status, headers = parse_head(bytes(head[:end]))
    if b"transfer-encoding" in headers:
        raise ProtocolError("chunked response: not supported by this client")
    if b"content-length" not in headers:
        raise ProtocolError("response without Content-Length")
    length = int(headers[b"content-length"])
    have = len(head) - (end + 4)
    if have > length:
        raise ProtocolError("more bytes than Content-Length (unexpected pipelining)")
    remaining = length - have
    size = len(mv)
    while remaining:
        n = sock.recv_into(mv, remaining if remaining < size else size)
        if n == 0:
            raise ProtocolError(f"connection closed with {remaining} body bytes missing")
        remaining -= n
    close = headers.get(b"connection", b"").lower() == b"close"
    return status, length, close


def run_clients(args, make_worker):
    """Starts args.conns threads behind a barrier, for args.duration seconds."""
    results = [None] * args.conns
    barrier = threading.Barrier(args.conns + 1)
    start_box = {}

    def wrap(i):
        try:
            results[i] = make_worker(i, barrier, start_box)
        except Exception as e:  # reported, not raised: the other threads go on
            results[i] = {"bytes": 0, "responses": 0, "error": f"{type(e).__name__}: {e}"}
            try:
                barrier.abort()
            except threading.BrokenBarrierError:
                pass

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(args.conns)]
    for t in threads:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.monotonic()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    total = sum(r["bytes"] for r in results)
    errors = [r["error"] for r in results if r.get("error")]
    out = {
        "bytes": total,
        "responses": sum(r["responses"] for r in results),
        "elapsed": elapsed,
        "mib_per_s": total / MIB / elapsed if elapsed > 0 else 0.0,
        "errors": errors,
    }
    print(json.dumps(out), flush=True)
    return 1 if errors else 0


def cmd_get(args):
    req = (f"GET {args.path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench-client\r\n\r\n").encode()

    def worker(i, barrier, box):
        buf = bytearray(MIB)
        mv = memoryview(buf)
        sock = connect(args.port)
        barrier.wait()
        deadline = time.monotonic() + args.duration
        nbytes = responses = 0
        while time.monotonic() < deadline:
            sock.sendall(req)
            status, length, close = read_response(sock, mv)
            if status != 200:
                raise ProtocolError(f"status {status}")
            nbytes += length
            responses += 1
            if close:
                sock.close()
                sock = connect(args.port)
        sock.close()
        return {"bytes": nbytes, "responses": responses}

    return run_clients(args, worker)


def cmd_post(args):
    head = (f"POST {args.path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench-client\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {args.size}\r\n\r\n").encode()
    chunk = memoryview(bytes(range(256)) * (MIB // 256))

    def worker(i, barrier, box):
        buf = bytearray(65536)
        mv = memoryview(buf)
        sock = connect(args.port)
        barrier.wait()
        deadline = time.monotonic() + args.duration
        nbytes = responses = 0
        while time.monotonic() < deadline:
            sock.sendall(head)
            left = args.size
            while left:
                piece = chunk if left >= MIB else chunk[:left]
                sock.sendall(piece)
                left -= len(piece)
            status, _, close = read_response(sock, mv)
            if status != 200:
                raise ProtocolError(f"status {status}")
            nbytes += args.size
            responses += 1
            if close:
                sock.close()
                sock = connect(args.port)
        sock.close()
        return {"bytes": nbytes, "responses": responses}

    return run_clients(args, worker)


class SinkHandler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(MIB)
        mv = memoryview(buf)
        pending = bytearray()
        while True:
            # head (pending may hold the start of the next request)
            while True:
                end = pending.find(b"\r\n\r\n")
                if end >= 0:
                    break
                if len(pending) > 65536:
                    return  # no head end in 64 KiB
                n = sock.recv_into(mv)
                if n == 0:
                    return
                pending += mv[:n]
            head = bytes(pending[:end])
            lines = head.split(b"\r\n")
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                headers[k.strip().lower()] = v.strip()
            if b"transfer-encoding" in headers:
                sock.sendall(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            length = int(headers.get(b"content-length", b"0"))
            have = len(pending) - (end + 4)
            if have >= length:
                pending = pending[end + 4 + length:]
                remaining = 0
            else:
                pending = bytearray()
                remaining = length - have
            size = len(mv)
            while remaining:
                n = sock.recv_into(mv, remaining if remaining < size else size)
                if n == 0:
                    return
                remaining -= n
            if headers.get(b"expect", b"").lower() == b"100-continue":
                pass  # the body is already read; the client did not wait
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
            if headers.get(b"connection", b"").lower() == b"close":
                return


class SinkServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def cmd_sink(args):
    raise_nofile()
    with SinkServer((HOST, args.port), SinkHandler) as srv:
        srv.serve_forever()


def cmd_idle(args):
    raise_nofile()
    req = f"GET {args.path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench-idle\r\n\r\n".encode()
    buf = bytearray(65536)
    mv = memoryview(buf)
    socks = []
    batch = 100
    try:
        while len(socks) < args.n:
            group = []
            for _ in range(min(batch, args.n - len(socks))):
                s = connect(args.port)
                s.sendall(req)
                group.append(s)
            for s in group:
                status, _, close = read_response(s, mv)
                if status != 200 or close:
                    raise ProtocolError(f"status {status}, close {close}")
            socks.extend(group)
    except Exception as e:
        print(f"error after {len(socks)} connections: {type(e).__name__}: {e}", flush=True)
        return 1
    print(f"ready {len(socks)}", flush=True)
    sys.stdin.read()  # until the harness closes our stdin
    for s in socks:
        s.close()
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("get")
    g.add_argument("--port", type=int, required=True)
    g.add_argument("--path", default="/64m.bin")
    g.add_argument("--conns", type=int, default=4)
    g.add_argument("--duration", type=float, default=8.0)
    g.add_argument("--tls", action="store_true")
    g.set_defaults(func=cmd_get)
    u = sub.add_parser("post")
    u.add_argument("--port", type=int, required=True)
    u.add_argument("--path", default="/upload")
    u.add_argument("--size", type=int, default=64 * MIB)
    u.add_argument("--conns", type=int, default=4)
    u.add_argument("--duration", type=float, default=8.0)
    u.set_defaults(func=cmd_post)
    s = sub.add_parser("sink")
    s.add_argument("--port", type=int, required=True)
    s.set_defaults(func=cmd_sink)
    i = sub.add_parser("idle")
    i.add_argument("--port", type=int, required=True)
    i.add_argument("--n", type=int, default=5000)
    i.add_argument("--path", default="/small")
    i.add_argument("--tls", action="store_true")
    i.set_defaults(func=cmd_idle)
    args = p.parse_args()
    if getattr(args, "tls", False):
        use_tls()
    sys.exit(args.func(args) or 0)


if __name__ == "__main__":
    main()
