#!/usr/bin/python3
"""The soak's mixed load, run through airlock by bench/soak.sh (in the protected cgroup, so
every connection is intercepted). Workers, each a thread with its own connections:

  read        random point reads (simple protocol), reconnecting every 500 queries
  masked      selects of customers.email through the extended protocol (a masking rule covers
              the column; whether the answer came back masked is counted, not required)
  write       updates the policy allows outright
  cancel      a long read cancelled after 50-300 ms (57014, user request, is expected)
  disconnect  a raw-protocol client that asks for a large result and closes the socket after
              the first 32 KiB (sometimes with an RST)

Prints one JSON object: per worker, how many operations succeeded, how many ended with the
error the worker caused on purpose, and the unexpected errors (with the first few messages).

TODO(approvals): writes that need review, with an automatic approver, once the approvals
feature is on main (`airlock requests --pending --json` / `airlock approve ID`).
"""
import json
import os
import random
import socket
import struct
import sys
import threading
import time

import psycopg
from psycopg import errors

HOST, PORT, USER, DB = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
SECONDS = float(sys.argv[5])
ACCOUNTS = int(sys.argv[6]) if len(sys.argv) > 6 else 1_000_000
DSN = f"host={HOST} port={PORT} user={USER} dbname={DB} sslmode=disable connect_timeout=10"
deadline = time.monotonic() + SECONDS
lock = threading.Lock()
stats = {}


def count(worker, key, message=None):
    with lock:
        s = stats.setdefault(worker, {"ok": 0, "expected_errors": 0, "unexpected_errors": 0,
                                      "messages": [], "masked": 0, "unmasked": 0})
        s[key] += 1
        if message and len(s["messages"]) < 5:
            s["messages"].append(message[:300])


def guarded(worker, body):
    """Runs body until the deadline; any exception it does not handle is unexpected."""
    def run():
        while time.monotonic() < deadline:
            try:
                body()
            except Exception as e:  # noqa: BLE001 - counted and reported
                count(worker, "unexpected_errors", f"{type(e).__name__}: {e}")
                time.sleep(0.2)
    return threading.Thread(target=run, name=worker, daemon=True)


def read_loop():
    with psycopg.connect(DSN, autocommit=True) as c:
        for _ in range(500):
            if time.monotonic() >= deadline:
                return
            c.execute(f"SELECT abalance FROM pgbench_accounts WHERE aid = {random.randint(1, ACCOUNTS)}").fetchall()
            count("read", "ok")


def masked_loop():
    with psycopg.connect(DSN, autocommit=True) as c:
        for _ in range(500):
            if time.monotonic() >= deadline:
                return
            rows = c.execute("SELECT id, email FROM customers WHERE id = %s",
                             (random.randint(1, 1000),), prepare=True).fetchall()
            count("masked", "ok")
            for ident, email in rows:
                count("masked", "unmasked" if email == f"user{ident}@example.com" else "masked")


def write_loop():
    with psycopg.connect(DSN, autocommit=True) as c:
        for _ in range(200):
            if time.monotonic() >= deadline:
                return
            c.execute("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = %s",
                      (random.randint(1, ACCOUNTS),))
            count("write", "ok")


def cancel_loop():
    # A long read (a cross join) rather than pg_sleep, which policy treats as admin; the
    # statement timeout ends it should the cancel be lost (and that counts as unexpected).
    with psycopg.connect(DSN + " options='-c statement_timeout=5000'", autocommit=True) as c:
        for _ in range(20):
            if time.monotonic() >= deadline:
                return
            t = threading.Timer(random.uniform(0.05, 0.3), c.cancel)
            t.start()
            try:
                c.execute("SELECT count(*) FROM pgbench_accounts a, pgbench_accounts b")
                count("cancel", "unexpected_errors", "the long read finished: the cancel was lost")
            except errors.QueryCanceled as e:
                if "user request" in str(e):
                    count("cancel", "expected_errors")
                else:
                    count("cancel", "unexpected_errors", f"not cancelled by the client: {e}")
            t.join()
            c.execute("SELECT 1")  # the session is still usable after the cancel
            count("cancel", "ok")


def disconnect_once():
    s = socket.create_connection((HOST, PORT), timeout=10)
    body = struct.pack("!I", 196608) + b"user\0" + USER.encode() + b"\0database\0" + DB.encode() + b"\0\0"
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    buf = b""
    while b"Z\0\0\0\x05" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError(f"closed during startup: {buf[-200:]!r}")
        buf += chunk
    q = b"SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g\0"
    s.sendall(b"Q" + struct.pack("!I", len(q) + 4) + q)
    got = 0
    while got < 32768:
        chunk = s.recv(8192)
        if not chunk:
            raise RuntimeError("closed before the result arrived")
        if chunk[:1] == b"E":
            raise RuntimeError(f"error instead of rows: {chunk[:200]!r}")
        got += len(chunk)
    if random.random() < 0.5:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    count("disconnect", "expected_errors")
    time.sleep(0.05)


workers = [guarded("read", read_loop), guarded("read", read_loop), guarded("masked", masked_loop),
           guarded("write", write_loop), guarded("cancel", cancel_loop),
           guarded("disconnect", disconnect_once)]
for w in workers:
    w.start()
for w in workers:
    w.join(timeout=SECONDS + 120)
json.dump({"workers": stats, "seconds": SECONDS, "pid": os.getpid()}, sys.stdout)
print()
