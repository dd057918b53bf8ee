//! A lean RESP reader for the pub/sub connection ([`super::subconn`]): what Redis sends a
//! subscribed client, parsed straight out of the read buffer into a [`Push`], without a
//! generic value tree: a message's channel and payload are slices of the received bytes.
//!
//! A subscribed RESP2 client receives arrays of bulk strings (`*3 $7 message $C chan $P
//! payload`, `*3 $9 subscribe $C chan :N`, `*2 $4 pong $0 ""`), simple strings (`+PONG`,
//! `+OK`) and errors (`-ERR ...`); RESP3 sends the same arrays as pushes (`>`). Every other
//! RESP2/RESP3 type is framed correctly too (and reported as [`Push::Other`]), so an
//! unexpected reply never desynchronises the stream.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

/// Takes one complete command reply off the front of `buf` as a [`redis::Value`] (`Err`
/// inside: the server's error reply); `Ok(None)` if `buf` holds only part of one.
pub(crate) fn parse_value(
    buf: &mut BytesMut,
) -> Result<Option<Result<redis::Value, String>>, RespError> {
    let Some(len) = value_end(buf, 0, 0)? else {
        return Ok(None);
    };
    let frame = buf.split_to(len);
    Ok(Some(to_value(&frame, 0).map(|(value, _)| value)))
}

/// The complete value at `at` of `frame` and where the next one starts; an error reply at
/// any depth fails the whole reply (none of ours returns one inside an array).
fn to_value(frame: &[u8], at: usize) -> Result<(redis::Value, usize), String> {
    use redis::Value;
    let unreadable = || "unreadable reply".to_owned();
    let end = line_end(frame, at + 1).ok_or_else(unreadable)?;
    let line = &frame[at + 1..end];
    let text = || String::from_utf8_lossy(line).into_owned();
    let next = end + 2;
    match frame[at] {
        b'+' if line == b"OK" => Ok((Value::Okay, next)),
        b'+' => Ok((Value::SimpleString(text()), next)),
        b'-' => Err(text()),
        b':' => {
            let n = std::str::from_utf8(line).ok().and_then(|s| s.parse().ok());
            Ok((Value::Int(n.ok_or_else(unreadable)?), next))
        }
        b'_' => Ok((Value::Nil, next)),
        b'$' | b'*' if line == b"-1" => Ok((Value::Nil, next)),
        b'$' | b'=' => {
            let len = decimal(line).ok_or_else(unreadable)?;
            let data = frame.get(next..next + len).ok_or_else(unreadable)?;
            Ok((Value::BulkString(data.to_vec()), next + len + 2))
        }
        b'!' => {
            let len = decimal(line).ok_or_else(unreadable)?;
            let data = frame.get(next..next + len).ok_or_else(unreadable)?;
            Err(String::from_utf8_lossy(data).into_owned())
        }
        b'*' | b'>' | b'~' => {
            let count = decimal(line).ok_or_else(unreadable)?;
            let mut items = Vec::with_capacity(count.min(1024));
            let mut at = next;
            for _ in 0..count {
                let (item, after) = to_value(frame, at)?;
                items.push(item);
                at = after;
            }
            Ok((Value::Array(items), at))
        }
        // Maps, attributes, doubles, booleans, big numbers: a RESP2 connection (no HELLO
        // is sent) never gets them, and no script of ours returns them.
        _ => Err(format!("unexpected reply type {:?}", char::from(frame[at]))),
    }
}

/// What one complete reply on the pub/sub connection says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Push {
    /// A message published on a subscribed channel.
    Message { channel: Bytes, payload: Bytes },
    /// A SUBSCRIBE confirmation (one per channel).
    Subscribed(Bytes),
    /// An UNSUBSCRIBE confirmation (one per channel).
    Unsubscribed(Bytes),
    /// The answer to PING (`pong` array while subscribed, `+PONG` otherwise).
    Pong,
    /// A simple string other than PONG (`+OK` from AUTH).
    Status(Bytes),
    /// An error reply (`-ERR ...`, `!` blob error).
    Error(String),
    /// Anything else, well-formed (pattern messages, integers, maps...): nothing of ours.
    Other,
}

