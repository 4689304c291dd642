#!/usr/bin/env python3
"""Writes the committed seed corpus, fuzz/corpus/<target>/<name>.

Run from anywhere: `python3 fuzz/make_corpus.py`. It rewrites only the files it
names (a grown corpus belongs outside the checkout, see README.md). The seeds are
real-world shaped messages: GET/POST, chunked, upgrades, interim responses, and the
odd framing SPEC section 4 is about.
"""

import hashlib
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode("latin-1")
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def crlf(s):
    return s.replace("\n", "\r\n")


REQUESTS = {
    "get": "GET / HTTP/1.1\nHost: example.com\nUser-Agent: curl/8.5.0\nAccept: */*\n\n",
    "get_query": "GET /a/../b/%2e%2e/c?x=1&y=%20#frag HTTP/1.1\nHost: a.example:8080\n"
    "Accept-Encoding: gzip, deflate\nCookie: s=1; t=2\nX-Forwarded-For: 10.0.0.1, 10.0.0.2\n"
    "X-Forwarded-Proto: https\n\n",
    "post_cl": "POST /api/items HTTP/1.1\nHost: api\nContent-Type: application/json\n"
    "Content-Length: 13\n\n{\"a\": [1, 2]}",
    "post_chunked": "POST /upload HTTP/1.1\nHost: up\nTransfer-Encoding: chunked\nTrailer: X-Sum\n\n"
    "5\nhello\n6;ext=1\n world\n0\nX-Sum: 11\n\n",
    "te_gzip_chunked": "PUT /f HTTP/1.1\nHost: h\nTransfer-Encoding: gzip, chunked\n\n0\n\n",
    "upgrade": "GET /ws HTTP/1.1\nHost: ws.example\nConnection: Upgrade\nUpgrade: websocket\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13\n\n",
    "h2c": "GET / HTTP/1.1\nHost: h\nConnection: Upgrade, HTTP2-Settings\nUpgrade: h2c\n"
    "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\n\n",
    "http10_keepalive": "GET /old HTTP/1.0\nConnection: keep-alive\nContent-Length: 5, 5\n\nhello",
    "absolute_form": "GET http://origin.example:81/p/q?r HTTP/1.1\nHost: origin.example:81\n\n",
    "options_star": "OPTIONS * HTTP/1.1\nHost: h\nMax-Forwards: 0\n\n",
    "connect": "CONNECT origin.example:443 HTTP/1.1\nHost: origin.example:443\n\n",
    "expect": "POST /big HTTP/1.1\nHost: h\nExpect: 100-continue\nContent-Length: 4\n\nbody",
    "hop_by_hop": "DELETE /x HTTP/1.1\nHost: h\nConnection: close, X-Secret, TE\nX-Secret: 1\n"
    "TE: trailers\nKeep-Alive: timeout=5\nProxy-Connection: keep-alive\nX-Client-Cert-Subject: CN=evil\n\n",
    "leading_crlf": "\n\nHEAD /h HTTP/1.1\nHost: h\n\n",
    "te_irregular": "POST / HTTP/1.1\nHost: h\nTransfer-Encoding: ,chunked\n\n3\nabc\n0\n\n",
    "cl_twice": "POST / HTTP/1.1\nHost: h\nContent-Length: 3\nContent-Length: 3\n\nabc",
    "pipelined": "GET /1 HTTP/1.1\nHost: h\n\nGET /2 HTTP/1.1\nHost: h\nConnection: close\n\n",
}

