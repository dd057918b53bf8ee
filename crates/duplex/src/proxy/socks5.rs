//! SOCKS5 (RFC 1928) CONNECT, with username/password authentication (RFC 1929) when the
//! proxy URL has credentials. Encoding and parsing are pure; [`tunnel`] is the small async
//! driver around them. Every read has an exact length known in advance (the reply's address
//! type says how long it is), so nothing past the proxy's answer is read.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::{ProxyError, SocksReply};
use super::url::Credentials;

const VERSION: u8 = 5;
const AUTH_VERSION: u8 = 1;
const METHOD_NONE: u8 = 0x00;
const METHOD_USERNAME: u8 = 0x02;
const NO_ACCEPTABLE_METHOD: u8 = 0xFF;
const CMD_CONNECT: u8 = 1;
const ATYP_IPV4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_IPV6: u8 = 4;

/// Where the proxy is asked to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// An address (`socks5://`: resolved by this client; or the URL's host was an address).
    Addr(SocketAddr),
    /// A host name the proxy resolves (`socks5h://`).
    Domain(String, u16),
}

/// The method the proxy chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    None,
    Username,
}

/// The greeting: the methods offered. Username/password only when there are credentials.
pub(crate) fn encode_greeting(with_credentials: bool) -> Vec<u8> {
    if with_credentials {
        vec![VERSION, 2, METHOD_NONE, METHOD_USERNAME]
    } else {
        vec![VERSION, 1, METHOD_NONE]
    }
}

/// The proxy's method choice.
pub(crate) fn parse_method(reply: [u8; 2], with_credentials: bool) -> Result<Method, ProxyError> {
    match reply {
        [VERSION, METHOD_NONE] => Ok(Method::None),
        [VERSION, METHOD_USERNAME] if with_credentials => Ok(Method::Username),
        [VERSION, NO_ACCEPTABLE_METHOD] => Err(ProxyError::SocksNoAcceptableMethod),
        [VERSION, _] => Err(ProxyError::Malformed(
            "the SOCKS5 proxy chose a method that was not offered",
        )),
        [_, _] => Err(ProxyError::Malformed("not a SOCKS5 answer (version byte)")),
    }
}

/// The RFC 1929 username/password request.
pub(crate) fn encode_auth(credentials: &Credentials) -> Result<Vec<u8>, ProxyError> {
    let user = credentials.username.as_bytes();
    let pass = credentials.password.as_bytes();
    let (Ok(user_len), Ok(pass_len)) = (u8::try_from(user.len()), u8::try_from(pass.len())) else {
        return Err(ProxyError::InvalidTarget(
            "SOCKS5 usernames and passwords are at most 255 bytes",
        ));
    };
    let mut out = Vec::with_capacity(3 + user.len() + pass.len());
    out.extend_from_slice(&[AUTH_VERSION, user_len]);
    out.extend_from_slice(user);
    out.push(pass_len);
    out.extend_from_slice(pass);
    Ok(out)
}

/// The RFC 1929 status answer: zero is success.
pub(crate) fn parse_auth_reply(reply: [u8; 2]) -> Result<(), ProxyError> {
    match reply {
        [AUTH_VERSION, 0] => Ok(()),
        [AUTH_VERSION, status] => Err(ProxyError::SocksAuthFailed { status }),
        [_, _] => Err(ProxyError::Malformed(
            "not a SOCKS5 username/password answer (version byte)",
        )),
    }
}

/// The CONNECT request.
pub(crate) fn encode_connect(target: &Target) -> Result<Vec<u8>, ProxyError> {
    let mut out = Vec::with_capacity(22);
    out.extend_from_slice(&[VERSION, CMD_CONNECT, 0]);
    let port = match target {
        Target::Addr(addr) => {
            match addr.ip() {
                IpAddr::V4(ip) => {
                    out.push(ATYP_IPV4);
                    out.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out.push(ATYP_IPV6);
                    out.extend_from_slice(&ip.octets());
                }
            }
            addr.port()
        }
        Target::Domain(name, port) => {
            let len = u8::try_from(name.len()).ok().filter(|len| *len > 0).ok_or(
                ProxyError::InvalidTarget("a SOCKS5 host name is 1 to 255 bytes"),
            )?;
            out.extend_from_slice(&[ATYP_DOMAIN, len]);
            out.extend_from_slice(name.as_bytes());
            *port
        }
    };
    out.extend_from_slice(&port.to_be_bytes());
    Ok(out)
}

/// From the reply's first five bytes (VER, REP, RSV, ATYP and the address's first byte): the
/// reply's whole length, or the refusal.
pub(crate) fn reply_len(head: [u8; 5]) -> Result<usize, ProxyError> {
    let [version, rep, _reserved, atyp, first] = head;
    if version != VERSION {
        return Err(ProxyError::Malformed("not a SOCKS5 reply (version byte)"));
    }
    if rep != 0 {
        return Err(ProxyError::Socks(SocksReply(rep)));
    }
    // VER REP RSV ATYP + address + port
    match atyp {
        ATYP_IPV4 => Ok(4 + 4 + 2),
        ATYP_IPV6 => Ok(4 + 16 + 2),
        ATYP_DOMAIN => Ok(4 + 1 + usize::from(first) + 2),
        _ => Err(ProxyError::Malformed(
            "unknown address type in the SOCKS5 reply",
        )),
    }
}

