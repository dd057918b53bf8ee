//! One TCP connection on hyper: TLS (when configured), then HTTP/1.1 or HTTP/2 on the same
//! port, the request bodies and their limits, the `/ws` upgrade and `/sse` streams over either.
//!
//! ```text
//!  TcpStream ─ TLS? ─ ALPN h2 ──────────────────────────────▶ hyper http2 (extended CONNECT)
//!     │              └ else ─────────────────────────────────▶ hyper http1 (with upgrades)
//!     └ plain: first bytes the HTTP/2 preface? ─ yes (h2c) ──▶ hyper http2
//!                                              └ no ─────────▶ hyper http1
//!  /ws over plain HTTP/1.1: the TcpStream is taken back out of hyper's upgrade ─▶ the session
//!     with direct writes (exactly the builtin server's path)
//!  /ws over HTTP/2 or TLS: the upgraded stream ─▶ the session with a queued outbox
//!  /sse over either: sse::Stream::run (a task) ─ pipe ─▶ SseBody, the response's body;
//!     hyper drops the body when the client is gone (closed, reset) ─▶ the stream ends
//! ```
//!
//! HTTP/1.1 and HTTP/2 are chosen here, not by hyper-util's auto connection, because hyper-util
//! wraps the socket in a private type while it sniffs the version: an upgrade could then not
//! be downcast back to the `TcpStream` the direct-write fan-out needs.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use duplex::WebSocket;
use duplex_proto::Connection;
use duplex_proto::Role;
use duplex_proto::handshake::{Accept, Refused, ServerHandshake};
use http::header::{ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, CONNECTION, CONTENT_TYPE};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use crate::head::{FramingError, Head, MAX_HEAD, body_framing, wants_keep_alive};
use crate::http::{
    HeadError, IDLE_TIMEOUT, Response, admit, check_connection_rate, check_sse_connection_rate,
    over_limit, route,
};
use crate::metrics::Transport;
use crate::outbox::OutboxStream;
use crate::state::{ConnectionGuard, HubState, WebSocketSlot};
use crate::ws_loop::Loops;

/// The HTTP/2 connection preface (RFC 9113 section 3.4): a client speaking h2c by prior
/// knowledge starts with it.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Most header lines in an HTTP/1.1 request head (431 above), as the builtin server. Checked
/// in [`handle`], not by hyper's `max_headers`: with it set, hyper allocates two arrays of
/// that many slots on the heap for every request head (its default of 100 sits on the stack),
/// which cost a publication ~1,400 instructions.
const MAX_HEADERS: usize = 64;

/// What every request of one connection shares.
struct Conn {
    hub: Arc<HubState>,
    peer: SocketAddr,
    /// Where plain WebSockets go once upgraded.
    loops: Arc<Loops>,
    /// Held by every task the connection spawns (its WebSockets): the hub's `wait` ends when
    /// the last one is dropped.
    done: mpsc::Sender<()>,
}

/// A response body: the whole of it (API, assets, refusals), or an `/sse` stream's.
type Body = Either<Full<Bytes>, SseBody>;

/// A whole response body.
fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Left(Full::new(bytes.into()))
}

/// Bytes buffered between an `/sse` stream's task and hyper: the task's writes wait while it
/// is full, so a client that stops reading backs up into the stream's outbox, which applies
/// the slow-consumer bound as it does for a WebSocket.
const SSE_PIPE: usize = 16 * 1024;

/// An `/sse` response's body: what the stream's task writes into the other end of a pipe,
/// as DATA frames (HTTP/2) or chunks (HTTP/1.1); it ends when the task does. hyper drops it
/// when the client goes (connection closed, stream reset): dropping it tells the task.
struct SseBody {
    pipe: DuplexStream,
    buf: BytesMut,
    /// Dropped with the body: the stream's `gone` future resolves.
    _gone: oneshot::Sender<()>,
}

impl std::fmt::Debug for SseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseBody").finish_non_exhaustive()
    }
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        this.buf.resize(SSE_PIPE, 0);
        let mut read = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.pipe).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                if n == 0 {
                    // The task finished (and dropped its end): the response is complete.
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(Frame::data(this.buf.split_to(n).freeze()))))
            }
            // A pipe does not fail; should it, the response ends as if the task had.
            Poll::Ready(Err(_)) => Poll::Ready(None),
        }
    }
}

