#!/usr/bin/env python3
"""Bad SSH clients on a raw socket, for tests/ssh.rs. Each prints what the gateway did.

  garbage HOST     sends bytes that are no SSH at all
  truncated HOST   sends a version line and half a KEXINIT, then closes its side
"""
import os
import socket
import struct
import sys


def read_all(s):
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out, "closed"
            out += chunk
    except socket.timeout:
        return out, "timeout"
    except ConnectionResetError:
        return out, "reset"


def main():
    mode, host = sys.argv[1], sys.argv[2]
    s = socket.create_connection((host, 22), timeout=10)
    if mode == "garbage":
        s.sendall(os.urandom(4096) + b"\r\nGET / HTTP/1.1\r\n\r\n" + os.urandom(4096))
        data, how = read_all(s)
    elif mode == "truncated":
        s.sendall(b"SSH-2.0-broken_client\r\n")
        payload = bytes([20]) + os.urandom(16) + struct.pack("!I", 200) + b"curve25519-sha256"
        packet_len = 1 + len(payload) + 600  # claims far more than is sent
        s.sendall(struct.pack("!IB", packet_len, 4) + payload)
        s.shutdown(socket.SHUT_WR)
        data, how = read_all(s)
    else:
        sys.exit(f"unknown mode {mode}")
    banner = data.split(b"\r\n", 1)[0].decode(errors="replace")
    print(f"server_banner={banner}")
    print(f"end={how}")


if __name__ == "__main__":
    main()
