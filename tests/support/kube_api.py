"""A test Kubernetes API server for tests/kube.rs (no real kube-apiserver can be installed on
the test machines). It answers, as the real one does on the wire, the paths the tests drive:
discovery (/version, /api, /api/v1, /apis), pods and secrets in namespaces (get, list with a
metadata.name field selector, watch as a stream of the current objects' ADDED events, delete,
a pod's log as text) and `Status` errors (404 NotFound, 405 for what it does not implement).
Aggregated discovery and Table answers are not served: clients fall back to the legacy
documents and default columns, as they do against an API server without them. Exec is served
over WebSocket `v5.channel.k8s.io` only (the command is echoed on the stdout channel, then a
Success `Status` on the error channel); SPDY, attach, port-forward and protobuf are not
implemented (405 Status).

HTTPS on ADDR:443 with CERT/KEY (HTTP/1.1 only); a plain control port on 127.0.0.1:CONTROL
answers GET /seen: every request as `METHOD PATH` and every Authorization header received.

usage: kube_api.py ADDR CERT KEY CONTROL
"""

import base64
import hashlib
import json
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LOCK = threading.Lock()
SEEN = {"requests": [], "auth": []}
RV = [1000]


def next_rv():
    RV[0] += 1
    return str(RV[0])


def pod(ns, name):
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": f"uid-{ns}-{name}",
            "resourceVersion": next_rv(),
            "creationTimestamp": "2026-12-01T00:00:00Z",
        },
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
        "status": {"phase": "Running"},
    }


def secret(ns, name, data):
    return {
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": f"uid-s-{ns}-{name}",
            "resourceVersion": next_rv(),
            "creationTimestamp": "2026-12-01T00:00:00Z",
        },
        "type": "Opaque",
        "data": data,
    }


# base64 of "hunter2-db-password" and "AKIAIOSFODNN7EXAMPLE".
STORE = {
    "pods": {("default", n): pod("default", n) for n in ("web", "x", "y")},
    "secrets": {
        ("default", "db"): secret(
            "default",
            "db",
            {
                "password": "aHVudGVyMi1kYi1wYXNzd29yZA==",
                "aws-key": "QUtJQUlPU0ZPRE5ON0VYQU1QTEU=",
            },
        )
    },
}

KINDS = {"pods": "Pod", "secrets": "Secret"}

API_RESOURCES = {
    "kind": "APIResourceList",
    "groupVersion": "v1",
    "resources": [
        {
            "name": "pods",
            "singularName": "pod",
            "namespaced": True,
            "kind": "Pod",
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch",
                      "update", "watch"],
            "shortNames": ["po"],
            "categories": ["all"],
        },
        {"name": "pods/exec", "singularName": "", "namespaced": True, "kind": "PodExecOptions",
         "verbs": ["create", "get"]},
        {
            "name": "secrets",
            "singularName": "secret",
            "namespaced": True,
            "kind": "Secret",
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch",
                      "update", "watch"],
        },
        {
            "name": "namespaces",
            "singularName": "namespace",
            "namespaced": False,
            "kind": "Namespace",
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            "shortNames": ["ns"],
        },
    ],
}


class Watch:
    """A watch answer: its events, streamed as JSON lines."""

    def __init__(self, events):
        self.events = events


class Text:
    """A plain-text answer (a container's log)."""

    def __init__(self, text):
        self.text = text


