//! The held-inflation case of issue 12 on loopback, against both servers: connections that
//! each send one non-final compressed fragment inflating to MiBs share a message budget; the
//! server never holds more than it, the offending connections are closed with 1009 (their
//! message grew larger than the whole budget) or 1013 (it reached the room others left),
//! a well-behaved connection keeps echoing, and the budget returns to 0 once messages complete
//! or connections end. Memory is judged by the accountant (`MessageBudget::held`), which the
//! core charges before every growth, rather than by RSS, which other tests in this binary
//! share.
#![cfg(all(feature = "engine", feature = "deflate"))]

use std::time::{Duration, Instant};

use duplex::duplex_proto::MessageBudget;
use duplex::engine::{Engine, EngineOptions, Handler, Socket};
use duplex::{Config, DataKind, Event, Message, ServerOptions};

const BUDGET: usize = 16 << 20;

struct Echo;

impl Handler for Echo {
    fn on_message(&mut self, socket: &mut Socket<'_>, message: Message) {
        let _ = socket.send(message);
    }
}

fn config(budget: &MessageBudget) -> Config {
    Config {
        message_budget: Some(budget.clone()),
        ..Config::default()
    }
}

/// Waits (bounded) until `held` says `what`.
async fn wait_for(budget: &MessageBudget, what: &str, until: impl Fn(usize) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !until(budget.held()) {
        assert!(
            Instant::now() < deadline,
            "budget never {what}: holds {}",
            budget.held()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

type Client = duplex::WebSocket<duplex::MaybeTlsStream>;

/// Connects and sends the start of a binary message of `inflated` zero bytes, compressed.
async fn start_bomb(url: &str, inflated: usize) -> Client {
    let (mut ws, _) = duplex::connect(url).await.unwrap();
    ws.send_fragment(DataKind::Binary, vec![0u8; inflated], false)
        .await
        .unwrap();
    ws
}

/// The code of the Close the server sends (bounded).
async fn close_code(ws: &mut Client) -> u16 {
    let event = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.recv_event().await {
                Some(Ok(Event::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("expected the server's Close, got {other:?}"),
            }
        }
    })
    .await
    .expect("no Close within 10 s");
    event.expect("a Close with a code").code.as_u16()
}

async fn echoes(ws: &mut Client, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let echoed = ws.recv_event().await;
    assert!(
        matches!(&echoed, Some(Ok(Event::Message(m))) if *m == Message::text(text)),
        "{text}: {echoed:?}"
    );
}

/// The attack and the checks, against a server at `url` sharing `budget`.
async fn held_inflation_stays_within_the_budget(url: &str, budget: &MessageBudget) {
    let (mut good, _) = duplex::connect(url).await.unwrap();
    echoes(&mut good, "before").await;

    // 12 MiB fits the 16 MiB budget alone: held until the message ends.
    let mut first = start_bomb(url, 12 << 20).await;
    wait_for(budget, "held the first message", |held| held >= 12 << 20).await;
    assert!(budget.held() <= BUDGET);
    // 12 MiB more would fit alone, but not beside the first: try again later.
    let mut second = start_bomb(url, 12 << 20).await;
    assert_eq!(close_code(&mut second).await, 1013);
    // While the first holds 12 MiB, a larger message also stops at the room left: 1013.
    let mut third = start_bomb(url, 40 << 20).await;
    assert_eq!(close_code(&mut third).await, 1013);
    assert!(budget.held() <= BUDGET, "holds {}", budget.held());
    assert_eq!(budget.refusals(), 2);
    echoes(&mut good, "during").await;

    // The first message completes: the application owns it, the budget is refunded.
    first
        .send_fragment(DataKind::Binary, &b"end"[..], true)
        .await
        .unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(20), first.recv())
        .await
        .expect("the completed message was not echoed within 20 s")
        .unwrap()
        .unwrap();
    assert_eq!(echoed.len(), (12 << 20) + 3);
    wait_for(budget, "returned to 0 after completion", |held| held == 0).await;

    // Larger than the whole budget, with nothing else held: too big, whatever happens later.
    for _ in 0..2 {
        let mut bomb = start_bomb(url, 40 << 20).await;
        assert_eq!(close_code(&mut bomb).await, 1009);
    }
    assert_eq!(budget.refusals(), 4);
    wait_for(budget, "returned to 0 after the refusals", |held| held == 0).await;

    // A connection that ends mid-message gives its share back.
    let gone = start_bomb(url, 8 << 20).await;
    wait_for(budget, "held the abandoned message", |held| held >= 8 << 20).await;
    drop(gone);
    wait_for(budget, "returned to 0 after the connection ended", |held| {
        held == 0
    })
    .await;
    echoes(&mut good, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_holds_no_more_than_the_budget() {
    let budget = MessageBudget::new(BUDGET);
    let engine = Engine::new(EngineOptions {
        config: config(&budget),
        ..EngineOptions::default()
    });
    let handle = engine.handle();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let thread = std::thread::spawn(move || engine.run(listener, || Echo));
    held_inflation_stays_within_the_budget(&url, &budget).await;
    handle.shutdown();
    tokio::task::spawn_blocking(move || thread.join().unwrap().unwrap())
        .await
        .unwrap();
    assert_eq!(budget.held(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_server_holds_no_more_than_the_budget() {
    let budget = MessageBudget::new(BUDGET);
    let options = ServerOptions {
        config: config(&budget),
        ..ServerOptions::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let options = options.clone();
            tasks.spawn(async move {
                let Ok(mut ws) =
                    duplex::accept_with(tcp, options, |_, _| Ok(Default::default())).await
                else {
                    return;
                };
                while let Some(Ok(message)) = ws.recv().await {
                    if ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    held_inflation_stays_within_the_budget(&url, &budget).await;
    server.abort();
    assert_eq!(budget.held(), 0);
}
