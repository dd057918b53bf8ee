//! The server side of the opening handshake (RFC 6455 section 4.2.1) on arbitrary bytes:
//! `parse_request` then `validate_request`, then the extension offer as a server reads it.
#![no_main]

use duplex_proto::extensions::{self, deflate};
use duplex_proto::handshake::{accept_response, parse_request, validate_request};
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
    let protocol = offer.protocols.first().map(String::as_str);
    let mut response_extensions = None;
    if let Some(header) = &offer.extensions
        && let Ok(offers) = extensions::parse(header)
        && let Ok(Some((_, response))) =
            deflate::server_negotiate(&offers, &deflate::DeflateConfig::default())
    {
        // What the server answers must parse back as the client reads it.
        let parsed = extensions::parse(&response).expect("our response parses");
        assert_eq!(parsed.len(), 1);
        response_extensions = Some(response);
    }
    let response = accept_response(
        &offer,
        protocol,
        response_extensions.as_deref(),
        &http::HeaderMap::new(),
    );
    assert!(response.ends_with(b"\r\n\r\n"));
});
