use super::*;
use crate::extensions::parse;
use proptest::prelude::*;

// ---- negotiation ----

fn cfg(f: impl FnOnce(&mut DeflateConfig)) -> DeflateConfig {
    let mut c = DeflateConfig::default();
    f(&mut c);
    c
}

fn server(header: &str, config: &DeflateConfig) -> Option<String> {
    server_negotiate(&parse(header).unwrap(), config)
        .unwrap()
        .map(|(_, response)| response)
}

#[test]
fn server_negotiation_table() {
    let default = DeflateConfig::default();
    let pd = "permessage-deflate";
    let cases: Vec<(&str, DeflateConfig, Option<&str>)> = vec![
        (pd, default.clone(), Some(pd)),
        ("Permessage-Deflate", default.clone(), Some(pd)),
        ("x-webkit-deflate-frame", default.clone(), None),
        ("", default.clone(), None),
        (pd, cfg(|c| c.enabled = false), None),
        // client_max_window_bits
        (
            "permessage-deflate; client_max_window_bits",
            default.clone(),
            Some(pd),
        ),
        (
            "permessage-deflate; client_max_window_bits",
            cfg(|c| c.client_max_window_bits = 10),
            Some("permessage-deflate; client_max_window_bits=10"),
        ),
        (pd, cfg(|c| c.client_max_window_bits = 10), None),
        (
            "permessage-deflate; client_max_window_bits=12",
            default.clone(),
            Some("permessage-deflate; client_max_window_bits=12"),
        ),
        (
            "permessage-deflate; client_max_window_bits=12",
            cfg(|c| c.client_max_window_bits = 10),
            Some("permessage-deflate; client_max_window_bits=10"),
        ),
        (
            "permessage-deflate; client_max_window_bits=15",
            default.clone(),
            Some(pd),
        ),
        (
            "permessage-deflate; client_max_window_bits=\"9\"",
            default.clone(),
            Some("permessage-deflate; client_max_window_bits=9"),
        ),
        // server_max_window_bits
        (
            "permessage-deflate; server_max_window_bits=10",
            default.clone(),
            Some("permessage-deflate; server_max_window_bits=10"),
        ),
        (
            "permessage-deflate; server_max_window_bits=10",
            cfg(|c| c.server_max_window_bits = 9),
            Some("permessage-deflate; server_max_window_bits=9"),
        ),
        (
            "permessage-deflate; server_max_window_bits=8",
            default.clone(),
            Some("permessage-deflate; server_max_window_bits=8"),
        ),
        (
            "permessage-deflate; server_max_window_bits=15",
            default.clone(),
            Some("permessage-deflate; server_max_window_bits=15"),
        ),
        (
            pd,
            cfg(|c| c.server_max_window_bits = 12),
            Some("permessage-deflate; server_max_window_bits=12"),
        ),
        // context takeover: echoed, or imposed by the config
        (
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover",
            default.clone(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        ),
        (
            pd,
            cfg(|c| c.server_no_context_takeover = true),
            Some("permessage-deflate; server_no_context_takeover"),
        ),
        (
            pd,
            cfg(|c| c.client_no_context_takeover = true),
            Some("permessage-deflate; client_no_context_takeover"),
        ),
        // declined offers: malformed, duplicate, unknown
        (
            "permessage-deflate; server_max_window_bits",
            default.clone(),
            None,
        ),
        (
            "permessage-deflate; server_max_window_bits=7",
            default.clone(),
            None,
        ),
        (
            "permessage-deflate; server_max_window_bits=16",
            default.clone(),
            None,
        ),
        (
            "permessage-deflate; server_max_window_bits=08",
            default.clone(),
            None,
        ),
        (
            "permessage-deflate; server_max_window_bits=abc",
            default.clone(),
            None,
        ),
        (
            "permessage-deflate; client_max_window_bits=0",
            default.clone(),
            None,
        ),
        (
            "permessage-deflate; client_max_window_bits=+9",
            default.clone(),
            None,
        ),
        (
            "permessage-deflate; server_no_context_takeover=1",
            default.clone(),
            None,
        ),
        (
            "permessage-deflate; client_no_context_takeover=\"x\"",
            default.clone(),
            None,
        ),
        (
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            default.clone(),
            None,
        ),
        (
            "permessage-deflate; client_max_window_bits; Client_Max_Window_Bits=10",
            default.clone(),
            None,
        ),
        ("permessage-deflate; foo", default.clone(), None),
        // several offers: the first acceptable one wins
        (
            "x-webkit-deflate-frame, permessage-deflate; foo, permessage-deflate; client_max_window_bits=11, permessage-deflate",
            default.clone(),
            Some("permessage-deflate; client_max_window_bits=11"),
        ),
        (
            "permessage-deflate, permessage-deflate; client_max_window_bits",
            cfg(|c| c.client_max_window_bits = 10),
            Some("permessage-deflate; client_max_window_bits=10"),
        ),
        (
            "permessage-deflate; server_max_window_bits=20, permessage-deflate; bad, permessage-deflate; server_no_context_takeover",
            default.clone(),
            Some("permessage-deflate; server_no_context_takeover"),
        ),
    ];
    for (offer, config, expected) in &cases {
        assert_eq!(
            server(offer, config).as_deref(),
            *expected,
            "offer {offer:?} with {config:?}"
        );
    }
}

#[test]
fn server_negotiated_values_and_errors() {
    let offers = parse(
        "permessage-deflate; server_max_window_bits=10; client_max_window_bits; client_no_context_takeover",
    )
    .unwrap();
    let config = cfg(|c| {
        c.client_max_window_bits = 12;
        c.level = 6;
        c.threshold = 100;
    });
    let (n, response) = server_negotiate(&offers, &config).unwrap().unwrap();
    assert_eq!(
        response,
        "permessage-deflate; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=12"
    );
    assert_eq!(
        n,
        Negotiated {
            server_no_context_takeover: false,
            client_no_context_takeover: true,
            server_max_window_bits: 10,
            client_max_window_bits: 12,
            level: 6,
            threshold: 100,
        }
    );
    assert_eq!(
        (
            n.outgoing_window_bits(Role::Server),
            n.incoming_window_bits(Role::Server)
        ),
        (10, 12)
    );
    assert!(!n.outgoing_no_context_takeover(Role::Server));
    assert!(n.incoming_no_context_takeover(Role::Server));

    // Declines explain themselves.
    let decline = |header: &str, config: &DeflateConfig| {
        server_accept_offer(&parse(header).unwrap()[0], config).unwrap_err()
    };
    assert_eq!(
        decline("permessage-deflate; foo=1", &config),
        ExtensionError::UnknownParam("foo".into())
    );
    assert_eq!(
        decline("permessage-deflate", &config),
        ExtensionError::MissingParam(CLIENT_MAX_WINDOW_BITS.into())
    );
    assert_eq!(
        decline(
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            &config
        ),
        ExtensionError::DuplicateParam(SERVER_NO_CONTEXT_TAKEOVER.into())
    );

    // An invalid config is the caller's error.
    assert!(matches!(
        server_negotiate(&offers, &cfg(|c| c.level = 10)),
        Err(ExtensionError::Config(_))
    ));
    assert!(matches!(
        server_negotiate(&offers, &cfg(|c| c.server_max_window_bits = 7)),
        Err(ExtensionError::Config(_))
    ));
}

#[test]
fn client_offer_table() {
    let cases: Vec<(DeflateConfig, Option<&str>)> = vec![
        (
            DeflateConfig::default(),
            Some("permessage-deflate; client_max_window_bits"),
        ),
        (cfg(|c| c.enabled = false), None),
        (
            cfg(|c| {
                c.server_no_context_takeover = true;
                c.client_no_context_takeover = true;
                c.server_max_window_bits = 10;
                c.client_max_window_bits = 12;
            }),
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=12",
            ),
        ),
    ];
    for (config, expected) in cases {
        assert_eq!(client_offer(&config).as_deref(), expected, "{config:?}");
    }
}