/// Why a request got no response: hyper closes the connection (HTTP/1.1) or resets the
/// stream (HTTP/2), as the builtin server closed the connection.
#[derive(Debug)]
enum NoResponse {
    /// The body did not arrive within the idle timeout.
    BodyTimeout,
    /// The body could not be read (the client went away, or broke the framing).
    BodyFailed(hyper::Error),
}

impl std::fmt::Display for NoResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoResponse::BodyTimeout => f.write_str("request body timed out"),
            NoResponse::BodyFailed(e) => write!(f, "request body: {e}"),
        }
    }
}

impl std::error::Error for NoResponse {}

/// Serves one accepted TCP connection until it ends (or the hub shuts down and it finished
/// what it was doing).
pub(crate) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    hub: Arc<HubState>,
    loops: Arc<Loops>,
    tls: Option<TlsAcceptor>,
    done: mpsc::Sender<()>,
) {
    let conn = Arc::new(Conn {
        hub,
        peer,
        loops,
        done,
    });
    let mut shutdown = conn.hub.shutdown.clone();
    let Some(tls) = tls else {
        let sniffed = tokio::select! {
            sniffed = timeout(IDLE_TIMEOUT, sniff(tcp, conn.hub.config.max_message_size)) => sniffed,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match sniffed {
            // Boxed, like the TLS path below: hyper's connection futures are kilobytes, and
            // inline they would make every connection's task that large, the ones upgraded
            // without hyper included.
            Ok(Ok(Sniff::Http2(tcp))) => Box::pin(serve_h2(TokioIo::new(tcp), conn)).await,
            Ok(Ok(Sniff::Http1(tcp))) => Box::pin(serve_h1(TokioIo::new(tcp), conn)).await,
            Ok(Ok(Sniff::WebSocket(tcp, head, leftover))) => {
                let (hub, peer, done) = (conn.hub.clone(), conn.peer, conn.done.clone());
                let loops = conn.loops.clone();
                drop(conn);
                // Boxed too: the task stays the sniff's size, and the upgrade's future (refusals,
                // the 101's write, with their timers) is allocated only once a head arrived.
                let upgrade =
                    crate::http::upgrade(tcp, head.request, leftover, peer, hub, &loops, done);
                Box::pin(upgrade).await;
            }
            // Closed, failed or silent before a request: nothing to answer.
            Ok(Err(_)) | Err(_) => {}
        }
        return;
    };
    Box::pin(serve_tls(tcp, tls, conn, shutdown)).await;
}

/// A TLS connection: the handshake, then hyper's HTTP/2 (ALPN `h2`) or HTTP/1.1 server.
async fn serve_tls(
    tcp: TcpStream,
    tls: TlsAcceptor,
    conn: Arc<Conn>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let accepted = tokio::select! {
        accepted = timeout(IDLE_TIMEOUT, tls.accept(tcp)) => accepted,
        _ = shutdown.wait_for(|stop| *stop) => return,
    };
    let Ok(Ok(stream)) = accepted else {
        return;
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    if h2 {
        serve_h2(TokioIo::new(stream), conn).await;
    } else {
        serve_h1(TokioIo::new(stream), conn).await;
    }
}

/// A TCP stream with the bytes read off it to tell HTTP/2 from HTTP/1.1, which it reads
/// again first.
pub(crate) type Sniffed = duplex::resume::Prefixed<TcpStream>;

/// What a plain connection turned out to be, from its first bytes.
enum Sniff {
    /// The HTTP/2 preface: hyper's HTTP/2 server, the bytes replayed.
    Http2(Sniffed),
    /// HTTP/1.1 other than a WebSocket upgrade first (or a head only hyper should judge):
    /// hyper's HTTP/1.1 server, the bytes replayed.
    Http1(Sniffed),
    /// A request for `/ws` first: upgraded here ([`crate::http::upgrade`]), without hyper.
    /// The head, and the bytes after it.
    WebSocket(TcpStream, Box<Head>, BytesMut),
}

/// Reads until the first bytes are the HTTP/2 preface or cannot be; for HTTP/1.1, on until the
/// first request head is whole. A first request for `/ws` is upgraded without hyper, whose
/// per-connection buffers, allocated for the handshake and freed after the `101`, leave holes
/// in glibc's heap between long-lived session state: measured at 10,000 connections, 72-200
/// bytes free in the heap per connection through hyper, 18-28 without it, RSS 2.59-2.68 against
/// 2.49-2.52 KiB (docs/performance.md, "Hub: memory per idle connection"). Everything else, a
/// head that does not parse included, goes to hyper with the bytes read replayed.
async fn sniff(mut tcp: TcpStream, max_body: usize) -> io::Result<Sniff> {
    let mut buf = BytesMut::with_capacity(PREFACE.len());
    while buf.len() < PREFACE.len() && PREFACE.starts_with(&buf) {
        if tcp.read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    if buf.is_empty() {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if buf.starts_with(PREFACE) {
        return Ok(Sniff::Http2(Sniffed::new(buf.freeze(), tcp)));
    }
    match crate::http::read_head(&mut tcp, &mut buf, max_body).await {
        Ok(Some(head)) if head.request.uri().path() == "/ws" => {
            let leftover = buf.split_off(head.len);
            Ok(Sniff::WebSocket(tcp, Box::new(head), leftover))
        }
        Ok(Some(_)) | Err(HeadError::Invalid(_)) => {
            Ok(Sniff::Http1(Sniffed::new(buf.freeze(), tcp)))
        }
        Ok(None) => Err(io::ErrorKind::UnexpectedEof.into()),
        Err(HeadError::Io) => Err(io::ErrorKind::Other.into()),
    }
}

/// HTTP/1.1 on `io` until the connection closes, or is upgraded (the WebSocket then runs in a
/// task of its own), or the hub shuts down (after the request in progress).
async fn serve_h1<I>(io: TokioIo<I>, conn: Arc<Conn>)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut shutdown = conn.hub.shutdown.clone();
    let service_conn = conn.clone();
    let service = service_fn(move |request| handle(request, service_conn.clone(), false));
    let mut builder = http1::Builder::new();
    builder
        .timer(HeadTimer::default())
        // Idle between requests and slow heads alike: the builtin server's 30 s.
        .header_read_timeout(IDLE_TIMEOUT)
        // A head that does not fit is answered 431 (hyper's smallest buffer is 8 KiB).
        .max_buf_size(MAX_HEAD)
        // Responses are small: one copy into the head's buffer and one write is cheaper
        // than hyper's queue of buffers for a vectored write.
        .writev(false)
        .keep_alive(true);
    let connection = pin!(builder.serve_connection(io, service).with_upgrades());
    drive(connection, &mut shutdown).await;
}

/// hyper's timer for one HTTP/1.1 connection, for its header-read timeout. hyper asks for a
/// new sleep before every request head and drops it once the head is in; `TokioTimer` makes
/// each a boxed tokio `Sleep` that enters the timer wheel and leaves it again, for every
/// request. Here every sleep of the connection drives the one `Sleep` the connection keeps,
/// which is moved to the current deadline only when it fires: the wheel is touched once per
/// timeout period, not once per request.
#[derive(Clone, Default)]
struct HeadTimer {
    sleep: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

/// A deadline of [`HeadTimer`]'s connection.
struct HeadSleep {
    sleep: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
    deadline: tokio::time::Instant,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: std::time::Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        // Not used by hyper's HTTP/1.1 server; a sleep of its own, as TokioTimer's.
        hyper::rt::Timer::sleep(&TokioTimer::new(), duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadSleep {
            sleep: self.sleep.clone(),
            deadline: deadline.into(),
        })
    }
}

impl std::future::Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // One connection polls its sleeps from its one task: never contended; a panic
        // elsewhere cannot leave the Option half-written.
        let mut shared = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
        let sleep = shared.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(self.deadline)));
        // The shared sleep may still be set for an earlier head's deadline (never a later
        // one: hyper's deadlines only move on). It is moved when it fires, not per head.
        loop {
            match sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if sleep.deadline() >= self.deadline => return Poll::Ready(()),
                Poll::Ready(()) => sleep.as_mut().reset(self.deadline),
            }
        }
    }
}

