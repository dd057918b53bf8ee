//! Proxy URLs: `http://`, `socks5://` and `socks5h://`, with optional `user:password@`
//! (percent-encoded), parsed into a [`Proxy`]. Pure: no I/O, no environment.

use std::fmt;
use std::str::FromStr;

use super::error::ProxyError;

/// A proxy to connect through: its protocol, address and credentials.
///
/// ```
/// use duplex::proxy::{Proxy, ProxyKind};
/// let proxy: Proxy = "socks5h://alice:p%40ss@proxy.example:1080".parse()?;
/// assert_eq!(proxy.kind, ProxyKind::Socks5h);
/// assert_eq!((proxy.host.as_str(), proxy.port), ("proxy.example", 1080));
/// assert_eq!(proxy.credentials.as_ref().unwrap().password, "p@ss");
/// // The password never shows in Display or Debug.
/// assert_eq!(proxy.to_string(), "socks5h://alice:***@proxy.example:1080");
/// # Ok::<(), duplex::proxy::ProxyError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// The proxy protocol.
    pub kind: ProxyKind,
    /// Host name or IP address (IPv6 without brackets), lowercased.
    pub host: String,
    /// Port: as given, else 80 for `http://` and 1080 for SOCKS.
    pub port: u16,
    /// Username and password from the URL's userinfo, percent-decoded.
    pub credentials: Option<Credentials>,
}

/// The proxy protocols this client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyKind {
    /// `http://`: an HTTP proxy, tunnel by `CONNECT host:port` (RFC 9110 section 9.3.6),
    /// `Proxy-Authorization: Basic` when the URL has credentials.
    Http,
    /// `socks5://`: SOCKS5 (RFC 1928); this client resolves the target host and sends the
    /// proxy an address.
    Socks5,
    /// `socks5h://`: SOCKS5, the proxy resolves the target host name.
    Socks5h,
}

impl ProxyKind {
    /// The URL scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            ProxyKind::Http => "http",
            ProxyKind::Socks5 => "socks5",
            ProxyKind::Socks5h => "socks5h",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            ProxyKind::Http => 80,
            ProxyKind::Socks5 | ProxyKind::Socks5h => 1080,
        }
    }
}

/// A username and password for the proxy (HTTP Basic, or SOCKS5 username/password per
/// RFC 1929). `Debug` does not show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The username.
    pub username: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

impl Proxy {
    /// `host:port` of the proxy, IPv6 in brackets: for messages and the TCP connect.
    pub fn address(&self) -> String {
        host_port(&self.host, self.port)
    }
}

/// `host:port`, an IPv6 host in brackets.
pub(crate) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.kind.scheme())?;
        if let Some(credentials) = &self.credentials {
            write!(f, "{}:***@", credentials.username)?;
        }
        f.write_str(&self.address())
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proxy({self})")
    }
}

impl FromStr for Proxy {
    type Err = ProxyError;

    /// Parses `[scheme://][user[:password]@]host[:port][/]`. No scheme means `http://`, as
    /// curl takes it. `https://` (TLS to the proxy itself) and SOCKS4 are not supported.
    fn from_str(s: &str) -> Result<Proxy, ProxyError> {
        let s = s.trim();
        parse(s).map_err(|reason| ProxyError::InvalidUrl {
            url: redact(s),
            reason,
        })
    }
}