#[test]
fn client_accept_table() {
    type Expect = Result<Option<(bool, bool, u8, u8)>, ExtensionError>;
    let default = DeflateConfig::default();
    let limited = cfg(|c| {
        c.server_max_window_bits = 10;
        c.client_max_window_bits = 12;
    });
    let invalid = |param: &str, value: Option<&str>| {
        Err(ExtensionError::InvalidParamValue {
            param: param.into(),
            value: value.map(Into::into),
        })
    };
    let cases: Vec<(&str, DeflateConfig, Expect)> = vec![
        ("", default.clone(), Ok(None)),
        ("x-other", default.clone(), Ok(None)),
        (
            "permessage-deflate",
            default.clone(),
            Ok(Some((false, false, 15, 15))),
        ),
        (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            default.clone(),
            Ok(Some((true, true, 15, 15))),
        ),
        (
            "permessage-deflate; client_max_window_bits=10",
            default.clone(),
            Ok(Some((false, false, 15, 10))),
        ),
        (
            "permessage-deflate; client_max_window_bits=8",
            default.clone(),
            Ok(Some((false, false, 15, 8))),
        ),
        // The server may announce its own window unasked.
        (
            "permessage-deflate; server_max_window_bits=9",
            default.clone(),
            Ok(Some((false, false, 9, 15))),
        ),
        // The client's own no-context wish holds even if the server does not echo it.
        (
            "permessage-deflate",
            cfg(|c| c.client_no_context_takeover = true),
            Ok(Some((false, true, 15, 15))),
        ),
        // A server that ignores the wish for server_no_context_takeover is tolerated.
        (
            "permessage-deflate",
            cfg(|c| c.server_no_context_takeover = true),
            Ok(Some((false, false, 15, 15))),
        ),
        // Limits the client offered.
        (
            "permessage-deflate; server_max_window_bits=10",
            limited.clone(),
            Ok(Some((false, false, 10, 12))),
        ),
        (
            "permessage-deflate; server_max_window_bits=9; client_max_window_bits=11",
            limited.clone(),
            Ok(Some((false, false, 9, 11))),
        ),
        (
            "permessage-deflate",
            limited.clone(),
            Err(ExtensionError::MissingParam(SERVER_MAX_WINDOW_BITS.into())),
        ),
        (
            "permessage-deflate; server_max_window_bits=11",
            limited.clone(),
            invalid(SERVER_MAX_WINDOW_BITS, Some("11")),
        ),
        (
            "permessage-deflate; server_max_window_bits=10; client_max_window_bits=13",
            limited.clone(),
            invalid(CLIENT_MAX_WINDOW_BITS, Some("13")),
        ),
        // Malformed responses.
        (
            "permessage-deflate; client_max_window_bits",
            default.clone(),
            invalid(CLIENT_MAX_WINDOW_BITS, None),
        ),
        (
            "permessage-deflate; server_max_window_bits=16",
            default.clone(),
            invalid(SERVER_MAX_WINDOW_BITS, Some("16")),
        ),
        (
            "permessage-deflate; client_max_window_bits=7",
            default.clone(),
            invalid(CLIENT_MAX_WINDOW_BITS, Some("7")),
        ),
        (
            "permessage-deflate; server_no_context_takeover=yes",
            default.clone(),
            invalid(SERVER_NO_CONTEXT_TAKEOVER, Some("yes")),
        ),
        (
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            default.clone(),
            Err(ExtensionError::DuplicateParam(
                CLIENT_NO_CONTEXT_TAKEOVER.into(),
            )),
        ),
        (
            "permessage-deflate; x=1",
            default.clone(),
            Err(ExtensionError::UnknownParam("x".into())),
        ),
        (
            "permessage-deflate, permessage-deflate",
            default.clone(),
            Err(ExtensionError::DuplicateExtension(EXTENSION_NAME.into())),
        ),
        (
            "permessage-deflate",
            cfg(|c| c.enabled = false),
            Err(ExtensionError::NotOffered(EXTENSION_NAME.into())),
        ),
    ];
    for (response, config, expected) in cases {
        let got = client_accept(&parse(response).unwrap(), &config).map(|n| {
            n.map(|n| {
                (
                    n.server_no_context_takeover,
                    n.client_no_context_takeover,
                    n.server_max_window_bits,
                    n.client_max_window_bits,
                )
            })
        });
        assert_eq!(got, expected, "response {response:?} with {config:?}");
    }
}