impl hyper::rt::Sleep for HeadSleep {}

/// HTTP/2 on `io`: requests and WebSockets (extended CONNECT) as streams of it.
async fn serve_h2<I>(io: TokioIo<I>, conn: Arc<Conn>)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut shutdown = conn.hub.shutdown.clone();
    let service_conn = conn.clone();
    let service = service_fn(move |request| handle(request, service_conn.clone(), true));
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_header_list_size(MAX_HEAD as u32)
        .initial_stream_window_size(duplex::upgrade::STREAM_WINDOW)
        .initial_connection_window_size(duplex::upgrade::CONNECTION_WINDOW);
    let connection = pin!(builder.serve_connection(io, service));
    drive(connection, &mut shutdown).await;
}

/// What [`drive`] needs of a hyper connection.
trait GracefulConnection: std::future::Future {
    fn shut(self: Pin<&mut Self>);
}

impl<I, S> GracefulConnection for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    Self: std::future::Future,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn shut(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> GracefulConnection for hyper::server::conn::http2::Connection<I, S, E>
where
    Self: std::future::Future,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn shut(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs `connection` to its end; on shutdown, asks it to finish gracefully (HTTP/1.1: after
/// the response in progress; HTTP/2: GOAWAY, then the open streams finish: their WebSockets
/// are closed with 1001 by the sessions).
async fn drive<C: GracefulConnection>(
    mut connection: Pin<&mut C>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) {
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    connection.as_mut().shut();
    let _ = connection.await;
}

/// One request: `/ws` is upgraded, anything else routed with its body read.
async fn handle(
    request: Request<Incoming>,
    conn: Arc<Conn>,
    h2: bool,
) -> Result<hyper::Response<Body>, NoResponse> {
    if !h2 && request.headers().len() > MAX_HEADERS {
        // hyper stops at 100 lines (431 too); one line is one entry of the map.
        let response = Response::error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &format!("more than {MAX_HEADERS} header lines"),
        );
        return Ok(into_hyper(response, false, h2));
    }
    if request.uri().path() == "/ws" {
        return Ok(websocket(request, &conn, h2));
    }
    if request.uri().path() == "/sse" {
        return Ok(sse(request, &conn, h2).await);
    }
    let hub = &conn.hub;
    hub.metrics.http_requests.fetch_add(1, Relaxed);
    let (parts, body) = request.into_parts();
    let request = Request::from_parts(parts, ());
    let max = hub.config.max_message_size;
    let mut keep_alive = !h2 && wants_keep_alive(&request);
    let length = match body_framing(&request, max) {
        Ok(framing) => Some(framing.length),
        // HTTP/2 frames its bodies itself (DATA frames, END_STREAM): no length needed.
        Err(FramingError::LengthRequired) if h2 => None,
        // The rest of the request cannot be framed: answer, then close (as the builtin
        // server; over HTTP/2 only this stream ends).
        Err(e) => {
            let response = Response::error(e.status(), &e.message());
            return Ok(into_hyper(response, false, h2));
        }
    };
    // hyper answers `Expect: 100-continue` when the body is first polled.
    let limit = length.unwrap_or(max);
    let body = match read_body(body, limit).await {
        Ok(body) => body,
        Err(BodyError::Failed(e)) => return Err(NoResponse::BodyFailed(e)),
        Err(BodyError::TimedOut) => return Err(NoResponse::BodyTimeout),
        // Over the limit: only without a Content-Length (HTTP/2).
        Err(BodyError::TooLarge) => {
            let response = Response::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body over the limit of {max} bytes"),
            );
            return Ok(into_hyper(response, false, h2));
        }
    };
    let response = route(hub, &request, body, conn.peer.ip()).await;
    if *hub.shutdown.borrow() {
        keep_alive = false;
    }
    Ok(into_hyper(response, keep_alive, h2))
}

/// Why a request body was not read whole.
#[derive(Debug)]
enum BodyError {
    /// The client went away or broke the framing.
    Failed(hyper::Error),
    /// More than the limit (HTTP/2 without `content-length`).
    TooLarge,
    /// Not all of it within [`IDLE_TIMEOUT`].
    TimedOut,
}

/// Reads a request body of at most `limit` bytes. A body that came in one piece (a
/// publication, as a rule: it arrives with its head) is that piece's `Bytes`, not a copy; and
/// the timeout's timer is started only if the body is not all there at once.
async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    let read = async move {
        let mut whole = Bytes::new();
        let mut joined: Option<BytesMut> = None;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(BodyError::Failed)?.into_data() else {
                continue; // trailers
            };
            let so_far = joined.as_ref().map_or(whole.len(), BytesMut::len);
            if so_far + data.len() > limit {
                return Err(BodyError::TooLarge);
            }
            match joined.as_mut() {
                None if whole.is_empty() => whole = data,
                None => {
                    let mut both = BytesMut::with_capacity(whole.len() + data.len());
                    both.extend_from_slice(&whole);
                    both.extend_from_slice(&data);
                    joined = Some(both);
                }
                Some(joined) => joined.extend_from_slice(&data),
            }
        }
        Ok(joined.map_or(whole, BytesMut::freeze))
    };
    let mut read = pin!(read);
    if let Poll::Ready(done) = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await
    {
        return done;
    }
    timeout(IDLE_TIMEOUT, read)
        .await
        .unwrap_or(Err(BodyError::TimedOut))
}

