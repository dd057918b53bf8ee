//! The client side of the opening handshake (RFC 6455 section 4.1) on arbitrary bytes:
//! `parse_response` then `validate_response` against a fixed request, then the extension
//! response as a client reads it (RFC 7692 section 7.1).
#![no_main]

use duplex_proto::extensions::{self, deflate};
use duplex_proto::handshake::{ClientRequest, parse_response, validate_response};
use libfuzzer_sys::fuzz_target;

/// Smaller than the default (16 KiB) so that the fuzzer's inputs (up to 4 KiB) reach the
/// size limit.
const MAX_SIZE: usize = 1024;

fuzz_target!(|data: &[u8]| {
    // The RFC 6455 section 1.3 key, so seeds can carry the matching accept value
    // (s3pPLMBiTxaQ9kYGzzhZRbK+xOo=).
    let mut request = ClientRequest::new(
        "ws://example.com/chat".parse().expect("a valid URL"),
        *b"the sample nonce",
    );
    request.protocols = vec!["chat".into(), "superchat".into()];
    let config = deflate::DeflateConfig::default();
    request.extensions = deflate::client_offer(&config);

    let Ok(parsed) = parse_response(data, MAX_SIZE) else {
        return;
    };
    let Some((response, consumed)) = parsed else {
        assert!(data.len() <= MAX_SIZE, "an incomplete head over the limit");
        return;
    };
    assert!(consumed <= data.len() && consumed <= MAX_SIZE);
    let Ok(accepted) = validate_response(&request, &response) else {
        return;
    };
    if let Some(protocol) = &accepted.protocol {
        assert!(
            request.protocols.contains(protocol),
            "accepted an unoffered {protocol}"
        );
    }
    if let Some(header) = &accepted.extensions
        && let Ok(elements) = extensions::parse(header)
        && let Ok(Some(negotiated)) = deflate::client_accept(&elements, &config)
    {
        assert!((8..=15).contains(&negotiated.server_max_window_bits));
        assert!((8..=15).contains(&negotiated.client_max_window_bits));
    }
});
