//! netbench: the two ends of the interception benchmarks.
//!
//! - `netbench serve PORT` — accepts; a connection that sends `C` gets one byte back and is
//!   closed (connection setup); one that sends `T` is drained to EOF and answered with the
//!   byte count (throughput).
//! - `netbench connect ADDR N` — N sequential connections, each timed from `connect()` to
//!   the server's byte (so a proxied connection includes the proxy's upstream connect).
//!   Prints JSON: p50/p99 microseconds and connections per second.
//! - `netbench throughput ADDR BYTES` — sends BYTES, waits for the count. Prints JSON MB/s.
//! - `netbench attempts ADDR SECONDS` — connection attempts one after another for SECONDS,
//!   each a connect, `C` and the server's byte, carrying on past failures. Prints JSON: how
//!   many succeeded, were refused, reset or timed out, and the successes in each 100 ms
//!   (the upgrade benchmark looks for a dip around a hand-over).
//! - `netbench idle ADDR N tcp|pg:USER:DATABASE` — opens N connections and holds them idle
//!   until killed. `pg` completes a PostgreSQL startup on each (StartupMessage, trust or
//!   cleartext-password auth, up to ReadyForQuery) the way psql does before it idles. Prints
//!   JSON once all are open: how many and how long it took.
//! - `netbench splice-relay LISTEN TARGET` — the least a relay can do: per connection, two
//!   blocking threads that splice(2) each direction through a 1 MiB pipe, and nothing else
//!   (no policy, no accounting, no event loop). The throughput benchmark runs it beside the
//!   airlock relay to show what a second TCP hop costs on this machine by itself.
//! - `netbench copy-relay LISTEN TARGET` — the same floor for request/response traffic: two
//!   blocking threads per connection that `read(2)` and `write(2)` each direction through a
//!   64 KiB buffer (`TCP_NODELAY` on both legs). The PostgreSQL benchmark runs it beside the
//!   proxies: no proxy that reads each message in user space can cost less per transaction.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> &str { args.get(i).map(String::as_str).unwrap_or_else(|| usage()) };
    match arg(0) {
        "serve" => serve(arg(1).parse().unwrap_or_else(|_| usage())),
        "connect" => connect(arg(1), arg(2).parse().unwrap_or_else(|_| usage())),
        "throughput" => throughput(arg(1), arg(2).parse().unwrap_or_else(|_| usage())),
        "attempts" => attempts(arg(1), arg(2).parse().unwrap_or_else(|_| usage())),
        "idle" => idle(arg(1), arg(2).parse().unwrap_or_else(|_| usage()), arg(3)),
        "splice-relay" => relay(arg(1), arg(2), splice_one_way),
        "copy-relay" => relay(arg(1), arg(2), copy_one_way),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: netbench serve PORT | connect ADDR N | throughput ADDR BYTES | attempts ADDR SECONDS | idle ADDR N tcp|pg:USER:DB | splice-relay|copy-relay LISTEN TARGET"
    );
    std::process::exit(2)
}

fn fail(what: &str, e: std::io::Error) -> ! {
    eprintln!("netbench: {what}: {e}");
    std::process::exit(1)
}

fn serve(port: u16) {
    let listener = TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| fail("bind", e));
    println!("ready");
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        // Small stacks: the scale benchmark holds ten thousand idle connections here.
        let spawned = std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || {
                let mut mode = [0u8; 1];
                if conn.read_exact(&mut mode).is_err() {
                    return;
                }
                match mode[0] {
                    b'C' => {
                        let _ = conn.write_all(b"k");
                    }
                    b'T' => {
                        let mut buf = vec![0u8; 1 << 20];
                        let mut total: u64 = 0;
                        loop {
                            match conn.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => total += n as u64,
                            }
                        }
                        let _ = conn.write_all(&total.to_be_bytes());
                    }
                    _ => {}
                }
            });
        if let Err(e) = spawned {
            eprintln!("netbench: spawn: {e}");
        }
    }
}

fn connect(addr: &str, n: usize) {
    let mut samples = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap_or_else(|e| fail("connect", e));
        s.set_nodelay(true).ok();
        s.write_all(b"C").unwrap_or_else(|e| fail("write", e));
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap_or_else(|e| fail("read", e));
        samples.push(t0.elapsed());
    }
    let elapsed = started.elapsed();
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e6;
    println!(
        "{{\"connections\": {n}, \"p50_us\": {:.1}, \"p99_us\": {:.1}, \"per_second\": {:.0}}}",
        pct(0.50),
        pct(0.99),
        n as f64 / elapsed.as_secs_f64()
    );
}