/// Why the input is not RESP: the connection cannot be read any further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RespError {
    /// Not a RESP type byte, a bad length, or a missing CRLF.
    Malformed(&'static str),
    /// Nested deeper than [`MAX_DEPTH`] or longer than [`MAX_BULK`]: refused rather than
    /// buffered or recursed into.
    TooLarge,
}

impl std::fmt::Display for RespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RespError::Malformed(why) => write!(f, "malformed reply: {why}"),
            RespError::TooLarge => f.write_str("reply too large or too deeply nested"),
        }
    }
}

/// Deepest nesting accepted (pub/sub replies are one level deep).
const MAX_DEPTH: usize = 8;
/// Longest bulk string accepted: Redis's own default limit (`proto-max-bulk-len`).
const MAX_BULK: usize = 512 * 1024 * 1024;
/// Most elements accepted in one aggregate.
const MAX_ELEMENTS: usize = 1 << 20;

/// Takes one complete reply off the front of `buf`; `Ok(None)` if `buf` holds only part of
/// one (read more and call again: nothing was consumed).
pub(crate) fn parse(buf: &mut BytesMut) -> Result<Option<Push>, RespError> {
    // The common case, a complete message, without the general walk.
    if let Some((channel, payload, end)) = message_layout(buf) {
        let frame = buf.split_to(end).freeze();
        return Ok(Some(Push::Message {
            channel: frame.slice(channel),
            payload: frame.slice(payload),
        }));
    }
    let Some(len) = value_end(buf, 0, 0)? else {
        return Ok(None);
    };
    let frame = buf.split_to(len).freeze();
    Ok(Some(interpret(&frame)))
}

/// Where a complete, well-formed `message` push at the front of `buf` has its channel and
/// payload, and where it ends; `None` for anything else (left to the general path).
fn message_layout(buf: &[u8]) -> Option<(Range<usize>, Range<usize>, usize)> {
    const HEAD: &[u8] = b"*3\r\n$7\r\nmessage\r\n";
    if !buf.starts_with(HEAD) {
        return None;
    }
    let (channel, at) = bulk_layout(buf, HEAD.len())?;
    let (payload, end) = bulk_layout(buf, at)?;
    Some((channel, payload, end))
}

/// A complete bulk string at `at`: its data, and where it ends.
fn bulk_layout(buf: &[u8], at: usize) -> Option<(Range<usize>, usize)> {
    if *buf.get(at)? != b'$' {
        return None;
    }
    let line = buf.get(at + 1..)?;
    let cr = line.iter().take(21).position(|&b| b == b'\r')?;
    let len = decimal(&line[..cr])?;
    let start = at + 1 + cr + 2;
    let end = start.checked_add(len)?;
    if buf.get(start - 1) != Some(&b'\n') || buf.get(end..end.checked_add(2)?)? != b"\r\n" {
        return None;
    }
    Some((start..end, end + 2))
}

/// What the complete reply `frame` says.
fn interpret(frame: &Bytes) -> Push {
    match frame[0] {
        b'+' => {
            let text = frame.slice(1..frame.len() - 2);
            if text.eq_ignore_ascii_case(b"PONG") {
                Push::Pong
            } else {
                Push::Status(text)
            }
        }
        b'-' => Push::Error(String::from_utf8_lossy(&frame[1..frame.len() - 2]).into_owned()),
        b'!' => match bulk_at(frame, 0) {
            Some((text, _)) => Push::Error(String::from_utf8_lossy(&text).into_owned()),
            None => Push::Other,
        },
        b'*' | b'>' => array(frame).unwrap_or(Push::Other),
        _ => Push::Other,
    }
}

/// A pub/sub array: its first elements as strings.
fn array(frame: &Bytes) -> Option<Push> {
    let (count, mut at) = line_int(frame, 1)?;
    let mut items: [Option<Bytes>; 3] = [None, None, None];
    for item in items.iter_mut().take(count) {
        let (text, next) = bulk_at(frame, at)?;
        *item = Some(text);
        at = next;
    }
    let [Some(kind), second, third] = items else {
        return None;
    };
    let push = match (kind.as_ref(), second, third, count) {
        (b"message", Some(channel), Some(payload), 3) => Push::Message { channel, payload },
        (b"subscribe", Some(channel), _, 3) => Push::Subscribed(channel),
        (b"unsubscribe", Some(channel), _, 3) => Push::Unsubscribed(channel),
        (b"pong", _, _, 1 | 2) => Push::Pong,
        _ => Push::Other,
    };
    Some(push)
}

