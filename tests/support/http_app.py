"""The app behind nginx in the http tests: JSON with emails, tokens and card numbers, a
DELETE endpoint, a held POST endpoint, a body echo, a large streamed JSON answer, a gzip
answer, a binary answer, and a WebSocket echo. It counts every request it serves and what
credential it saw, so tests can assert what reached it (GET /counts, never through airlock).

usage: http_app.py HTTP_PORT WS_PORT
"""
import asyncio
import gzip
import hashlib
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import websockets

COUNTS = {}
AUTH_SEEN = []
LOCK = threading.Lock()

RECORD = (
    b'{"id":%d,"email":"user%d@example.com","card":"4111111111111111",'
    b'"token":"ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8","note":"' + b"x" * 40 + b'"}'
)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _count(self):
        key = f"{self.command} {self.path.split('?')[0]}"
        with LOCK:
            COUNTS[key] = COUNTS.get(key, 0) + 1
            AUTH_SEEN.append(self.headers.get("authorization") or "")

    def _send(self, status, body, ctype="application/json", extra=()):
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status=200):
        self._send(status, json.dumps(obj).encode())

    def _body(self):
        n = int(self.headers.get("content-length") or 0)
        if n:
            return self.rfile.read(n)
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return b""

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/counts":
            with LOCK:
                return self._json({"counts": COUNTS, "auth": AUTH_SEEN})
        self._count()
        if path == "/users" and "format=xml" in self.path:
            # The same document in the form asked for, as Spring or DRF answer `?format=`.
            rows = "".join(f"<user><name>{n}</name><email>{e}</email></user>"
                           for n, e in [("alice", "alice@example.com"), ("bob", "bob@example.com")])
            return self._send(200, f"<users>{rows}</users>".encode(), ctype="application/xml")
        if path == "/users":
            return self._json({
                "users": [
                    {"name": "alice", "email": "alice@example.com", "card": "4111 1111 1111 1111"},
                    {"name": "bob", "email": "bob@example.com", "card": "5500005555555559"},
                ],
                "api_token": "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
                "authorization": self.headers.get("authorization"),
                "x_api_key": self.headers.get("x-api-key"),
            })
        if path == "/notes":
            # ?charset=… answers in the encoding the client asked for, as servers that
            # honour Accept-Charset do.
            charset = self.path.split("charset=")[1] if "charset=" in self.path else None
            text = "contact carol@example.com, card 4111111111111111\n"
            if charset:
                return self._send(200, text.encode(charset),
                                  ctype=f"text/plain; charset={charset}")
            return self._send(200, text.encode(), ctype="text/plain")
        if path == "/gzip":
            body = gzip.compress(json.dumps({"email": "dave@example.com", "n": 1}).encode())
            return self._send(200, body, extra=[("content-encoding", "gzip")])
        if path == "/range":
            # Honours Range as file servers do (`?always` answers 206 whatever was asked).
            body = json.dumps({"users": [{"email": "erin@example.com", "note": "x" * 64}]}).encode()
            rng = self.headers.get("range", "")
            if rng.startswith("bytes=") or "always" in self.path:
                start, _, end = (rng[6:] if rng.startswith("bytes=") else "0-19").partition("-")
                start, end = int(start or 0), min(int(end or len(body) - 1), len(body) - 1)
                return self._send(206, body[start:end + 1], extra=[
                    ("content-range", f"bytes {start}-{end}/{len(body)}")])
            return self._send(200, body)
        if path == "/redirect":
            return self._send(302, b"", extra=[
                ("location", "/welcome?email=grace%40example.com"),
                ("x-contact", "grace@example.com")])
        if path == "/labelled":
            # JSON under another media type; the value only a path rule can find.
            ctype = self.path.split("type=")[1].replace("%2F", "/")
            doc = json.dumps({"users": [{"email": "path-only-value"}]})
            body = (doc + "\n" + doc + "\n") if "ndjson" in ctype else doc
            return self._send(200, body.encode(), ctype=ctype)
        if path == "/keys":
            return self._json({"members": {"frank@example.com": "admin"}, "n": 1})
        if path == "/binary":
            return self._send(200, bytes(range(256)), ctype="application/octet-stream")
        if path == "/stream":
            mib = int(self.path.split("mib=")[1]) if "mib=" in self.path else 1
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()

            def chunk(data):
                self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")

            chunk(b"[")
            target, sent, i, buf = mib << 20, 0, 0, []
            while sent < target:
                r = (b"," if i else b"") + RECORD % (i, i)
                buf.append(r)
                sent += len(r)
                i += 1
                if len(buf) == 500:
                    chunk(b"".join(buf))
                    buf = []
            if buf:
                chunk(b"".join(buf))
            chunk(b"]")
            self.wfile.write(b"0\r\n\r\n")
            return
        self._json({"path": self.path})

    def do_HEAD(self):
        self.do_GET()

    def do_POST(self):
        body = self._body()
        self._count()
        if self.path.startswith("/profile"):
            # Echoes the body (no credential): the bodies test records this answer.
            return self._json({
                "saved": body.decode("utf-8", "replace"),
                "contact": "erin@example.com",
            })
        self._json({
            "method": "POST",
            "path": self.path,
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "authorization": self.headers.get("authorization"),
            "contact": "erin@example.com",
        })

    def do_DELETE(self):
        self._count()
        self._json({"deleted": self.path})


async def ws_main(port):
    async def echo(ws, *_):
        async for m in ws:
            await ws.send(m)

    async with websockets.serve(echo, "127.0.0.1", port, compression=None, max_size=None):
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    http_port, ws_port = int(sys.argv[1]), int(sys.argv[2])
    srv = ThreadingHTTPServer(("127.0.0.1", http_port), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    asyncio.run(ws_main(ws_port))