#[test]
fn client_rejects_client_max_window_bits_it_did_not_offer() {
    // client_offer always includes the parameter; a hand-made offer without it shows the rule.
    let offered = Params::default();
    let response = &parse("permessage-deflate; client_max_window_bits=10").unwrap()[0];
    assert_eq!(
        check_response(response, &offered, &DeflateConfig::default()),
        Err(ExtensionError::UnexpectedParam(
            CLIENT_MAX_WINDOW_BITS.into()
        ))
    );
    let response = &parse("permessage-deflate").unwrap()[0];
    assert!(check_response(response, &offered, &DeflateConfig::default()).is_ok());
}

#[test]
fn direction_table() {
    let n = Negotiated {
        server_no_context_takeover: true,
        client_no_context_takeover: false,
        server_max_window_bits: 9,
        client_max_window_bits: 13,
        level: 1,
        threshold: 0,
    };
    // (role, outgoing bits, outgoing reset, incoming bits, incoming reset)
    for (role, out_bits, out_reset, in_bits, in_reset) in [
        (Role::Server, 9, true, 13, false),
        (Role::Client, 13, false, 9, true),
    ] {
        assert_eq!(n.outgoing_window_bits(role), out_bits);
        assert_eq!(n.outgoing_no_context_takeover(role), out_reset);
        assert_eq!(n.incoming_window_bits(role), in_bits);
        assert_eq!(n.incoming_no_context_takeover(role), in_reset);
    }
    assert!(n.accepts_prepared(Role::Server, 9));
    assert!(!n.accepts_prepared(Role::Server, 15));
    assert!(!n.accepts_prepared(Role::Client, 9));
    let eight = Negotiated {
        server_max_window_bits: 8,
        ..n
    };
    assert!(
        eight.accepts_prepared(Role::Server, 9),
        "9-bit zlib output suits an 8-bit peer"
    );
    assert!(!eight.accepts_prepared(Role::Server, 10));
}

