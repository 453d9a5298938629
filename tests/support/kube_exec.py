"""Exec, attach and port-forward for the test Kubernetes API server (kube_api.py): the
streaming subresources as the kubelet serves them, over WebSocket (`v5.channel.k8s.io`,
`v4.channel.k8s.io`) and SPDY/3.1 (`v5`/`v4`/`v3`/`v2.channel.k8s.io`, `channel.k8s.io`,
`portforward.k8s.io`). Python standard library only.

Pods: each pod's filesystem is a directory `<KUBE_POD_ROOT>/<namespace>/<pod>` (KUBE_POD_ROOT
defaults to a fresh temporary directory), seeded with `data/hello.txt`, `data/notes.txt` and
`etc/hostname`. A command runs on the host with cwd and HOME the pod's directory; every argv
argument that is an absolute path is mapped under the pod's directory (`/data` ->
`<poddir>/data`), and an absolute argv[0] runs the program of that name found on PATH. (A
shell script's own text is not rewritten: `sh -c 'rm -rf /data'` would act on the host.)
Port-forward to a pod's port P connects to 127.0.0.1:P, or to the local port that
KUBE_PORT_MAP maps it to (`8080=18081,9090=19091`).
"""

import atexit
import base64
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import termios
import threading
import time
import zlib

CHUNK = 256 * 1024

# ---------------------------------------------------------------------------------------------
# Pods and processes


POD_ROOT = os.environ.get("KUBE_POD_ROOT")
if not POD_ROOT:
    POD_ROOT = tempfile.mkdtemp(prefix="kube-pods-")
    atexit.register(shutil.rmtree, POD_ROOT, True)
_POD_LOCK = threading.Lock()
LIVE = set()  # running Processes, killed when the server exits


@atexit.register
def _kill_live():
    for p in list(LIVE):
        p.kill()


def pod_dir(ns, name):
    d = os.path.join(os.path.realpath(POD_ROOT), ns, name)
    with _POD_LOCK:
        if not os.path.isdir(d):
            os.makedirs(os.path.join(d, "data"), exist_ok=True)
            os.makedirs(os.path.join(d, "etc"), exist_ok=True)
            os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
            with open(os.path.join(d, "data", "hello.txt"), "w") as f:
                f.write(f"hello from {name}\n")
            with open(os.path.join(d, "data", "notes.txt"), "w") as f:
                f.write("one\ntwo\nthree\n")
            with open(os.path.join(d, "etc", "hostname"), "w") as f:
                f.write(name + "\n")
    return d


def map_path(poddir, arg):
    """An absolute path inside the pod, as a host path under the pod's directory."""
    rel = os.path.normpath("/" + arg.lstrip("/")).lstrip("/")
    return os.path.join(poddir, rel) if rel not in ("", ".") else poddir


def map_argv(poddir, argv):
    prog = argv[0]
    if prog.startswith("/"):
        prog = os.path.basename(prog)
    return [prog] + [map_path(poddir, a) if a.startswith("/") else a for a in argv[1:]]


def go_list(argv):
    """Go's %v of a []string."""
    return "[" + " ".join(argv) + "]"


def success_status():
    return {"metadata": {}, "status": "Success"}