/// A bulk or simple string element starting at `at` of a complete frame, and where the next
/// element starts; `None` for any other type (integers etc. are skipped by the caller's
/// match, never read as strings).
fn bulk_at(frame: &Bytes, at: usize) -> Option<(Bytes, usize)> {
    match frame.get(at)? {
        b'$' | b'!' | b'=' => {
            let (len, start) = line_int(frame, at + 1)?;
            Some((frame.slice(start..start + len), start + len + 2))
        }
        b'+' => {
            let end = line_end(frame, at + 1)?;
            Some((frame.slice(at + 1..end), end + 2))
        }
        b':' => {
            // A subscription count: returned as its text, so the caller's match can skip it.
            let end = line_end(frame, at + 1)?;
            Some((frame.slice(at + 1..end), end + 2))
        }
        _ => None,
    }
}

/// The end (exclusive) of the value starting at `at`, if `buf` holds all of it.
fn value_end(buf: &[u8], at: usize, depth: usize) -> Result<Option<usize>, RespError> {
    if depth > MAX_DEPTH {
        return Err(RespError::TooLarge);
    }
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    match kind {
        // Lines: simple string, error, integer, null, boolean, double, big number.
        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => {
            Ok(find_crlf(buf, at + 1).map(|end| end + 2))
        }
        // Length-prefixed: bulk string, verbatim string, blob error.
        b'$' | b'=' | b'!' => {
            let Some((len, start)) = length(buf, at + 1)? else {
                return Ok(None);
            };
            let Some(len) = len else {
                return Ok(Some(start)); // $-1: null
            };
            if len > MAX_BULK {
                return Err(RespError::TooLarge);
            }
            let end = start + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RespError::Malformed("bulk string not followed by CRLF"));
            }
            Ok(Some(end + 2))
        }
        // Aggregates: array, push, set, map (pairs), attribute (pairs, then the value).
        b'*' | b'>' | b'~' | b'%' | b'|' => {
            let Some((count, mut next)) = length(buf, at + 1)? else {
                return Ok(None);
            };
            let Some(count) = count else {
                return Ok(Some(next)); // *-1: null array
            };
            if count > MAX_ELEMENTS {
                return Err(RespError::TooLarge);
            }
            let elements = if matches!(kind, b'%' | b'|') {
                count * 2
            } else {
                count
            };
            for _ in 0..elements {
                match value_end(buf, next, depth + 1)? {
                    Some(end) => next = end,
                    None => return Ok(None),
                }
            }
            if kind == b'|' {
                return value_end(buf, next, depth + 1);
            }
            Ok(Some(next))
        }
        _ => Err(RespError::Malformed("unknown type byte")),
    }
}

/// A length line starting at `at` (after the type byte): `None` for -1 (null), and where
/// the data after the line starts. `Ok(None)` if the line is incomplete.
#[allow(clippy::type_complexity)] // (length or null, start) if complete
fn length(buf: &[u8], at: usize) -> Result<Option<(Option<usize>, usize)>, RespError> {
    let Some(end) = find_crlf(buf, at) else {
        if buf.len() - at > 20 {
            return Err(RespError::Malformed("length line too long"));
        }
        return Ok(None);
    };
    let line = &buf[at..end];
    if line == b"-1" {
        return Ok(Some((None, end + 2)));
    }
    let len = decimal(line).ok_or(RespError::Malformed("bad length"))?;
    Ok(Some((Some(len), end + 2)))
}

/// A non-negative length line at `at` of a complete frame, and where the data after it
/// starts (`None` for a null or negative one).
fn line_int(frame: &[u8], at: usize) -> Option<(usize, usize)> {
    let end = line_end(frame, at)?;
    Some((decimal(&frame[at..end])?, end + 2))
}

/// A non-empty run of ASCII digits as a number (`None` on anything else or on overflow):
/// lengths are read on every message, so without going through `str::parse`.
fn decimal(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0usize, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
        } else {
            None
        }
    })
}

/// Where the CR of the line starting at `at` of a complete frame is.
fn line_end(frame: &[u8], at: usize) -> Option<usize> {
    find_crlf(frame, at)
}

