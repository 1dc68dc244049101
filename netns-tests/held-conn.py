#!/usr/bin/env python3
"""held-conn.py VIP PORT MAC OUT: a connection caught in mid-switch.

Opens a TCP connection to VIP:PORT and writes "connected" to OUT; then
waits (at most 3 s) until this host's neighbour entry for VIP is MAC (the
new master's gratuitous ARP arrived), sends a GET on the connection opened
before, and writes the answer's status line, "reset" or "timeout" to OUT.
Without the new master relaying it, the request finds no socket there and
is reset.
"""
import socket
import subprocess
import sys
import time

vip, port, mac, out = sys.argv[1], int(sys.argv[2]), sys.argv[3].lower(), sys.argv[4]


def say(line):
    with open(out, "a") as f:
        f.write(line + "\n")


def neighbour():
    r = subprocess.run(["ip", "neigh", "show", vip], capture_output=True, text=True, timeout=2)
    return r.stdout.lower()


s = socket.create_connection((vip, port), timeout=3)
say("connected")
for _ in range(600):
    if mac in neighbour():
        break
    time.sleep(0.005)
else:
    say("no-flip")
    sys.exit(1)
try:
    s.sendall(b"GET /?t=held HTTP/1.1\r\nHost: held.test\r\nConnection: close\r\n\r\n")
    data = s.recv(4096)
    say(data.split(b"\r\n", 1)[0].decode("latin-1") if data else "closed")
except ConnectionResetError:
    say("reset")
except socket.timeout:
    say("timeout")
