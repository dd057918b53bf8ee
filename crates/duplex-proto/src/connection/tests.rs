//! Two connections wired in memory: the whole harness the protocol needs.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::frame::{FrameHeader, OpCode};

fn drain(conn: &mut Connection) -> BytesMut {
    let mut wire = BytesMut::new();
    while let Some(tx) = conn.poll_transmit() {
        wire.extend_from_slice(tx.head());
        wire.extend_from_slice(tx.payload());
    }
    wire
}

fn events(conn: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}

fn pair() -> (Connection, Connection) {
    (
        Connection::new(Role::Client, Config::default()),
        Connection::new(Role::Server, Config::default()),
    )
}

/// A raw frame as a client would send it (masked with a fixed key).
fn client_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> BytesMut {
    raw_frame(fin, rsv, opcode, Some([0x11, 0x22, 0x33, 0x44]), payload)
}

fn raw_frame(fin: bool, rsv: u8, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    out.extend_from_slice(&[(u8::from(fin) << 7) | (rsv << 4) | opcode]);
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.extend_from_slice(&[m | n as u8]),
        n @ 126..=0xffff => {
            out.extend_from_slice(&[m | 126]);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.extend_from_slice(&[m | 127]);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mut body = payload.to_vec();
    if let Some(key) = mask {
        out.extend_from_slice(&key);
        crate::mask::apply_mask(&mut body, key, 0);
    }
    out.extend_from_slice(&body);
    out
}

/// Feeds a raw client frame to a server and returns the error and the Close it queued.
fn server_fails_with(wire: BytesMut) -> (ProtocolError, Option<u16>) {
    let mut server = Connection::new(Role::Server, Config::default());
    let mut wire = wire;
    let err = match server.recv(&mut wire) {
        Err(Error::Protocol(e)) => e,
        other => panic!("expected a protocol error, got {other:?}"),
    };
    assert!(server.is_closed());
    let close = server.poll_transmit().expect("close queued");
    assert_eq!(close.head()[0], 0x88);
    let code = (close.payload().len() >= 2)
        .then(|| u16::from_be_bytes([close.payload()[0], close.payload()[1]]));
    assert!(server.poll_transmit().is_none());
    (err, code)
}

#[test]
fn text_and_binary_round_trip_both_ways() {
    let (mut client, mut server) = pair();
    client.send(Message::text("héllo")).unwrap();
    client.send(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
    server.recv(&mut drain(&mut client)).unwrap();
    assert_eq!(
        events(&mut server),
        vec![
            Event::Message(Message::text("héllo")),
            Event::Message(Message::binary(vec![0u8, 1, 2, 255]))
        ]
    );
    server.send(Message::text("back")).unwrap();
    let wire = drain(&mut server);
    assert_eq!(&wire[..], b"\x81\x04back", "server frames are unmasked");
    let mut wire = wire;
    client.recv(&mut wire).unwrap();
    assert_eq!(
        events(&mut client),
        vec![Event::Message(Message::text("back"))]
    );
}

#[test]
fn client_frames_are_masked() {
    let (mut client, _) = pair();
    client.set_mask_key_source(|| [1, 2, 3, 4]);
    client.send(Message::text("abcd")).unwrap();
    let wire = drain(&mut client);
    assert_eq!(
        &wire[..],
        &[
            0x81,
            0x84,
            1,
            2,
            3,
            4,
            b'a' ^ 1,
            b'b' ^ 2,
            b'c' ^ 3,
            b'd' ^ 4
        ]
    );
}

#[test]
fn single_frame_message_is_not_copied() {
    let mut server = Connection::new(Role::Server, Config::default());
    let mut wire = raw_frame(true, 0, 2, Some([0, 0, 0, 0]), &[7u8; 1000]);
    let start = wire.as_ptr() as usize;
    server.recv(&mut wire).unwrap();
    let Some(Event::Message(Message::Binary(data))) = server.poll_event() else {
        panic!()
    };
    assert_eq!(
        data.as_ptr() as usize,
        start + 8,
        "payload points into the read buffer"
    );
}

#[test]
fn fragmented_message_with_interleaved_control_frames() {
    let mut server = Connection::new(Role::Server, Config::default());
    let mut wire = client_frame(false, 0, 1, b"Hel");
    wire.extend_from_slice(&client_frame(true, 0, 9, b"ping!"));
    wire.extend_from_slice(&client_frame(false, 0, 0, b"lo "));
    wire.extend_from_slice(&client_frame(true, 0, 10, b"pong"));
    wire.extend_from_slice(&client_frame(true, 0, 0, "wörld".as_bytes()));
    server.recv(&mut wire).unwrap();
    assert_eq!(
        events(&mut server),
        vec![
            Event::Ping(Bytes::from_static(b"ping!")),
            Event::Pong(Bytes::from_static(b"pong")),
            Event::Message(Message::text("Hello wörld")),
        ]
    );
    // The ping was answered with the same payload.
    assert_eq!(&drain(&mut server)[..], b"\x8a\x05ping!");
}

#[test]
fn streaming_send_and_streaming_receive() {
    let mut client = Connection::new(Role::Client, Config::default());
    let config = Config {
        streaming_receive: true,
        ..Config::default()
    };
    let mut server = Connection::new(Role::Server, config);
    client
        .send_fragment(DataKind::Binary, Bytes::from_static(b"ab"), false)
        .unwrap();
    assert_eq!(
        client.send(Message::text("no")),
        Err(Error::Usage(UsageError::FragmentOrder))
    );
    assert_eq!(
        client.send_fragment(DataKind::Text, Bytes::from_static(b"x"), true),
        Err(Error::Usage(UsageError::FragmentOrder))
    );
    client.ping(Bytes::from_static(b"p")).unwrap();
    client
        .send_fragment(DataKind::Binary, Bytes::from_static(b"cd"), true)
        .unwrap();
    server.recv(&mut drain(&mut client)).unwrap();
    let frag = |data: &'static [u8], first, fin| Event::Fragment {
        kind: DataKind::Binary,
        data: Bytes::from_static(data),
        first,
        fin,
    };
    assert_eq!(
        events(&mut server),
        vec![
            frag(b"ab", true, false),
            Event::Ping(Bytes::from_static(b"p")),
            frag(b"cd", false, true)
        ]
    );
}

#[test]
fn close_handshake_initiated_by_client() {
    let (mut client, mut server) = pair();
    client.close(CloseCode::NORMAL, "bye").unwrap();
    assert_eq!(client.state(), State::CloseSent);
    assert_eq!(
        client.send(Message::text("late")),
        Err(Error::Usage(UsageError::Closed))
    );
    server.recv(&mut drain(&mut client)).unwrap();
    assert_eq!(
        events(&mut server),
        vec![Event::Close(Some(CloseFrame::new(
            CloseCode::NORMAL,
            "bye"
        )))]
    );
    assert!(server.is_closed());
    // The server echoes the code.
    client.recv(&mut drain(&mut server)).unwrap();
    assert_eq!(
        events(&mut client),
        vec![Event::Close(Some(CloseFrame::new(CloseCode::NORMAL, "")))]
    );
    assert!(client.is_closed());
    assert!(!client.has_pending_transmit());
}

#[test]
fn data_after_our_close_is_still_delivered_then_nothing_after_theirs() {
    let (mut client, mut server) = pair();
    server.close(CloseCode::GOING_AWAY, "").unwrap();
    client.send(Message::text("in flight")).unwrap();
    server.recv(&mut drain(&mut client)).unwrap();
    assert_eq!(
        events(&mut server),
        vec![Event::Message(Message::text("in flight"))]
    );
    let mut wire = client_frame(true, 0, 8, &1000u16.to_be_bytes());
    wire.extend_from_slice(&client_frame(true, 0, 1, b"after close"));
    server.recv(&mut wire).unwrap();
    assert_eq!(
        events(&mut server),
        vec![Event::Close(Some(CloseFrame::new(CloseCode::NORMAL, "")))]
    );
    assert!(server.is_closed());
    let mut more = client_frame(true, 0, 1, b"ignored");
    server.recv(&mut more).unwrap();
    assert!(server.poll_event().is_none());
}

#[test]
fn messages_before_a_violation_can_still_be_answered() {
    // Autobahn 3.2: a message, then a frame with RSV bits, in one read.
    let mut server = Connection::new(Role::Server, Config::default());
    let mut wire = client_frame(true, 0, 1, b"echo me");
    wire.extend_from_slice(&client_frame(true, 0b010, 1, b"bad"));
    server.recv(&mut wire).unwrap();
    assert!(wire.is_empty(), "nothing after the violation is read");
    assert_eq!(
        server.poll_event(),
        Some(Event::Message(Message::text("echo me")))
    );
    assert_eq!(server.state(), State::Open);
    assert_eq!(server.protocol_error(), None);
    server.send(Message::text("echo me")).unwrap();
    // Drained: the violation is carried out without another `recv`.
    assert_eq!(server.poll_event(), None);
    assert_eq!(
        server.protocol_error(),
        Some(&ProtocolError::ReservedBits(0b010))
    );
    assert!(server.is_closed());
    assert_eq!(server.recv(&mut client_frame(true, 0, 1, b"more")), Ok(()));
    assert_eq!(server.poll_event(), None);
    let wire = drain(&mut server);
    assert_eq!(
        &wire[..9],
        b"\x81\x07echo me",
        "the echo goes out before the Close"
    );
    assert_eq!(&wire[9..13], &[0x88, wire[10], 0x03, 0xea]);
}

#[test]
fn messages_before_the_peers_close_are_answered_before_the_reply() {
    let mut server = Connection::new(Role::Server, Config::default());
    let mut wire = client_frame(true, 0, 1, b"last words");
    wire.extend_from_slice(&client_frame(true, 0, 8, &1000u16.to_be_bytes()));
    server.recv(&mut wire).unwrap();
    assert!(server.has_pending_event());
    assert_eq!(
        server.poll_event(),
        Some(Event::Message(Message::text("last words")))
    );
    assert_eq!(server.state(), State::Open);
    assert!(server.has_pending_event(), "the Close is still to come");
    server.send(Message::text("last words")).unwrap();
    assert_eq!(
        events(&mut server),
        vec![Event::Close(Some(CloseFrame::new(CloseCode::NORMAL, "")))]
    );
    assert!(server.is_closed());
    assert!(!server.has_pending_event());
    assert_eq!(
        &drain(&mut server)[..],
        b"\x81\x0alast words\x88\x02\x03\xe8"
    );
}

#[test]
fn empty_close_is_answered_with_empty_close() {
    let mut server = Connection::new(Role::Server, Config::default());
    server.recv(&mut client_frame(true, 0, 8, b"")).unwrap();
    assert_eq!(events(&mut server), vec![Event::Close(None)]);
    assert_eq!(&drain(&mut server)[..], b"\x88\x00");
}

#[test]
fn every_violation_maps_to_its_close_code() {
    use ProtocolError as P;
    let too_long = vec![0u8; 126];
    let cases: Vec<(BytesMut, ProtocolError, u16)> = vec![
        (raw_frame(true, 0, 1, None, b"x"), P::UnmaskedFrame, 1002),
        (
            client_frame(true, 0b100, 1, b"x"),
            P::ReservedBits(0b100),
            1002,
        ),
        (
            client_frame(true, 0b010, 1, b"x"),
            P::ReservedBits(0b010),
            1002,
        ),
        (client_frame(true, 0, 3, b""), P::ReservedOpcode(3), 1002),
        (
            client_frame(true, 0, 0xb, b""),
            P::ReservedOpcode(0xb),
            1002,
        ),
        (
            client_frame(false, 0, 9, b""),
            P::FragmentedControlFrame,
            1002,
        ),
        (
            client_frame(true, 0, 9, &too_long),
            P::ControlFrameTooLong(126),
            1002,
        ),
        (
            client_frame(true, 0, 0, b"x"),
            P::UnexpectedContinuation,
            1002,
        ),
        (
            client_frame(
                true,
                0,
                1,
                b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80",
            ),
            P::InvalidUtf8,
            1007,
        ),
        (
            client_frame(true, 0, 8, b"\x03"),
            P::InvalidClosePayload,
            1002,
        ),
        (
            client_frame(true, 0, 8, &1005u16.to_be_bytes()),
            P::InvalidCloseCode(1005),
            1002,
        ),
        (
            client_frame(true, 0, 8, &999u16.to_be_bytes()),
            P::InvalidCloseCode(999),
            1002,
        ),
        (
            client_frame(true, 0, 8, &5000u16.to_be_bytes()),
            P::InvalidCloseCode(5000),
            1002,
        ),
        (
            client_frame(true, 0, 8, b"\x03\xe8\xff"),
            P::InvalidUtf8,
            1007,
        ),
    ];
    for (wire, expected, code) in cases {
        let (err, sent) = server_fails_with(wire);
        assert_eq!(err, expected);
        assert_eq!(sent, Some(code), "{expected:?}");
        assert_eq!(err.close_code().0, code);
    }
    // A new message inside a fragmented one.
    let mut wire = client_frame(false, 0, 1, b"a");
    wire.extend_from_slice(&client_frame(true, 0, 1, b"b"));
    assert_eq!(
        server_fails_with(wire),
        (P::ExpectedContinuation, Some(1002))
    );
    // A server frame arriving masked at a client.
    let mut client = Connection::new(Role::Client, Config::default());
    let mut wire = client_frame(true, 0, 1, b"x");
    assert_eq!(client.recv(&mut wire), Err(Error::Protocol(P::MaskedFrame)));
}

#[test]
fn limits_fail_with_1009_before_the_payload_arrives() {
    let config = Config {
        max_frame_size: 1000,
        max_message_size: 1500,
        ..Config::default()
    };
    let mut server = Connection::new(Role::Server, config.clone());
    // Only the header of a 2000-byte frame: rejected at once.
    let mut wire = BytesMut::from(&client_frame(true, 0, 2, &[0u8; 2000])[..8]);
    assert_eq!(
        server.recv(&mut wire),
        Err(Error::Protocol(ProtocolError::FrameTooLarge {
            size: 2000,
            max: 1000
        }))
    );
    let close = drain(&mut server);
    assert_eq!((close[0], &close[2..4]), (0x88, &1009u16.to_be_bytes()[..]));

    let mut server = Connection::new(Role::Server, config);
    let mut wire = client_frame(false, 0, 2, &[0u8; 1000]);
    wire.extend_from_slice(&client_frame(true, 0, 0, &[0u8; 600])[..8]);
    assert_eq!(
        server.recv(&mut wire),
        Err(Error::Protocol(ProtocolError::MessageTooLarge {
            size: 1600,
            max: 1500
        }))
    );
}

#[test]
fn invalid_utf8_fails_fast_inside_a_partial_frame() {
    let mut server = Connection::new(Role::Server, Config::default());
    let frame = client_frame(
        true,
        0,
        1,
        b"valid text \xf4\x90\x80\x80 and more valid text after it",
    );
    // Header plus the payload up to just past the bad bytes: the error comes before the rest.
    let mut wire = BytesMut::from(&frame[..6 + 13]);
    assert_eq!(
        server.recv(&mut wire),
        Err(Error::Protocol(ProtocolError::InvalidUtf8))
    );
}

#[test]
fn uncompressed_fragments_are_charged_until_the_message_completes() {
    let budget = crate::MessageBudget::new(1 << 20);
    let config = Config {
        message_budget: Some(budget.clone()),
        ..Config::default()
    };
    let mut server = Connection::new(Role::Server, config.clone());
    server
        .recv(&mut client_frame(false, 0, 0x2, &[7u8; 300 << 10]))
        .unwrap();
    assert_eq!(budget.held(), (300 << 10) - crate::budget::UNCHARGED);
    server
        .recv(&mut client_frame(true, 0, 0x0, &[7u8; 100]))
        .unwrap();
    assert_eq!(events(&mut server).len(), 1);
    assert_eq!(budget.held(), 0);
    // Fragments past the budget fail the connection with 1009 (larger than the budget).
    let mut greedy = Connection::new(Role::Server, config);
    greedy
        .recv(&mut client_frame(false, 0, 0x2, &[7u8; 700 << 10]))
        .unwrap();
    let err = greedy
        .recv(&mut client_frame(false, 0, 0x0, &[7u8; 700 << 10]))
        .unwrap_err();
    assert_eq!(
        err,
        Error::Protocol(ProtocolError::OverBudget {
            size: ((1400 << 10) - crate::budget::UNCHARGED) as u64,
            budget: 1 << 20
        })
    );
    assert_eq!(&drain(&mut greedy)[2..4], &1009u16.to_be_bytes());
    assert_eq!(budget.held(), 0);
}

#[test]
fn partial_header_stays_in_buffer() {
    let mut server = Connection::new(Role::Server, Config::default());
    let frame = client_frame(true, 0, 2, &[5u8; 300]);
    let mut wire = BytesMut::from(&frame[..3]);
    server.recv(&mut wire).unwrap();
    assert_eq!(wire.len(), 3);
    wire.extend_from_slice(&frame[3..]);
    server.recv(&mut wire).unwrap();
    assert!(wire.is_empty());
    assert_eq!(
        events(&mut server),
        vec![Event::Message(Message::binary(vec![5u8; 300]))]
    );
}

#[test]
fn caller_mistakes_send_nothing() {
    let (mut client, _) = pair();
    assert_eq!(
        client.ping(Bytes::from(vec![0u8; 126])),
        Err(Error::Usage(UsageError::ControlPayloadTooLong(126)))
    );
    assert_eq!(
        client.close(CloseCode::NO_STATUS, ""),
        Err(Error::Usage(UsageError::InvalidCloseCode(1005)))
    );
    assert!(!client.has_pending_transmit());
    // A long reason is cut to fit a control frame rather than refused.
    client.close(CloseCode::NORMAL, &"x".repeat(500)).unwrap();
    let tx = client.poll_transmit().unwrap();
    assert_eq!(tx.payload().len(), 125);
}

fn any_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        "\\PC{0,40}".prop_map(Message::text),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Message::binary),
        proptest::collection::vec(any::<u8>(), 60000..70000).prop_map(Message::binary),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Decode of encode under any chunking: the server sees exactly the messages the client sent,
    /// however the bytes are cut.
    #[test]
    fn decode_of_encode_under_any_chunking(
        messages in proptest::collection::vec(any_message(), 1..6),
        cuts in proptest::collection::vec(1usize..5000, 1..40),
        fragment in any::<bool>(),
    ) {
        let (mut client, mut server) = pair();
        for m in &messages {
            if fragment && m.len() > 2 {
                let bytes = m.as_bytes();
                let half = bytes.len() / 2;
                let kind = m.kind();
                if kind == DataKind::Text && !std::str::from_utf8(bytes).map(|s| s.is_char_boundary(half)).unwrap_or(false) {
                    client.send(m.clone()).unwrap();
                } else {
                    client.send_fragment(kind, Bytes::copy_from_slice(&bytes[..half]), false).unwrap();
                    client.ping(Bytes::from_static(b"mid")).unwrap();
                    client.send_fragment(kind, Bytes::copy_from_slice(&bytes[half..]), true).unwrap();
                }
            } else {
                client.send(m.clone()).unwrap();
            }
        }
        let wire = drain(&mut client);
        let mut buf = BytesMut::new();
        let mut pos = 0;
        let mut cut = cuts.iter().cycle();
        while pos < wire.len() {
            let n = (*cut.next().unwrap()).min(wire.len() - pos);
            buf.extend_from_slice(&wire[pos..pos + n]);
            pos += n;
            server.recv(&mut buf).unwrap();
            prop_assert!(buf.len() < 14 + 125);
        }
        let got: Vec<Message> = events(&mut server)
            .into_iter()
            .filter_map(|e| match e { Event::Message(m) => Some(m), _ => None })
            .collect();
        prop_assert_eq!(got, messages);
    }

    /// Whatever bytes arrive, the server neither panics nor leaves the call protocol.
    #[test]
    fn arbitrary_input_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut server = Connection::new(Role::Server, Config { max_frame_size: 4096, ..Config::default() });
        let mut buf = BytesMut::from(&data[..]);
        if server.recv(&mut buf).is_err() {
            prop_assert!(server.is_closed());
            let close = server.poll_transmit().unwrap();
            prop_assert_eq!(close.head()[0], 0x88);
        }
    }
}

