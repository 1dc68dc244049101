#!/usr/bin/env python3
"""held-many.py ADDR PORT N DIR: N keep-alive connections across an event.

Opens N HTTP/1.1 connections to ADDR:PORT, sends one GET on each
(/?t=held&c=I, so the app servers' logs say which node proxied it), and
writes "ready" to DIR/held.state. Then waits (at most 60 s) for the file
DIR/held.go, sends a second GET on every connection and writes one line
per connection to DIR/held.result: "I ok" or "I failed <why>".
"""
import os
import socket
import sys
import threading
import time

addr, port, n, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]


def get(s, i, k):
    s.sendall(b"GET /?t=held&c=%d&k=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, k, addr.encode()))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed in the body")
        body += chunk
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode("latin-1"))


conns = []
for i in range(n):
    s = socket.create_connection((addr, port), timeout=2)
    s.settimeout(2)
    get(s, i, 1)
    conns.append(s)
with open(os.path.join(work, "held.state"), "w") as f:
    f.write("ready\n")
for _ in range(6000):
    if os.path.exists(os.path.join(work, "held.go")):
        break
    time.sleep(0.01)
# All at once: those to a dead node wait out their timeout together.
results = [None] * n


def second(i, s):
    try:
        get(s, i, 2)
        results[i] = "%d ok" % i
    except (OSError, ConnectionError) as e:
        results[i] = "%d failed %s" % (i, type(e).__name__)


threads = [threading.Thread(target=second, args=(i, s)) for i, s in enumerate(conns)]
for t in threads:
    t.start()
for t in threads:
    t.join(10)
with open(os.path.join(work, "held.result"), "w") as f:
    f.write("\n".join(r or "%d failed unfinished" % i for i, r in enumerate(results)) + "\n")
