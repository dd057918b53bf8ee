//! Fuzzing entry points: the hub's parsers of peer input, callable from `fuzz/` on arbitrary
//! bytes. Each runs the very function the server runs and discards the result; none may
//! panic, whatever the bytes. Not part of the hub's API (hidden from its docs).

use crate::config::HubConfig;

/// Parses `bytes` as a WebSocket text message carrying a command (`protocol::Command::parse`),
/// and, as the API would, as the body of `POST /api/publish`.
pub fn parse_command(bytes: &[u8]) {
    let _ = crate::protocol::Command::parse(bytes);
    let _ = crate::protocol::Publish::from_http_body(bytes);
}

/// Parses `bytes` as the start of an HTTP/1.1 connection (`head::parse_head`): the request head
/// and every decision taken from it (keep-alive, body framing), then, for a complete head, the API's query
/// parameters, with the default `max_message_size` as the body limit.
pub fn parse_http_head(bytes: &[u8]) {
    let max_body = HubConfig::default().max_message_size;
    if let Ok(Some(head)) = crate::head::parse_head(bytes, max_body) {
        let _ = crate::protocol::HistoryParams::from_request(&head.request);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The corpus seeds' shapes, and truncations of them, run without panicking.
    #[test]
    fn entry_points_take_any_prefix_of_valid_input() {
        let inputs: [&[u8]; 4] = [
            br#"{"id":1,"op":"subscribe","channel":"chat","since":{"epoch":"e","offset":3}}"#,
            br#"{"id":2,"op":"publish","channel":"chat","data":{"a":[1,2e3]}}"#,
            b"GET /api/history?channel=a%2&since=1&limit=x HTTP/1.1\r\nHost: h\r\n\r\n",
            b"POST /api/publish HTTP/1.0\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ];
        for input in inputs {
            for end in 0..=input.len() {
                parse_command(&input[..end]);
                parse_http_head(&input[..end]);
            }
        }
    }
}
