//! What the hub keeps is what it is charged for (issue 12, the soak's creeping RSS): a
//! publication stored in history must not keep alive the request it came in.
//!
//! `POST /api/publish` once handed the broker a slice of the request body, and so kept the
//! whole body, or with hyper the connection's read buffer it was split from (8 KiB and more),
//! alive in history for as long as the publication stayed there: in the soak 10,000
//! publications charged 2 MiB against the history budget held 82 MiB (heaptrack). These tests
//! count, at the broker, the publications whose data shares its allocation with anything
//! else; everything on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use common::{config, parse_response, within};
use duplex_hub::{
    BoxFuture, Broker, BrokerError, BrokerHandler, ClientInfo, History, HistoryQuery, HttpServer,
    Hub, MemoryBroker, StreamPosition,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A [`MemoryBroker`] that, before storing a publication, notes whether its data is the only
/// handle on its allocation (`Bytes::is_unique`): a slice of a request body is not.
#[derive(Debug)]
struct Inspecting {
    inner: MemoryBroker,
    published: AtomicUsize,
    /// Publications whose data shared its allocation with something else, with their length.
    shared: Mutex<Vec<usize>>,
}

impl Broker for Inspecting {
    fn start(&self, handler: Arc<dyn BrokerHandler>) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.start(handler)
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Bytes,
    ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>> {
        self.published.fetch_add(1, Relaxed);
        if !data.is_unique() {
            self.shared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(data.len());
        }
        self.inner.publish(channel, data)
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        query: HistoryQuery,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        self.inner.history(channel, query)
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.inner.subscribe(channel)
    }

    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.inner.unsubscribe(channel)
    }

    fn join<'a>(
        &'a self,
        channel: &'a str,
        client: &'a ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.inner.join(channel, client)
    }

    fn leave<'a>(
        &'a self,
        channel: &'a str,
        client: &'a ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.inner.leave(channel, client)
    }

    fn presence<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ClientInfo>, BrokerError>> {
        self.inner.presence(channel)
    }
}

/// Publications per test: sent one at a time, then as many again pipelined in one write (so
/// that several bodies arrive in one read of the server's buffer).
const EACH: usize = 40;

/// `POST /api/publish` requests on one keep-alive connection, as a backend publishes; waits for
/// every response (each 200).
async fn publish_keep_alive(addr: SocketAddr) {
    let request = |n: usize| {
        let body = format!(
            r#"{{"channel":"c{}","data":{{"n":{n},"p":"{}"}}}}"#,
            n % 4,
            "x".repeat(64)
        );
        format!(
            "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let mut answered = 0;
    // One at a time, then the rest in one write.
    for n in 0..EACH {
        tcp.write_all(request(n).as_bytes()).await.unwrap();
        answered += read_responses(&mut tcp, &mut buf, 1).await;
    }
    let pipelined: String = (EACH..2 * EACH).map(request).collect();
    tcp.write_all(pipelined.as_bytes()).await.unwrap();
    answered += read_responses(&mut tcp, &mut buf, EACH).await;
    assert_eq!(answered, 2 * EACH);
}

/// Reads `n` complete responses from `tcp` (bytes beyond them stay in `buf`), each a 200.
async fn read_responses(tcp: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> usize {
    let mut got = 0;
    while got < n {
        if let Some(end) = complete_response(buf) {
            let (response, used) = parse_response(&buf[..end]);
            assert_eq!(response.status, 200, "{response:?}");
            buf.drain(..used);
            got += 1;
            continue;
        }
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(
            read > 0,
            "the hub closed the connection after {got} of {n} responses"
        );
        buf.extend_from_slice(&chunk[..read]);
    }
    got
}

/// The length of the first complete response in `buf`, if it is all there.
fn complete_response(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= head_end + length).then_some(head_end + length)
}

/// Publishes over HTTP with `server` and checks that every publication reached the broker in
/// an allocation of its own.
async fn http_publications_own_their_data(server: HttpServer) {
    let broker = Arc::new(Inspecting {
        inner: MemoryBroker::new(100, None),
        published: AtomicUsize::new(0),
        shared: Mutex::new(Vec::new()),
    });
    let hub = Hub::bind_with_broker(
        duplex_hub::HubConfig {
            http_server: server,
            ..config()
        },
        broker.clone(),
    )
    .await
    .expect("hub binds");
    within(publish_keep_alive(hub.local_addr())).await;
    assert_eq!(broker.published.load(Relaxed), 2 * EACH);
    let shared = broker
        .shared
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert!(
        shared.is_empty(),
        "{} of {} publications ({server:?}) reached history as views into a larger buffer \
         (a request body or read buffer kept alive with each); the first of their lengths: \
         {:?}",
        shared.len(),
        2 * EACH,
        &shared[..shared.len().min(5)]
    );
    hub.shutdown();
    within(hub.wait()).await;
}

#[tokio::test]
async fn http_publications_own_their_data_with_hyper() {
    http_publications_own_their_data(HttpServer::Hyper).await;
}

#[tokio::test]
async fn http_publications_own_their_data_with_the_builtin_server() {
    http_publications_own_their_data(HttpServer::Builtin).await;
}