def status(code, reason, message, details=None):
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return code, body


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def handle_any(self, method):
        url = urlsplit(self.path)
        with LOCK:
            SEEN["requests"].append(f"{method} {url.path}")
            if self.headers.get("Authorization"):
                SEEN["auth"].append(self.headers.get("Authorization"))
            for k in self.headers.keys():
                if k.lower().startswith("impersonate-"):
                    SEEN["requests"].append(f"IMPERSONATE {k}")
        self.read_body()
        if url.path.endswith("/exec") and self.headers.get("Upgrade", "").lower() == "websocket":
            return self.exec_websocket(parse_qs(url.query))
        code, body = self.route(method, url.path, parse_qs(url.query))
        if isinstance(body, Watch):
            self.send_watch(body.events)
        elif isinstance(body, Text):
            data = body.text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self.send_json(code, body)

    def exec_websocket(self, query):
        """`exec` over WebSocket `v5.channel.k8s.io`: each binary message is a channel byte
        (1 stdout, 3 the error channel's Status) and its data. The "command" runs by echoing
        its argv on stdout, then succeeds."""
        protocols = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if "v5.channel.k8s.io" not in protocols:
            code, body = status(400, "BadRequest", "only v5.channel.k8s.io is served")
            return self.send_json(code, body)
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        ).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("Sec-WebSocket-Protocol", "v5.channel.k8s.io")
        self.end_headers()
        with LOCK:
            SEEN["requests"].append("EXEC " + " ".join(query.get("command", [])))

        def frame(opcode, payload):
            head = bytes([0x80 | opcode])
            n = len(payload)
            if n < 126:
                head += bytes([n])
            else:
                head += bytes([126]) + n.to_bytes(2, "big")
            self.wfile.write(head + payload)

        out = ("exec: " + " ".join(query.get("command", [])) + "\n").encode()
        frame(2, b"\x01" + out)
        frame(2, b"\x03" + json.dumps({"metadata": {}, "status": "Success"}).encode())
        frame(8, (1000).to_bytes(2, "big"))
        self.wfile.flush()
        self.close_connection = True

    def send_watch(self, events):
        """A watch: one JSON document per line, chunked, one chunk per event."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for e in events:
            line = json.dumps(e).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def route(self, method, path, query):
        if method == "GET" and path == "/version":
            return 200, {"major": "1", "minor": "37", "gitVersion": "v1.37.1",
                         "gitCommit": "0000000000000000000000000000000000000000",
                         "gitTreeState": "clean", "buildDate": "2026-11-01T00:00:00Z",
                         "goVersion": "go1.25.0", "compiler": "gc", "platform": "linux/amd64"}
        if method == "GET" and path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": [
                             {"clientCIDR": "0.0.0.0/0", "serverAddress": "api.test:443"}]}
        if method == "GET" and path == "/api/v1":
            return 200, API_RESOURCES
        if method == "GET" and path == "/apis":
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "v1"] and len(parts) >= 5 and parts[2] == "namespaces":
            ns, resource, rest = parts[3], parts[4], parts[5:]
            if resource in STORE:
                return self.resource(method, ns, resource, rest, query)
        if parts[:2] == ["api", "v1"] or parts[:1] == ["apis"]:
            return status(404, "NotFound", "the server could not find the requested resource",
                          {})
        return status(404, "NotFound", f"path {path} not found")

    def resource(self, method, ns, resource, rest, query):
        store = STORE[resource]
        kind = KINDS[resource]
        if not rest and method == "GET":
            if query.get("watch", ["false"])[0] in ("1", "true"):
                # The current objects as ADDED events, then the stream ends (as a watch with
                # timeoutSeconds does).
                events = [{"type": "ADDED", "object": o}
                          for (n, _), o in sorted(store.items()) if n == ns]
                return 200, Watch(events)
            items = [o for (n, _), o in sorted(store.items()) if n == ns]
            for sel in query.get("fieldSelector", []):
                if sel.startswith("metadata.name="):
                    want = sel.split("=", 1)[1]
                    items = [o for o in items if o["metadata"]["name"] == want]
            return 200, {"kind": f"{kind}List", "apiVersion": "v1",
                         "metadata": {"resourceVersion": str(RV[0])}, "items": items}
        if resource == "pods" and len(rest) == 2 and rest[1] == "log" and method == "GET":
            if (ns, rest[0]) not in store:
                return status(404, "NotFound", f'pods "{rest[0]}" not found')
            return 200, Text("starting\nuser alice@example.com logged in\nready\n")
        if len(rest) == 1:
            name = rest[0]
            with LOCK:
                obj = store.get((ns, name))
                if obj is None:
                    return status(404, "NotFound", f'{resource} "{name}" not found',
                                  {"name": name, "kind": resource})
                if method == "GET":
                    return 200, obj
                if method == "DELETE":
                    del store[(ns, name)]
                    SEEN["requests"].append(f"DELETED {resource}/{name}")
                    return 200, obj
        return status(405, "MethodNotAllowed",
                      f"{method} on {resource}/{'/'.join(rest)} is not implemented by the test server")

    def do_GET(self):
        self.handle_any("GET")

    def do_DELETE(self):
        self.handle_any("DELETE")

    def do_POST(self):
        self.handle_any("POST")

    def do_PUT(self):
        self.handle_any("PUT")

    def do_PATCH(self):
        self.handle_any("PATCH")


class Control(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        with LOCK:
            data = json.dumps(SEEN).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main():
    addr, cert, key, control = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    api = ThreadingHTTPServer((addr, 443), Handler)
    api.socket = ctx.wrap_socket(api.socket, server_side=True)
    ctl = ThreadingHTTPServer(("127.0.0.1", control), Control)
    threading.Thread(target=ctl.serve_forever, daemon=True).start()
    print("ready", flush=True)
    api.serve_forever()


if __name__ == "__main__":
    main()