fn parse(s: &str) -> Result<Proxy, &'static str> {
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme, rest)) => (scheme, rest),
        None => ("http", s),
    };
    let kind = match scheme.to_ascii_lowercase().as_str() {
        "http" => ProxyKind::Http,
        "socks5" => ProxyKind::Socks5,
        "socks5h" => ProxyKind::Socks5h,
        "https" => return Err("https:// proxies (TLS to the proxy) are not supported"),
        "socks4" | "socks4a" => return Err("SOCKS4 is not supported, use socks5:// or socks5h://"),
        _ => return Err("unknown scheme (expected http, socks5 or socks5h)"),
    };
    let authority = match rest.find(['/', '?', '#']) {
        Some(end) if &rest[end..] == "/" => &rest[..end],
        Some(_) => return Err("a proxy URL has no path, query or fragment"),
        None => rest,
    };
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => (Some(userinfo), host_port),
        None => (None, authority),
    };
    let credentials = match userinfo {
        None => None,
        Some(userinfo) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let username = percent_decode(user).ok_or("bad percent-encoding in the username")?;
            let password =
                percent_decode(password).ok_or("bad percent-encoding in the password")?;
            if kind == ProxyKind::Http && username.contains(':') {
                return Err("an HTTP Basic username cannot hold a colon");
            }
            if username.is_empty() && password.is_empty() {
                None
            } else {
                Some(Credentials { username, password })
            }
        }
    };
    let (host, port) = split_host_port(host_port)?;
    let port = match port {
        None => kind.default_port(),
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err("invalid port"),
        },
    };
    Ok(Proxy {
        kind,
        host,
        port,
        credentials,
    })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`; the host lowercased and checked.
fn split_host_port(s: &str) -> Result<(String, Option<&str>), &'static str> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or("unclosed [ in the host")?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("invalid IPv6 address");
        }
        match after {
            "" => (v6, None),
            _ => (v6, Some(after.strip_prefix(':').ok_or("junk after ]")?)),
        }
    } else {
        match s.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("no host");
    }
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':');
    if !host.chars().all(valid) {
        return Err("invalid character in the host");
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// `%XX` decoding; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The URL with its password replaced by `***`, for error messages.
fn redact(s: &str) -> String {
    let start = s.find("://").map_or(0, |i| i + 3);
    let end = s[start..]
        .find(['/', '?', '#'])
        .map_or(s.len(), |i| start + i);
    match s[start..end].rfind('@') {
        Some(at) => {
            let userinfo = &s[start..start + at];
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{}{user}:***{}", &s[..start], &s[start + at..])
        }
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(s: &str) -> Proxy {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn reason(s: &str) -> &'static str {
        match s.parse::<Proxy>() {
            Err(ProxyError::InvalidUrl { reason, .. }) => reason,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn schemes_and_default_ports() {
        let p = parse_ok("http://proxy:3128");
        assert_eq!(
            (p.kind, p.host.as_str(), p.port),
            (ProxyKind::Http, "proxy", 3128)
        );
        assert_eq!(parse_ok("proxy.example").port, 80);
        assert_eq!(parse_ok("proxy.example").kind, ProxyKind::Http);
        assert_eq!(parse_ok("HTTP://Proxy.Example/").host, "proxy.example");
        assert_eq!(parse_ok("socks5://10.0.0.1").port, 1080);
        assert_eq!(parse_ok("socks5h://h:9050").kind, ProxyKind::Socks5h);
        let v6 = parse_ok("socks5://[::1]:1081");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 1081));
        assert_eq!(v6.address(), "[::1]:1081");
        assert_eq!(parse_ok("http://[fe80::1]").port, 80);
    }

    #[test]
    fn credentials_are_percent_decoded() {
        let p = parse_ok("http://us%65r:p%3Ass%40word@proxy:8080");
        let c = p.credentials.unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("user", "p:ss@word")
        );
        // The last @ separates the host, so a raw @ in the password still works.
        let c = parse_ok("socks5://a:b@c@proxy").credentials.unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("a", "b@c"));
        let c = parse_ok("http://only@proxy").credentials.unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("only", ""));
        assert_eq!(parse_ok("http://@proxy").credentials, None);
        assert!(!format!("{:?}", parse_ok("http://u:secret@p")).contains("secret"));
    }

    #[test]
    fn bad_urls_say_why_and_hide_the_password() {
        assert_eq!(
            reason("https://proxy"),
            "https:// proxies (TLS to the proxy) are not supported"
        );
        assert!(reason("socks4://proxy").starts_with("SOCKS4"));
        assert!(reason("ftp://proxy").starts_with("unknown scheme"));
        assert_eq!(reason("http://proxy:0"), "invalid port");
        assert_eq!(reason("http://proxy:99999"), "invalid port");
        assert_eq!(reason("http://proxy:x"), "invalid port");
        assert_eq!(reason("http://"), "no host");
        assert_eq!(
            reason("http://proxy/path"),
            "a proxy URL has no path, query or fragment"
        );
        assert_eq!(
            reason("http://u:%zz@proxy"),
            "bad percent-encoding in the password"
        );
        assert_eq!(
            reason("http://u%3Ax:p@proxy"),
            "an HTTP Basic username cannot hold a colon"
        );
        assert_eq!(reason("http://[::1"), "unclosed [ in the host");
        assert_eq!(reason("http://[nope]:1"), "invalid IPv6 address");
        assert_eq!(reason("http://pro xy"), "invalid character in the host");
        match "http://bob:hunter2@proxy/x".parse::<Proxy>() {
            Err(e) => {
                let text = e.to_string();
                assert!(!text.contains("hunter2"), "{text}");
                assert!(text.contains("http://bob:***@proxy/x"), "{text}");
            }
            Ok(p) => panic!("parsed {p}"),
        }
    }
}
