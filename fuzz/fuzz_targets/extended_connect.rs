//! The server side of an RFC 8441 extended CONNECT (WebSockets over HTTP/2) on arbitrary
//! input: `validate_extended_connect` on a request built from it, then the decision every
//! runtime takes (`ServerHandshake::decide`: subprotocol, permessage-deflate) and its HTTP/2
//! answer.
//!
//! Input, lines split at `\n`: the method, the version (`2`, `1.1`, `1.0`, `3`; anything else
//! is HTTP/2), the URI (`:scheme`, `:authority`, `:path`), the `:protocol` pseudo-header (`-`:
//! none), then `name: value` headers. A line that is not a valid method, URI, name or value
//! ends the request there (the HTTP/2 library would have refused it before us).
#![no_main]

use duplex_proto::extensions::{self, deflate};
use duplex_proto::handshake::{Accept, Reject, ServerHandshake, validate_extended_connect};
use duplex_proto::{Config, Role};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use libfuzzer_sys::fuzz_target;

/// The request the input describes, and its `:protocol`.
fn request(data: &[u8]) -> Option<(Request<()>, Option<String>)> {
    let mut lines = data.split(|&b| b == b'\n');
    let method = Method::from_bytes(lines.next()?).ok()?;
    let version = match lines.next()? {
        b"1.1" => Version::HTTP_11,
        b"1.0" => Version::HTTP_10,
        b"3" => Version::HTTP_3,
        _ => Version::HTTP_2,
    };
    let uri = Uri::try_from(lines.next()?).ok()?;
    let protocol = match lines.next()? {
        b"-" => None,
        p => Some(String::from_utf8_lossy(p).into_owned()),
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.version_mut() = version;
    *request.uri_mut() = uri;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            break;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            break;
        };
        request.headers_mut().append(name, value);
    }
    Some((request, protocol))
}

fuzz_target!(|data: &[u8]| {
    let Some((request, protocol)) = request(data) else {
        return;
    };
    let offer = match validate_extended_connect(&request, protocol.as_deref()) {
        Ok(offer) => offer,
        Err(error) => {
            let status = error.status();
            assert!(
                [400, 405, 426].contains(&status.as_u16()),
                "{error:?} answered {status}"
            );
            if status == StatusCode::METHOD_NOT_ALLOWED {
                assert_ne!(request.method(), Method::CONNECT, "{error:?}");
            }
            return;
        }
    };
    // Accepted: everything RFC 8441 section 4 and RFC 6455 section 4.2.1 ask for holds.
    assert_eq!(request.method(), Method::CONNECT);
    assert!(request.version() >= Version::HTTP_2);
    assert!(
        protocol
            .as_deref()
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("websocket")),
        "accepted :protocol {protocol:?}"
    );
    assert!(
        request.uri().authority().is_some(),
        "accepted without :authority"
    );
    let versions: Vec<_> = request
        .headers()
        .get_all("sec-websocket-version")
        .iter()
        .collect();
    assert_eq!(versions.len(), 1, "accepted versions {versions:?}");
    assert_eq!(versions[0].as_bytes().trim_ascii(), b"13");
    assert!(offer.extended_connect);
    assert!(offer.key.is_empty(), "no key over HTTP/2");
    for p in &offer.protocols {
        assert!(
            !p.is_empty(),
            "an empty subprotocol in {:?}",
            offer.protocols
        );
    }

    // The application's choice, from the input: the first offered subprotocol, one that was
    // not offered (a 500 from the one refusal path), none, or a refusal.
    let choice = match data.len() % 4 {
        0 => Ok(Accept {
            protocol: offer.protocols.first().cloned(),
            ..Accept::default()
        }),
        1 => Ok(Accept::with_protocol("never-offered\u{0}")),
        2 => Ok(Accept::default()),
        _ => Err(Reject::new(StatusCode::FORBIDDEN, "no")),
    };
    let config = Config::default();
    let deflate = deflate::DeflateConfig::default();
    let decided = ServerHandshake::new(&config)
        .deflate(Some(&deflate))
        .decide(&offer, choice.clone());
    match (decided, choice) {
        (Ok(upgrade), Ok(accept)) => {
            assert_eq!(upgrade.protocol, accept.protocol, "the chosen subprotocol");
            assert!(
                accept
                    .protocol
                    .as_ref()
                    .is_none_or(|p| offer.protocols.contains(p)),
                "accepted a subprotocol that was not offered"
            );
            assert!(upgrade.is_extended_connect());
            assert_eq!(upgrade.status(), StatusCode::OK, "RFC 8441 answers 200");
            assert_eq!(upgrade.accept_key(), "");
            assert_eq!(upgrade.connection.role(), Role::Server);
            let response = upgrade.response();
            assert_eq!(response.status(), StatusCode::OK);
            for name in ["upgrade", "connection", "sec-websocket-accept"] {
                assert!(response.headers().get(name).is_none(), "{name} over HTTP/2");
            }
            match upgrade.extensions() {
                Some(answer) => {
                    let parsed = extensions::parse(answer).expect("our answer parses");
                    assert_eq!(parsed.len(), 1);
                    assert!(upgrade.connection.deflate().is_some());
                }
                None => assert!(upgrade.connection.deflate().is_none()),
            }
        }
        (Err(refused), choice) => {
            let status = refused.status();
            assert!(status.is_client_error() || status.is_server_error());
            if choice.is_ok() {
                assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
            }
            assert_eq!(refused.response().status(), status);
        }
        (Ok(_), Err(_)) => panic!("a refusal was accepted"),
    }
});
