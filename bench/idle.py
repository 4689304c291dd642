#!/usr/bin/env python3
"""RSS per idle keep-alive connection, opened one at a time: connect, one request,
read the answer, keep the connection; 5,000 times. RSS of PID from /proc.

    python3 bench/idle.py PORT PID [N]
"""
import socket, sys, time, os
port=int(sys.argv[1]); pid=int(sys.argv[2]); n=int(sys.argv[3]) if len(sys.argv) > 3 else 5000
def rss(p):
    for l in open(f"/proc/{p}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
socks=[]
# warm up a little first
for i in range(50):
    s=socket.create_connection(("127.0.0.1",port)); s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"); s.recv(65536); socks.append(s)
time.sleep(0.5)
r0=rss(pid)
for i in range(n):
    s=socket.create_connection(("127.0.0.1",port)); s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"); s.recv(65536); socks.append(s)
time.sleep(1)
r1=rss(pid)
print(f"rss before {r0} KB after {r1} KB: {(r1-r0)*1024/n:.0f} B/conn")