/// The hub's response for hyper: the builtin server's headers (`Content-Type`,
/// `Cache-Control: no-store`, `Connection` over HTTP/1.1). hyper leaves the body out for
/// `HEAD` and closes the connection after `Connection: close`.
fn into_hyper(response: Response, keep_alive: bool, h2: bool) -> hyper::Response<Body> {
    let Response {
        status,
        content_type,
        body,
        headers,
    } = response;
    let mut out = hyper::Response::new(full(body));
    *out.status_mut() = status;
    let map = out.headers_mut();
    map.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    map.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if !h2 {
        let connection = if keep_alive { "keep-alive" } else { "close" };
        map.insert(CONNECTION, HeaderValue::from_static(connection));
    }
    for (name, value) in headers {
        map.append(name, value);
    }
    out
}

/// A refused upgrade: its status, headers and reason; over HTTP/1.1 the connection closes
/// after it, as with the builtin server.
fn refusal(refused: &Refused, h2: bool) -> hyper::Response<Body> {
    let mut response = refused.response().map(full);
    if !h2 {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// `/ws`: validates the upgrade (HTTP/1.1 `Upgrade` or HTTP/2 extended CONNECT), checks
/// origin, token and the connection limit (the hub's decisions), lets duplex-proto's handshake
/// decide the rest, and spawns the session for when hyper has sent the answer (101, or 200
/// over HTTP/2) and handed the connection or stream over.
fn websocket(mut request: Request<Incoming>, conn: &Arc<Conn>, h2: bool) -> hyper::Response<Body> {
    let hub = &conn.hub;
    let offer = match duplex::upgrade::validate(&request) {
        Ok(offer) => offer,
        Err(refused) => return refusal(&refused, h2),
    };
    if let Err(reject) = check_connection_rate(hub, conn.peer.ip()) {
        return refusal(&Refused::from(reject), h2);
    }
    let on_upgrade = hyper::upgrade::on(&mut request);
    let (parts, _) = request.into_parts();
    let request = Request::from_parts(parts, ());
    let grants = match admit(hub, &request, &offer) {
        Ok(grants) => grants,
        Err(reject) => {
            tracing::debug!(peer = %conn.peer, status = %reject.status, reason = reject.reason, "websocket refused");
            hub.metrics.connections_refused.fetch_add(1, Relaxed);
            return refusal(&Refused::from(reject), h2);
        }
    };
    let (slot, open) = WebSocketSlot::take(hub);
    let choice = if open >= hub.config.max_connections {
        Err(over_limit(hub))
    } else {
        Ok(Accept::default())
    };
    let handshake = ServerHandshake::shared(&hub.ws_config).deflate(hub.deflate.as_ref());
    let upgrade = match handshake.decide(&offer, choice) {
        Ok(upgrade) => upgrade,
        Err(refused) => return refusal(&refused, h2),
    };
    let response = upgrade.response().map(|()| full(Bytes::new()));
    let connection = upgrade.connection;
    let (hub, peer, done) = (hub.clone(), conn.peer, conn.done.clone());
    let loops = conn.loops.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            // A task of its own for the session, holding nothing of this one: the session's
            // future is all an idle connection keeps (see docs/performance.md).
            Ok(upgraded) => {
                start(
                    upgraded,
                    connection,
                    hub,
                    &loops,
                    grants,
                    peer,
                    h2,
                    (slot, done),
                );
            }
            Err(error) => tracing::debug!(%peer, %error, "websocket upgrade failed"),
        }
    });
    response
}

