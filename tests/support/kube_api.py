"""A test Kubernetes API server for tests/kube.rs (no real kube-apiserver can be installed on
the test machines). It answers, as the real one does on the wire, the paths the tests drive:
discovery (/version, /api, /api/v1, /apis), namespaces (get, list), pods, secrets and
configmaps in namespaces (get, list with a metadata.name field selector, watch as a stream of
the current objects' ADDED events, delete, a pod's log as text) and `Status` errors (404 NotFound, 405 for what it does not implement).
Aggregated discovery and Table answers are not served: clients fall back to the legacy
documents and default columns, as they do against an API server without them. Protobuf is
not served.

Exec, attach and port-forward (kube_exec.py) behave as a kubelet behind the API server:
- exec (`pods/exec`) really runs the command in an emulated pod filesystem (a directory per
  pod under KUBE_POD_ROOT, absolute argv paths mapped under it: see kube_exec.py), with
  stdin/stdout/stderr, a pty for tty=true and its resize channel, and the kubelet's Status on
  the error channel (Success, or Failure NonZeroExitCode with the ExitCode cause);
  over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`) and SPDY/3.1 (`v5`..`v1`).
- attach (`pods/attach`): to one long-running `sh` per pod (started on first attach, no tty),
  its stdout/stderr fanned out to every attached client.
- port-forward (`pods/portforward`) over SPDY/3.1 `portforward.k8s.io` to 127.0.0.1:<port>
  (KUBE_PORT_MAP=8080=18081,... maps a pod port to another local port). Its WebSocket form
  (`SPDY/3.1+portforward.k8s.io` tunnelled) is always refused with 400, so kubectl >= 1.31
  falls back to SPDY.

HTTPS on ADDR:443 with CERT/KEY (HTTP/1.1 only); a plain control port on 127.0.0.1:CONTROL:
- GET /seen: every request as `METHOD PATH`, every Authorization header received, and per
  exec `EXEC <argv>` and `EXEC-PROTO ws-v5|ws-v4|spdy`, per attach `ATTACH-PROTO ...`, per
  port-forward connection `PORTFORWARD-PROTO spdy` and per forwarded stream `PORTFORWARD <port>`.
- GET /config, POST /config with JSON {"websocket": false}: refuses every WebSocket upgrade
  with a 400 Status (kubectl >= 1.30 then falls back to SPDY, as client-go's fallback executor
  does on an upgrade failure); {"websocket": true} serves it again. The env var
  KUBE_WEBSOCKET=0 starts the server with WebSocket refused.

usage: kube_api.py ADDR CERT KEY CONTROL [CLIENT_CA]

With CLIENT_CA, client certificates are verified when presented and their CN listed in
/seen `certs`.
"""

import json
import os
import signal
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import kube_exec

LOCK = threading.Lock()
SEEN = {"requests": [], "auth": [], "certs": []}
RV = [1000]
CONFIG = {"websocket": os.environ.get("KUBE_WEBSOCKET", "1") not in ("0", "false", "no")}


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
        "spec": {"containers": [{"name": "app", "image": "busybox", "env": [
            {"name": "OWNER", "value": f"owner-of-{name}@example.com"},
            {"name": "AWS_ACCESS_KEY_ID", "value": "AKIAIOSFODNN7EXAMPLE"},
        ]}]},
        "status": {"phase": "Running"},
    }


