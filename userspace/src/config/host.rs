//! What the host itself says about a configuration: a proxy listener port the kernel could hand
//! out as an ephemeral port is refused.

/// Why a proxy listener port is unsafe on this host, if it is: a port inside
/// `net.ipv4.ip_local_port_range` (that is not in `ip_local_reserved_ports`) can be handed to
/// anyone's `listen()` or `connect()` as an ephemeral port, with no bind for the kernel
/// programs to refuse, while the daemon is down.
pub fn proxy_port_problem(port: u16) -> Option<String> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| parse_port_range(&text))
        // The kernel's default, where the host does not say (policy check elsewhere).
        .unwrap_or((32768, 60999));
    let reserved =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap_or_default();
    ephemeral_conflict(port, range, &reserved)
}

fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    Some((parts.next()?.ok()?, parts.next()?.ok()?))
}

fn ephemeral_conflict(port: u16, (low, high): (u16, u16), reserved: &str) -> Option<String> {
    if port < low || port > high {
        return None;
    }
    let is_reserved = reserved.trim().split(',').any(|item| {
        let mut ends = item.trim().splitn(2, '-').map(str::parse::<u16>);
        match (ends.next(), ends.next()) {
            (Some(Ok(a)), None) => port == a,
            (Some(Ok(a)), Some(Ok(b))) => (a..=b).contains(&port),
            _ => false,
        }
    });
    (!is_reserved).then(|| {
        format!(
            "proxy listener port {port} is inside net.ipv4.ip_local_port_range ({low}-{high}): any process could be handed it as an ephemeral port while the daemon is down; choose a port outside the range (or list it in net.ipv4.ip_local_reserved_ports)"
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_ports_are_refused_unless_reserved() {
        let range = (32768, 60999);
        assert!(ephemeral_conflict(15000, range, "").is_none());
        assert!(ephemeral_conflict(32767, range, "").is_none());
        let msg = ephemeral_conflict(32768, range, "").expect("inside");
        assert!(msg.contains("ip_local_port_range (32768-60999)"), "{msg}");
        assert!(ephemeral_conflict(60999, range, "\n").is_some());
        assert!(ephemeral_conflict(40000, range, "8080,39990-40010\n").is_none());
        assert!(ephemeral_conflict(40011, range, "8080,39990-40010\n").is_some());
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
    }
}
