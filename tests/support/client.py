#!/usr/bin/env python3
"""An unmodified TCP client: connect, print what the kernel says the peer is, read the
service's greeting, echo a line. Options: --mark N sets SO_MARK before connecting;
--family 4|6 picks the socket family (6 also takes IPv4-mapped addresses); --mptcp opens an
MPTCP socket; --source-port N binds that local port (SO_REUSEADDR) before connecting;
--bind ADDR binds that local address first; --udp sends one datagram instead (connected,
or with --sendto unconnected) and prints `udp-sent` or the error."""
import argparse
import socket
import sys

IPPROTO_MPTCP = 262

p = argparse.ArgumentParser()
p.add_argument("host")
p.add_argument("port", type=int)
p.add_argument("--mark", type=int)
p.add_argument("--family", choices=["4", "6"], default=None)
p.add_argument("--mptcp", action="store_true")
p.add_argument("--source-port", type=int)
p.add_argument("--bind")
p.add_argument("--udp", action="store_true")
p.add_argument("--sendto", action="store_true")
p.add_argument("--timeout", type=float, default=5.0)
a = p.parse_args()

family = socket.AF_INET6 if (a.family == "6" or (a.family is None and ":" in a.host)) else socket.AF_INET
if a.udp:
    u = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if a.sendto:
            u.sendto(b"hello", (a.host, a.port))
        else:
            u.connect((a.host, a.port))
            u.send(b"hello")
    except OSError as e:
        print(f"connect-error errno={e.errno} {e.strerror}")
        sys.exit(3)
    print("udp-sent")
    sys.exit(0)
s = socket.socket(family, socket.SOCK_STREAM, IPPROTO_MPTCP if a.mptcp else 0)
s.settimeout(a.timeout)
if a.mark is not None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, a.mark)
if a.source_port is not None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a.bind or ("::" if family == socket.AF_INET6 else "0.0.0.0"), a.source_port))
elif a.bind is not None:
    s.bind((a.bind, 0))
try:
    s.connect((a.host, a.port))
except OSError as e:
    print(f"connect-error errno={e.errno} {e.strerror}")
    sys.exit(3)
print(f"getpeername={s.getpeername()[0]}:{s.getpeername()[1]}")
print(f"sockname_port={s.getsockname()[1]}", flush=True)
try:
    greeting = b""
    while not greeting.endswith(b"\n"):
        chunk = s.recv(1024)
        if not chunk:
            break
        greeting += chunk
    print(greeting.decode().strip())
    s.sendall(b"hello through airlock\n")
    s.shutdown(socket.SHUT_WR)
    echo = b""
    while True:
        chunk = s.recv(1024)
        if not chunk:
            break
        echo += chunk
    print(f"echo={echo.decode().strip()}")
except OSError as e:
    print(f"io-error errno={e.errno} {e.strerror}")
