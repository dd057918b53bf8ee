//! Client proxies: HTTP CONNECT and SOCKS5 tunnels under `ws://` and `wss://`.
//!
//! [`ClientOptions::proxy`](crate::ClientOptions::proxy) chooses: a [`Proxy`] given
//! explicitly, no proxy at all, or (the default) the proxy the environment names, as curl
//! reads it:
//!
//! - `wss://` uses `https_proxy` / `HTTPS_PROXY`, `ws://` uses `http_proxy` / `HTTP_PROXY`,
//!   either falls back to `all_proxy` / `ALL_PROXY`;
//! - `no_proxy` / `NO_PROXY` lists the hosts that go direct ([`NoProxy`]);
//! - the lower-case variable wins where both are set; an empty one counts as unset.
//!
//! The tunnel is opened on the TCP connection to the proxy, then TLS (for `wss://`, to the
//! origin, inside the tunnel) and the WebSocket handshake run on it as on a direct
//! connection. The proxy's answers are read with bounds known in advance (an HTTP head of at
//! most 8 KiB, SOCKS5 replies of exact length), and nothing past them is read.
//!
//! ```no_run
//! # async fn run() -> Result<(), duplex::Error> {
//! use duplex::proxy::ProxyChoice;
//! let options = duplex::ClientOptions {
//!     proxy: ProxyChoice::Use("socks5h://user:pass@127.0.0.1:1080".parse()?),
//!     ..Default::default()
//! };
//! let (ws, _) = duplex::connect_with("wss://example.com/chat", options).await?;
//! # drop(ws); Ok(()) }
//! ```

mod error;
mod http_connect;
mod no_proxy;
mod socks5;
mod url;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::timeout;

pub use self::error::{ProxyError, SocksReply};
pub use self::no_proxy::NoProxy;
pub use self::url::{Credentials, Proxy, ProxyKind};
use crate::error::{Error, Timeout};

/// Which proxy a client connects through.
///
/// ```
/// use duplex::proxy::ProxyChoice;
/// assert_eq!(ProxyChoice::default(), ProxyChoice::FromEnv);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ProxyChoice {
    /// The proxy the environment variables name for the URL, if any (see the
    /// [module docs](self)). The default.
    #[default]
    FromEnv,
    /// No proxy: connect directly, whatever the environment says.
    Direct,
    /// This proxy, for every URL.
    Use(Proxy),
}

impl ProxyChoice {
    /// The proxy for a connection to `host:port` (`tls`: a `wss://` URL), `None` for a
    /// direct connection. [`ProxyChoice::FromEnv`] reads the process environment.
    pub fn resolve(&self, tls: bool, host: &str, port: u16) -> Result<Option<Proxy>, ProxyError> {
        self.resolve_with(tls, host, port, |name| std::env::var(name).ok())
    }