fn window() -> impl Strategy<Value = u8> {
    MIN_WINDOW_BITS..=MAX_WINDOW_BITS
}

fn config() -> impl Strategy<Value = DeflateConfig> {
    (window(), window(), any::<bool>(), any::<bool>(), 0..=9u32).prop_map(
        |(server_bits, client_bits, server_nct, client_nct, level)| DeflateConfig {
            level,
            server_max_window_bits: server_bits,
            client_max_window_bits: client_bits,
            server_no_context_takeover: server_nct,
            client_no_context_takeover: client_nct,
            ..DeflateConfig::default()
        },
    )
}

proptest! {
    #[test]
    fn both_ends_agree(client in config(), server in config()) {
        let offer = client_offer(&client).unwrap();
        let (on_server, response) = server_negotiate(&parse(&offer).unwrap(), &server)
            .unwrap()
            .expect("a client offer is always acceptable");
        let on_client = client_accept(&parse(&response).unwrap(), &client).unwrap().unwrap();
        let strip = |n: Negotiated| Negotiated { level: 0, threshold: 0, ..n };
        prop_assert_eq!(strip(on_server), strip(on_client));
        prop_assert!(on_server.server_max_window_bits <= server.server_max_window_bits.min(client.server_max_window_bits));
        prop_assert!(on_server.client_max_window_bits <= server.client_max_window_bits.min(client.client_max_window_bits));
    }
}
