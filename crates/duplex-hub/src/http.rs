//! The hub's routes (the JSON API, the embedded web assets, health and metrics) and its
//! WebSocket admission (origin, token), shared by both HTTP servers: the hyper one
//! (`service.rs`, the default) and the hand-written HTTP/1.1 server kept here on the raw
//! `TcpStream` (`--http-server builtin`): request heads (parsed and judged in `head.rs`),
//! `Content-Length` bodies, keep-alive, and the upgrade to WebSocket on `/ws`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use duplex_proto::Role;
use duplex_proto::handshake::{
    Accept, ClientOffer, HandshakeError, REFUSAL_DRAIN_LIMIT, REFUSAL_LINGER, Refused, Reject,
    ServerHandshake, Upgrade, validate_request,
};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::auth::{Grants, constant_time_eq, verify_hs256};
use crate::broker::HistoryQuery;
use crate::head::{BodyFraming, Head, parse_head};
use crate::json;
use crate::limit::{Key, Limited};
use crate::metrics::{Reason, Transport};
use crate::protocol::{ErrorCode, HistoryParams, Publish, Refusal, channel_param, query_param};
use crate::state::{HubState, WebSocketSlot};
use crate::ws_loop::Loops;

/// How long a connection may sit between requests, or take to send a head or a body.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// An embedded file from `web/`.
#[derive(Debug)]
pub(crate) struct Asset {
    pub(crate) name: &'static str,
    pub(crate) content_type: &'static str,
    pub(crate) body: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// An HTTP response about to be written.
pub(crate) struct Response {
    pub(crate) status: StatusCode,
    pub(crate) content_type: &'static str,
    pub(crate) body: Bytes,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
}

impl Response {
    fn new(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    fn json(body: Vec<u8>) -> Response {
        Response::new(StatusCode::OK, "application/json", body)
    }

    pub(crate) fn error(status: StatusCode, message: &str) -> Response {
        Response::new(status, "application/json", json::error_body(message))
    }

    /// A refusal of the API: its code's HTTP status, its message in the body (and, for the
    /// channel cap, when to try again: channels free themselves as clients leave; for a full
    /// fan-out queue, sooner: it drains at the speed of the sockets).
    fn refusal(refusal: &Refusal) -> Response {
        let response = Response::error(refusal.code.http_status(), &refusal.message);
        match refusal.code {
            ErrorCode::ChannelLimit => response.header(http::header::RETRY_AFTER, "5"),
            ErrorCode::Overloaded => response.header(http::header::RETRY_AFTER, "1"),
            ErrorCode::BadRequest
            | ErrorCode::UnknownOp
            | ErrorCode::Forbidden
            | ErrorCode::AlreadySubscribed
            | ErrorCode::NotSubscribed
            | ErrorCode::LimitExceeded
            | ErrorCode::RateLimited
            | ErrorCode::Internal
            | ErrorCode::BrokerUnavailable => response,
        }
    }

    fn header(mut self, name: HeaderName, value: &'static str) -> Response {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }

    fn encode(&self, keep_alive: bool, head_only: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.body.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(self.content_type.as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
        out.extend_from_slice(self.body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\nCache-Control: no-store\r\nConnection: ");
        out.extend_from_slice(if keep_alive { b"keep-alive" } else { b"close" });
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// Serves one TCP connection: HTTP requests until it closes, or one WebSocket. `done` (the
/// hub's wait) is held until it ends, and handed to the session of a WebSocket it upgrades to.
pub(crate) async fn serve(
    mut tcp: TcpStream,
    peer: SocketAddr,
    hub: Arc<HubState>,
    loops: Arc<Loops>,
    done: tokio::sync::mpsc::Sender<()>,
) {
    let mut shutdown = hub.shutdown.clone();
    let mut buf = BytesMut::with_capacity(4096);
    let max_body = hub.config.max_message_size;
    loop {
        let head = tokio::select! {
            head = timeout(IDLE_TIMEOUT, read_head(&mut tcp, &mut buf, max_body)) => head,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let Head {
            request,
            len,
            mut keep_alive,
            body,
        } = match head {
            Ok(Ok(Some(head))) => head,
            // EOF or idle between requests, or a read error: nothing to answer.
            Ok(Ok(None)) | Ok(Err(HeadError::Io)) | Err(_) => return,
            Ok(Err(HeadError::Invalid(e))) => return refuse(tcp, &e.response()).await,
        };
        buf.advance(len);
        if request.uri().path() == "/ws" {
            upgrade(tcp, request, buf, peer, hub, &loops, done).await;
            return;
        }
        if request.uri().path() == "/sse" {
            return sse(tcp, request, peer, hub).await;
        }
        hub.metrics.http_requests.fetch_add(1, Relaxed);
        let head_only = request.method() == Method::HEAD;

        let framing = match body {
            Ok(framing) => framing,
            // The rest of the request cannot be framed: answer, then close gracefully.
            Err(e) => {
                let response = Response::error(e.status(), &e.message());
                return refuse(tcp, &response.encode(false, head_only)).await;
            }
        };
        let Some(body) = read_body(&mut tcp, &mut buf, framing).await else {
            return;
        };
        let response = route(&hub, &request, body, peer.ip()).await;
        if *shutdown.borrow() {
            keep_alive = false;
        }
        if tcp
            .write_all(&response.encode(keep_alive, head_only))
            .await
            .is_err()
            || !keep_alive
        {
            return;
        }
    }
}

/// Why no request head was read.
pub(crate) enum HeadError {
    /// The socket failed.
    Io,
    /// The head is not valid HTTP/1.1 (or too long).
    Invalid(HandshakeError),
}

/// Reads until a complete request head is in `buf`. `Ok(None)`: the connection closed.
pub(crate) async fn read_head(
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
    max_body: usize,
) -> Result<Option<Head>, HeadError> {
    loop {
        if !buf.is_empty() {
            if let Some(head) = parse_head(buf, max_body).map_err(HeadError::Invalid)? {
                return Ok(Some(head));
            }
        }
        buf.reserve(4096);
        match tcp.read_buf(buf).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(_) => return Err(HeadError::Io),
        }
    }
}

/// Reads a body of `framing.length` bytes (answering `100 Continue` first if the client waits
/// for it). `None`: the connection failed or timed out.
async fn read_body(tcp: &mut TcpStream, buf: &mut BytesMut, framing: BodyFraming) -> Option<Bytes> {
    let length = framing.length;
    if framing.expects_continue && buf.len() < length {
        tcp.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.ok()?;
    }
    let read = async {
        while buf.len() < length {
            buf.reserve(length - buf.len());
            if tcp.read_buf(buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok::<(), std::io::Error>(())
    };
    match timeout(IDLE_TIMEOUT, read).await {
        Ok(Ok(())) => Some(buf.split_to(length).freeze()),
        _ => None,
    }
}

/// Answers one request (not `/ws`) whose `body` was read, from a client at `peer`.
pub(crate) async fn route(
    hub: &HubState,
    request: &Request<()>,
    body: Bytes,
    peer: IpAddr,
) -> Response {
    let path = request.uri().path();
    let method = request.method();
    let get = method == Method::GET || method == Method::HEAD;
    let not_allowed = |allow: &'static str| {
        Response::error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{method} is not allowed on {path}; use {allow}"),
        )
        .header(http::header::ALLOW, allow)
    };
    if let Some(api) = path.strip_prefix("/api/") {
        let allow = if api == "publish" {
            "POST"
        } else {
            "GET, HEAD"
        };
        let known = matches!(api, "publish" | "history" | "presence" | "channels");
        if !known {
            return Response::error(StatusCode::NOT_FOUND, &format!("no API endpoint {path}"));
        }
        if (api == "publish") != (method == Method::POST) || (api != "publish" && !get) {
            return not_allowed(allow);
        }
        if let Some(refusal) = check_api_key(hub, request) {
            return refusal;
        }
        if api == "publish" {
            if let Some(refusal) = check_publish_rate(hub, peer) {
                return refusal;
            }
        }
        return match api {
            "publish" => api_publish(hub, body).await,
            "history" => api_history(hub, request).await,
            "presence" => api_presence(hub, request).await,
            _ => api_channels(hub),
        };
    }
    let response = match path {
        // A load balancer sends no traffic to a node that cannot reach its broker.
        "/healthz" if hub.broker_ready() => {
            Response::new(StatusCode::OK, "text/plain; charset=utf-8", "ok")
        }
        "/healthz" => Response::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "broker unavailable",
        ),
        "/metrics" => Response::new(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            hub.metrics.render(),
        ),
        "/" => match asset("index.html") {
            Some(a) => Response::new(StatusCode::OK, a.content_type, a.body),
            None => Response::error(StatusCode::NOT_FOUND, "no demo page"),
        },
        _ => match path.strip_prefix('/').and_then(asset) {
            Some(a) => Response::new(StatusCode::OK, a.content_type, a.body),
            None => return Response::error(StatusCode::NOT_FOUND, &format!("not found: {path}")),
        },
    };
    if get {
        response
    } else {
        not_allowed("GET, HEAD")
    }
}

fn check_api_key(hub: &HubState, request: &Request<()>) -> Option<Response> {
    let key = hub.config.api_key.as_ref()?;
    let given = bearer(request.headers());
    if given.is_some_and(|given| constant_time_eq(given.as_bytes(), key.as_bytes())) {
        return None;
    }
    let message = if given.is_some() {
        "wrong API key"
    } else {
        "the API needs Authorization: Bearer <api key>"
    };
    Some(
        Response::error(StatusCode::UNAUTHORIZED, message)
            .header(http::header::WWW_AUTHENTICATE, "Bearer"),
    )
}

/// The HTTP publish rate: per API key when the hub has one (the request passed
/// [`check_api_key`]), else per client address. Over it: 429 with `Retry-After`.
fn check_publish_rate(hub: &HubState, peer: IpAddr) -> Option<Response> {
    let limiter = hub.http_publish_limit.as_ref()?;
    let key = if hub.config.api_key.is_some() {
        Key::ApiKey
    } else {
        Key::address(peer)
    };
    let limited = limiter.check(key, Instant::now()).err()?;
    let message = match limited {
        Limited::Wait(_) => {
            hub.metrics.refused(Reason::HttpPublishRate);
            format!(
                "publish rate limit: {} per second, bursts of {}; retry after {} s",
                hub.config.http_publish_rate,
                hub.config.http_publish_burst,
                limited.retry_after()
            )
        }
        Limited::Full => {
            hub.metrics.refused(Reason::LimiterFull);
            "too many clients publishing at once; retry later".to_owned()
        }
    };
    let mut response = Response::error(StatusCode::TOO_MANY_REQUESTS, &message);
    response.headers.push((
        http::header::RETRY_AFTER,
        HeaderValue::from(limited.retry_after()),
    ));
    Some(response)
}

/// [`check_connection_rate`] for an `/sse` stream: the refusal as a response.
pub(crate) fn check_sse_connection_rate(hub: &HubState, peer: IpAddr) -> Option<Response> {
    let reject = check_connection_rate(hub, peer).err()?;
    let mut response = Response::error(reject.status, &reject.reason);
    response.headers = reject.headers;
    Some(response)
}

/// The new-connection rate of the client at `peer` (`/ws` before the upgrade, `/sse` before
/// the stream): over it, 429 with `Retry-After`.
pub(crate) fn check_connection_rate(hub: &HubState, peer: IpAddr) -> Result<(), Reject> {
    let Some(limiter) = &hub.connection_limit else {
        return Ok(());
    };
    let Err(limited) = limiter.check(Key::address(peer), Instant::now()) else {
        return Ok(());
    };
    hub.metrics.connections_refused.fetch_add(1, Relaxed);
    let reason = match limited {
        Limited::Wait(_) => {
            hub.metrics.refused(Reason::ConnectionRate);
            format!(
                "too many new connections from {peer} ({} per second, bursts of {}); retry later",
                hub.config.connection_rate, hub.config.connection_burst
            )
        }
        Limited::Full => {
            hub.metrics.refused(Reason::LimiterFull);
            "too many clients connecting at once; retry later".to_owned()
        }
    };
    Err(Reject::new(StatusCode::TOO_MANY_REQUESTS, reason).header(
        http::header::RETRY_AFTER,
        HeaderValue::from(limited.retry_after()),
    ))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn api_publish(hub: &HubState, body: Bytes) -> Response {
    let Publish { channel, data } = match Publish::from_http_body(&body) {
        Ok(publish) => publish,
        Err(refusal) => return Response::refusal(&refusal),
    };
    // Before the broker stores it: a refused publication leaves no trace.
    if let Err(refusal) = hub.fanout.admit_publication(&channel, data.len()) {
        return Response::refusal(&refusal);
    }
    match async { hub.broker()?.publish(&channel, data).await }.await {
        Ok(position) => {
            hub.metrics.publishes.fetch_add(1, Relaxed);
            let mut out = Vec::with_capacity(64);
            out.extend_from_slice(br#"{"offset":"#);
            json::number(&mut out, position.offset);
            out.extend_from_slice(br#","epoch":"#);
            json::string(&mut out, &position.epoch);
            out.push(b'}');
            Response::json(out)
        }
        Err(e) => Response::refusal(&Refusal::broker(&e)),
    }
}

async fn api_history(hub: &HubState, request: &Request<()>) -> Response {
    let HistoryParams {
        channel,
        since,
        limit,
    } = match HistoryParams::from_request(request) {
        Ok(params) => params,
        Err(refusal) => return Response::refusal(&refusal),
    };
    let query = HistoryQuery {
        since,
        limit: limit.unwrap_or(usize::MAX),
    };
    match async { hub.broker()?.history(&channel, query).await }.await {
        Ok(history) => {
            let mut out = Vec::with_capacity(128);
            out.extend_from_slice(br#"{"epoch":"#);
            json::string(&mut out, &history.position.epoch);
            out.extend_from_slice(br#","offset":"#);
            json::number(&mut out, history.position.offset);
            out.extend_from_slice(br#","earliest":"#);
            json::number(&mut out, history.earliest);
            out.extend_from_slice(br#","publications":"#);
            json::publications(&mut out, &history.publications);
            out.push(b'}');
            Response::json(out)
        }
        Err(e) => Response::refusal(&Refusal::broker(&e)),
    }
}

async fn api_presence(hub: &HubState, request: &Request<()>) -> Response {
    let channel = match channel_param(request) {
        Ok(c) => c,
        Err(refusal) => return Response::refusal(&refusal),
    };
    match async { hub.broker()?.presence(&channel).await }.await {
        Ok(clients) => {
            let mut out = Vec::with_capacity(64);
            out.extend_from_slice(br#"{"clients":"#);
            json::clients(&mut out, &clients);
            out.push(b'}');
            Response::json(out)
        }
        Err(e) => Response::refusal(&Refusal::broker(&e)),
    }
}

fn api_channels(hub: &HubState) -> Response {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(br#"{"channels":["#);
    for (i, (channel, subscribers)) in hub.fanout.channel_counts().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"channel":"#);
        json::string(&mut out, channel);
        out.extend_from_slice(br#","subscribers":"#);
        json::number(&mut out, *subscribers as u64);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    Response::json(out)
}

/// The refusal of a WebSocket over the connection limit: 503 with `Retry-After`.
pub(crate) fn over_limit(hub: &HubState) -> Reject {
    hub.metrics.connections_refused.fetch_add(1, Relaxed);
    let reason = format!(
        "too many connections (limit {}); try again later",
        hub.config.max_connections
    );
    Reject::new(StatusCode::SERVICE_UNAVAILABLE, reason)
        .header(http::header::RETRY_AFTER, HeaderValue::from_static("5"))
}

/// `/ws`: validates the upgrade, checks origin, token and the connection limit (the hub's
/// decisions), lets duplex-proto's handshake decide the rest (permessage-deflate, the
/// answer), answers 101 and spawns the session: a task of its own, holding nothing of this
/// one (the request, the head buffer, the HTTP loop's futures), as `service.rs` does.
pub(crate) async fn upgrade(
    mut tcp: TcpStream,
    request: Request<()>,
    leftover: BytesMut,
    peer: SocketAddr,
    hub: Arc<HubState>,
    loops: &Loops,
    done: tokio::sync::mpsc::Sender<()>,
) {
    let offer = match validate_request(&request) {
        Ok(offer) => offer,
        Err(e) => return refuse(tcp, &e.response()).await,
    };
    if let Err(reject) = check_connection_rate(&hub, peer.ip()) {
        return refuse(tcp, &Refused::from(reject).encode_http11()).await;
    }
    let grants = match admit(&hub, &request, &offer) {
        Ok(grants) => grants,
        Err(reject) => {
            tracing::debug!(%peer, status = %reject.status, reason = reject.reason, "websocket refused");
            hub.metrics.connections_refused.fetch_add(1, Relaxed);
            return refuse(tcp, &Refused::from(reject).encode_http11()).await;
        }
    };
    let (slot, open) = WebSocketSlot::take(&hub);
    let choice = if open >= hub.config.max_connections {
        Err(over_limit(&hub))
    } else {
        Ok(Accept::default())
    };
    let handshake = ServerHandshake::shared(&hub.ws_config).deflate(hub.deflate.as_ref());
    let upgrade = match handshake.decide(&offer, choice) {
        Ok(upgrade) => upgrade,
        Err(refused) => return refuse(tcp, &refused.encode_http11()).await,
    };
    if timeout(IDLE_TIMEOUT, tcp.write_all(&upgrade.encode_http11()))
        .await
        .map_or(true, |r| r.is_err())
    {
        return;
    }
    let Upgrade { connection, .. } = upgrade;
    let shared_deflate = connection.deflate().is_some_and(|n| {
        n.accepts_prepared(
            Role::Server,
            duplex_proto::extensions::deflate::MAX_WINDOW_BITS,
        )
    });
    tracing::debug!(%peer, user = grants.user, shared_deflate, "websocket accepted");
    crate::ws_loop::run_plain(
        tcp,
        connection,
        leftover,
        &hub,
        loops,
        grants,
        Transport::H1,
        (slot, done),
    );
}

/// `/sse`: the stream (`sse.rs` decides and writes it) on this connection, or its refusal.
/// The connection is the response: its body ends when the stream does.
async fn sse(tcp: TcpStream, request: Request<()>, peer: SocketAddr, hub: Arc<HubState>) {
    if let Some(response) = check_sse_connection_rate(&hub, peer.ip()) {
        return refuse(tcp, &response.encode(false, false)).await;
    }
    let stream = match crate::sse::open(&hub, &request).await {
        Ok(stream) => stream,
        Err(refused) => {
            let mut response = Response::error(refused.status, &refused.message);
            response.headers = refused.headers;
            return refuse(tcp, &response.encode(false, false)).await;
        }
    };
    let mut head = b"HTTP/1.1 200 OK\r\nConnection: close\r\n".to_vec();
    let allow_origin = stream
        .allow_origin()
        .map(|o| ("access-control-allow-origin", o.as_bytes()));
    for (name, value) in crate::sse::HEADERS
        .iter()
        .map(|(n, v)| (*n, v.as_bytes()))
        .chain(allow_origin)
    {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let (mut read, mut write) = tcp.into_split();
    // A failure here shows again in the stream's first write, which ends it.
    let _ = write.write_all(&head).await;
    // The client sends nothing more; EOF (or an error) means it left.
    let gone = async move {
        let mut sink = [0u8; 256];
        while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    stream.run(write, gone).await;
}

/// Origin and token checks: the grants, or the refusal (401 with `WWW-Authenticate: Bearer`).
pub(crate) fn admit(
    hub: &HubState,
    request: &Request<()>,
    offer: &ClientOffer,
) -> Result<Grants, Reject> {
    let config = &hub.config;
    if !config.allowed_origins.is_empty() {
        let allowed = offer
            .origin
            .as_deref()
            .is_some_and(|o| config.allowed_origins.iter().any(|a| a == o));
        if !allowed {
            return Err(Reject::new(
                StatusCode::FORBIDDEN,
                format!(
                    "origin {} is not allowed",
                    offer.origin.as_deref().unwrap_or("(none)")
                ),
            ));
        }
    }
    let Some(secret) = &config.token_secret else {
        let user = query_param(request, "user")
            .filter(|u| !u.is_empty() && u.len() <= 64 && !u.chars().any(char::is_control))
            .unwrap_or_else(|| "anonymous".to_owned());
        return Ok(Grants::anonymous(user));
    };
    let unauthorized = |reason: String| {
        Reject::new(StatusCode::UNAUTHORIZED, reason).header(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        )
    };
    let token = query_param(request, "token")
        .or_else(|| bearer(request.headers()).map(str::to_owned))
        .ok_or_else(|| {
            unauthorized("a token is required: connect to /ws?token=<JWT>".to_owned())
        })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    verify_hs256(&token, secret.as_bytes(), now).map_err(|e| unauthorized(e.to_string()))
}

/// Writes a refusal, shuts the write side, and drains what the client still sends within the
/// handshake's bounds ([`REFUSAL_LINGER`], [`REFUSAL_DRAIN_LIMIT`]), so the close does not
/// reset the connection before the client read the answer.
async fn refuse(mut tcp: TcpStream, response: &[u8]) {
    let answer = async {
        tcp.write_all(response).await?;
        tcp.shutdown().await
    };
    // Bounded too: a client that does not read must not hold the task.
    if !matches!(timeout(REFUSAL_LINGER, answer).await, Ok(Ok(()))) {
        return;
    }
    let linger = async {
        // On the heap: an array here would sit in every connection's future for its life.
        let mut sink = vec![0u8; 4096];
        let mut drained = 0;
        while drained < REFUSAL_DRAIN_LIMIT {
            match tcp.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = timeout(REFUSAL_LINGER, linger).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_include_the_demo_page_and_client() {
        assert!(asset("index.html").is_some());
        assert!(asset("duplex.js").is_some());
        assert!(asset("../Cargo.toml").is_none());
    }
}