#[test]
fn header_of_a_queued_frame_decodes() {
    let (mut client, _) = pair();
    client.send(Message::binary(vec![0u8; 70000])).unwrap();
    let tx = client.poll_transmit().unwrap();
    let (h, len) = FrameHeader::decode(tx.head()).unwrap().unwrap();
    assert_eq!(
        (h.opcode, h.payload_len, len, h.mask.is_some()),
        (OpCode::Binary, 70000, 14, true)
    );
}

#[cfg(feature = "deflate")]
mod deflate {
    use super::*;
    use crate::extensions::deflate::{self, DeflateConfig};
    use crate::extensions::parse;

    fn deflate_pair(
        client_cfg: DeflateConfig,
        server_cfg: DeflateConfig,
        config: Config,
    ) -> (Connection, Connection) {
        let offer = deflate::client_offer(&client_cfg).unwrap();
        let (negotiated, answer) = deflate::server_negotiate(&parse(&offer).unwrap(), &server_cfg)
            .unwrap()
            .unwrap();
        let mut server = Connection::new(Role::Server, config.clone());
        server.set_deflate(negotiated);
        let mut client = Connection::new(Role::Client, config);
        client.set_deflate(
            deflate::client_accept(&parse(&answer).unwrap(), &client_cfg)
                .unwrap()
                .unwrap(),
        );
        (client, server)
    }