/// Starts the session of an upgraded connection: over plain HTTP/1.1 on the `TcpStream` itself
/// (an event loop's, direct writes by the fan-out), otherwise on the upgraded stream, on a task
/// of its own (queued outbox). `guard` (the connection slot, the hub's wait) is held until it
/// ends.
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of one upgrade, handed on"
)]
fn start(
    upgraded: Upgraded,
    connection: Connection,
    hub: Arc<HubState>,
    loops: &Loops,
    grants: crate::auth::Grants,
    peer: SocketAddr,
    h2: bool,
    guard: ConnectionGuard,
) {
    let negotiated = connection.deflate().copied();
    let shared_deflate = negotiated.is_some_and(|n| {
        n.accepts_prepared(
            Role::Server,
            duplex_proto::extensions::deflate::MAX_WINDOW_BITS,
        )
    });
    let transport = if h2 { Transport::H2 } else { Transport::H1 };
    match upgraded.downcast::<TokioIo<Sniffed>>() {
        Ok(parts) => {
            let (unread, tcp) = parts.io.into_inner().into_parts();
            // hyper read `read_buf` before the sniffed bytes it left (if any).
            let mut leftover = BytesMut::from(&parts.read_buf[..]);
            leftover.extend_from_slice(&unread);
            tracing::debug!(%peer, user = grants.user, shared_deflate, h2, direct = true, "websocket accepted");
            crate::ws_loop::run_plain(
                tcp, connection, leftover, &hub, loops, grants, transport, guard,
            );
        }
        Err(upgraded) => {
            let limit = hub.config.queue_bytes;
            let (stream, outbox) = OutboxStream::queued(TokioIo::new(upgraded), limit, negotiated);
            let ws = WebSocket::from_connection(
                stream,
                connection,
                hub.ws_options.clone(),
                BytesMut::new(),
                None,
            );
            tracing::debug!(%peer, user = grants.user, shared_deflate, h2, direct = false, "websocket accepted");
            tokio::spawn(crate::session::run(
                ws, outbox, hub, grants, transport, guard,
            ));
        }
    }
}

