//! Writing the hub's JSON by hand where publication data (already serialized JSON) is embedded
//! as it is, so it is never parsed or re-serialized on the way out.

use crate::broker::{ClientInfo, Publication, StreamPosition};
use crate::presence_batch::PresenceBatch;

/// Appends `s` as a JSON string.
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    // Names, epochs and ids need no escape: copied as they are, byte for byte what
    // serde_json writes for them (it escapes only `"`, `\` and control characters).
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing to a Vec cannot fail, and a &str always serializes.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends a number (digits by hand: `write!` goes through the formatting machinery, on
/// every publication's reply and push).
pub(crate) fn number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// `{"op":"pub","channel":C,"offset":N,"data":D}`
pub(crate) fn push_publication(out: &mut Vec<u8>, channel: &str, publication: &Publication) {
    out.extend_from_slice(br#"{"op":"pub","channel":"#);
    string(out, channel);
    out.extend_from_slice(br#","offset":"#);
    number(out, publication.offset);
    out.extend_from_slice(br#","data":"#);
    out.extend_from_slice(&publication.data);
    out.push(b'}');
}

/// `{"op":"presence","channel":C,"join":[{"client":ID,"user":U},...],"leave":[...]}`: one
/// window's joins and leaves (see `presence_batch.rs`); both lists are always there, possibly
/// empty, and never name the same client.
pub(crate) fn push_presence(out: &mut Vec<u8>, channel: &str, batch: &PresenceBatch) {
    out.extend_from_slice(br#"{"op":"presence","channel":"#);
    string(out, channel);
    out.extend_from_slice(br#","join":"#);
    clients(out, &batch.joins);
    out.extend_from_slice(br#","leave":"#);
    clients(out, &batch.leaves);
    out.push(b'}');
}

/// `{"op":"reset","channel":C,"epoch":E,"offset":N}`: the stream restarted in epoch `E`;
/// publications continue after `N`.
pub(crate) fn push_reset(out: &mut Vec<u8>, channel: &str, position: &StreamPosition) {
    out.extend_from_slice(br#"{"op":"reset","channel":"#);
    string(out, channel);
    out.extend_from_slice(br#","epoch":"#);
    string(out, &position.epoch);
    out.extend_from_slice(br#","offset":"#);
    number(out, position.offset);
    out.push(b'}');
}

/// `{"op":"gap","channel":C,"epoch":E,"first":A,"last":B}`: publications `A..=B` are lost;
/// publications continue after `B`. `epoch` is left out while the node has not learned it.
pub(crate) fn push_gap(
    out: &mut Vec<u8>,
    channel: &str,
    epoch: Option<&str>,
    first: u64,
    last: u64,
) {
    out.extend_from_slice(br#"{"op":"gap","channel":"#);
    string(out, channel);
    if let Some(epoch) = epoch {
        out.extend_from_slice(br#","epoch":"#);
        string(out, epoch);
    }
    out.extend_from_slice(br#","first":"#);
    number(out, first);
    out.extend_from_slice(br#","last":"#);
    number(out, last);
    out.push(b'}');
}

/// `[{"offset":N,"data":D},...]`
pub(crate) fn publications(out: &mut Vec<u8>, publications: &[Publication]) {
    out.push(b'[');
    for (i, p) in publications.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"offset":"#);
        number(out, p.offset);
        out.extend_from_slice(br#","data":"#);
        out.extend_from_slice(&p.data);
        out.push(b'}');
    }
    out.push(b']');
}

/// `{"clients":[{"client":ID,"user":U},...]}` (also used inside command replies).
pub(crate) fn clients(out: &mut Vec<u8>, clients: &[ClientInfo]) {
    out.push(b'[');
    for (i, c) in clients.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"client":"#);
        string(out, &c.client);
        out.extend_from_slice(br#","user":"#);
        string(out, &c.user);
        out.push(b'}');
    }
    out.push(b']');
}

/// `{"error":MESSAGE}`: the body of HTTP errors.
pub(crate) fn error_body(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    out.extend_from_slice(br#"{"error":"#);
    string(&mut out, message);
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// The hand-written paths write what serde_json writes.
    #[test]
    fn strings_and_numbers_as_serde_json_writes_them() {
        for s in [
            "",
            "chat",
            "a b:c/ü€",
            "q\"uote",
            "back\\slash",
            "tab\t",
            "nul\0",
            "\u{7f}",
        ] {
            let mut out = Vec::new();
            string(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
        for n in [0, 7, 10, 99, 100, 12345, u64::MAX] {
            let mut out = b"x".to_vec();
            number(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn envelopes_are_valid_json() {
        let p = Publication {
            offset: 7,
            data: Bytes::from_static(br#"{"a":[1,"\u00e9"]}"#),
        };
        let mut out = Vec::new();
        push_publication(&mut out, "chat \"x\"", &p);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["channel"], "chat \"x\"");
        assert_eq!(v["offset"], 7);
        assert_eq!(v["data"]["a"][1], "é");

        let mut out = Vec::new();
        publications(&mut out, &[p.clone(), Publication { offset: 8, ..p }]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v[1]["offset"], 8);

        let client = ClientInfo {
            client: "c".into(),
            user: "u".into(),
        };
        let mut out = Vec::new();
        let batch = PresenceBatch {
            joins: vec![client.clone()],
            leaves: Vec::new(),
        };
        push_presence(&mut out, "room", &batch);
        assert_eq!(
            out,
            br#"{"op":"presence","channel":"room","join":[{"client":"c","user":"u"}],"leave":[]}"#
        );
        let other = ClientInfo {
            client: "d\"".into(),
            user: "v".into(),
        };
        let batch = PresenceBatch {
            joins: vec![client.clone(), other.clone()],
            leaves: vec![ClientInfo {
                client: "e".into(),
                ..other
            }],
        };
        let mut out = Vec::new();
        push_presence(&mut out, "room", &batch);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["join"][1]["client"], "d\"");
        assert_eq!(v["leave"][0]["client"], "e");
        let mut out = Vec::new();
        let position = StreamPosition {
            epoch: "e2".into(),
            offset: 4,
        };
        push_reset(&mut out, "room", &position);
        assert_eq!(
            out,
            br#"{"op":"reset","channel":"room","epoch":"e2","offset":4}"#
        );
        let mut out = Vec::new();
        push_gap(&mut out, "room", Some("e2"), 5, 9);
        assert_eq!(
            out,
            br#"{"op":"gap","channel":"room","epoch":"e2","first":5,"last":9}"#
        );
        let mut out = Vec::new();
        push_gap(&mut out, "room", None, 5, 9);
        assert_eq!(out, br#"{"op":"gap","channel":"room","first":5,"last":9}"#);
        let v: serde_json::Value = serde_json::from_slice(&error_body("bad \n")).unwrap();
        assert_eq!(v["error"], "bad \n");
    }
}