    /// As [`resolve`](Self::resolve), with the environment read through `lookup`.
    pub fn resolve_with(
        &self,
        tls: bool,
        host: &str,
        port: u16,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Proxy>, ProxyError> {
        match self {
            ProxyChoice::FromEnv => from_env_with(tls, host, port, lookup),
            ProxyChoice::Direct => Ok(None),
            ProxyChoice::Use(proxy) => Ok(Some(proxy.clone())),
        }
    }
}

impl From<Proxy> for ProxyChoice {
    fn from(proxy: Proxy) -> Self {
        ProxyChoice::Use(proxy)
    }
}

/// The proxy the environment names for a connection to `host:port` (`tls`: `wss://`), with
/// the variables read through `lookup` (`|name| std::env::var(name).ok()` for the process
/// environment): `None` when no variable applies or `NO_PROXY` matches; an error when the
/// variable that applies holds a URL this client cannot use.
///
/// ```
/// use std::collections::HashMap;
/// let env = HashMap::from([
///     ("HTTPS_PROXY", "http://upper:3128"),
///     ("https_proxy", "http://lower:3128"),
///     ("ALL_PROXY", "socks5h://all:1080"),
///     ("NO_PROXY", ".internal"),
/// ]);
/// let lookup = |name: &str| env.get(name).map(|v| v.to_string());
/// let wss = duplex::proxy::from_env_with(true, "example.com", 443, lookup)?.unwrap();
/// assert_eq!(wss.host, "lower");
/// let ws = duplex::proxy::from_env_with(false, "example.com", 80, lookup)?.unwrap();
/// assert_eq!(ws.host, "all");
/// assert_eq!(duplex::proxy::from_env_with(true, "db.internal", 443, lookup)?, None);
/// # Ok::<(), duplex::proxy::ProxyError>(())
/// ```
pub fn from_env_with(
    tls: bool,
    host: &str,
    port: u16,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<Proxy>, ProxyError> {
    let var = |lower: &str, upper: &str| {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.trim().is_empty());
        Some(lookup(lower))
            .filter(set)
            .or_else(|| Some(lookup(upper)).filter(set))
            .flatten()
    };
    let bypass =
        var("no_proxy", "NO_PROXY").is_some_and(|list| NoProxy::parse(&list).matches(host, port));
    if bypass {
        return Ok(None);
    }
    let url = if tls {
        var("https_proxy", "HTTPS_PROXY")
    } else {
        var("http_proxy", "HTTP_PROXY")
    }
    .or_else(|| var("all_proxy", "ALL_PROXY"));
    url.map(|url| url.parse()).transpose()
}

/// The TCP connection a client runs TLS and the WebSocket handshake on: to `host:port`
/// directly (bounded by `connect_timeout`: [`Timeout::Connect`]), or a tunnel through the
/// proxy `choice` gives (connect, name resolution and tunnel bounded together by
/// `connect_timeout`: [`ProxyError::Timeout`]).
pub(crate) async fn connect_tcp(
    host: &str,
    port: u16,
    tls: bool,
    choice: &ProxyChoice,
    connect_timeout: Duration,
) -> Result<TcpStream, Error> {
    let Some(proxy) = choice.resolve(tls, host, port)? else {
        return match timeout(connect_timeout, TcpStream::connect((host, port))).await {
            Ok(tcp) => Ok(tcp?),
            Err(_) => Err(Error::Timeout(Timeout::Connect)),
        };
    };
    tracing::debug!(%proxy, host, port, "connecting through a proxy");
    match timeout(connect_timeout, tunnel(&proxy, host, port)).await {
        Ok(tcp) => Ok(tcp?),
        Err(_) => Err(ProxyError::Timeout {
            proxy: proxy.address(),
        }
        .into()),
    }
}

/// Connects to the proxy and opens the tunnel to `host:port`.
async fn tunnel(proxy: &Proxy, host: &str, port: u16) -> Result<TcpStream, ProxyError> {
    let ip = host.parse::<IpAddr>().ok();
    match (proxy.kind, ip) {
        (ProxyKind::Http, _) => {
            let mut tcp = connect_proxy(proxy).await?;
            http_connect::tunnel(&mut tcp, host, port, proxy.credentials.as_ref()).await?;
            Ok(tcp)
        }
        (ProxyKind::Socks5 | ProxyKind::Socks5h, Some(ip)) => {
            socks5_tunnel(proxy, socks5::Target::Addr(SocketAddr::new(ip, port))).await
        }
        (ProxyKind::Socks5h, None) => {
            socks5_tunnel(proxy, socks5::Target::Domain(host.to_owned(), port)).await
        }
        (ProxyKind::Socks5, None) => {
            // Every address of the name in turn, as a direct connect tries them: a name
            // with an IPv6 and an IPv4 address still works when the target listens on one.
            let addrs = resolve(host, port).await?;
            let mut last = None;
            for addr in addrs {
                match socks5_tunnel(proxy, socks5::Target::Addr(addr)).await {
                    Err(ProxyError::Socks(reply)) if unreachable(reply) => last = Some(reply),
                    done => return done,
                }
            }
            Err(match last {
                Some(reply) => ProxyError::Socks(reply),
                None => ProxyError::Resolve {
                    host: host.to_owned(),
                    error: io::Error::new(io::ErrorKind::NotFound, "no address"),
                },
            })
        }
    }
}

/// Reply codes after which another address of the same name may still work.
fn unreachable(reply: SocksReply) -> bool {
    reply == SocksReply::NETWORK_UNREACHABLE
        || reply == SocksReply::HOST_UNREACHABLE
        || reply == SocksReply::CONNECTION_REFUSED
}

async fn connect_proxy(proxy: &Proxy) -> Result<TcpStream, ProxyError> {
    TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|error| ProxyError::Unreachable {
            proxy: proxy.address(),
            error,
        })
}

async fn socks5_tunnel(proxy: &Proxy, target: socks5::Target) -> Result<TcpStream, ProxyError> {
    let mut tcp = connect_proxy(proxy).await?;
    socks5::tunnel(&mut tcp, &target, proxy.credentials.as_ref()).await?;
    Ok(tcp)
}

