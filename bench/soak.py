#!/usr/bin/python3
"""The soak's mixed load, run through airlock by bench/soak.sh (in the protected cgroup, so
every connection is intercepted). Workers, each a thread with its own connections:

  read        random point reads, reconnecting every 500 queries
  masked      selects of customers (email: a column rule; note: free text with an email in
              it, the email detector) in text and binary format (extended protocol), ranges
              through the simple protocol, and COPY OUT; every value is checked: a raw email
              reaching the client is an unexpected error
  write       updates the policy allows outright
  held        updates of soak_held, which policy sends to review (hold mode): the client
              waits (NoticeResponse with the request id) until the approver approves; after
              every seventh, a raw-protocol client that goes away once held (the request is
              withdrawn: an expected outcome)
  approver    polls the approvals API for pending requests and approves each with the admin
              token (subject `admin`, not the requester: nobody approves their own request);
              a 409 for a request withdrawn before the approval is expected
  cancel      a long read cancelled after 50-300 ms (57014, user request, is expected)
  disconnect  a raw-protocol client that asks for a large result and closes the socket after
              the first 32 KiB (sometimes with an RST)

Prints one JSON object: per worker, how many operations succeeded, how many ended with the
error the worker caused on purpose, and the unexpected errors (with the first few messages);
the approvals (approved, conflicts, approve-call → held command completed latency, the held
command's whole wait).

Environment: SOAK_API (host:port of the approvals API) and SOAK_TOKEN_FILE (the admin token);
without them there is no held-write worker and no approver.
"""
import json
import os
import random
import re
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.request

import psycopg
from psycopg import errors

HOST, PORT, USER, DB = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
SECONDS = float(sys.argv[5])
ACCOUNTS = int(sys.argv[6]) if len(sys.argv) > 6 else 1_000_000
DSN = f"host={HOST} port={PORT} user={USER} dbname={DB} sslmode=disable connect_timeout=10"
API = os.environ.get("SOAK_API")
TOKEN_FILE = os.environ.get("SOAK_TOKEN_FILE")
POLL = float(os.environ.get("SOAK_APPROVE_POLL", "0.05"))
CUSTOMERS = 1000
deadline = time.monotonic() + SECONDS
lock = threading.Lock()
stats = {}
# Approvals: wall-clock time each approve call was sent and each held command completed.
approve_sent, held_done = {}, {}
held_waits = []  # seconds from execute to completion of each held command that ran
# How many approval requests each held write needed (notices received), e.g. {"1": n, "2": m}.
requests_per_held = {}
cancel_waits = []  # seconds from the first cancel sent to the client's 57014
approvals = {"approved": 0, "conflicts": 0, "errors": 0, "polls": 0}
held_workers_done = threading.Event()


def count(worker, key, message=None):
    with lock:
        s = stats.setdefault(worker, {"ok": 0, "expected_errors": 0, "unexpected_errors": 0,
                                      "messages": [], "masked": 0, "unmasked": 0, "repeated": 0})
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


RAW_EMAIL = re.compile(rb"user(\d+)@example\.com")


def check_row(ident, values):
    """Counts each text value of one customers row: masked unless the row's raw email is in
    it (NULL counts as masked). A raw email is an unexpected error: a leak."""
    raw = f"user{ident}@example.com"
    for v in values:
        text = v.decode() if isinstance(v, bytes) else v
        if text is not None and raw in str(text):
            count("masked", "unmasked")
            count("masked", "unexpected_errors", f"raw email reached the client: {v!r}")
        else:
            count("masked", "masked")


