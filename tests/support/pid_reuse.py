#!/usr/bin/env python3
"""Takes a dead daemon's pid and, as `nobody`, tries what only the daemon may do: connect to a
protected target without being redirected, and bind a proxy listener port.

An unprivileged process would fork until it got the pid; root (the test) only shortens that by
setting ns_last_pid, and the child that holds the pid drops to nobody before trying anything.
Another test running beside this one may fork in between and take the pid first; then this
waits for that process to end and tries again.
Usage: pid_reuse.py PID HOST PORT PROXY_PORT"""
import os
import socket
import sys
import time

pid, host, port, proxy_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
deadline = time.monotonic() + 60
holder = None
while time.monotonic() < deadline:
    if os.path.exists(f"/proc/{pid}"):
        try:
            holder = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ")
        except OSError:
            pass
        time.sleep(0.05)
        continue
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid - 1))
    child = os.fork()
    if child == 0:
        if os.getpid() != pid:
            os._exit(1)
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        print(f"took pid={os.getpid()} uid={os.getuid()}", flush=True)
        try:
            s = socket.create_connection((host, port), 5)
            print("connect=ok " + s.recv(200).decode().strip(), flush=True)
        except OSError as e:
            print(f"connect=errno{e.errno}", flush=True)
        try:
            b = socket.socket()
            b.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            b.bind(("127.0.0.1", proxy_port))
            b.listen()
            print("bind=ok", flush=True)
        except OSError as e:
            print(f"bind=errno{e.errno}", flush=True)
        os._exit(0)
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        sys.exit(0)
print(f"could not take pid {pid} (last held by {holder!r})", flush=True)
sys.exit(2)
