//! WebSocket URLs (RFC 6455 section 3).
//!
//! ```text
//! ws-URI  = "ws:"  "//" host [ ":" port ] path [ "?" query ]
//! wss-URI = "wss:" "//" host [ ":" port ] path [ "?" query ]
//! ```
//!
//! `http://` and `https://` are accepted as aliases of `ws://` and `wss://` (as browsers do).
//! A fragment is an error (section 3: "fragment identifiers are meaningless ... MUST NOT be
//! used"), and so is user information, which the ws-URI grammar does not have.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use super::{HandshakeError, UrlError};

/// A parsed `ws://` or `wss://` URL: where to connect and what to ask for.
///
/// ```
/// use duplex_proto::handshake::WsUrl;
/// let url: WsUrl = "wss://[::1]:9001/chat?room=1".parse()?;
/// assert!(url.tls);
/// assert_eq!(url.host, "::1");
/// assert_eq!(url.port, 9001);
/// assert_eq!(url.resource, "/chat?room=1");
/// assert_eq!(url.host_header(), "[::1]:9001");
///
/// let url: WsUrl = "ws://Example.COM".parse()?;
/// assert_eq!((url.host.as_str(), url.port, url.resource.as_str()), ("example.com", 80, "/"));
/// assert_eq!(url.to_string(), "ws://example.com/");
/// # Ok::<(), duplex_proto::handshake::HandshakeError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WsUrl {
    /// `wss` / `https`: connect with TLS.
    pub tls: bool,
    /// The host, lowercased: a name, an IPv4 address, or an IPv6 address *without* brackets
    /// (`::1`), ready for name resolution and for the TLS server name.
    pub host: String,
    /// The port: as given, else 80 (`ws`) or 443 (`wss`).
    pub port: u16,
    /// The request target: path and query (`/chat?room=1`), `/` if the URL has no path.
    /// Characters that cannot appear in a request line (space, non-ASCII...) are
    /// percent-encoded.
    pub resource: String,
}

impl WsUrl {
    /// 443 with TLS, else 80.
    pub const fn default_port(&self) -> u16 {
        if self.tls { 443 } else { 80 }
    }

    /// The `Host` header value: IPv6 addresses in brackets, the port only when it is not the
    /// default one (RFC 6455 section 4.1, RFC 9110 section 7.2).
    pub fn host_header(&self) -> String {
        let mut out = String::with_capacity(self.host.len() + 8);
        if self.host.contains(':') {
            out.push('[');
            out.push_str(&self.host);
            out.push(']');
        } else {
            out.push_str(&self.host);
        }
        if self.port != self.default_port() {
            out.push(':');
            out.push_str(&self.port.to_string());
        }
        out
    }
}

impl FromStr for WsUrl {
    type Err = HandshakeError;

    fn from_str(s: &str) -> Result<WsUrl, HandshakeError> {
        parse(s.trim()).map_err(HandshakeError::InvalidUrl)
    }
}

fn parse(s: &str) -> Result<WsUrl, UrlError> {
    let (scheme, rest) = s.split_once("://").ok_or(UrlError::MissingScheme)?;
    let tls = if scheme.eq_ignore_ascii_case("ws") || scheme.eq_ignore_ascii_case("http") {
        false
    } else if scheme.eq_ignore_ascii_case("wss") || scheme.eq_ignore_ascii_case("https") {
        true
    } else {
        return Err(UrlError::UnsupportedScheme(scheme.to_owned()));
    };
    if rest.contains('#') {
        return Err(UrlError::Fragment);
    }
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(authority_end);
    if authority.contains('@') {
        return Err(UrlError::Userinfo);
    }

    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (address, after) = bracketed.split_once(']').ok_or(UrlError::InvalidHost)?;
        address
            .parse::<Ipv6Addr>()
            .map_err(|_| UrlError::InvalidHost)?;
        let port = match after {
            "" => None,
            after => Some(after.strip_prefix(':').ok_or(UrlError::InvalidHost)?),
        };
        (address, port)
    } else {
        if authority.matches(':').count() > 1 {
            // An IPv6 address without brackets, or two ports.
            return Err(UrlError::InvalidHost);
        }
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if host.is_empty() {
            return Err(UrlError::MissingHost);
        }
        let valid = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        if !valid {
            return Err(UrlError::InvalidHost);
        }
        (host, port)
    };

    let port = match port {
        // RFC 3986 section 3.2.3: an empty port means the default.
        None | Some("") => {
            if tls {
                443
            } else {
                80
            }
        }
        Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => match digits.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(UrlError::InvalidPort),
        },
        Some(_) => return Err(UrlError::InvalidPort),
    };

    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let mut resource = String::with_capacity(target.len() + 1);
    if path.is_empty() {
        resource.push('/');
    } else {
        percent_encode_into(&mut resource, path);
    }
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        resource.push('?');
        percent_encode_into(&mut resource, query);
    }

    Ok(WsUrl {
        tls,
        host: host.to_ascii_lowercase(),
        port,
        resource,
    })
}

