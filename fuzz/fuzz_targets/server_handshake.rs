//! The server side of the opening handshake (RFC 6455 section 4.2.1) on arbitrary bytes:
//! `parse_request` then `validate_request`, then the decision every runtime takes
//! (`ServerHandshake::decide`: subprotocol, permessage-deflate) and its HTTP/1.1 encoding.
#![no_main]

use duplex_proto::extensions::{self, deflate};
use duplex_proto::handshake::{Accept, Reject, ServerHandshake, parse_request, validate_request};
use duplex_proto::{Config, Role};
use libfuzzer_sys::fuzz_target;

/// Smaller than the default (16 KiB) so that the fuzzer's inputs (up to 4 KiB) reach the
/// size limit.
const MAX_SIZE: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let max = MAX_SIZE;
    let Ok(parsed) = parse_request(data, max) else {
        return;
    };
    let Some((request, consumed)) = parsed else {
        assert!(data.len() <= max, "an incomplete head over the limit");
        return;
    };
    assert!(consumed <= data.len() && consumed <= max);
    let Ok(offer) = validate_request(&request) else {
        return;
    };
    assert_eq!(
        offer.key.len(),
        24,
        "a key that is not base64 of 16 bytes: {:?}",
        offer.key
    );
    // The application's choice, taken from the input: the first offered subprotocol, one
    // that was not offered (a 500 from the one refusal path), no subprotocol, or a refusal.
    let choice = match data.len() % 4 {
        0 => Ok(Accept {
            protocol: offer.protocols.first().cloned(),
            ..Accept::default()
        }),
        1 => Ok(Accept::with_protocol("never-offered\u{0}")),
        2 => Ok(Accept::default()),
        _ => Err(Reject::new(http::StatusCode::FORBIDDEN, "no")),
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
            assert_eq!(upgrade.connection.role(), Role::Server);
            if let Some(answer) = upgrade.extensions() {
                // What the server answers must parse back as the client reads it, and agree
                // with the connection's deflate state.
                let parsed = extensions::parse(answer).expect("our answer parses");
                assert_eq!(parsed.len(), 1);
                assert!(upgrade.connection.deflate().is_some());
            } else {
                assert!(upgrade.connection.deflate().is_none());
            }
            let response = upgrade.encode_http11();
            assert!(response.starts_with(b"HTTP/1.1 101 "));
            assert!(response.ends_with(b"\r\n\r\n"));
        }
        (Err(refused), choice) => {
            let status = refused.status();
            assert!(status.is_client_error() || status.is_server_error());
            if choice.is_ok() {
                assert_eq!(status, http::StatusCode::INTERNAL_SERVER_ERROR);
            }
            let response = refused.encode_http11();
            assert!(response.starts_with(b"HTTP/1.1 "));
        }
        (Ok(_), Err(_)) => panic!("a refusal was accepted"),
    }
});