/// `/sse`: the stream ([`crate::sse`] decides and writes it) as this response's body, or its
/// refusal. The stream runs in a task of its own (counted as the connection's, for the hub's
/// graceful wait) until it ends (shutdown, slow consumer) or hyper drops the body.
async fn sse(request: Request<Incoming>, conn: &Arc<Conn>, h2: bool) -> hyper::Response<Body> {
    if let Some(response) = check_sse_connection_rate(&conn.hub, conn.peer.ip()) {
        return into_hyper(response, false, h2);
    }
    let (parts, _) = request.into_parts();
    let request = Request::from_parts(parts, ());
    let stream = match crate::sse::open(&conn.hub, &request).await {
        Ok(stream) => stream,
        Err(refused) => {
            let mut response = Response::error(refused.status, &refused.message);
            response.headers = refused.headers;
            // As the builtin server: the connection closes after a refusal.
            return into_hyper(response, false, h2);
        }
    };
    let (task_end, body_end) = tokio::io::duplex(SSE_PIPE);
    let (gone_tx, gone_rx) = oneshot::channel();
    let mut response = hyper::Response::new(Either::Right(SseBody {
        pipe: body_end,
        buf: BytesMut::new(),
        _gone: gone_tx,
    }));
    let headers = response.headers_mut();
    for (name, value) in crate::sse::HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if let Some(origin) = stream.allow_origin() {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
    let done = conn.done.clone();
    tokio::spawn(async move {
        let _done = done;
        // Never sent: resolves (with an error) when the body is dropped.
        let gone = async move {
            let _ = gone_rx.await;
        };
        stream.run(task_end, gone).await;
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;
    use std::time::{Duration, Instant};

    /// hyper's pattern: a sleep per head, polled while the head is awaited and dropped once
    /// it is in. The connection's one tokio sleep, armed for the first deadline, must end
    /// the second sleep at the second deadline, not at the first.
    #[tokio::test]
    async fn head_timer_sleeps_end_at_their_own_deadline() {
        let timer = HeadTimer::default();
        let start = Instant::now();
        let mut first = timer.sleep_until(start + Duration::from_millis(40));
        let polled = std::future::poll_fn(|cx| Poll::Ready(first.as_mut().poll(cx))).await;
        assert!(polled.is_pending(), "the first deadline is still ahead");
        drop(first);
        let second = timer.sleep_until(start + Duration::from_millis(200));
        timeout(Duration::from_secs(10), second)
            .await
            .expect("the second sleep ends within 10 s");
        assert!(
            start.elapsed() >= Duration::from_millis(200),
            "ended at {:?}, before its deadline",
            start.elapsed()
        );
        // A sleep whose deadline has passed ends at once.
        timeout(Duration::from_secs(10), timer.sleep_until(Instant::now()))
            .await
            .expect("a due sleep ends");
    }
}