/// Opens a tunnel to `target` through the SOCKS5 proxy at the other end of `stream`.
pub(crate) async fn tunnel<S>(
    stream: &mut S,
    target: &Target,
    credentials: Option<&Credentials>,
) -> Result<(), ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Everything the caller can get wrong is checked before a byte is sent.
    let connect = encode_connect(target)?;
    let auth = credentials.map(encode_auth).transpose()?;

    stream.write_all(&encode_greeting(auth.is_some())).await?;
    let mut two = [0u8; 2];
    stream.read_exact(&mut two).await?;
    match parse_method(two, auth.is_some())? {
        Method::None => {}
        Method::Username => {
            // parse_method grants Username only when credentials were offered.
            let auth = auth.as_deref().unwrap_or_default();
            stream.write_all(auth).await?;
            stream.read_exact(&mut two).await?;
            parse_auth_reply(two)?;
        }
    }

    stream.write_all(&connect).await?;
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).await?;
    let len = reply_len(head)?;
    // The bound address: not needed for a CONNECT, but read so the tunnel starts clean.
    let mut rest = [0u8; 4 + 1 + 255 + 2];
    stream.read_exact(&mut rest[..len - head.len()]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_and_method_choice() {
        assert_eq!(encode_greeting(false), [5, 1, 0]);
        assert_eq!(encode_greeting(true), [5, 2, 0, 2]);
        assert_eq!(parse_method([5, 0], false).unwrap(), Method::None);
        assert_eq!(parse_method([5, 0], true).unwrap(), Method::None);
        assert_eq!(parse_method([5, 2], true).unwrap(), Method::Username);
        assert!(matches!(
            parse_method([5, 2], false),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse_method([5, 0xFF], false),
            Err(ProxyError::SocksNoAcceptableMethod)
        ));
        assert!(matches!(
            parse_method([4, 0], false),
            Err(ProxyError::Malformed(_))
        ));
    }

    #[test]
    fn auth_bytes_and_answers() {
        let c = Credentials {
            username: "bob".into(),
            password: "pw".into(),
        };
        assert_eq!(encode_auth(&c).unwrap(), b"\x01\x03bob\x02pw");
        let long = Credentials {
            username: "u".repeat(256),
            password: String::new(),
        };
        assert!(matches!(
            encode_auth(&long),
            Err(ProxyError::InvalidTarget(_))
        ));
        parse_auth_reply([1, 0]).unwrap();
        assert!(matches!(
            parse_auth_reply([1, 1]),
            Err(ProxyError::SocksAuthFailed { status: 1 })
        ));
        assert!(matches!(
            parse_auth_reply([5, 0]),
            Err(ProxyError::Malformed(_))
        ));
    }

    #[test]
    fn connect_bytes() {
        let v4 = Target::Addr("127.0.0.1:443".parse().unwrap());
        assert_eq!(
            encode_connect(&v4).unwrap(),
            [5, 1, 0, 1, 127, 0, 0, 1, 1, 187]
        );
        let v6 = Target::Addr("[::1]:80".parse().unwrap());
        let mut expected = vec![5, 1, 0, 4];
        expected.extend_from_slice(&[0; 15]);
        expected.extend_from_slice(&[1, 0, 80]);
        assert_eq!(encode_connect(&v6).unwrap(), expected);
        let name = Target::Domain("example.com".into(), 8080);
        assert_eq!(
            encode_connect(&name).unwrap(),
            b"\x05\x01\x00\x03\x0bexample.com\x1f\x90"
        );
        for bad in [String::new(), "a".repeat(256)] {
            assert!(matches!(
                encode_connect(&Target::Domain(bad, 1)),
                Err(ProxyError::InvalidTarget(_))
            ));
        }
    }

    #[test]
    fn reply_lengths_and_refusals() {
        assert_eq!(reply_len([5, 0, 0, 1, 127]).unwrap(), 10);
        assert_eq!(reply_len([5, 0, 0, 4, 0]).unwrap(), 22);
        assert_eq!(reply_len([5, 0, 0, 3, 9]).unwrap(), 16);
        assert!(matches!(
            reply_len([5, 5, 0, 1, 0]),
            Err(ProxyError::Socks(SocksReply::CONNECTION_REFUSED))
        ));
        assert!(matches!(
            reply_len([5, 0, 0, 9, 0]),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            reply_len([4, 0, 0, 1, 0]),
            Err(ProxyError::Malformed(_))
        ));
    }

    /// A whole exchange against a scripted proxy, which checks what it receives and answers
    /// with a domain-type bound address (the longest reply form).
    #[tokio::test]
    async fn tunnel_with_auth_reads_exactly_the_reply() {
        let (mut client, mut proxy) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move {
            let mut greeting = [0u8; 4];
            proxy.read_exact(&mut greeting).await.unwrap();
            assert_eq!(greeting, [5, 2, 0, 2]);
            proxy.write_all(&[5, 2]).await.unwrap();
            let mut auth = [0u8; 8];
            proxy.read_exact(&mut auth).await.unwrap();
            assert_eq!(&auth, b"\x01\x03bob\x02pw");
            proxy.write_all(&[1, 0]).await.unwrap();
            let mut connect = [0u8; 4 + 1 + 4 + 2];
            proxy.read_exact(&mut connect).await.unwrap();
            assert_eq!(&connect, b"\x05\x01\x00\x03\x04host\x00\x50");
            proxy
                .write_all(b"\x05\x00\x00\x03\x05bound\x12\x34tunnel data")
                .await
                .unwrap();
            proxy
        });
        let c = Credentials {
            username: "bob".into(),
            password: "pw".into(),
        };
        tunnel(&mut client, &Target::Domain("host".into(), 80), Some(&c))
            .await
            .unwrap();
        let mut after = [0u8; 11];
        client.read_exact(&mut after).await.unwrap();
        assert_eq!(&after, b"tunnel data");
        drop(server.await.unwrap());
    }
}
