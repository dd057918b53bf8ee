//! `NO_PROXY` matching, as curl does it: a list separated by commas (or spaces) of host
//! names, domain suffixes with or without a leading dot (`example.com` and `.example.com`
//! both match `example.com` and every name under it), `*` for every host, IP addresses and
//! CIDR blocks (`10.0.0.0/8`, `[::1]`), each optionally with `:port`. Names are compared
//! without case and without a trailing dot; a name never matches an IP address (no
//! resolution happens here). Pure: no I/O.

use std::net::IpAddr;

/// A parsed `NO_PROXY` list.
///
/// ```
/// use duplex::proxy::NoProxy;
/// let list = NoProxy::parse(".internal, localhost:8080, 10.0.0.0/8, ::1");
/// assert!(list.matches("api.internal", 443));
/// assert!(list.matches("internal", 80));
/// assert!(list.matches("localhost", 8080));
/// assert!(!list.matches("localhost", 9090));
/// assert!(list.matches("10.1.2.3", 80));
/// assert!(list.matches("::1", 80));
/// assert!(!list.matches("example.com", 80));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    /// `*`: no host uses a proxy.
    all: bool,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// A name and the names under it.
    Domain { name: String, port: Option<u16> },
    /// An address block: the address and how many leading bits must match.
    Ip {
        addr: IpAddr,
        prefix: u8,
        port: Option<u16>,
    },
}

impl NoProxy {
    /// Parses a list; entries that cannot be read (a bad port, a bad CIDR prefix) are
    /// skipped, as curl skips them, so one typo does not send every host to the proxy or
    /// none.
    pub fn parse(list: &str) -> NoProxy {
        let mut out = NoProxy::default();
        for item in list.split([',', ' ', '\t']).filter(|s| !s.is_empty()) {
            if item == "*" {
                out.all = true;
            } else if let Some(entry) = Entry::parse(item) {
                out.entries.push(entry);
            }
        }
        out
    }

    /// Whether a connection to `host` (a name, or an IP address with an IPv6 one
    /// unbracketed, as in `WsUrl::host`) on `port` goes direct.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.all {
            return true;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host_ip = host.parse::<IpAddr>().ok();
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.entries.iter().any(|entry| match entry {
            Entry::Domain { name, port: p } => {
                p.is_none_or(|p| p == port)
                    && host_ip.is_none()
                    && (host == *name
                        || (host.len() > name.len()
                            && host.ends_with(name.as_str())
                            && host.as_bytes()[host.len() - name.len() - 1] == b'.'))
            }
            Entry::Ip {
                addr,
                prefix,
                port: p,
            } => {
                p.is_none_or(|p| p == port)
                    && host_ip.is_some_and(|ip| in_block(ip, *addr, *prefix))
            }
        })
    }
}

impl Entry {
    fn parse(item: &str) -> Option<Entry> {
        // `[v6]`, `[v6]:port`, `[v6]/prefix`
        if let Some(rest) = item.strip_prefix('[') {
            let (inside, after) = rest.split_once(']')?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':')?.parse().ok()?),
            };
            return Entry::ip(inside, port);
        }
        // A bare IPv6 address (or block) has several colons and no port.
        if item.matches(':').count() > 1 {
            return Entry::ip(item, None);
        }
        let (host, port) = match item.split_once(':') {
            Some((host, port)) => (host, Some(port.parse::<u16>().ok()?)),
            None => (item, None),
        };
        if let Some(entry) = Entry::ip(host, port) {
            return Some(entry);
        }
        let name = host
            .trim_start_matches("*.")
            .trim_start_matches('.')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if name.is_empty() {
            return None;
        }
        Some(Entry::Domain { name, port })
    }

    /// `addr` or `addr/prefix`, `None` if it is not an address.
    fn ip(s: &str, port: Option<u16>) -> Option<Entry> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
        };
        Some(Entry::Ip { addr, prefix, port })
    }
}

/// Whether the first `prefix` bits of `ip` and `block` agree (same family only).
fn in_block(ip: IpAddr, block: IpAddr, prefix: u8) -> bool {
    let (ip, block, bits) = match (ip, block) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(a.to_bits()), u128::from(b.to_bits()), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (a.to_bits(), b.to_bits(), 128),
        (IpAddr::V4(_), IpAddr::V6(_)) | (IpAddr::V6(_), IpAddr::V4(_)) => return false,
    };
    let shift = bits - u32::from(prefix);
    shift >= bits || (ip >> shift) == (block >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_match_themselves_and_their_subdomains_only() {
        for list in [
            "example.com",
            ".example.com",
            "*.example.com",
            "EXAMPLE.com.",
        ] {
            let n = NoProxy::parse(list);
            assert!(n.matches("example.com", 80), "{list}");
            assert!(n.matches("a.b.example.com", 443), "{list}");
            assert!(n.matches("Example.COM.", 80), "{list}");
            assert!(!n.matches("badexample.com", 80), "{list}");
            assert!(!n.matches("example.com.evil", 80), "{list}");
            assert!(!n.matches("com", 80), "{list}");
        }
    }

    #[test]
    fn ports_restrict_an_entry() {
        let n = NoProxy::parse("internal:8080,10.0.0.1:9000,[::1]:7000");
        assert!(n.matches("internal", 8080));
        assert!(n.matches("x.internal", 8080));
        assert!(!n.matches("internal", 80));
        assert!(n.matches("10.0.0.1", 9000));
        assert!(!n.matches("10.0.0.1", 9001));
        assert!(n.matches("::1", 7000));
        assert!(!n.matches("::1", 7001));
    }

    #[test]
    fn addresses_and_blocks() {
        let n = NoProxy::parse("127.0.0.1, 192.168.0.0/16 ::1 fd00::/8");
        assert!(n.matches("127.0.0.1", 1));
        assert!(!n.matches("127.0.0.2", 1));
        assert!(n.matches("192.168.44.1", 1));
        assert!(!n.matches("192.169.0.1", 1));
        assert!(n.matches("::1", 1));
        assert!(n.matches("[::1]", 1));
        assert!(n.matches("fdab::5", 1));
        assert!(!n.matches("fe80::1", 1));
        // Names never match addresses and vice versa: nothing is resolved.
        assert!(!NoProxy::parse("localhost").matches("127.0.0.1", 80));
        assert!(!NoProxy::parse("127.0.0.1").matches("localhost", 80));
        // IPv4 and IPv6 blocks stay apart.
        assert!(!NoProxy::parse("0.0.0.0/0").matches("::1", 80));
        assert!(NoProxy::parse("0.0.0.0/0").matches("8.8.8.8", 80));
    }

    #[test]
    fn star_empty_and_junk() {
        assert!(NoProxy::parse("*").matches("anything", 1));
        assert!(NoProxy::parse("a, *").matches("b", 1));
        assert!(!NoProxy::parse("").matches("a", 1));
        assert!(!NoProxy::parse(" , ,").matches("a", 1));
        // Unreadable entries are skipped, the rest still count.
        let n = NoProxy::parse("bad:port, 10.0.0.0/99, good");
        assert!(n.matches("good", 1));
        assert!(!n.matches("bad", 1));
        assert!(!n.matches("10.0.0.1", 1));
        assert!(!NoProxy::parse(".").matches("a", 1));
    }
}
