//! Stage two helpers: turn the text of one value into its typed form, or an error
//! message about it. Range rules of SPEC section 2 live here.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::model::{Address, Cidr};
use super::raw::AddrText;

pub fn count(text: &str, min: u64, max: u64) -> Result<u64, String> {
    let n: u64 = text
        .parse()
        .map_err(|_| format!("`{text}` is too large (at most {max})"))?;
    if n < min {
        return Err(format!("`{text}` is too small (at least {min})"));
    }
    if n > max {
        return Err(format!("`{text}` is too large (at most {max})"));
    }
    Ok(n)
}

/// The longest duration a key takes: 30 days (SPEC section 12). Deadlines are
/// computed as now plus the duration, in milliseconds and as `Instant`s; far larger
/// values overflowed them (a panic, or a deadline in the past) while passing
/// `--check`.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// humantime, or a bare integer meaning seconds (Monkey wrote `OfflineTimeOut 60`).
pub fn duration(text: &str) -> Result<Duration, String> {
    let d = if text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("duration `{text}` is too large (at most 30d)"))?
    } else {
        humantime::parse_duration(text).map_err(|e| format!("invalid duration `{text}`: {e}"))?
    };
    if d > MAX_DURATION {
        return Err(format!("duration `{text}` is too large (at most 30d)"));
    }
    Ok(d)
}

pub fn nonzero_duration(text: &str) -> Result<Duration, String> {
    let d = duration(text)?;
    if d.is_zero() {
        return Err(format!("duration `{text}` must be more than zero"));
    }
    Ok(d)
}

/// Resolve an address as written. Host names are looked up once, here, at load
/// time: the first address wins, IPv4 preferred, so a check and a run agree.
pub fn address(addr: &AddrText, listening: bool) -> Result<Address, String> {
    match addr {
        AddrText::Unix(path) => {
            if path.is_empty() {
                return Err("`unix:` needs a socket path".into());
            }
            Ok(Address::Unix(PathBuf::from(path)))
        }
        AddrText::Ipv6 { host, port } => {
            let port = port_number(port, listening)?;
            if host.contains('%') {
                return Err(format!(
                    "`[{host}]`: scoped IPv6 addresses (with %zone) are not supported"
                ));
            }
            let ip: Ipv6Addr = host
                .parse()
                .map_err(|_| format!("`[{host}]` is not an IPv6 address"))?;
            Ok(Address::Inet(SocketAddr::new(IpAddr::V6(ip), port)))
        }
        AddrText::HostPort { host, port } => {
            let port = port_number(port, listening)?;
            if listening && (host == "*" || host.is_empty()) {
                return Ok(Address::Inet(SocketAddr::from(([0, 0, 0, 0], port))));
            }
            if let Ok(ip) = host.parse::<IpAddr>() {
                return Ok(Address::Inet(SocketAddr::new(ip, port)));
            }
            if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                return Err(format!("`{host}` is not an IPv4 address"));
            }
            let found: Vec<SocketAddr> = (host.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve host `{host}`: {e}"))?
                .collect();
            found
                .iter()
                .find(|a| a.is_ipv4())
                .or(found.first())
                .map(|a| Address::Inet(*a))
                .ok_or_else(|| format!("host `{host}` has no address"))
        }
    }
}

fn port_number(port: &str, listening: bool) -> Result<u16, String> {
    match port.parse::<u32>() {
        Ok(0) if !listening => Err("port 0: a backend needs a real port".into()),
        Ok(0) => Err("port 0: give the port to listen on".into()),
        Ok(p) if p <= 65535 => Ok(p as u16),
        _ => Err(format!("port `{port}` is out of range (1-65535)")),
    }
}

pub fn cidr(text: &str) -> Result<Cidr, String> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{addr}` is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("prefix `/{p}` is out of range (0-{max})")),
        },
    };
    Ok(Cidr { addr, prefix })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(duration("5parsecs").is_err());
        assert!(duration("99999999999999999999999").is_err());
        assert!(nonzero_duration("0s").is_err());
    }

    #[test]
    fn addresses() {
        let hp = |h: &str, p: &str| AddrText::HostPort {
            host: h.into(),
            port: p.into(),
        };
        assert_eq!(
            address(&hp("127.0.0.1", "80"), false),
            Ok(Address::Inet("127.0.0.1:80".parse().unwrap()))
        );
        assert!(address(&hp("127.0.0.1", "70000"), false).is_err());
        assert!(address(&hp("127.0.0.1", "0"), false).is_err());
        assert!(address(&hp("300.1.1.1", "80"), false).is_err());
        assert_eq!(
            address(&hp("*", "80"), true),
            Ok(Address::Inet("0.0.0.0:80".parse().unwrap()))
        );
        let v6 = AddrText::Ipv6 {
            host: "::1".into(),
            port: "8080".into(),
        };
        assert_eq!(
            address(&v6, false),
            Ok(Address::Inet("[::1]:8080".parse().unwrap()))
        );
        let bad6 = AddrText::Ipv6 {
            host: "::g".into(),
            port: "1".into(),
        };
        assert!(address(&bad6, false).is_err());
    }

    #[test]
    fn cidrs() {
        let c = cidr("127.0.0.0/8").unwrap();
        assert!(c.contains("127.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!c.contains("10.0.0.1".parse().unwrap()));
        assert!(cidr("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(cidr("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(cidr("10.0.0.0/33").is_err());
    }
}