RESPONSES = {
    "ok_cl": "HTTP/1.1 200 OK\nContent-Type: text/plain\nContent-Length: 5\n\nhello",
    "chunked": "HTTP/1.1 200 OK\nTransfer-Encoding: chunked\nTrailer: X-T\n\n"
    "4\nwiki\n5;a=b\npedia\n0\nX-T: 1\n\n",
    "no_content": "HTTP/1.1 204 No Content\nDate: Mon, 01 Jan 2024 00:00:00 GMT\n\n",
    "not_modified": "HTTP/1.1 304 Not Modified\nETag: \"x\"\nContent-Length: 10\n\n",
    "switching": "HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\nConnection: Upgrade\n"
    "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\n\n",
    "continue": "HTTP/1.1 100 Continue\n\nHTTP/1.1 201 Created\nLocation: /x\nContent-Length: 0\n\n",
    "early_hints": "HTTP/1.1 103 Early Hints\nLink: </style.css>; rel=preload\n\n",
    "http10_keepalive": "HTTP/1.0 200 OK\nConnection: keep-alive\nContent-Length: 2\n\nok",
    "close_delimited": "HTTP/1.1 200 OK\nServer: old\n\nuntil the connection closes",
    "te_not_last": "HTTP/1.1 200 OK\nTransfer-Encoding: chunked, gzip\n\nraw",
    "hop_by_hop": "HTTP/1.1 200 OK\nConnection: X-Internal, keep-alive\nX-Internal: secret\n"
    "Keep-Alive: timeout=5\nProxy-Connection: close\nContent-Length: 0\n\n",
    "not_found": "HTTP/1.1 404 Not Found\nSet-Cookie: a=1\nSet-Cookie: b=2; Path=/\n"
    "Cache-Control: no-store\nContent-Length: 3\n\n404",
    "cl_list": "HTTP/1.1 500 Internal Server Error\nContent-Length: 3, 3\n\nerr",
    "leading_crlf": "\nHTTP/1.1 302 Found\nLocation: http://x/\nContent-Length: 0\n\n",
}

CHUNKED = {
    # (split sizes, body)
    "simple": ([], "5\nhello\n0\n\n"),
    "split_3": ([1, 2, 7], "5\nhello\n0\n\n"),
    "ext": ([4], "5;name=value;x\nhello\n0;last\n\n"),
    "trailers": ([3, 9], "3\nabc\n0\nX-A: 1\nX-B: two words\n\n"),
    "hex_upper": ([16], "A\n0123456789\nf\n0123456789abcde\n0\n\n"),
    "bws": ([2], "5 ;x=y\nhello\n0\n\n"),
    "leading_zeros": ([5, 1], "0005\nhello\n00\n\n"),
    "bytewise": ([1], "1\na\n1\nb\n0\n\n"),
    "next_message": ([8], "2\nhi\n0\n\nGET / HTTP/1.1\n\n"),
    "incomplete": ([3], "10\n0123456"),
    "bare_lf": ([], "5\r\nhello\r\n0\n\n"),  # written as is, not CRLF-converted
    "too_large": ([4], "FFFFFFFFFFFFFFFFF\n"),
    "obs_fold": ([6], "0\nX: a\n b\n\n"),
}

# (flags byte for fuzz_targets/rewrite.rs, name in REQUESTS or RESPONSES)
REWRITES = [
    (0x00, "get_query"),
    (0x02, "post_chunked"),
    (0x06, "hop_by_hop"),
    (0x12, "upgrade"),
    (0x2A, "http10_keepalive"),
    (0x08, "te_irregular"),
    (0x02, "cl_twice"),
    (0x02, "h2c"),
    (0x01, "ok_cl"),
    (0x03, "hop_by_hop"),
    (0x43, "chunked"),
    (0x01, "switching"),
    (0x03, "continue"),
    (0x03, "cl_list"),
    (0x03, "http10_keepalive"),
]

SEP = b"\0\0\0\0"
TOKEN = "<<............>>"  # replaced by a per-play marker (exchange.rs)


def body_cl(status, headers, body):
    return crlf(f"HTTP/1.1 {status}\n{headers}Content-Length: {len(body)}\n\n") + body


def exchange(name, flags, cpiece, bpiece, client1, b1="", b2="", client2=""):
    parts = [client1, b1, b2, client2]
    while parts and parts[-1] == "":
        parts.pop()
    data = bytes([flags, cpiece, bpiece]) + SEP.join(
        p.encode("latin-1") if isinstance(p, str) else p for p in parts
    )
    write("exchange", name, data)