def masked_loop():
    with psycopg.connect(DSN, autocommit=True) as c:
        for i in range(500):
            if time.monotonic() >= deadline:
                return
            kind = i % 10
            if kind < 6:  # one row, extended protocol (prepared), text or binary format
                rows = c.execute("SELECT id, email, note FROM customers WHERE id = %s",
                                 (random.randint(1, CUSTOMERS),), prepare=True,
                                 binary=kind % 2 == 1).fetchall()
            elif kind < 9:  # a range through the simple protocol (no parameters, no prepare)
                lo = random.randint(1, CUSTOMERS - 20)
                cur = psycopg.ClientCursor(c)
                rows = cur.execute(f"SELECT id, email, note FROM customers WHERE id BETWEEN {lo} AND {lo + 19}").fetchall()
            else:  # COPY OUT: every raw email anywhere in the stream is a leak
                lo = random.randint(1, CUSTOMERS - 50)
                data = bytearray()
                with c.cursor().copy(f"COPY (SELECT id, email, note FROM customers WHERE id BETWEEN {lo} AND {lo + 49}) TO STDOUT") as cp:
                    for chunk in cp:
                        data += chunk
                lines = bytes(data).splitlines()
                if len(lines) != 50:
                    count("masked", "unexpected_errors", f"COPY returned {len(lines)} rows, not 50")
                rows = []
                for line in lines:
                    ident, email, note = line.split(b"\t")
                    rows.append((int(ident), email, note))
                leaks = RAW_EMAIL.findall(bytes(data))
                if leaks:
                    count("masked", "unexpected_errors", f"COPY: {len(leaks)} raw emails, e.g. user{leaks[0].decode()}@example.com")
            if not rows:
                count("masked", "unexpected_errors", "no rows")
            for ident, email, note in rows:
                check_row(ident, (email, note))
            count("masked", "ok")


def write_loop():
    with psycopg.connect(DSN, autocommit=True) as c:
        for _ in range(200):
            if time.monotonic() >= deadline:
                return
            c.execute("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = %s",
                      (random.randint(1, ACCOUNTS),))
            count("write", "ok")


def notice_request(diag):
    m = re.search(r"request ([0-9a-f]+)", diag.message_primary or "")
    return m.group(1) if m else None


def held_loop():
    """Updates policy sends to review; each waits (held) until the approver approves it. After
    every seventh, a client that goes away while held."""
    with psycopg.connect(DSN, autocommit=True) as c:
        ids = []
        c.add_notice_handler(lambda d: ids.append(notice_request(d)))
        for i in range(100):
            if time.monotonic() >= deadline:
                return
            ids.clear()
            t0 = time.monotonic()
            sql = "UPDATE soak_held SET n = n + 1, at = now() WHERE id = %s"
            if i % 2:
                c.execute(sql, (random.randint(1, 100),))
            else:  # the simple protocol
                psycopg.ClientCursor(c).execute(sql, (random.randint(1, 100),))
            done = time.time()
            wait = time.monotonic() - t0
            rid = next((x for x in ids if x), None)
            with lock:
                n = str(sum(1 for x in ids if x))
                requests_per_held[n] = requests_per_held.get(n, 0) + 1
                held_waits.append(wait)
                if rid:
                    held_done[rid] = done
            if rid is None:
                count("held", "unexpected_errors", "a held write ran without an approval notice")
            else:
                count("held", "ok")
            if i % 7 == 6 and time.monotonic() < deadline:
                held_withdraw_once()


def messages(buf):
    """The complete backend messages at the start of buf, as (type, body)."""
    out, at = [], 0
    while len(buf) - at >= 5:
        (n,) = struct.unpack_from("!I", buf, at + 1)
        if len(buf) - at < 1 + n:
            break
        out.append((buf[at:at + 1], buf[at + 5:at + 1 + n]))
        at += 1 + n
    return out


def held_withdraw_once():
    """A raw-protocol client whose write is held, and which goes away before a decision: the
    gateway withdraws the request."""
    s = startup()
    q = f"UPDATE soak_held SET n = n + 1 WHERE id = {random.randint(1, 100)}".encode() + b"\0"
    s.sendall(b"Q" + struct.pack("!I", len(q) + 4) + q)
    buf = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError(f"closed while held: {buf[-200:]!r}")
        buf += chunk
        for kind, body in messages(buf):
            if kind == b"E":
                raise RuntimeError(f"error instead of a hold: {body[:300]!r}")
            if kind == b"C":  # the approver was faster than this client
                s.close()
                count("held", "ok")
                return
            if kind == b"N" and b"waiting for approval" in body:
                # Held: go away (half the time with an RST).
                if random.random() < 0.5:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
                count("held", "expected_errors")
                return


