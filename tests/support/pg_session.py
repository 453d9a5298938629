#!/usr/bin/env python3
"""A long-lived PostgreSQL session (psycopg 3) driven by lines on stdin: each line is one SQL
statement, answered by one line on stdout, `row=<first column>` or
`error=<sqlstate> <message>` (the session ends after an error). The line `!raw` instead
waits for the next message the server sends unasked (an idle session's FATAL) and prints it
from the wire: `raw=<tag> S=<severity> C=<sqlstate> M=<message>`. After connecting it prints
`port=<its local port>`, so a test can find its socket. DSN comes from the environment."""
import os
import socket
import struct
import sys

import psycopg

conn = psycopg.connect(os.environ["DSN"], autocommit=True)
sock = socket.socket(fileno=os.dup(conn.fileno()))
print(f"port={sock.getsockname()[1]}", flush=True)
for line in sys.stdin:
    sql = line.strip()
    if not sql:
        continue
    if sql == "!raw":
        sock.settimeout(60)
        data = b""
        while len(data) < 5 or len(data) < 1 + struct.unpack("!i", data[1:5])[0]:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        if len(data) < 5:
            print(f"raw=closed {data!r}", flush=True)
            break
        tag, end = data[:1].decode(), 1 + struct.unpack("!i", data[1:5])[0]
        fields = {f[:1].decode(): f[1:].decode() for f in data[5:end].split(b"\0") if f}
        print(f"raw={tag} S={fields.get('S')} C={fields.get('C')} M={fields.get('M')}", flush=True)
        break
    try:
        row = conn.execute(sql).fetchone()
        print(f"row={row[0]}", flush=True)
    except psycopg.Error as e:
        message = " ".join(str(e).split())
        print(f"error={e.sqlstate} {message}", flush=True)
        break