    fn round_trip(client_cfg: DeflateConfig, server_cfg: DeflateConfig) {
        let (mut client, mut server) = deflate_pair(client_cfg, server_cfg, Config::default());
        let json = r#"{"channel":"ticker","price":101.25,"symbol":"ABC"}"#.repeat(20);
        for i in 0..5 {
            let msg = Message::text(format!("{i}{json}"));
            client.send(msg.clone()).unwrap();
            let wire = drain(&mut client);
            assert_eq!(wire[0] & 0x40, 0x40, "RSV1 set on a compressed message");
            assert!(
                wire.len() < json.len() / 2,
                "compressed: {} bytes",
                wire.len()
            );
            server.recv(&mut wire.clone()).unwrap();
            assert_eq!(events(&mut server), vec![Event::Message(msg.clone())]);
            server.send(msg.clone()).unwrap();
            client.recv(&mut drain(&mut server)).unwrap();
            assert_eq!(events(&mut client), vec![Event::Message(msg)]);
        }
    }

    #[test]
    fn round_trips_with_and_without_context_takeover() {
        round_trip(DeflateConfig::default(), DeflateConfig::default());
        let no_takeover = DeflateConfig {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            ..DeflateConfig::default()
        };
        round_trip(no_takeover.clone(), no_takeover);
        round_trip(
            DeflateConfig {
                client_max_window_bits: 9,
                ..DeflateConfig::default()
            },
            DeflateConfig {
                server_max_window_bits: 9,
                ..DeflateConfig::default()
            },
        );
    }

