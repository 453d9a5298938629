#!/usr/bin/env python3
"""A real TCP service for interception tests: on each connection it writes
"peer=<addr> peer_port=<port> local=<addr>\n", then echoes what it reads until EOF. Every accepted peer is
appended to the log file, so a test can assert what arrived and from where."""
import socket
import sys
import threading

port = int(sys.argv[1])
log_path = sys.argv[2]
lock = threading.Lock()


def serve(conn):
    with conn:
        peer, peer_port = conn.getpeername()[:2]
        local = conn.getsockname()[0]
        with lock, open(log_path, "a") as log:
            log.write(f"{peer} {peer_port} {local}\n")
        conn.sendall(f"peer={peer} peer_port={peer_port} local={local}\n".encode())
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)


def listen(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, port))
    s.listen(512)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


threads = [threading.Thread(target=listen, args=(socket.AF_INET, "0.0.0.0"), daemon=True)]
if socket.has_ipv6:
    threads.append(threading.Thread(target=listen, args=(socket.AF_INET6, "::"), daemon=True))
for t in threads:
    t.start()
print("ready", flush=True)
for t in threads:
    t.join()
