"""Cancel latency of one path: a `SELECT pg_sleep(10)` cancelled by the client.

Run as a client of one path (direct, haproxy or through airlock); prints one JSON object with
the samples in milliseconds. Each sample: a fresh connection starts the sleep, waits until the
server reports it running (a second, direct connection polls pg_stat_activity, so the cancel
can never arrive before the statement), then times from the client's cancel call to the
statement's QueryCanceled error (57014). A cancel that is lost fails the run.
"""

import json
import os
import sys
import threading
import time

import psycopg
from psycopg import errors

host, port, monitor, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
user, password, db = "gw", "gw-secret", "app"
TRACE = bool(os.environ.get("CANCEL_TRACE"))


def one(mon):
    conn = psycopg.connect(host=host, port=port, user=user, password=password, dbname=db,
                           autocommit=True)
    done = {}

    def sleeper():
        try:
            conn.execute("SELECT pg_sleep(10) /* airlock-cancel-bench */")
            done["error"] = "the sleep finished: the cancel was lost"
        except errors.QueryCanceled:
            done["t"] = time.perf_counter()
        except Exception as e:  # noqa: BLE001 — reported as the run's failure
            done["error"] = repr(e)

    t = threading.Thread(target=sleeper)
    t.start()
    deadline = time.monotonic() + 5
    while not mon.execute(
            "SELECT 1 FROM pg_stat_activity WHERE state = 'active' "
            "AND query LIKE 'SELECT pg_sleep(10) /* airlock-cancel-bench */%'").fetchone():
        if time.monotonic() > deadline:
            sys.exit("the sleep never started on the server")
        time.sleep(0.002)
    t0 = time.perf_counter()
    wall0 = time.time()
    conn.cancel()
    wall1 = time.time()
    t.join(15)
    conn.close()
    if "error" in done:
        sys.exit(done["error"])
    if TRACE:
        print(f"cancel sent {wall0:.6f} returned {wall1:.6f} error after {(done['t'] - t0) * 1000:.3f} ms",
              file=sys.stderr)
    return (done["t"] - t0) * 1000


with psycopg.connect(monitor, autocommit=True) as mon:
    samples = [one(mon) for _ in range(n)]
json.dump({"samples_ms": [round(s, 3) for s in samples]}, sys.stdout)