def main():
    for t in ["request_head", "response_head", "chunked", "rewrite", "config", "exchange"]:
        shutil.rmtree(os.path.join(CORPUS, t), ignore_errors=True)
    for name, r in REQUESTS.items():
        write("request_head", name, crlf(r))
    for name, r in RESPONSES.items():
        write("response_head", name, crlf(r))
    for name, (splits, body) in CHUNKED.items():
        b = body if name == "bare_lf" else crlf(body)
        write("chunked", name, bytes([len(splits)] + splits) + b.encode("latin-1"))
    for flags, name in REWRITES:
        msg = REQUESTS.get(name) if flags & 1 == 0 else RESPONSES.get(name)
        write("rewrite", f"{'req' if flags & 1 == 0 else 'res'}_{name}_{flags:02x}",
              bytes([flags]) + crlf(msg).encode("latin-1"))

    # config: the shipped files and the checker's test corpus.
    srcs = [os.path.join(ROOT, "conf", "proxy.conf"), os.path.join(ROOT, "conf", "demo.conf.in")]
    ex = os.path.join(ROOT, "conf", "examples")
    srcs += [os.path.join(ex, f) for f in sorted(os.listdir(ex)) if f.endswith(".conf")]
    tc = os.path.join(ROOT, "tests", "config_corpus")
    if os.path.isdir(tc):
        srcs += [os.path.join(tc, f) for f in sorted(os.listdir(tc))]
    for p in srcs:
        with open(p, "rb") as f:
            write("config", os.path.basename(p), f.read())

    # exchange: flags 1 backend closes, 2 client half-closes, 4 junk after each
    # script, 8 second client part on a new connection.
    ok = body_cl("200 OK", f"X-Mark: {TOKEN}\n", f"body {TOKEN}\n")
    ok2 = body_cl("200 OK", "X-Second: yes\n", f"{TOKEN}")
    get = crlf("GET /a HTTP/1.1\nHost: h\n\n")
    get_close = crlf("GET /b HTTP/1.1\nHost: h\nConnection: close\n\n")
    exchange("get_keepalive", 0, 0, 0, get, ok)
    exchange("get_backend_closes", 1, 0, 0, get_close, ok)
    exchange("get_pieces", 0, 7, 5, get, ok)
    chunked = crlf(f"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n10\n{TOKEN}\n3\nabc\n0\nX-T: {TOKEN}\n\n")
    exchange("chunked_response", 0, 0, 9, get, chunked)
    post = crlf("POST /p HTTP/1.1\nHost: h\nContent-Length: 11\n\nhello world")
    exchange("post_cl", 1, 20, 0, post, body_cl("201 Created", "Location: /p/1\n", TOKEN))
    post_ch = crlf("POST /c HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n5\nhello\n0\n\n")
    exchange("post_chunked", 0, 3, 0, post_ch, ok)
    head = crlf("HEAD /h HTTP/1.1\nHost: h\n\n")
    exchange("head_junk", 4, 0, 0, head, crlf(f"HTTP/1.1 200 OK\nX-M: {TOKEN}\nContent-Length: 20\n\n"))
    exchange("pipelined", 0, 0, 0, get + get_close, ok, ok2)
    exchange("pool_reuse_new_conn", 8, 0, 0, get, ok, ok2, get)
    exchange("junk_then_new_conn", 12, 0, 0, get, ok, ok2, get)
    exchange("same_conn_second", 4, 0, 0, get, ok, ok2, get_close)
    up = crlf("GET /ws HTTP/1.1\nHost: h\nConnection: Upgrade\nUpgrade: websocket\n\nping")
    exchange("upgrade", 1, 0, 0, up, crlf(f"HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\nConnection: Upgrade\n\n") + f"tunnel {TOKEN}")
    exp = crlf("PUT /e HTTP/1.1\nHost: h\nExpect: 100-continue\nContent-Length: 4\n\n")
    exchange("expect_continue", 0, 0, 0, exp + "data", crlf("HTTP/1.1 100 Continue\n\n") + ok)
    exchange("close_delimited", 1, 0, 3, get, crlf(f"HTTP/1.1 200 OK\nServer: old\n\nuntil close {TOKEN}"))
    exchange("bad_framing", 0, 0, 0, get, crlf(f"HTTP/1.1 200 OK\nContent-Length: 3\nTransfer-Encoding: chunked\n\n{TOKEN}"))
    exchange("http10", 0, 0, 0, crlf("GET /old HTTP/1.0\nConnection: keep-alive\n\n"), crlf(f"HTTP/1.0 200 OK\nContent-Length: 16\n\n{TOKEN}"))
    exchange("bad_request", 0, 0, 0, crlf("GET / HTTP/1.1\nHost: h\nContent-Length: 1\nTransfer-Encoding: chunked\n\n"), ok)
    exchange("no_content_junk", 4, 0, 0, get, crlf(f"HTTP/1.1 204 No Content\nX-M: {TOKEN}\n\n") + "stray")
    exchange("backend_silent_close", 1, 0, 0, get, "")

    total = 0
    for dp, _, fs in os.walk(CORPUS):
        total += sum(os.path.getsize(os.path.join(dp, f)) for f in fs)
    print(f"corpus: {total} bytes")


if __name__ == "__main__":
    main()