def api(method, path):
    req = urllib.request.Request(f"http://{API}{path}", method=method,
                                 headers={"Authorization": f"Bearer {TOKEN}"},
                                 data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def approver():
    """Approves every pending request as the admin (a second identity), until the held
    workers are done and nothing is pending."""
    while True:
        finished = held_workers_done.is_set()
        try:
            status, pending = api("GET", "/v1/requests?pending=true")
        except OSError as e:
            count("approver", "unexpected_errors", f"listing requests: {e}")
            time.sleep(1)
            continue
        approvals["polls"] += 1
        if status != 200:
            count("approver", "unexpected_errors", f"listing requests: HTTP {status} {pending}")
            time.sleep(1)
            continue
        if finished and not pending:
            return
        for r in pending:
            rid = r["id"]
            with lock:
                approve_sent[rid] = time.time()
            status, body = api("POST", f"/v1/requests/{rid}/approve")
            if status == 200:
                approvals["approved"] += 1
                count("approver", "ok")
            elif status == 409:  # withdrawn (its client went away) before the approval
                approvals["conflicts"] += 1
                count("approver", "expected_errors")
            else:
                approvals["errors"] += 1
                count("approver", "unexpected_errors", f"approve {rid}: HTTP {status} {body}")
        time.sleep(POLL)


def cancel_loop():
    # A long read (a cross join) rather than pg_sleep, which policy treats as admin; the
    # statement timeout ends it should every cancel be lost (and that counts as unexpected).
    # A cancel only stops what the server is running when it arrives: under load the first
    # one can overtake the query (it travels on its own connection), so like a user pressing
    # Ctrl-C again the canceller repeats it every 2 s; the repeats are counted, and the time
    # from the first cancel to the client's error is recorded.
    with psycopg.connect(DSN + " options='-c statement_timeout=5000'", autocommit=True) as c:
        for _ in range(20):
            if time.monotonic() >= deadline:
                return
            done = threading.Event()
            sent = []

            def canceller():
                time.sleep(random.uniform(0.05, 0.3))
                sent.append(time.monotonic())
                c.cancel()
                while not done.wait(2.0):
                    count("cancel", "repeated")
                    c.cancel()

            t = threading.Thread(target=canceller, daemon=True)
            t.start()
            try:
                c.execute("SELECT count(*) FROM pgbench_accounts a, pgbench_accounts b")
                count("cancel", "unexpected_errors", "the long read finished: the cancel was lost")
            except errors.QueryCanceled as e:
                if "user request" in str(e):
                    count("cancel", "expected_errors")
                    if sent:
                        with lock:
                            cancel_waits.append(time.monotonic() - sent[0])
                else:
                    count("cancel", "unexpected_errors", f"not cancelled by the client: {e}")
            finally:
                done.set()
            t.join()
            c.execute("SELECT 1")  # the session is still usable after the cancel
            count("cancel", "ok")


def startup():
    """A raw-protocol session, logged in (the gateway holds the credentials)."""
    s = socket.create_connection((HOST, PORT), timeout=10)
    body = struct.pack("!I", 196608) + b"user\0" + USER.encode() + b"\0database\0" + DB.encode() + b"\0\0"
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    buf = b""
    while b"Z\0\0\0\x05" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError(f"closed during startup: {buf[-200:]!r}")
        buf += chunk
    return s


def disconnect_once():
    s = startup()
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


def percentiles(xs):
    xs = sorted(xs)
    if not xs:
        return None
    at = lambda q: round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 2)  # noqa: E731
    return {"n": len(xs), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": round(xs[-1] * 1000, 2)}


workers = [guarded("read", read_loop), guarded("read", read_loop), guarded("masked", masked_loop),
           guarded("write", write_loop), guarded("cancel", cancel_loop),
           guarded("disconnect", disconnect_once)]
held = []
if API and TOKEN_FILE:
    TOKEN = open(TOKEN_FILE).read().strip()
    held = [guarded("held", held_loop), guarded("held", held_loop)]
    approver_thread = threading.Thread(target=approver, name="approver", daemon=True)
    approver_thread.start()
for w in workers + held:
    w.start()
for w in workers + held:
    w.join(timeout=SECONDS + 120)
approval_summary = None
if held:
    held_workers_done.set()
    approver_thread.join(timeout=120)
    if approver_thread.is_alive():
        count("approver", "unexpected_errors", "the approver did not finish within 120 s of the load")
    approval_summary = dict(approvals)
    approval_summary["approve_to_done"] = percentiles(
        [held_done[r] - approve_sent[r] for r in held_done if r in approve_sent])
    approval_summary["held_wait"] = percentiles(held_waits)
    approval_summary["requests_per_held_write"] = requests_per_held
    approval_summary["held_without_approve_call"] = sum(1 for r in held_done if r not in approve_sent)
json.dump({"workers": stats, "approvals": approval_summary, "cancel_to_error": percentiles(cancel_waits), "seconds": SECONDS, "pid": os.getpid()}, sys.stdout)
print()