fn attempts(addr: &str, seconds: f64) {
    use std::io::ErrorKind;
    let target: std::net::SocketAddr = addr.parse().unwrap_or_else(|_| usage());
    let started = Instant::now();
    let bins = (seconds * 10.0).ceil() as usize;
    let mut ok_per_bin = vec![0u32; bins.max(1)];
    let (mut ok, mut refused, mut reset, mut timeout, mut other) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut first_error: Option<String> = None;
    while started.elapsed().as_secs_f64() < seconds {
        let attempt = (|| -> std::io::Result<()> {
            let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"C")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)
        })();
        match attempt {
            Ok(()) => {
                ok += 1;
                let bin = (started.elapsed().as_secs_f64() * 10.0) as usize;
                if let Some(n) = ok_per_bin.get_mut(bin) {
                    *n += 1;
                }
            }
            Err(e) => {
                match e.kind() {
                    ErrorKind::ConnectionRefused => refused += 1,
                    ErrorKind::ConnectionReset
                    | ErrorKind::UnexpectedEof
                    | ErrorKind::BrokenPipe => reset += 1,
                    ErrorKind::TimedOut | ErrorKind::WouldBlock => timeout += 1,
                    _ => other += 1,
                }
                first_error.get_or_insert_with(|| e.to_string());
                // A refused connect returns at once: do not spin on it.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let bins: Vec<String> = ok_per_bin.iter().map(u32::to_string).collect();
    println!(
        "{{\"seconds\": {elapsed:.3}, \"ok\": {ok}, \"refused\": {refused}, \"reset\": {reset}, \"timeout\": {timeout}, \"other\": {other}, \"first_error\": {}, \"ok_per_100ms\": [{}]}}",
        first_error.map_or("null".into(), |e| format!("{e:?}")),
        bins.join(", ")
    );
}

fn throughput(addr: &str, bytes: u64) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| fail("connect", e));
    s.write_all(b"T").unwrap_or_else(|e| fail("write", e));
    let chunk = vec![0x5au8; 1 << 20];
    let t0 = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n])
            .unwrap_or_else(|e| fail("write", e));
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write)
        .unwrap_or_else(|e| fail("shutdown", e));
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut count = [0u8; 8];
    s.read_exact(&mut count)
        .unwrap_or_else(|e| fail("read count", e));
    let secs = t0.elapsed().as_secs_f64();
    let got = u64::from_be_bytes(count);
    if got != bytes {
        eprintln!("netbench: server counted {got} bytes, sent {bytes}");
        std::process::exit(1);
    }
    println!(
        "{{\"bytes\": {bytes}, \"seconds\": {secs:.3}, \"mb_per_s\": {:.1}}}",
        bytes as f64 / secs / 1e6
    );
}

fn idle(addr: &str, n: usize, mode: &str) {
    let pg = match mode {
        "tcp" => None,
        m => match m.strip_prefix("pg:").and_then(|r| r.split_once(':')) {
            Some((user, db)) => Some((user.to_string(), db.to_string())),
            None => usage(),
        },
    };
    let t0 = Instant::now();
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).unwrap_or_else(|e| fail("connect", e));
        if let Some((user, db)) = &pg {
            pg_startup(&mut s, user, db).unwrap_or_else(|e| fail("postgres startup", e));
        }
        held.push(s);
    }
    // The pid lets the harness stop exactly this process (it runs behind nsenter and sh).
    println!(
        "{{\"connections\": {n}, \"seconds\": {:.3}, \"pid\": {}}}",
        t0.elapsed().as_secs_f64(),
        std::process::id()
    );
    std::io::stdout().flush().ok();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// A PostgreSQL startup up to the first ReadyForQuery.
fn pg_startup(s: &mut TcpStream, user: &str, db: &str) -> std::io::Result<()> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608u32.to_be_bytes());
    for kv in [
        "user",
        user,
        "database",
        db,
        "application_name",
        "netbench-idle",
    ] {
        body.extend_from_slice(kv.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    s.write_all(&msg)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head)?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut payload = vec![0u8; len.saturating_sub(4)];
        s.read_exact(&mut payload)?;
        match head[0] {
            b'R' if payload.get(..4) == Some(&3u32.to_be_bytes()[..]) => {
                // Cleartext password request: the gateway holds the real credentials.
                let pw = b"unused\0";
                s.write_all(b"p")?;
                s.write_all(&((pw.len() + 4) as u32).to_be_bytes())?;
                s.write_all(pw)?;
            }
            b'R' if payload.get(..4) != Some(&0u32.to_be_bytes()[..]) => {
                return Err(std::io::Error::other("unsupported authentication request"));
            }
            b'E' => {
                return Err(std::io::Error::other(
                    String::from_utf8_lossy(&payload).replace('\0', " "),
                ));
            }
            b'Z' => return Ok(()),
            _ => {}
        }
    }
}

/// Accepts on `listen`; per connection, dials `target` and runs `one_way` in each direction
/// on its own thread.
fn relay(listen: &str, target: &str, one_way: fn(&TcpStream, &TcpStream)) {
    let listener = TcpListener::bind(listen).unwrap_or_else(|e| fail("bind", e));
    println!("ready");
    for conn in listener.incoming() {
        let Ok(client) = conn else { continue };
        let upstream = match TcpStream::connect(target) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("netbench: connect {target}: {e}");
                continue;
            }
        };
        let (Ok(client2), Ok(upstream2)) = (client.try_clone(), upstream.try_clone()) else {
            continue;
        };
        std::thread::spawn(move || one_way(&client, &upstream));
        std::thread::spawn(move || one_way(&upstream2, &client2));
    }
}

/// Copies `from` into `to` until EOF, then half-closes `to`.
fn copy_one_way(mut from: &TcpStream, mut to: &TcpStream) {
    // Request/response traffic: each message goes out at once, as the proxies send it.
    let _ = to.set_nodelay(true);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Splices `from` into `to` until EOF, then half-closes `to`.
fn splice_one_way(from: &TcpStream, to: &TcpStream) {
    use std::os::fd::AsRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: a valid out array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    // SAFETY: our own pipe; a refusal leaves the default size.
    unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 1 << 20) };
    let splice = |a: libc::c_int, b: libc::c_int, len: usize| {
        // SAFETY: plain fds; null offsets for sockets and pipes.
        unsafe {
            libc::splice(
                a,
                std::ptr::null_mut(),
                b,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE,
            )
        }
    };
    'relay: loop {
        let n = splice(from.as_raw_fd(), fds[1], 1 << 20);
        if n <= 0 {
            break;
        }
        let mut left = n as usize;
        while left > 0 {
            let m = splice(fds[0], to.as_raw_fd(), left);
            if m <= 0 {
                break 'relay;
            }
            left -= m as usize;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    // SAFETY: the pipe's two fds, closed once.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
}