/// The addresses of `host` (for `socks5://`, where the client resolves).
async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, ProxyError> {
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|error| ProxyError::Resolve {
            host: host.to_owned(),
            error,
        })?;
    Ok(addrs.collect())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn choose(env: &[(&str, &str)], tls: bool, host: &str, port: u16) -> Option<String> {
        let env: HashMap<&str, &str> = env.iter().copied().collect();
        from_env_with(tls, host, port, |name| env.get(name).map(|v| v.to_string()))
            .unwrap()
            .map(|p| p.to_string())
    }

    #[test]
    fn the_scheme_picks_the_variable() {
        let env = [
            ("HTTP_PROXY", "http://h:1"),
            ("HTTPS_PROXY", "socks5://s:2"),
        ];
        assert_eq!(choose(&env, false, "x", 80).as_deref(), Some("http://h:1"));
        assert_eq!(
            choose(&env, true, "x", 443).as_deref(),
            Some("socks5://s:2")
        );
        // No HTTPS_PROXY: wss does not borrow HTTP_PROXY.
        assert_eq!(choose(&env[..1], true, "x", 443), None);
        assert_eq!(choose(&[], false, "x", 80), None);
    }

    #[test]
    fn all_proxy_is_the_fallback() {
        let env = [
            ("ALL_PROXY", "socks5h://a:3"),
            ("https_proxy", "http://s:2"),
        ];
        assert_eq!(
            choose(&env, false, "x", 80).as_deref(),
            Some("socks5h://a:3")
        );
        assert_eq!(choose(&env, true, "x", 443).as_deref(), Some("http://s:2"));
        let lower = [("all_proxy", "http://l:4"), ("ALL_PROXY", "http://u:5")];
        assert_eq!(
            choose(&lower, true, "x", 443).as_deref(),
            Some("http://l:4")
        );
    }

    #[test]
    fn lower_case_wins_and_empty_counts_as_unset() {
        let both = [
            ("http_proxy", "http://lower:1"),
            ("HTTP_PROXY", "http://upper:1"),
        ];
        assert_eq!(
            choose(&both, false, "x", 80).as_deref(),
            Some("http://lower:1")
        );
        let empty_lower = [("http_proxy", " "), ("HTTP_PROXY", "http://upper:1")];
        assert_eq!(
            choose(&empty_lower, false, "x", 80).as_deref(),
            Some("http://upper:1")
        );
        let no_lower = [
            ("no_proxy", "other"),
            ("NO_PROXY", "x"),
            ("HTTP_PROXY", "http://p:1"),
        ];
        assert_eq!(
            choose(&no_lower, false, "x", 80).as_deref(),
            Some("http://p:1")
        );
        let no_upper = [("NO_PROXY", "x"), ("HTTP_PROXY", "http://p:1")];
        assert_eq!(choose(&no_upper, false, "x", 80), None);
    }

    #[test]
    fn no_proxy_applies_to_every_variable() {
        let env = [
            ("HTTP_PROXY", "http://p:1"),
            ("HTTPS_PROXY", "http://p:1"),
            ("ALL_PROXY", "http://p:1"),
            ("NO_PROXY", "localhost,.corp,127.0.0.0/8,example.org:8443"),
        ];
        for (tls, host, port) in [
            (false, "localhost", 80),
            (true, "git.corp", 443),
            (false, "127.0.0.1", 9001),
            (true, "example.org", 8443),
        ] {
            assert_eq!(choose(&env, tls, host, port), None, "{host}:{port}");
        }
        assert!(choose(&env, true, "example.org", 443).is_some());
        assert!(choose(&env, false, "corp.example", 80).is_some());
    }

    #[test]
    fn a_bad_variable_is_an_error_not_a_direct_connection() {
        let e = from_env_with(false, "x", 80, |name| {
            (name == "HTTP_PROXY").then(|| "https://u:secret@p".to_owned())
        })
        .unwrap_err();
        assert!(matches!(e, ProxyError::InvalidUrl { .. }), "{e:?}");
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn explicit_choices_ignore_the_environment() {
        let lookup = |_: &str| Some("http://env:1".to_owned());
        assert_eq!(
            ProxyChoice::Direct
                .resolve_with(false, "x", 80, lookup)
                .unwrap(),
            None
        );
        let proxy: Proxy = "socks5://mine:2".parse().unwrap();
        let chosen = ProxyChoice::from(proxy.clone()).resolve_with(false, "x", 80, lookup);
        assert_eq!(chosen.unwrap(), Some(proxy));
        let from_env = ProxyChoice::FromEnv
            .resolve_with(false, "x", 80, lookup)
            .unwrap();
        assert_eq!(from_env.unwrap().host, "env");
    }
}
