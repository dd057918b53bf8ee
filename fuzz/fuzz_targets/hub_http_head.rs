//! The hub's HTTP/1.1 request-head parsing on arbitrary bytes: the head, keep-alive and body
//! framing decisions (Content-Length, Transfer-Encoding, Expect), and the API's query
//! parameters of a complete head.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    duplex_hub::fuzzing::parse_http_head(data);
});
