#!/usr/bin/env python3
"""A library SSH client (asyncssh) against an intercepted SSH target, for tests/ssh.rs. Its
known_hosts holds only the gateway's @cert-authority line, so connecting at all means the host
certificate was accepted.

Modes:
  library HOST KNOWN_HOSTS RO_FILE   exec allowed + denied, sftp get, host trust via the
                                     @cert-authority line in KNOWN_HOSTS; prints key=value lines.
  flood HOST KNOWN_HOSTS N           opens N session channels at once; prints how many opened and
                                     whether the connection survived.
"""
import asyncio
import sys

import asyncssh


async def connect(host, known_hosts):
    return await asyncssh.connect(
        host,
        username="anyone",
        known_hosts=known_hosts,
        client_keys=None,
        agent_path=None,
        password=None,
        preferred_auth="none",
    )


async def library(host, known_hosts, ro_file):
    async with await connect(host, known_hosts) as conn:
        r = await conn.run("echo library-client-ok", check=False)
        print(f"allowed_exit={r.exit_status}")
        print(f"allowed_stdout={r.stdout.strip()}")
        r = await conn.run("rm -f " + ro_file, check=False)
        print(f"denied_exit={r.exit_status}")
        print(f"denied_stderr={r.stderr.strip()}")
        async with conn.start_sftp_client() as sftp:
            async with sftp.open(ro_file, "rb") as f:
                data = await f.read()
            print(f"sftp_get={data.decode().strip()}")
            try:
                async with sftp.open(ro_file + ".new", "wb") as f:
                    await f.write(b"x")
                print("sftp_put=allowed")
            except asyncssh.SFTPError as e:
                print(f"sftp_put=refused code={e.code}")


async def flood(host, known_hosts, n):
    conn = await connect(host, known_hosts)
    opened = refused = 0

    async def one():
        nonlocal opened, refused
        try:
            chan, _ = await conn.create_session(asyncssh.SSHClientSession, "sleep 5")
            opened += 1
            return chan
        except (asyncssh.ChannelOpenError, asyncssh.Error, OSError, ConnectionError):
            refused += 1
            return None

    await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    await asyncio.sleep(0.5)
    # Whether the gateway ended the flooding connection.
    try:
        r = await asyncio.wait_for(conn.run("echo still-here", check=False), 5)
        alive = r.stdout.strip() == "still-here"
    except Exception:  # noqa: BLE001 - any failure means the connection is gone
        alive = False
    print(f"opened={opened} refused={refused} alive={alive}")
    conn.close()


def main():
    mode = sys.argv[1]
    if mode == "library":
        asyncio.run(library(sys.argv[2], sys.argv[3], sys.argv[4]))
    elif mode == "flood":
        asyncio.run(flood(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