def exit_status(argv, code):
    """The kubelet's Status for a command that exited with a non-zero code."""
    return {
        "metadata": {},
        "status": "Failure",
        "message": "command terminated with non-zero exit code: error executing command "
        f"{go_list(argv)}, exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def internal_status(message):
    return {
        "metadata": {},
        "status": "Failure",
        "message": "Internal error occurred: " + message,
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }


def _set_pipe_size(fd):
    try:
        fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ
    except OSError:
        pass


class Process:
    """A command running in a pod, its streams plumbed to callbacks: `out(data)` and
    `err(data)` (b"" at EOF). stdin is fed with write()/close_stdin(), a tty resized with
    resize()."""

    def __init__(self, ns, pod, argv, stdin, stdout, stderr, tty, out, err):
        self.argv = argv
        self.tty = tty
        self.poddir = pod_dir(ns, pod)
        self.master = None
        self.stdin_fd = None
        self.stdin_ok = stdin
        self.threads = []
        self.wlock = threading.Lock()
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": self.poddir,
            "PWD": self.poddir,
            "HOSTNAME": pod,
            "LANG": "C.UTF-8",
        }
        cmd = map_argv(self.poddir, argv)
        if tty:
            env["TERM"] = "xterm"
            self.master, slave = os.openpty()

            def ctty():
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)

            try:
                self.proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave,
                                             cwd=self.poddir, env=env, start_new_session=True,
                                             preexec_fn=ctty)
            finally:
                os.close(slave)
            self.stdin_fd = self.master if stdin else None
            self._pump(self.master, out if stdout else (lambda d: None), tty=True)
        else:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                stderr=subprocess.PIPE if stderr else subprocess.DEVNULL,
                cwd=self.poddir, env=env, start_new_session=True, bufsize=0,
                preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
            if stdin:
                self.stdin_fd = self.proc.stdin.fileno()
                _set_pipe_size(self.stdin_fd)
            if stdout:
                _set_pipe_size(self.proc.stdout.fileno())
                self._pump(self.proc.stdout.fileno(), out)
            if stderr:
                self._pump(self.proc.stderr.fileno(), err)
        LIVE.add(self)

    def _pump(self, fd, cb, tty=False):
        def run():
            while True:
                try:
                    data = os.read(fd, CHUNK)
                except OSError:  # EIO: the pty's other side is closed
                    data = b""
                try:
                    cb(data)
                except Exception:
                    pass
                if not data:
                    return

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)

    def write(self, data):
        with self.wlock:
            if self.stdin_fd is None or not data:
                return
            try:
                view = memoryview(data)
                while view:
                    n = os.write(self.stdin_fd, view)
                    view = view[n:]
            except OSError:  # the process does not read its stdin any more
                if not self.tty:
                    self._close_stdin_locked()

    def _close_stdin_locked(self):
        if self.stdin_fd is not None and not self.tty:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        self.stdin_fd = None

    def close_stdin(self):
        with self.wlock:
            if self.tty:
                return  # the kubelet leaves a tty open when the client's stdin ends
            self._close_stdin_locked()

    def resize(self, width, height):
        if self.master is not None:
            try:
                fcntl.ioctl(self.master, termios.TIOCSWINSZ,
                            struct.pack("HHHH", int(height), int(width), 0, 0))
            except OSError:
                pass

    def wait(self):
        """Waits for the command and its output; returns the exit code (128+signal when
        killed, as a container runtime reports it)."""
        code = self.proc.wait()
        LIVE.discard(self)
        for t in self.threads:
            t.join()
        if self.master is not None:
            os.close(self.master)
            self.master = None
        with self.wlock:
            self._close_stdin_locked()
        return 128 - code if code < 0 else code

    def kill(self, sig=signal.SIGKILL):
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, sig)
            except OSError:
                pass

    def hangup(self):
        """The client went away: a tty hangs up (SIGHUP), a pipe's stdin ends."""
        if self.tty:
            self.kill(signal.SIGHUP)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.kill()
        else:
            self.close_stdin()


def start_process(ns, pod, argv, stdin, stdout, stderr, tty, out, err):
    """A Process, or an InternalError Status when it cannot start (as the runtime answers)."""
    if not argv:
        return None, internal_status("error executing command in container: no command")
    try:
        return Process(ns, pod, argv, stdin, stdout, stderr, tty, out, err), None
    except (FileNotFoundError, PermissionError) as e:
        prog = argv[0]
        what = ("executable file not found in $PATH" if isinstance(e, FileNotFoundError)
                else "permission denied")
        return None, internal_status(
            "error executing command in container: failed to exec in container: failed to "
            f'start exec "0": OCI runtime exec failed: exec failed: unable to start container '
            f'process: exec: "{prog}": {what}: unknown')


def status_code_of(st):
    if st["status"] == "Success":
        return 0
    for c in st.get("details", {}).get("causes", []):
        if c.get("reason") == "ExitCode":
            return int(c["message"])
    return None


class ResizeParser:
    """TerminalSize JSON objects, possibly split or concatenated on a stream."""

    def __init__(self, proc):
        self.proc = proc
        self.buf = ""
        self.dec = json.JSONDecoder()

    def feed(self, data):
        self.buf += data.decode("utf-8", "replace")
        while True:
            s = self.buf.lstrip()
            if not s:
                self.buf = ""
                return
            try:
                obj, end = self.dec.raw_decode(s)
            except ValueError:
                self.buf = s
                return
            self.buf = s[end:]
            if self.proc and isinstance(obj, dict):
                self.proc.resize(obj.get("Width", 80), obj.get("Height", 24))