    #[test]
    fn context_takeover_makes_repeats_smaller() {
        let (mut client, _) = deflate_pair(
            DeflateConfig::default(),
            DeflateConfig::default(),
            Config::default(),
        );
        let text = "the same sentence repeated across messages compresses against the window";
        client.send(Message::text(text)).unwrap();
        let first = drain(&mut client).len();
        client.send(Message::text(text)).unwrap();
        let second = drain(&mut client).len();
        assert!(second < first / 2, "first {first}, second {second}");
    }

    #[test]
    fn fragmented_compressed_message_both_ways() {
        let (mut client, mut server) = deflate_pair(
            DeflateConfig::default(),
            DeflateConfig::default(),
            Config::default(),
        );
        for piece in ["Hello, ", "compressed ", "wörld"] {
            client
                .send_fragment(DataKind::Text, Bytes::from(piece), piece == "wörld")
                .unwrap();
        }
        let wire = drain(&mut client);
        assert_eq!(wire[0], 0x41, "first frame: text, RSV1, no FIN");
        server.recv(&mut wire.clone()).unwrap();
        assert_eq!(
            events(&mut server),
            vec![Event::Message(Message::text("Hello, compressed wörld"))]
        );
    }

    #[test]
    fn streaming_receive_inflates_each_piece() {
        let config = Config {
            streaming_receive: true,
            ..Config::default()
        };
        let (mut client, mut server) =
            deflate_pair(DeflateConfig::default(), DeflateConfig::default(), config);
        client
            .send_fragment(DataKind::Binary, Bytes::from_static(b"abc"), false)
            .unwrap();
        client
            .send_fragment(DataKind::Binary, Bytes::from_static(b"def"), true)
            .unwrap();
        server.recv(&mut drain(&mut client)).unwrap();
        let data: Vec<u8> = events(&mut server)
            .into_iter()
            .flat_map(|e| match e {
                Event::Fragment { data, .. } => data.to_vec(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(data, b"abcdef");
    }

    #[test]
    fn deflate_bomb_fails_with_1009_without_inflating_it_all() {
        let config = Config {
            max_message_size: 1 << 20,
            ..Config::default()
        };
        let (mut client, mut server) =
            deflate_pair(DeflateConfig::default(), DeflateConfig::default(), config);
        client.send(Message::binary(vec![0u8; 50 << 20])).unwrap();
        let mut wire = drain(&mut client);
        assert!(
            wire.len() < (50 << 20) / 100,
            "{} bytes on the wire",
            wire.len()
        );
        let err = server.recv(&mut wire).unwrap_err();
        assert!(
            matches!(err, Error::Protocol(ProtocolError::MessageTooLarge { .. })),
            "{err:?}"
        );
        let close = drain(&mut server);
        assert_eq!(&close[2..4], &1009u16.to_be_bytes());
    }

    /// The held-inflation case of issue 12: a non-final compressed fragment a few KiB long
    /// that inflates to MiBs, sent by several connections sharing one budget.
    fn bomb_fragment(client: &mut Connection, inflated: usize) -> BytesMut {
        client
            .send_fragment(DataKind::Binary, Bytes::from(vec![0u8; inflated]), false)
            .unwrap();
        drain(client)
    }

    fn budgeted(budget: &crate::MessageBudget) -> (Connection, Connection) {
        let config = Config {
            message_budget: Some(budget.clone()),
            ..Config::default()
        };
        deflate_pair(DeflateConfig::default(), DeflateConfig::default(), config)
    }

    #[test]
    fn held_inflation_stays_within_the_shared_budget() {
        let budget = crate::MessageBudget::new(12 << 20);
        let (mut client_a, mut a) = budgeted(&budget);
        let (mut client_b, mut b) = budgeted(&budget);
        // a: 8 MiB held (a few KiB sent); it fits.
        let mut wire = bomb_fragment(&mut client_a, 8 << 20);
        assert!(wire.len() < 128 << 10, "{} bytes on the wire", wire.len());
        a.recv(&mut wire).unwrap();
        assert!(budget.held() >= 8 << 20 && budget.held() <= 12 << 20);
        // b: 8 MiB more would pass 12 MiB while a holds its share: try again later.
        let held_before = budget.held();
        let err = b
            .recv(&mut bomb_fragment(&mut client_b, 8 << 20))
            .unwrap_err();
        assert!(
            matches!(err, Error::Protocol(ProtocolError::OverBudget { .. })),
            "{err:?}"
        );
        assert_eq!(&drain(&mut b)[2..4], &1013u16.to_be_bytes());
        assert_eq!(
            budget.held(),
            held_before,
            "b's message was dropped and refunded"
        );
        assert_eq!(budget.refusals(), 1);
        // a completes its message: the application owns it, the budget is refunded.
        client_a
            .send_fragment(DataKind::Binary, Bytes::from_static(b"end"), true)
            .unwrap();
        a.recv(&mut drain(&mut client_a)).unwrap();
        match events(&mut a).as_slice() {
            [Event::Message(m)] => assert_eq!(m.len(), (8 << 20) + 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(budget.held(), 0);
        // A message larger than the whole budget: 1009, retrying cannot help.
        let (mut client_c, mut c) = budgeted(&budget);
        let err = c
            .recv(&mut bomb_fragment(&mut client_c, 13 << 20))
            .unwrap_err();
        assert_eq!(
            err,
            Error::Protocol(ProtocolError::OverBudget {
                size: match &err {
                    Error::Protocol(ProtocolError::OverBudget { size, .. }) => *size,
                    _ => unreachable!(),
                },
                budget: 12 << 20
            })
        );
        assert_eq!(&drain(&mut c)[2..4], &1009u16.to_be_bytes());
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_connection_that_ends_mid_message_refunds_its_budget() {
        let budget = crate::MessageBudget::new(64 << 20);
        let (mut client, mut server) = budgeted(&budget);
        server
            .recv(&mut bomb_fragment(&mut client, 4 << 20))
            .unwrap();
        assert!(budget.held() >= 4 << 20);
        server.recv_eof();
        assert_eq!(budget.held(), 0, "the end of stream drops the message");
        // Dropping a connection mid-message refunds too, whatever the runtime did.
        let (mut client, mut server) = budgeted(&budget);
        server
            .recv(&mut bomb_fragment(&mut client, 4 << 20))
            .unwrap();
        assert!(budget.held() >= 4 << 20);
        drop(server);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn rsv1_rules() {
        let (_, mut server) = deflate_pair(
            DeflateConfig::default(),
            DeflateConfig::default(),
            Config::default(),
        );
        assert_eq!(
            server.recv(&mut client_frame(true, 0b100, 9, b"")),
            Err(Error::Protocol(
                ProtocolError::CompressedControlOrContinuation
            ))
        );
        let (_, mut server) = deflate_pair(
            DeflateConfig::default(),
            DeflateConfig::default(),
            Config::default(),
        );
        let mut wire = client_frame(false, 0, 2, b"a");
        wire.extend_from_slice(&client_frame(true, 0b100, 0, b"b"));
        assert_eq!(
            server.recv(&mut wire),
            Err(Error::Protocol(
                ProtocolError::CompressedControlOrContinuation
            ))
        );
        // Garbage with RSV1 set is not DEFLATE data: 1007.
        let (_, mut server) = deflate_pair(
            DeflateConfig::default(),
            DeflateConfig::default(),
            Config::default(),
        );
        assert_eq!(
            server.recv(&mut client_frame(true, 0b100, 2, &[0xff; 16])),
            Err(Error::Protocol(ProtocolError::InvalidCompressedData))
        );
    }

    #[test]
    fn prepared_messages_share_compressed_bytes_only_without_context_takeover() {
        let shared_cfg = DeflateConfig {
            server_no_context_takeover: true,
            ..DeflateConfig::default()
        };
        let text =
            r#"{"op":"pub","channel":"prices","data":{"bid":1.2345,"ask":1.2347}}"#.repeat(8);
        let prepared = PreparedMessage::with_deflate(Message::text(text.clone()), 1);
        let mut payloads = Vec::new();
        for cfg in [shared_cfg.clone(), shared_cfg, DeflateConfig::default()] {
            let (mut client, mut server) =
                deflate_pair(DeflateConfig::default(), cfg, Config::default());
            server.send_prepared(&prepared).unwrap();
            server.send_prepared(&prepared).unwrap();
            let tx = server.poll_transmit().unwrap();
            payloads.push(tx.payload().as_ptr());
            let mut wire = BytesMut::new();
            wire.extend_from_slice(tx.head());
            wire.extend_from_slice(tx.payload());
            wire.extend_from_slice(&drain(&mut server));
            assert_eq!(wire[0], 0xc1, "text, FIN, RSV1");
            client.recv(&mut wire).unwrap();
            let expected = Event::Message(Message::text(text.clone()));
            assert_eq!(events(&mut client), vec![expected.clone(), expected]);
        }
        assert_eq!(
            payloads[0], payloads[1],
            "no context takeover: one compressed payload for all"
        );
        assert_ne!(
            payloads[0], payloads[2],
            "context takeover: compressed per connection"
        );
    }

    #[test]
    fn threshold_leaves_small_messages_uncompressed() {
        let cfg = DeflateConfig {
            threshold: 100,
            ..DeflateConfig::default()
        };
        let (mut client, mut server) = deflate_pair(cfg.clone(), cfg, Config::default());
        client.send(Message::text("tiny")).unwrap();
        let wire = drain(&mut client);
        assert_eq!(wire[0], 0x81, "no RSV1");
        server.recv(&mut wire.clone()).unwrap();
        assert_eq!(
            events(&mut server),
            vec![Event::Message(Message::text("tiny"))]
        );
    }
}

proptest! {
    /// The gather-write interface yields exactly the bytes `poll_transmit` would, whatever the
    /// transport takes per write.
    #[test]
    fn io_slices_with_short_writes_equal_poll_transmit(
        sizes in proptest::collection::vec(0usize..300, 1..12),
        takes in proptest::collection::vec(1usize..400, 1..20),
        slots in 1usize..6,
    ) {
        let mut a = Connection::new(Role::Server, Config::default());
        let mut b = Connection::new(Role::Server, Config::default());
        for (i, size) in sizes.iter().enumerate() {
            let m = Message::binary(vec![i as u8; *size]);
            a.send(m.clone()).unwrap();
            b.send(m).unwrap();
        }
        let expected = drain(&mut a);
        let mut written = Vec::new();
        let mut take = takes.iter().cycle();
        while b.has_pending_transmit() {
            let mut slices = vec![std::io::IoSlice::new(&[]); slots];
            let n = b.fill_io_slices(&mut slices);
            prop_assert!(n > 0);
            let mut budget = *take.next().unwrap();
            let mut wrote = 0;
            for s in &slices[..n] {
                let k = s.len().min(budget);
                written.extend_from_slice(&s[..k]);
                budget -= k;
                wrote += k;
                if budget == 0 { break; }
            }
            b.advance_transmit(wrote);
        }
        prop_assert_eq!(b.pending_transmit_bytes(), 0);
        prop_assert_eq!(&written[..], &expected[..]);
    }
}

/// Whole single frames take a shortcut in `recv`; these are the cases at its edges, each
/// checked to give what the general path gives.
#[test]
fn whole_frame_shortcut_keeps_every_rule() {
    // Delivered: short, 16-bit length, empty, text and binary, several in one buffer.
    let mut server = Connection::new(Role::Server, Config::default());
    let long: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
    let mut wire = client_frame(true, 0, 0x1, "héllo".as_bytes());
    wire.extend_from_slice(&client_frame(true, 0, 0x2, &long));
    wire.extend_from_slice(&client_frame(true, 0, 0x2, b""));
    server.recv(&mut wire).unwrap();
    assert!(wire.is_empty());
    assert_eq!(
        events(&mut server),
        [
            Event::Message(Message::text("héllo")),
            Event::Message(Message::binary(long)),
            Event::Message(Message::binary(Bytes::new())),
        ]
    );
    // Refused with the same codes as frame by frame.
    assert_eq!(
        server_fails_with(client_frame(true, 0, 0x1, &[b'a', 0xc3])).1,
        Some(1007)
    );
    assert_eq!(
        server_fails_with(raw_frame(true, 0, 0x1, None, b"unmasked")).1,
        Some(1002)
    );
    let mut small = Connection::new(
        Role::Server,
        Config {
            max_message_size: 4,
            ..Config::default()
        },
    );
    assert!(matches!(
        small.recv(&mut client_frame(true, 0, 0x2, b"12345")),
        Err(Error::Protocol(ProtocolError::MessageTooLarge { .. }))
    ));
    // A message, then the peer's Close in the same buffer: the message first, then the close
    // once it is drained.
    let mut server = Connection::new(Role::Server, Config::default());
    let mut wire = client_frame(true, 0, 0x1, b"last");
    wire.extend_from_slice(&client_frame(true, 0, 0x8, &1000u16.to_be_bytes()));
    server.recv(&mut wire).unwrap();
    assert!(matches!(
        &events(&mut server)[..],
        [Event::Message(m), Event::Close(Some(_))] if *m == Message::text("last")
    ));
}

/// Feeds `wire` to a fresh server in pieces of the given sizes (cycled), draining events after
/// every call: every event, then the error's close code (if the bytes broke the protocol).
fn feed_in_pieces(wire: &[u8], pieces: &[usize]) -> (Vec<Event>, Option<u16>) {
    let mut piece = pieces.iter().cycle();
    feed_with(wire, |_, _, _| *piece.next().expect("cycled"))
}

/// [`feed_in_pieces`] with the size of each piece chosen by `next_piece(server, buffered,
/// rest)` (at least 1; cut to what is left).
fn feed_with(
    wire: &[u8],
    mut next_piece: impl FnMut(&Connection, &[u8], &[u8]) -> usize,
) -> (Vec<Event>, Option<u16>) {
    let mut server = Connection::new(
        Role::Server,
        Config {
            max_message_size: 4096,
            ..Config::default()
        },
    );
    let mut seen = Vec::new();
    let mut buf = BytesMut::new();
    let mut pos = 0;
    loop {
        let take = next_piece(&server, &buf, &wire[pos..])
            .max(1)
            .min(wire.len() - pos);
        buf.extend_from_slice(&wire[pos..pos + take]);
        pos += take;
        let result = server.recv(&mut buf);
        seen.extend(std::iter::from_fn(|| server.poll_event()));
        if let Err(Error::Protocol(e)) = result {
            assert_eq!(server.protocol_error(), Some(&e));
            return (seen, Some(e.close_code().as_u16()));
        }
        if let Some(e) = server.protocol_error() {
            return (seen, Some(e.close_code().as_u16()));
        }
        if pos == wire.len() || server.is_closed() {
            return (seen, None);
        }
    }
}

/// A frame a client could send, good or bad: any opcode (reserved ones too), FIN or not,
/// RSV bits now and then, masked or not, text that may not be UTF-8, sizes around the limits.
fn any_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            Just(0x0u8),
            Just(0x1),
            Just(0x2),
            Just(0x8),
            Just(0x9),
            Just(0xa),
            0u8..16
        ],
        prop_oneof![Just(true), Just(true), Just(false)],
        prop_oneof![Just(0u8), Just(0), Just(0), 0u8..8],
        prop_oneof![Just(true), Just(true), Just(true), Just(false)],
        prop_oneof![
            "\\PC{0,30}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::collection::vec(any::<u8>(), 4090..4100),
        ],
    )
        .prop_map(|(opcode, fin, rsv, masked, payload)| {
            let mask = masked.then_some([0x37, 0xfa, 0x21, 0x3d]);
            raw_frame(fin, rsv, opcode, mask, &payload).to_vec()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The whole-frame shortcut and the general path agree on anything: fed in one piece (where
    /// whole frames take the shortcut) or in small pieces (where they cannot), the same bytes
    /// give the same events and the same close code.
    #[test]
    fn any_bytes_give_the_same_outcome_whole_or_in_pieces(
        frames in proptest::collection::vec(any_frame(), 1..8),
        pieces in proptest::collection::vec(1usize..9, 1..10),
    ) {
        let wire: Vec<u8> = frames.concat();
        let whole = feed_in_pieces(&wire, &[wire.len().max(1)]);
        let split = feed_in_pieces(&wire, &pieces);
        prop_assert_eq!(whole, split);
    }

    /// A runtime that waits for whole frames where `whole_frame_len` allows it (as the engine
    /// does for large binary frames) gets what feeding the bytes as they come gets.
    #[test]
    fn holding_frames_whole_where_allowed_changes_nothing(
        frames in proptest::collection::vec(any_frame(), 1..8),
        piece in 1usize..300,
    ) {
        let wire: Vec<u8> = frames.concat();
        let plain = feed_in_pieces(&wire, &[piece]);
        // Start from what is buffered: hold on until the whole frame is here if allowed.
        let held = feed_with(&wire, |server, buffered, rest| {
            let mut look = buffered.to_vec();
            look.extend_from_slice(&rest[..piece.min(rest.len())]);
            match server.whole_frame_len(&look, 126) {
                Some(total) => total.saturating_sub(buffered.len()),
                None => piece,
            }
        });
        prop_assert_eq!(plain, held);
    }
}

// ---- masking keys (RFC 6455 section 5.3) ----

/// The masking key of each frame a client queued, read off the wire bytes.
fn wire_mask_keys(client: &mut Connection) -> Vec<[u8; 4]> {
    let mut wire = drain(client);
    let mut keys = Vec::new();
    while let Some((header, len)) = FrameHeader::decode(&wire).unwrap() {
        keys.push(header.mask.expect("client frames are masked"));
        let _ = wire.split_to(len + header.payload_len as usize);
    }
    keys
}

#[test]
fn a_new_client_masks_with_unpredictable_keys_without_any_setup() {
    let mut a = Connection::new(Role::Client, Config::default());
    let mut b = Connection::new(Role::Client, Config::default());
    for i in 0..40u8 {
        a.send(Message::binary(vec![i; 8])).unwrap();
        b.send(Message::binary(vec![i; 8])).unwrap();
    }
    let (ka, kb) = (wire_mask_keys(&mut a), wire_mask_keys(&mut b));
    assert_eq!((ka.len(), kb.len()), (40, 40));
    let all: std::collections::HashSet<_> = ka.iter().chain(&kb).collect();
    // 80 draws of 32 random bits: a repeat is a ~1e-6 event, a fixed or shared sequence
    // repeats for sure.
    assert_eq!(all.len(), 80, "keys repeat across frames or connections");
    // And each payload is masked with its own key.
    let mut server = Connection::new(Role::Server, Config::default());
    a.send(Message::text("check")).unwrap();
    server.recv(&mut drain(&mut a)).unwrap();
    assert_eq!(
        server.poll_event(),
        Some(Event::Message(Message::text("check")))
    );
}

#[test]
fn deterministic_masks_only_when_asked_for() {
    // Two deterministic clients draw from one predictable walk: the keys follow each other in
    // the SplitMix64 sequence, which a test can recompute.
    let mut client = Connection::new(Role::Client, Config::default()).with_deterministic_masks();
    client.send(Message::binary(vec![0; 4])).unwrap();
    let key = wire_mask_keys(&mut client)[0];
    let sequence: Vec<[u8; 4]> = {
        // The walk's possible outputs near its start: the key must be one of them (other tests
        // may draw from it concurrently).
        let mut state: u64 = 0x853c_49e6_748f_ea9b;
        (0..10_000)
            .map(|_| {
                let mut z = state;
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                let b = (z ^ (z >> 31)).to_le_bytes();
                [b[0], b[1], b[2], b[3]]
            })
            .collect()
    };
    assert!(sequence.contains(&key), "asked for, the sequence is used");
    let mut default = Connection::new(Role::Client, Config::default());
    for _ in 0..20 {
        default.send(Message::binary(vec![0; 4])).unwrap();
    }
    let from_os = wire_mask_keys(&mut default);
    let predictable = from_os.iter().filter(|k| sequence.contains(k)).count();
    assert_eq!(
        predictable, 0,
        "by default, keys do not come from the sequence"
    );
}

// ---- timers (time passed in by hand: no runtime, no clock) ----

fn timed(role: Role, ping_ms: Option<u64>, idle_ms: Option<u64>, close_ms: u64) -> Connection {
    let ms = std::time::Duration::from_millis;
    let timers = crate::config::Timers {
        ping_interval: ping_ms.map(ms),
        idle_timeout: idle_ms.map(ms),
        close_timeout: ms(close_ms),
    };
    let config = Config {
        timers,
        ..Config::default()
    };
    config.validate().unwrap();
    Connection::new(role, config)
}

fn at(start: Instant, ms: u64) -> Instant {
    start + std::time::Duration::from_millis(ms)
}

/// Steps `conn` at each deadline it asks for, up to `until`; returns when (ms from `start`)
/// each frame it queued was queued, with its first header byte.
fn run_until(conn: &mut Connection, start: Instant, until: u64) -> Vec<(u64, u8)> {
    let mut out = Vec::new();
    while let Some(deadline) = conn.poll_timeout() {
        if deadline > at(start, until) {
            break;
        }
        conn.handle_timeout(deadline);
        let when = deadline.duration_since(start).as_millis() as u64;
        while let Some(tx) = conn.poll_transmit() {
            out.push((when, tx.head()[0]));
        }
    }
    out
}

#[test]
fn no_timer_runs_before_the_clock_starts_or_without_settings() {
    let mut plain = Connection::new(Role::Server, Config::default());
    assert_eq!(plain.poll_timeout(), None);
    let start = Instant::now();
    plain.handle_timeout(start);
    assert_eq!(plain.poll_timeout(), None, "no keepalive, no idle timeout");
    let pinging = timed(Role::Server, Some(1000), None, 500);
    assert_eq!(pinging.poll_timeout(), None, "not started");
}

#[test]
fn keepalive_pings_only_a_quiet_peer() {
    let mut server = timed(Role::Server, Some(1000), None, 500);
    let start = Instant::now();
    server.handle_timeout(start);
    // The peer sends something every 300 ms for 3 s: never pinged.
    let mut client = Connection::new(Role::Client, Config::default());
    for step in 1..=10 {
        client.send(Message::text("tick")).unwrap();
        server.recv(&mut drain(&mut client)).unwrap();
        let _ = events(&mut server);
        assert!(run_until(&mut server, start, step * 300).is_empty());
    }
    // The last message came after the step at 2700 ms, then silence: the first ping 1000 ms
    // later, give or take the check period (250 ms: what arrives is dated at the next check),
    // then one per interval while the silence lasts.
    let pings = run_until(&mut server, start, 6_100);
    let times: Vec<u64> = pings.iter().map(|&(t, _)| t).collect();
    assert!(pings.iter().all(|&(_, b0)| b0 == 0x89), "{pings:?}");
    assert_eq!(times.len(), 3, "{times:?}");
    assert!((3700..=3950).contains(&times[0]), "{times:?}");
    assert_eq!(times[1] - times[0], 1000);
    assert_eq!(times[2] - times[1], 1000);
    // A pong (anything received) resets the silence.
    let mut pong = client_frame(true, 0, 0xa, b"");
    server.recv(&mut pong).unwrap();
    assert_eq!(server.poll_event(), Some(Event::Pong(Bytes::new())));
    let next = run_until(&mut server, start, 8_000);
    assert!(next[0].0 >= times[2] + 1000, "{next:?}");
}

#[test]
fn idle_timeout_sends_1001_then_the_close_timeout_closes_the_transport() {
    let mut server = timed(Role::Server, None, Some(2000), 700);
    let start = Instant::now();
    server.handle_timeout(start);
    assert_eq!(
        server.poll_timeout(),
        Some(at(start, 500)),
        "quarter checks"
    );
    let mut client = Connection::new(Role::Client, Config::default());
    client.send(Message::text("hi")).unwrap();
    server.recv(&mut drain(&mut client)).unwrap();
    let _ = events(&mut server);
    // Received before the 500 ms check: dated there, so idle from 500 on.
    assert!(run_until(&mut server, start, 2_400).is_empty());
    let mut deadline = server.poll_timeout().unwrap();
    server.handle_timeout(deadline);
    assert_eq!(deadline, at(start, 2500));
    assert_eq!(server.state(), State::CloseSent);
    let close = server.poll_transmit().unwrap();
    assert_eq!(close.head()[0], 0x88);
    assert_eq!(&close.payload()[..2], &1001u16.to_be_bytes());
    assert_eq!(&close.payload()[2..], b"idle timeout");
    assert!(!server.should_close_transport());
    // The peer never answers: the transport must be closed `close_timeout` later.
    deadline = server.poll_timeout().unwrap();
    assert_eq!(deadline, at(start, 3200));
    server.handle_timeout(at(start, 3199));
    assert!(!server.should_close_transport());
    server.handle_timeout(deadline);
    assert!(server.should_close_transport() && server.close_timed_out());
    assert_eq!(server.poll_timeout(), None);
    assert_eq!(server.state(), State::CloseSent, "never answered");
}

#[test]
fn a_close_between_steps_is_dated_at_the_next_step() {
    let mut client = timed(Role::Client, None, None, 1000);
    let start = Instant::now();
    client.handle_timeout(start);
    assert_eq!(client.poll_timeout(), None);
    client.close(CloseCode::NORMAL, "").unwrap();
    // The core does not know when that was: it asks for a step at once.
    assert_eq!(client.poll_timeout(), Some(start));
    client.handle_timeout(at(start, 40));
    assert_eq!(client.poll_timeout(), Some(at(start, 1040)));
    client.handle_timeout(at(start, 1040));
    assert!(client.should_close_transport());
}

#[test]
fn the_server_closes_the_transport_first_and_the_client_waits_for_it() {
    let (mut client, mut server) = pair();
    let start = Instant::now();
    client.handle_timeout(start);
    server.handle_timeout(start);
    server.close(CloseCode::NORMAL, "bye").unwrap();
    assert!(!server.should_close_transport());
    client.recv(&mut drain(&mut server)).unwrap();
    let _ = events(&mut client);
    assert!(client.is_closed());
    assert!(
        !client.should_close_transport(),
        "its Close reply is queued"
    );
    server.recv(&mut drain(&mut client)).unwrap();
    let _ = events(&mut server);
    assert!(server.is_closed() && server.should_close_transport());
    // The client waits for the server's end of stream ...
    assert!(!client.should_close_transport());
    client.recv_eof();
    assert!(client.should_close_transport());
    // ... or for the close timeout (5 s by default).
    let (mut client, mut server) = pair();
    client.handle_timeout(start);
    server.close(CloseCode::NORMAL, "").unwrap();
    client.recv(&mut drain(&mut server)).unwrap();
    let _ = events(&mut client);
    let _ = drain(&mut client);
    assert!(!client.should_close_transport());
    client.handle_timeout(at(start, 1));
    client.handle_timeout(at(start, 5001));
    assert!(client.should_close_transport());
}

#[test]
fn a_failure_closes_a_server_transport_once_its_close_is_written() {
    let mut server = Connection::new(Role::Server, Config::default());
    assert!(server.recv(&mut raw_frame(true, 0, 1, None, b"x")).is_err());
    assert!(
        !server.should_close_transport(),
        "the Close is still queued"
    );
    let _ = drain(&mut server);
    assert!(server.should_close_transport());
    // The peer ending the transport early closes it too, and the connection with it.
    let mut server = Connection::new(Role::Server, Config::default());
    server.recv_eof();
    assert!(server.is_closed() && server.should_close_transport());
}

/// Every idle connection holds one: the timers added 32 bytes to 232 (the clock's last step,
/// its settings and state as `u32` milliseconds, flags sharing a word with the role and state);
/// the message budget 16 more (its handle and what the message in progress charged).
#[test]
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn a_connection_stays_small() {
    let size = std::mem::size_of::<Connection>();
    assert!(size <= 280, "Connection grew to {size} bytes");
}

/// What every idle connection of a server costs, before any runtime's own fields: the state an
/// idle connection needs, with the rest boxed or shared (issue 12; it was 280 bytes).
#[test]
fn a_connection_is_at_most_152_bytes() {
    assert!(
        std::mem::size_of::<Connection>() <= 152,
        "Connection grew to {} bytes",
        std::mem::size_of::<Connection>()
    );
}

/// A frame arriving in pieces keeps its state in a box, freed as soon as the frame completes.
#[test]
fn a_partial_frame_is_held_out_of_line_only_until_it_completes() {
    let mut server = Connection::new(Role::Server, Config::default());
    let frame = client_frame(true, 0, 2, &[7; 300]);
    let mut wire = BytesMut::from(&frame[..150]);
    server.recv(&mut wire).unwrap();
    assert!(server.incoming.has_partial());
    assert_eq!(server.poll_event(), None);
    let mut wire = BytesMut::from(&frame[150..]);
    server.recv(&mut wire).unwrap();
    assert!(!server.incoming.has_partial());
    assert_eq!(
        server.poll_event(),
        Some(Event::Message(Message::binary(vec![7; 300])))
    );
    // A whole large frame (64-bit length) allocates no state either.
    let mut wire = client_frame(true, 0, 2, &[1; 70_000]);
    server.recv(&mut wire).unwrap();
    assert!(!server.incoming.has_partial());
    assert!(matches!(server.poll_event(), Some(Event::Message(_))));
}

/// Connections made from one `SharedConfig` read the same settings; changing one
/// connection's copies it first, leaving the others as they were.
#[test]
fn shared_settings_are_copied_on_write() {
    use crate::config::Timers;
    let shared = SharedConfig::new(&Config {
        max_message_size: 1000,
        ..Config::default()
    });
    let mut a = Connection::with_shared(Role::Server, &shared);
    let b = Connection::with_shared(Role::Server, &shared);
    assert!(std::sync::Arc::ptr_eq(&a.settings, &b.settings));
    let timers = Timers {
        ping_interval: Some(std::time::Duration::from_secs(3)),
        ..Timers::default()
    };
    a.set_timers(&timers);
    assert_eq!(a.config().timers, timers);
    assert_eq!(b.config().timers, Timers::default());
    assert_eq!(a.config().max_message_size, 1000);
    // Too large for the shared limit, on the connection that kept the shared settings.
    let mut b = b;
    let mut wire = client_frame(true, 0, 2, &[0; 1001]);
    assert!(b.recv(&mut wire).is_err());
}