/// The position of the first CRLF at or after `at`.
fn find_crlf(buf: &[u8], at: usize) -> Option<usize> {
    let rest = buf.get(at..)?;
    let mut from = 0;
    while let Some(i) = rest[from..].iter().position(|&b| b == b'\r') {
        let cr = from + i;
        if rest.get(cr + 1) == Some(&b'\n') {
            return Some(at + cr);
        }
        if cr + 1 >= rest.len() {
            return None;
        }
        from = cr + 1;
    }
    None
}

/// Appends the RESP2 command `args` (an array of bulk strings) to `out`.
pub(crate) fn encode_command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    out.push(b'*');
    push_decimal(out, args.len());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        let arg = arg.as_ref();
        out.push(b'$');
        push_decimal(out, arg.len());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends `n` in decimal (without a `String` per number: every publish encodes nine). Its
/// own loop rather than [`Decimal`]: inlined into `encode_command`, where the lengths are
/// small.
fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        // n % 10 < 10: the cast cannot truncate.
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A number in decimal on the stack: a command argument without the `String` (and the
/// formatting machinery) of `to_string`, which every publish paid for three times.
pub(crate) struct Decimal {
    digits: [u8; 20],
    at: usize,
}

impl Decimal {
    /// `n`'s digits (u64::MAX has 20).
    pub(crate) fn new(mut n: u64) -> Decimal {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            // n % 10 < 10: the cast cannot truncate.
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Decimal { digits, at }
    }

    /// The digits, as ASCII.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.digits[self.at..]
    }
}