def namespace(name):
    return {
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {"name": name, "uid": f"uid-ns-{name}", "resourceVersion": "1",
                     "creationTimestamp": "2026-12-01T00:00:00Z"},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
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

STORE["configmaps"] = {
    ("default", "app"): {
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {"name": "app", "namespace": "default", "uid": "uid-cm-default-app",
                     "resourceVersion": next_rv(),
                     "creationTimestamp": "2026-12-01T00:00:00Z"},
        "data": {"support": "oncall@example.com", "mode": "production"},
    }
}

KINDS = {"pods": "Pod", "secrets": "Secret", "configmaps": "ConfigMap"}

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
        {"name": "pods/attach", "singularName": "", "namespaced": True,
         "kind": "PodAttachOptions", "verbs": ["create", "get"]},
        {"name": "pods/exec", "singularName": "", "namespaced": True, "kind": "PodExecOptions",
         "verbs": ["create", "get"]},
        {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod",
         "verbs": ["get"]},
        {"name": "pods/portforward", "singularName": "", "namespaced": True,
         "kind": "PodPortForwardOptions", "verbs": ["create", "get"]},
        {
            "name": "secrets",
            "singularName": "secret",
            "namespaced": True,
            "kind": "Secret",
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch",
                      "update", "watch"],
        },
        {
            "name": "configmaps",
            "singularName": "configmap",
            "namespaced": True,
            "kind": "ConfigMap",
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch",
                      "update", "watch"],
            "shortNames": ["cm"],
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
            peer = self.connection.getpeercert() if hasattr(self.connection, "getpeercert") else None
            if peer:
                cn = [v for rdn in peer.get("subject", ()) for (k, v) in rdn if k == "commonName"]
                SEEN["certs"].append(cn[0] if cn else "?")
            for k in self.headers.keys():
                if k.lower().startswith("impersonate-"):
                    SEEN["requests"].append(f"IMPERSONATE {k}")
        self.read_body()
        parts = url.path.strip("/").split("/")
        if (len(parts) == 7 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods"
                and parts[6] in ("exec", "attach", "portforward")):
            return self.stream_subresource(method, parts[3], parts[5], parts[6],
                                           parse_qs(url.query))
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

    def stream_subresource(self, method, ns, name, sub, query):
        """exec, attach, portforward: a Status error, or an upgrade to WebSocket or SPDY."""
        upgrade = self.headers.get("Upgrade", "").strip().lower()
        if (ns, name) not in STORE["pods"]:
            return self.send_json(*status(404, "NotFound", f'pods "{name}" not found',
                                          {"name": name, "kind": "pods"}))
        if method not in ("GET", "POST"):
            return self.send_json(*status(405, "MethodNotAllowed",
                                          f"{method} is not allowed on pods/{sub}"))

        def flag(k):
            return query.get(k, ["false"])[-1].lower() in ("1", "true")

        opts = {k: flag(k) for k in ("stdin", "stdout", "stderr", "tty")}
        argv = query.get("command", [])
        if sub == "exec" and not argv:
            return self.send_json(*status(400, "BadRequest", "you must specify at least 1 command"))
        if sub != "portforward" and not (opts["stdin"] or opts["stdout"] or opts["stderr"]):
            return self.send_json(*status(
                400, "BadRequest", "you must specify at least 1 of stdin, stdout, stderr"))
        if upgrade == "websocket":
            offered = [p.strip() for p in
                       ",".join(self.headers.get_all("Sec-WebSocket-Protocol") or []).split(",")]
            with LOCK:
                allowed = CONFIG["websocket"]
            if not allowed or sub == "portforward":
                with LOCK:
                    SEEN["requests"].append(f"REFUSED-WS {sub}")
                return self.send_json(*status(
                    400, "BadRequest", "unable to upgrade connection: websocket is refused by "
                    "the test server" if allowed is False else
                    "unable to upgrade connection: port-forward over websocket is not served"))
            proto = next((p for p in ("v5.channel.k8s.io", "v4.channel.k8s.io")
                          if p in offered), None)
            if proto is None:
                return self.send_json(*status(
                    400, "BadRequest", "unable to upgrade connection: none of the offered "
                    f"subprotocols {offered} is served (v5.channel.k8s.io, v4.channel.k8s.io)"))
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept",
                             kube_exec.ws_accept(self.headers.get("Sec-WebSocket-Key", "")))
            self.send_header("Sec-WebSocket-Protocol", proto)
            self.end_headers()
            self.wfile.flush()
            tag = "ws-v5" if proto.startswith("v5") else "ws-v4"
            return self.run_stream(sub, ns, name, argv, opts, tag,
                                   lambda start, factory=None: kube_exec.serve_exec_ws(
                                       self, proto, ns, name, argv, opts, start, factory))
        if upgrade.startswith("spdy/3.1"):
            offered = [p.strip() for v in (self.headers.get_all("X-Stream-Protocol-Version") or [])
                       for p in v.split(",")]
            served = (["portforward.k8s.io"] if sub == "portforward" else
                      ["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io",
                       "v2.channel.k8s.io", "channel.k8s.io"])
            if offered:
                proto = next((p for p in served if p in offered), None)
                if proto is None:
                    return self.send_json(*status(
                        403, "Forbidden", "unable to upgrade connection: unable to negotiate "
                        f"protocol: client supports {offered}, server supports {served}"))
            else:
                proto = served[-1] if sub != "portforward" else served[0]
            self.send_response(101)
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", "SPDY/3.1")
            if offered:
                self.send_header("X-Stream-Protocol-Version", proto)
            self.end_headers()
            self.wfile.flush()
            if sub == "portforward":
                with LOCK:
                    SEEN["requests"].append("PORTFORWARD-PROTO spdy")

                def log(line):
                    with LOCK:
                        SEEN["requests"].append(line)

                kube_exec.serve_portforward_spdy(self, ns, name, log)
                return None
            return self.run_stream(sub, ns, name, argv, opts, "spdy",
                                   lambda start, factory=None: kube_exec.serve_exec_spdy(
                                       self, proto, ns, name, argv, opts, start, factory))
        return self.send_json(*status(
            400, "BadRequest", "Upgrade request required"))

    def run_stream(self, sub, ns, name, argv, opts, tag, serve):
        def started():
            with LOCK:
                if sub == "exec":
                    SEEN["requests"].append("EXEC " + " ".join(argv))
                    SEEN["requests"].append("EXEC-PROTO " + tag)
                else:
                    SEEN["requests"].append("ATTACH-PROTO " + tag)

        if sub == "attach":
            return kube_exec.serve_attach(self, tag, ns, name, opts, started, serve)
        serve(started)
        self.close_connection = True
        return None

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
        if method == "GET" and parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
            # Namespaces (cluster-scoped): the ones the stored objects live in, and kube-system.
            names = sorted({n for store in STORE.values() for (n, _) in store} | {"kube-system"})
            items = [namespace(n) for n in names]
            if len(parts) == 4:
                found = [o for o in items if o["metadata"]["name"] == parts[3]]
                if not found:
                    return status(404, "NotFound", f'namespaces "{parts[3]}" not found',
                                  {"name": parts[3], "kind": "namespaces"})
                return 200, found[0]
            return 200, {"kind": "NamespaceList", "apiVersion": "v1",
                         "metadata": {"resourceVersion": str(RV[0])}, "items": items}
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

    def answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with LOCK:
            body = dict(CONFIG) if self.path.startswith("/config") else json.loads(
                json.dumps(SEEN))
        self.answer(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n) or b"{}") if n else {}
        if self.path.startswith("/config"):
            with LOCK:
                if "websocket" in body:
                    CONFIG["websocket"] = bool(body["websocket"])
                body = dict(CONFIG)
            return self.answer(body)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()


def main():
    addr, cert, key, control = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    client_ca = sys.argv[5] if len(sys.argv) > 5 else None
    # SIGTERM exits cleanly: running commands are killed, a default pod root removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if client_ca:
        # Client certificates are checked against CLIENT_CA when presented (as an API server
        # with --client-ca-file does); each request's certificate CN is listed in /seen.
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(["http/1.1"])
    api = ThreadingHTTPServer((addr, 443), Handler)
    api.socket = ctx.wrap_socket(api.socket, server_side=True)
    ctl = ThreadingHTTPServer(("127.0.0.1", control), Control)
    threading.Thread(target=ctl.serve_forever, daemon=True).start()
    print("ready", flush=True)
    api.serve_forever()


if __name__ == "__main__":
    main()
