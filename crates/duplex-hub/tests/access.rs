//! Who may connect and what they may do: tokens, the API key, origins, the connection limit,
//! and the plain HTTP server's status codes.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{Client, config, http, hub, parse_response, within};
use duplex_hub::HubConfig;
use duplex_hub::auth::sign_hs256;
use http::HeaderValue;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "test-secret";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: serde_json::Value, secret: &str) -> String {
    sign_hs256(claims.to_string().as_bytes(), secret.as_bytes())
}

fn refused_status(result: Result<Client, duplex::Error>) -> (u16, String) {
    match result {
        Err(duplex::Error::Rejected { status, reason }) => (status.as_u16(), reason),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, the upgrade succeeded"),
    }
}

#[tokio::test]
async fn tokens_are_checked_at_the_upgrade_and_grants_per_command() {
    within(async {
        let hub = hub(HubConfig {
            token_secret: Some(SECRET.into()),
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        let options = duplex::ClientOptions::default;

        let (status, reason) =
            refused_status(Client::connect_with(addr, "", options()).await);
        assert_eq!(status, 401);
        assert!(reason.contains("token"), "{reason}");

        let expired = token(json!({"sub": "eve", "exp": now() - 10}), SECRET);
        let (status, reason) =
            refused_status(Client::connect_with(addr, &format!("?token={expired}"), options()).await);
        assert_eq!(status, 401);
        assert!(reason.contains("expired"), "{reason}");

        let forged = token(json!({"sub": "eve", "exp": now() + 60}), "not-the-secret");
        let (status, reason) =
            refused_status(Client::connect_with(addr, &format!("?token={forged}"), options()).await);
        assert_eq!(status, 401);
        assert!(reason.contains("signature"), "{reason}");

        let (status, _) =
            refused_status(Client::connect_with(addr, "?token=abc.def", options()).await);
        assert_eq!(status, 401);

        let valid = token(
            json!({"sub": "ada", "exp": now() + 60, "channels": ["chat:*"], "publish": ["chat:lobby"]}),
            SECRET,
        );
        let mut ada = Client::connect(addr, &format!("?token={valid}")).await;
        ada.subscribe("chat:lobby").await;
        let join = ada.push().await;
        assert_eq!(
            join["join"][0]["user"], "ada",
            "the user is the token's sub"
        );

        let reply = ada.call(json!({"op": "subscribe", "channel": "admin"})).await;
        assert_eq!(reply["ok"], false);
        assert_eq!(reply["error"]["code"], "forbidden");
        let reply = ada
            .call(json!({"op": "publish", "channel": "chat:other", "data": 1}))
            .await;
        assert_eq!(reply["error"]["code"], "forbidden");
        let reply = ada.call(json!({"op": "presence", "channel": "admin"})).await;
        assert_eq!(reply["error"]["code"], "forbidden");
        ada.publish("chat:lobby", json!("hello")).await;
        assert_eq!(ada.publication().await["data"], "hello");

        // The token may also come as a bearer header (non-browser clients).
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {valid}")).unwrap(),
        );
        let options = duplex::ClientOptions {
            headers,
            ..Default::default()
        };
        Client::connect_with(addr, "", options).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn api_key_guards_the_http_api() {
    within(async {
        let hub = hub(HubConfig {
            api_key: Some("k3y".into()),
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        let body = br#"{"channel":"c","data":1}"#;
        let response = http(addr, "POST", "/api/publish", &[], Some(body)).await;
        assert_eq!(response.status, 401);
        assert_eq!(response.header("www-authenticate"), Some("Bearer"));
        assert!(response.json()["error"].is_string());
        let wrong = [("Authorization", "Bearer nope")];
        assert_eq!(
            http(addr, "POST", "/api/publish", &wrong, Some(body))
                .await
                .status,
            401
        );
        for path in [
            "/api/history?channel=c",
            "/api/presence?channel=c",
            "/api/channels",
        ] {
            assert_eq!(
                http(addr, "GET", path, &[], None).await.status,
                401,
                "{path}"
            );
        }
        let right = [("Authorization", "Bearer k3y")];
        let response = http(addr, "POST", "/api/publish", &right, Some(body)).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.json()["offset"], 1);
        assert_eq!(
            http(addr, "GET", "/api/history?channel=c", &right, None)
                .await
                .status,
            200
        );
        // Health and metrics stay open.
        let health = http(addr, "GET", "/healthz", &[], None).await;
        assert_eq!((health.status, health.body.as_slice()), (200, &b"ok"[..]));
        assert_eq!(http(addr, "GET", "/metrics", &[], None).await.status, 200);
    })
    .await;
}

#[tokio::test]
async fn origins_and_the_connection_limit() {
    within(async {
        let hub = hub(HubConfig {
            allowed_origins: vec!["https://ok.example".into()],
            max_connections: 1,
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        let with_origin = |origin: &'static str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::ORIGIN, HeaderValue::from_static(origin));
            duplex::ClientOptions {
                headers,
                ..Default::default()
            }
        };
        let (status, reason) = refused_status(
            Client::connect_with(addr, "", with_origin("https://evil.example")).await,
        );
        assert_eq!(status, 403);
        assert!(reason.contains("origin"), "{reason}");
        let (status, _) = refused_status(Client::connect_with(addr, "", Default::default()).await);
        assert_eq!(
            status, 403,
            "no Origin at all is refused too when origins are listed"
        );

        let mut first = Client::connect_with(addr, "", with_origin("https://ok.example"))
            .await
            .unwrap();
        let (status, reason) =
            refused_status(Client::connect_with(addr, "", with_origin("https://ok.example")).await);
        assert_eq!(status, 503);
        assert!(reason.contains("too many connections"), "{reason}");
        first.call(json!({"op": "ping"})).await;
        drop(first);
        // The slot frees up once the first connection's task ends.
        let mut reconnected = None;
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if let Ok(client) =
                Client::connect_with(addr, "", with_origin("https://ok.example")).await
            {
                reconnected = Some(client);
                break;
            }
        }
        assert!(reconnected.is_some());
    })
    .await;
}

#[tokio::test]
async fn http_status_codes() {
    within(async {
        let hub = hub(HubConfig {
            max_message_size: 1024,
            queue_bytes: 64 * 1024,
            ..config()
        })
        .await;
        let addr = hub.local_addr();

        let page = http(addr, "GET", "/", &[], None).await;
        assert_eq!(page.status, 200);
        assert!(
            page.header("content-type")
                .unwrap()
                .starts_with("text/html")
        );
        let script = http(addr, "GET", "/duplex.js", &[], None).await;
        assert_eq!(script.status, 200);
        assert!(
            script
                .header("content-type")
                .unwrap()
                .contains("javascript")
        );

        let missing = http(addr, "GET", "/nope", &[], None).await;
        assert_eq!(missing.status, 404);
        assert!(missing.json()["error"].is_string());
        assert_eq!(http(addr, "GET", "/api/nope", &[], None).await.status, 404);

        let wrong_method = http(addr, "GET", "/api/publish", &[], None).await;
        assert_eq!(wrong_method.status, 405);
        assert_eq!(wrong_method.header("allow"), Some("POST"));
        let wrong_method = http(addr, "DELETE", "/api/history?channel=c", &[], None).await;
        assert_eq!(wrong_method.status, 405);
        assert_eq!(wrong_method.header("allow"), Some("GET, HEAD"));
        assert_eq!(
            http(addr, "POST", "/healthz", &[], Some(b"")).await.status,
            405
        );

        let no_length = http(addr, "POST", "/api/publish", &[], None).await;
        assert_eq!(no_length.status, 411);
        let too_big = vec![b' '; 2000];
        assert_eq!(
            http(addr, "POST", "/api/publish", &[], Some(&too_big))
                .await
                .status,
            413
        );
        let bad_json = http(addr, "POST", "/api/publish", &[], Some(b"{nope")).await;
        assert_eq!(bad_json.status, 400);
        assert!(bad_json.json()["error"].as_str().unwrap().contains("JSON"));
        let no_data = http(
            addr,
            "POST",
            "/api/publish",
            &[],
            Some(br#"{"channel":"c"}"#),
        )
        .await;
        assert_eq!(no_data.status, 400);
        assert!(no_data.json()["error"].as_str().unwrap().contains("data"));

        // A plain GET on the WebSocket endpoint is not an upgrade.
        let plain = http(addr, "GET", "/ws", &[], None).await;
        assert!(plain.status == 400 || plain.status == 426, "{plain:?}");

        let metrics =
            String::from_utf8(http(addr, "GET", "/metrics", &[], None).await.body).unwrap();
        for name in [
            "duplex_hub_connections ",
            "duplex_hub_subscriptions ",
            "duplex_hub_messages_in_total ",
            "duplex_hub_bytes_out_total ",
            "duplex_hub_publishes_total ",
            "duplex_hub_fanout_seconds_bucket{le=\"+Inf\"} ",
            "duplex_hub_slow_consumer_disconnects_total ",
            "duplex_hub_dropped_messages_total ",
        ] {
            assert!(metrics.contains(name), "{name} in\n{metrics}");
        }
    })
    .await;
}

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() {
    within(async {
        let hub = hub(config()).await;
        let mut tcp = tokio::net::TcpStream::connect(hub.local_addr())
            .await
            .unwrap();
        let body = r#"{"channel":"k","data":{"a":1}}"#;
        let requests = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\
             POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}\
             GET /api/history?channel=k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tcp.write_all(requests.as_bytes()).await.unwrap();
        let mut bytes = Vec::new();
        tcp.read_to_end(&mut bytes).await.unwrap();
        let (health, used) = parse_response(&bytes);
        assert_eq!(health.status, 200);
        assert_eq!(health.header("connection"), Some("keep-alive"));
        let (publish, more) = parse_response(&bytes[used..]);
        assert_eq!(publish.json()["offset"], 1);
        let (history, _) = parse_response(&bytes[used + more..]);
        assert_eq!(history.header("connection"), Some("close"));
        assert_eq!(history.json()["publications"][0]["data"], json!({"a": 1}));
    })
    .await;
}