/// Appends `s`, percent-encoding the bytes a request target cannot hold (controls, space,
/// non-ASCII, and `"<>\^`{|}`). `%` is kept: the input is taken as already encoded.
pub(super) fn percent_encode_into(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        let keep = (0x21..=0x7e).contains(&b) && !b"\"<>\\^`{|}".contains(&b);
        if keep {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

impl fmt::Display for WsUrl {
    /// The canonical URL: `ws` or `wss`, the [`host_header`](WsUrl::host_header), the resource.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "wss" } else { "ws" };
        write!(f, "{scheme}://{}{}", self.host_header(), self.resource)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn url(s: &str) -> WsUrl {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn url_err(s: &str) -> UrlError {
        match s.parse::<WsUrl>() {
            Ok(url) => panic!("{s} parsed as {url:?}"),
            Err(HandshakeError::InvalidUrl(e)) => e,
            Err(other) => panic!("{s}: unexpected {other:?}"),
        }
    }

    #[test]
    fn schemes_and_default_ports() {
        for (s, tls, port) in [
            ("ws://a.example", false, 80),
            ("wss://a.example", true, 443),
            ("http://a.example", false, 80),
            ("https://a.example", true, 443),
            ("WSS://a.example", true, 443),
        ] {
            let u = url(s);
            assert_eq!(
                (u.tls, u.port, u.host.as_str()),
                (tls, port, "a.example"),
                "{s}"
            );
        }
    }

    #[test]
    fn explicit_and_empty_ports() {
        assert_eq!(url("ws://a:9001/").port, 9001);
        assert_eq!(url("wss://a:80/").port, 80);
        assert_eq!(url("ws://a:/").port, 80);
        assert_eq!(url_err("ws://a:0/"), UrlError::InvalidPort);
        assert_eq!(url_err("ws://a:65536/"), UrlError::InvalidPort);
        assert_eq!(url_err("ws://a:+80/"), UrlError::InvalidPort);
        assert_eq!(url_err("ws://a:http/"), UrlError::InvalidPort);
    }

    #[test]
    fn ipv6_literals() {
        let u = url("ws://[::1]:9001/x");
        assert_eq!(
            (u.host.as_str(), u.port, u.resource.as_str()),
            ("::1", 9001, "/x")
        );
        assert_eq!(u.host_header(), "[::1]:9001");
        let u = url("wss://[2001:DB8::1]");
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", 443));
        assert_eq!(u.host_header(), "[2001:db8::1]");
        assert_eq!(u.to_string(), "wss://[2001:db8::1]/");
        assert_eq!(url_err("ws://[::1/"), UrlError::InvalidHost);
        assert_eq!(url_err("ws://[nope]/"), UrlError::InvalidHost);
        assert_eq!(url_err("ws://[::1]x/"), UrlError::InvalidHost);
        assert_eq!(url_err("ws://::1/"), UrlError::InvalidHost);
    }

    #[test]
    fn resource_is_path_and_query() {
        assert_eq!(url("ws://a").resource, "/");
        assert_eq!(url("ws://a/").resource, "/");
        assert_eq!(url("ws://a/chat").resource, "/chat");
        assert_eq!(url("ws://a/chat?room=1&x").resource, "/chat?room=1&x");
        assert_eq!(url("ws://a?room=1").resource, "/?room=1");
        assert_eq!(url("ws://a:81?").resource, "/");
        assert_eq!(url("ws://a/a b/é").resource, "/a%20b/%C3%A9");
        assert_eq!(url("ws://a/%23x").resource, "/%23x");
    }

    #[test]
    fn host_header_omits_default_port() {
        assert_eq!(url("ws://a.example:80/").host_header(), "a.example");
        assert_eq!(url("ws://a.example:443/").host_header(), "a.example:443");
        assert_eq!(url("wss://a.example:443/").host_header(), "a.example");
        assert_eq!(url("wss://a.example:8443/").host_header(), "a.example:8443");
    }

    #[test]
    fn fragments_are_rejected() {
        assert_eq!(url_err("ws://a/chat#top"), UrlError::Fragment);
        assert_eq!(url_err("ws://a#"), UrlError::Fragment);
    }

    #[test]
    fn other_schemes_are_rejected() {
        assert_eq!(
            url_err("ftp://a/"),
            UrlError::UnsupportedScheme("ftp".into())
        );
        assert_eq!(url_err("a.example/chat"), UrlError::MissingScheme);
        assert_eq!(url_err("ws:a.example"), UrlError::MissingScheme);
    }

    #[test]
    fn missing_or_bad_host_is_rejected() {
        assert_eq!(url_err("ws://"), UrlError::MissingHost);
        assert_eq!(url_err("ws:///chat"), UrlError::MissingHost);
        assert_eq!(url_err("ws://:80/chat"), UrlError::MissingHost);
        assert_eq!(url_err("ws://a b/"), UrlError::InvalidHost);
        assert_eq!(url_err("ws://bücher.example/"), UrlError::InvalidHost);
        assert_eq!(url_err("ws://user:pw@a/"), UrlError::Userinfo);
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "ws://a.example/",
            "wss://a.example:8443/x?y=1",
            "ws://[::1]:9001/x",
        ] {
            assert_eq!(url(s).to_string(), s);
            assert_eq!(url(&url(s).to_string()), url(s));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,64}") {
            let _ = s.parse::<WsUrl>();
            let _ = format!("ws://{s}").parse::<WsUrl>();
            let _ = format!("wss://[{s}]:1/").parse::<WsUrl>();
        }

        #[test]
        fn resource_is_always_a_valid_request_target(path in ".{0,32}", query in ".{0,32}") {
            let s = format!("ws://a/{path}?{query}").replace('#', "");
            let u = s.parse::<WsUrl>().expect("only the path and query vary");
            prop_assert!(u.resource.starts_with('/'));
            prop_assert!(u.resource.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        }
    }
}
