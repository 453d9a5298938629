#!/usr/bin/env python3
"""A bypass probe: connects to the echo service at host:port again and again for `seconds`
and sorts every attempt: `proxied` (the service saw another socket than ours: the proxy's),
`direct` (it saw our own socket, address and port: interception was bypassed; the port
alone can match by chance, as the proxy's upstream socket may get the same port number),
`refused` (ECONNREFUSED or EPERM: fail closed) or `error` (reset, timeout, anything else).
Prints the counts as JSON."""
import errno
import json
import socket
import sys
import time

host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
counts = {"proxied": 0, "direct": 0, "refused": 0, "error": 0}
errors = []
end = time.monotonic() + seconds
while time.monotonic() < end:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((host, port))
        own = s.getsockname()[:2]
        greeting = b""
        while not greeting.endswith(b"\n"):
            chunk = s.recv(1024)
            if not chunk:
                raise OSError(0, "closed before the greeting")
            greeting += chunk
        fields = dict(f.split("=", 1) for f in greeting.decode().split())
        seen = (fields["peer"], int(fields["peer_port"]))
        if seen == tuple(own):
            counts["direct"] += 1
            errors.append(f"direct: the service saw our own socket {own[0]}:{own[1]}")
        else:
            counts["proxied"] += 1
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.EPERM):
            counts["refused"] += 1
        else:
            counts["error"] += 1
            errors.append(f"{type(e).__name__}: {e}")
    finally:
        s.close()
    time.sleep(0.02)
print(json.dumps({"counts": counts, "errors": errors[:10]}), flush=True)