# ---------------------------------------------------------------------------------------------
# WebSocket (RFC 6455) with the channel.k8s.io framing

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_accept(key):
    import hashlib

    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def unmask(mask, data):
    n = len(data)
    if not n:
        return data
    m = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(m, "little")).to_bytes(n, "little")


class WebSocket:
    def __init__(self, rfile, wfile):
        self.r = rfile
        self.w = wfile
        self.lock = threading.Lock()
        self.closed_sent = False

    def send(self, opcode, payload):
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
        with self.lock:
            if self.closed_sent:
                return
            if opcode == 8:
                self.closed_sent = True
            try:
                self.w.write(head + payload if n < 4096 else head)
                if n >= 4096:
                    self.w.write(payload)
            except OSError:
                pass

    def send_channel(self, channel, data):
        self.send(2, bytes([channel]) + data)

    def _read(self, n):
        data = self.r.read(n)
        if data is None or len(data) < n:
            raise EOFError
        return data

    def messages(self):
        """Yields complete data messages (bytes); answers pings and the close handshake."""
        parts = []
        while True:
            try:
                b0, b1 = self._read(2)
                n = b1 & 0x7F
                if n == 126:
                    n = struct.unpack("!H", self._read(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", self._read(8))[0]
                mask = self._read(4) if b1 & 0x80 else None
                payload = self._read(n) if n else b""
            except (EOFError, OSError, ValueError):
                return
            if mask:
                payload = unmask(mask, payload)
            opcode = b0 & 0x0F
            if opcode == 8:
                self.send(8, payload[:2] if len(payload) >= 2 else b"")
                return
            if opcode == 9:
                self.send(10, payload)
                continue
            if opcode == 10:
                continue
            parts.append(payload)
            if b0 & 0x80:
                msg = b"".join(parts) if len(parts) > 1 else parts[0]
                parts = []
                yield msg


def serve_exec_ws(handler, proto, ns, pod, argv, opts, on_start, factory=None):
    """exec (or attach, with `factory`) over an upgraded WebSocket connection (the 101 is
    already sent)."""
    ws = WebSocket(handler.rfile, handler.wfile)
    v5 = proto == "v5.channel.k8s.io"

    def sender(ch):
        def cb(data):
            if data:
                ws.send_channel(ch, data)
        return cb

    if factory is None:
        proc, st = start_process(ns, pod, argv, opts["stdin"], opts["stdout"], opts["stderr"],
                                 opts["tty"], sender(1), sender(2))
    else:
        proc, st = factory(sender(1), sender(2))
    on_start()
    resize = ResizeParser(proc)
    done = threading.Event()

    def reader():
        for msg in ws.messages():
            if not msg or proc is None:
                continue
            ch, data = msg[0], msg[1:]
            if ch == 0:
                proc.write(data)
            elif ch == 4:
                resize.feed(data)
            elif ch == 255 and v5 and data[:1] == b"\x00":
                proc.close_stdin()
        if proc is not None and not done.is_set():
            # The client went away.
            if hasattr(proc, "detach"):
                proc.detach()
            else:
                proc.hangup()
        done.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    if proc is not None:
        code = proc.wait()
        st = success_status() if code == 0 else exit_status(argv, code)
    ws.send_channel(3, json.dumps(st, separators=(",", ":")).encode())
    ws.send(8, struct.pack("!H", 1000))
    done.wait(5)
    handler.close_connection = True
    return st


# ---------------------------------------------------------------------------------------------
# SPDY/3.1 (as moby/spdystream speaks it)

SPDY_DICT = zlib.decompress(base64.b64decode(
    "eNplVNty2zYQ1dSylEmTtEl+AM8tGYMk6Did8YN7cet03GQad/oMgSsKMQggIKhLvr67oOQq7YwkHhzs5eyFmkwm"
    "c+ejdrafTCbTFciGnt71EZ8nfqDHrAEDERCdxiAVgZlUCjxdPhtRrlYy9EDMN3sGrHKNtu0RZaRtB9lShKd7KiAF"
    "lPxk5E+lMW6TDIa4ckF/liSPCCXVCnLlbAzOIPEYoQW1v35CF2BjvpA9Bfr2cD7S8cAdCXn2wIFt4+oLK6cOyb8+"
    "cF1TJy37Y5J/nD3uPJ2njUwdm0KUlHkGW49SEc0R6ZBKni6D61Lfx34/0su8k1GRiOeEUfdSQ5P32qa2P0XSOgsP"
    "VuRxkPAS8WD/72NkHx9Ckc9RWU86uc2XLmxkaEjRzAfZdhLRCx/cdpfTELAsrcZyXv7LHo/m9KBhHmAJAQJ1LEAM"
    "aLqM6TjrIawT+ipFmuMqaZOI5whtj37Ho5oPvg2yIdPHA/rmOC1LTZquZdjRvqw16ZyjdLuf7maz+a/gWQcolco+"
    "adN2zvoo45BqLTln736nGCisHyt59Nvd3fuz4lVBHkMwqSfDwmhFQnDBcf/cvU6y7gF8Lo1ep0TYj1bbgvOCFyV9"
    "ypLXJT+vOK94WfGq4qLidUXMa8FLwWvBzwXhC8HfiIKLohBFKYpKFEIUtSjORfG65mXNRU2hKvaHs/nV2HusAhOz"
    "G4vT69IcSi7QgP00LmLFC3br1tCw94AGFimzE1jxj7Jhf8KnAfoo0OYvexgmNAJTXLuw0E0DVqRwEYnBNjU63mDc"
    "YKVhH9Ik2S8huFBjCLK66byBDpMA2lbJRCug6Gscs1wYeCstu4YFu5WBXfmAzx17O1j8GnY1tOjiI3unIoZbs59B"
    "Mc5/SB8sw2bsboCM/Q0NotWQseugM/ZBRvwZ8PbX2zu1Guw93kfYxrNV7EymO9yZM2/bPfroD6jVy0x6b/T4Ipxt"
    "0fqLM/l/T2yK5o3UdoQfsZ5eBe1jNq6FD3qNq0bvEUa+bD9rnzWwNMhlfaNW+//FyyEu84vDQfcuv7io3+RFRnz2"
    "XQb20yV/9Q/jxqfC"))
assert len(SPDY_DICT) == 1423

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = (
    1, 2, 3, 4, 6, 7, 8, 9)
FLAG_FIN = 0x01


class SpdyStream:
    def __init__(self, conn, sid, headers):
        self.conn = conn
        self.id = sid
        self.headers = headers
        self.on_data = None  # callback(bytes); b"" when the peer half-closes (FIN)
        self.on_reset = None
        self.pending = []  # data received before on_data is set
        self.dlock = threading.Lock()
        self.remote_fin = False
        self.local_fin = False
        self.reset = False

    def header(self, name):
        return self.headers.get(name.lower(), [""])[0]

    def deliver(self, data):
        with self.dlock:
            if self.on_data is None:
                self.pending.append(data)
                return
        self.on_data(data)

    def set_on_data(self, cb):
        with self.dlock:
            pending, self.pending = self.pending, []
            for d in pending:
                cb(d)
            self.on_data = cb

    def write(self, data):
        if data:
            self.conn.data(self.id, data)

    def close(self):
        """Half-closes our side (DATA with FIN)."""
        if not self.local_fin and not self.reset:
            self.local_fin = True
            self.conn.data(self.id, b"", fin=True)


class SpdyConn:
    """One SPDY/3.1 connection over an upgraded HTTP/1.1 socket, server side: the client
    creates streams (SYN_STREAM), each is answered with SYN_REPLY and handed to on_stream.
    spdystream sends no SETTINGS and neither sends nor enforces WINDOW_UPDATE, so none are
    sent; the ones received are read and ignored."""

    def __init__(self, rfile, wfile, on_stream):
        self.r = rfile
        self.w = wfile
        self.on_stream = on_stream
        self.lock = threading.Lock()
        self.streams = {}
        self.cond = threading.Condition()
        self.comp = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY,
                                     SPDY_DICT)
        self.decomp = zlib.decompressobj(zdict=SPDY_DICT)
        self.closed = False
        self.goaway_sent = False

    # -- writing
    def _control(self, ftype, flags, payload):
        head = struct.pack("!HHI", 0x8000 | 3, ftype, (flags << 24) | len(payload))
        self.w.write(head + payload)

    def _header_block(self, headers):
        raw = struct.pack("!I", len(headers))
        for k, v in headers:
            k = k.lower().encode()
            v = v.encode()
            raw += struct.pack("!I", len(k)) + k + struct.pack("!I", len(v)) + v
        return self.comp.compress(raw) + self.comp.flush(zlib.Z_SYNC_FLUSH)

    def syn_reply(self, sid, headers=(), fin=False):
        with self.lock:
            if self.closed:
                return
            try:
                self._control(SYN_REPLY, FLAG_FIN if fin else 0,
                              struct.pack("!I", sid) + self._header_block(list(headers)))
            except OSError:
                self.closed = True

    def data(self, sid, payload, fin=False):
        mv = memoryview(payload)
        with self.lock:
            if self.closed:
                return
            try:
                while True:
                    part = mv[:0xFFFFFF]
                    mv = mv[len(part):]
                    last = not mv
                    flags = FLAG_FIN if (fin and last) else 0
                    self.w.write(struct.pack("!II", sid & 0x7FFFFFFF, (flags << 24) | len(part)))
                    if part:
                        self.w.write(part)
                    if last:
                        return
            except OSError:
                self.closed = True

    def rst(self, sid, code=5):  # 5: CANCEL
        with self.lock:
            if not self.closed:
                try:
                    self._control(RST_STREAM, 0, struct.pack("!II", sid, code))
                except OSError:
                    self.closed = True

    def goaway(self):
        with self.lock:
            if not self.closed and not self.goaway_sent:
                self.goaway_sent = True
                last = max(self.streams) if self.streams else 0
                try:
                    self._control(GOAWAY, 0, struct.pack("!II", last, 0))
                except OSError:
                    self.closed = True

    # -- reading
    def _read(self, n):
        data = self.r.read(n)
        if data is None or len(data) < n:
            raise EOFError
        return data

    def _headers(self, block):
        raw = self.decomp.decompress(block)
        (count,) = struct.unpack_from("!I", raw, 0)
        off = 4
        out = {}
        for _ in range(count):
            (n,) = struct.unpack_from("!I", raw, off)
            name = raw[off + 4:off + 4 + n].decode().lower()
            off += 4 + n
            (n,) = struct.unpack_from("!I", raw, off)
            value = raw[off + 4:off + 4 + n].decode()
            off += 4 + n
            out.setdefault(name, []).extend(value.split("\x00"))
        return out

    def serve(self):
        """Reads frames until the connection ends or GOAWAY."""
        try:
            while True:
                head = self._read(8)
                if head[0] & 0x80:
                    ftype = struct.unpack_from("!H", head, 2)[0]
                    (fl,) = struct.unpack_from("!I", head, 4)
                    flags, length = fl >> 24, fl & 0xFFFFFF
                    payload = self._read(length) if length else b""
                    if ftype == SYN_STREAM:
                        sid = struct.unpack_from("!I", payload, 0)[0] & 0x7FFFFFFF
                        headers = self._headers(payload[10:])
                        st = SpdyStream(self, sid, headers)
                        with self.cond:
                            self.streams[sid] = st
                        self.syn_reply(sid)
                        self.on_stream(st)
                        if flags & FLAG_FIN:
                            st.remote_fin = True
                            st.deliver(b"")
                        with self.cond:
                            self.cond.notify_all()
                    elif ftype in (SYN_REPLY, HEADERS):
                        self._headers(payload[4:])  # keeps the zlib context in step
                    elif ftype == RST_STREAM:
                        sid = struct.unpack_from("!I", payload, 0)[0] & 0x7FFFFFFF
                        st = self.streams.get(sid)
                        if st:
                            st.reset = True
                            if st.on_reset:
                                st.on_reset()
                            if not st.remote_fin:
                                st.remote_fin = True
                                st.deliver(b"")
                    elif ftype == PING:
                        with self.lock:
                            if not self.closed:
                                self._control(PING, 0, payload)
                    elif ftype == GOAWAY:
                        return
                    # SETTINGS, WINDOW_UPDATE: nothing to do
                else:
                    sid, fl = struct.unpack("!II", head)
                    flags, length = fl >> 24, fl & 0xFFFFFF
                    payload = self._read(length) if length else b""
                    st = self.streams.get(sid)
                    if st is None or st.remote_fin:
                        continue
                    if payload:
                        st.deliver(payload)
                    if flags & FLAG_FIN:
                        st.remote_fin = True
                        st.deliver(b"")
        except (EOFError, OSError, ValueError, zlib.error, struct.error):
            return
        finally:
            with self.cond:
                self.closed_by_peer = True
                self.cond.notify_all()
            for st in list(self.streams.values()):
                if not st.remote_fin:
                    st.remote_fin = True
                    st.deliver(b"")

    def close(self):
        with self.lock:
            self.closed = True


def serve_exec_spdy(handler, proto, ns, pod, argv, opts, on_start, factory=None):
    """exec over an upgraded SPDY/3.1 connection (the 101 is already sent), as the kubelet:
    waits for the client's streams (error, then stdin/stdout/stderr/resize as asked), runs
    the command, half-closes stdout/stderr at its end and writes the Status on the error
    stream (v4+: JSON Status; v2/v3: the error text; v1 (channel.k8s.io): the same)."""
    streams = {}
    cond = threading.Condition()

    def on_stream(st):
        with cond:
            streams[st.header("streamtype")] = st
            cond.notify_all()

    conn = SpdyConn(handler.rfile, handler.wfile, on_stream)
    reader = threading.Thread(target=conn.serve, daemon=True)
    reader.start()
    tty = opts["tty"]
    want = ["error"]
    if opts["stdin"]:
        want.append("stdin")
    if opts["stdout"]:
        want.append("stdout")
    if opts["stderr"] and not tty:
        want.append("stderr")
    if tty and proto in ("v3.channel.k8s.io", "v4.channel.k8s.io", "v5.channel.k8s.io"):
        want.append("resize")
    deadline = time.time() + 30
    with cond:
        while not all(w in streams for w in want) and reader.is_alive():
            left = deadline - time.time()
            if left <= 0:
                break
            cond.wait(min(left, 0.5))
    if not all(w in streams for w in want):
        conn.close()
        handler.close_connection = True
        return None

    def sender(name):
        st = streams.get(name)

        def cb(data):
            if st is None:
                return
            if data:
                st.write(data)
            else:
                st.close()
        return cb

    if factory is None:
        proc, status = start_process(ns, pod, argv, opts["stdin"], opts["stdout"],
                                     opts["stderr"] and not tty, tty, sender("stdout"),
                                     sender("stderr"))
    else:
        proc, status = factory(sender("stdout"), sender("stderr"))
    on_start()
    if proc is not None:
        gone = proc.detach if hasattr(proc, "detach") else proc.hangup
        threading.Thread(target=lambda: (reader.join(), gone()), daemon=True).start()
    if proc is not None:
        if "stdin" in streams:
            streams["stdin"].set_on_data(lambda d: proc.write(d) if d else proc.close_stdin())
        if "resize" in streams:
            parser = ResizeParser(proc)
            streams["resize"].set_on_data(lambda d: parser.feed(d) if d else None)
        code = proc.wait()
        status = success_status() if code == 0 else exit_status(argv, code)
    else:
        for name in ("stdout", "stderr"):
            if name in streams:
                streams[name].close()
    err = streams["error"]
    if status["status"] != "Success":
        if proto in ("v4.channel.k8s.io", "v5.channel.k8s.io"):
            err.write(json.dumps(status, separators=(",", ":")).encode())
        else:
            err.write(status["message"].encode())
    err.close()
    # The client closes the connection once it has read the error stream.
    reader.join(10)
    conn.goaway()
    conn.close()
    handler.close_connection = True
    return status


def port_map():
    m = {}
    for part in os.environ.get("KUBE_PORT_MAP", "").split(","):
        if "=" in part:
            a, b = part.split("=", 1)
            m[int(a)] = int(b)
    return m


def serve_portforward_spdy(handler, ns, pod, log):
    """port-forward over SPDY (`portforward.k8s.io`): per request an error and a data stream
    (headers `port`, `requestid`); the data stream is piped to 127.0.0.1:<port>."""
    pending = {}
    lock = threading.Lock()
    pmap = port_map()

    def start(req, error, data):
        port_s = data.header("port")
        try:
            port = int(port_s)
        except ValueError:
            error.write(f'invalid port "{port_s}"'.encode())
            error.close()
            data.close()
            return
        log(f"PORTFORWARD {port}")
        try:
            sock = socket.create_connection(("127.0.0.1", pmap.get(port, port)), timeout=5)
            sock.settimeout(None)
        except OSError as e:
            error.write((f"error forwarding port {port} to pod uid-{ns}-{pod}, uid : "
                         f"failed to connect to localhost:{port} inside namespace "
                         f'"uid-{ns}-{pod}", IPv4: {e} IPv6 dial tcp [::1]:{port}: '
                         "connect: connection refused ").encode())
            error.close()
            data.close()
            return
        state = {"closed": False}

        def from_client(d):
            if state["closed"]:
                return
            try:
                if d:
                    sock.sendall(d)
                else:
                    sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        def on_reset():
            state["closed"] = True
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        data.on_reset = on_reset
        data.set_on_data(from_client)

        def to_client():
            while True:
                try:
                    d = sock.recv(CHUNK)
                except OSError:
                    d = b""
                if not d:
                    break
                data.write(d)
            data.close()
            error.close()
            try:
                sock.close()
            except OSError:
                pass

        threading.Thread(target=to_client, daemon=True).start()

    def on_stream(st):
        kind = st.header("streamtype")
        req = st.header("requestid")
        with lock:
            entry = pending.setdefault(req, {})
            entry[kind] = st
            ready = "error" in entry and "data" in entry
            if ready:
                del pending[req]
        if ready:
            threading.Thread(target=start, args=(req, entry["error"], entry["data"]),
                             daemon=True).start()

    conn = SpdyConn(handler.rfile, handler.wfile, on_stream)
    conn.serve()
    conn.close()
    handler.close_connection = True


# ---------------------------------------------------------------------------------------------
# attach: one long-running process per pod (`sh`), its output fanned out to attached clients


class Attached:
    """A pod's main process (`sh`, no tty), started on first attach."""

    def __init__(self, ns, pod):
        self.clients = []
        self.lock = threading.Lock()
        self.proc = Process(ns, pod, ["sh"], True, True, True, False, self._out(1),
                            self._out(2))

    def _out(self, ch):
        def cb(data):
            if not data:
                return
            with self.lock:
                clients = list(self.clients)
            for c in clients:
                try:
                    c(ch, data)
                except Exception:
                    pass
        return cb


class AttachHandle:
    """One attached client: stdin goes to the pod's process, its output comes back, until the
    client goes away (detach) or the process exits."""

    def __init__(self, a, stdin, out, err):
        self.a = a
        self.stdin = stdin
        self.out, self.err = out, err
        self.ev = threading.Event()
        with a.lock:
            a.clients.append(self.cb)

    def cb(self, ch, data):
        (self.out if ch == 1 else self.err)(data)

    def write(self, data):
        if self.stdin:
            self.a.proc.write(data)

    def close_stdin(self):
        pass  # stdinOnce is not set by kubectl attach: the process keeps its stdin

    def resize(self, width, height):
        pass

    def detach(self):
        self.ev.set()

    def wait(self):
        while not self.ev.wait(0.2):
            if self.a.proc.proc.poll() is not None:
                break
        with self.a.lock:
            if self.cb in self.a.clients:
                self.a.clients.remove(self.cb)
        self.out(b"")
        self.err(b"")
        code = self.a.proc.proc.poll()
        return 0 if code is None else (128 - code if code < 0 else code)


ATTACHED = {}
_ATTACH_LOCK = threading.Lock()


def attach_factory(ns, pod, opts):
    def factory(out, err):
        with _ATTACH_LOCK:
            a = ATTACHED.get((ns, pod))
            if a is None or a.proc.proc.poll() is not None:
                a = ATTACHED[(ns, pod)] = Attached(ns, pod)
        return AttachHandle(a, opts["stdin"], out, err), None
    return factory


def serve_attach(handler, tag, ns, pod, opts, started, serve):
    """attach: the exec machinery of `serve` (a lambda over serve_exec_ws/_spdy), with the
    pod's main process instead of a new command."""
    serve(started, attach_factory(ns, pod, opts))
    handler.close_connection = True