/// Appends `input` to `buf`, as a read would.
#[cfg(test)]
fn feed(buf: &mut BytesMut, input: &[u8]) {
    buf.extend_from_slice(input);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Vec<Push> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(push) = parse(&mut buf).expect("valid RESP") {
            out.push(push);
        }
        assert!(buf.is_empty(), "left over: {:?}", buf);
        out
    }

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn every_reply_the_pubsub_connection_gets() {
        let input = b"*3\r\n$9\r\nsubscribe\r\n$8\r\nduplex:a\r\n:1\r\n\
            *3\r\n$7\r\nmessage\r\n$8\r\nduplex:a\r\n$12\r\npe:1:{\"x\":1}\r\n\
            *2\r\n$4\r\npong\r\n$0\r\n\r\n\
            +PONG\r\n\
            +OK\r\n\
            -ERR unknown command 'FOO'\r\n\
            *3\r\n$11\r\nunsubscribe\r\n$8\r\nduplex:a\r\n:0\r\n\
            >3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$0\r\n\r\n\
            >3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n\
            !21\r\nSYNTAX invalid syntax\r\n\
            *4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$1\r\nc\r\n$1\r\nx\r\n\
            :5\r\n";
        assert_eq!(
            parse_all(input),
            vec![
                Push::Subscribed(b("duplex:a")),
                Push::Message {
                    channel: b("duplex:a"),
                    payload: b("pe:1:{\"x\":1}"),
                },
                Push::Pong,
                Push::Pong,
                Push::Status(b("OK")),
                Push::Error("ERR unknown command 'FOO'".to_owned()),
                Push::Unsubscribed(b("duplex:a")),
                Push::Message {
                    channel: b("c"),
                    payload: Bytes::new(),
                },
                Push::Subscribed(b("c")),
                Push::Error("SYNTAX invalid syntax".to_owned()),
                Push::Other,
                Push::Other,
            ]
        );
    }

    #[test]
    fn payloads_may_hold_any_bytes() {
        let payload = b"p1:2:\r\n*3\r\n$-1\r\n\xff\x00";
        let mut input = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$".to_vec();
        input.extend_from_slice(payload.len().to_string().as_bytes());
        input.extend_from_slice(b"\r\n");
        input.extend_from_slice(payload);
        input.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_all(&input),
            vec![Push::Message {
                channel: b("ch"),
                payload: Bytes::copy_from_slice(payload),
            }]
        );
    }

    #[test]
    fn partial_input_consumes_nothing_until_complete() {
        let input: &[u8] = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$3\r\nabc\r\n+PONG\r\n";
        // Byte by byte: nothing comes out before the last byte of a reply.
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for (i, byte) in input.iter().enumerate() {
            feed(&mut buf, &[*byte]);
            if let Some(push) = parse(&mut buf).expect("valid so far") {
                out.push((i, push));
            }
        }
        assert_eq!(
            out,
            vec![
                (
                    input.len() - 8,
                    Push::Message {
                        channel: b("c"),
                        payload: b("abc"),
                    }
                ),
                (input.len() - 1, Push::Pong),
            ]
        );
        // Cut right after the CR of a bulk's CRLF.
        let mut buf = BytesMut::from(&b"$3\r\nabc\r"[..]);
        assert_eq!(parse(&mut buf), Ok(None));
        assert_eq!(buf.len(), 8);
    }

    #[test]
    fn every_resp3_type_is_framed() {
        let input = b"_\r\n#t\r\n,1.5\r\n(123456789012345678901234567890\r\n\
            =7\r\ntxt:abc\r\n%1\r\n+k\r\n:1\r\n~2\r\n:1\r\n:2\r\n\
            |1\r\n+ttl\r\n:3\r\n+PONG\r\n$-1\r\n*-1\r\n*0\r\n\
            *2\r\n*1\r\n:1\r\n$1\r\nx\r\n";
        assert_eq!(parse_all(input).len(), 12);
    }

    #[test]
    fn malformed_input_is_an_error() {
        for bad in [
            &b"?\r\n"[..],
            b"$x\r\n",
            b"$3\r\nabcXY",
            b"*1\r\n$1\r\nab\r\n",
            b"*3\r\n$7\r\nmessage\r\n$1\r\nab\r\n$0\r\n\r\n",
            b"*3\r\n$7\r\nmessage\r\n$1\nabc\r\n",
            b"$-2\r\n",
            b"$123456789012345678901234567\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(parse(&mut buf).is_err(), "{bad:?}");
        }
        let mut deep = BytesMut::from("*1\r\n".repeat(20).as_bytes());
        assert_eq!(parse(&mut deep), Err(RespError::TooLarge));
        let mut huge = BytesMut::from(&b"$999999999999\r\n"[..]);
        assert_eq!(parse(&mut huge), Err(RespError::TooLarge));
    }

    #[test]
    fn command_replies_become_values() {
        use redis::Value;
        let mut buf = BytesMut::from(
            &b"*2\r\n:42\r\n$4\r\nab\r\n\r\n+OK\r\n-NOSCRIPT No matching script\r\n$-1\r\n*1\r\n*2\r\n+x\r\n:-1\r\n*3\r\n:1"[..],
        );
        let mut next = || parse_value(&mut buf).expect("valid RESP");
        assert_eq!(
            next(),
            Some(Ok(Value::Array(vec![
                Value::Int(42),
                Value::BulkString(b"ab\r\n".to_vec()),
            ])))
        );
        assert_eq!(next(), Some(Ok(Value::Okay)));
        assert_eq!(next(), Some(Err("NOSCRIPT No matching script".to_owned())));
        assert_eq!(next(), Some(Ok(Value::Nil)));
        assert_eq!(
            next(),
            Some(Ok(Value::Array(vec![Value::Array(vec![
                Value::SimpleString("x".to_owned()),
                Value::Int(-1),
            ])])))
        );
        assert_eq!(next(), None, "an incomplete array waits for more");
        assert_eq!(buf.len(), 6);
    }

    #[test]
    fn decimals_match_to_string() {
        for n in [0, 1, 9, 10, 99, 100, 1000, 12_345, u64::MAX] {
            assert_eq!(Decimal::new(n).as_bytes(), n.to_string().as_bytes());
        }
    }

    #[test]
    fn lengths_are_plain_decimals() {
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"1234"), Some(1234));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"1 ",
            b"1a",
            b"99999999999999999999999",
        ] {
            assert_eq!(decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn commands_encode_as_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, &[&b"SUBSCRIBE"[..], b"duplex:{a}", b""]);
        assert_eq!(
            out,
            b"*3\r\n$9\r\nSUBSCRIBE\r\n$10\r\nduplex:{a}\r\n$0\r\n\r\n"
        );
        let mut buf = BytesMut::from(&b"+OK\r\n"[..]);
        assert_eq!(parse(&mut buf), Ok(Some(Push::Status(b("OK")))));
    }
}
