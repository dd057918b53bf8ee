//! A small HTTP/1.1 server on the raw `TcpStream`: request heads parsed by
//! [`duplex_proto::handshake::parse_request`], `Content-Length` bodies, keep-alive, the JSON API,
//! the embedded web assets, and the upgrade to WebSocket on `/ws`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use duplex::WebSocket;
use duplex_proto::Role;
use duplex_proto::handshake::{
    Accept, ClientOffer, HandshakeError, REFUSAL_DRAIN_LIMIT, REFUSAL_LINGER, Refused, Reject,
    ServerHandshake, Upgrade, parse_request, validate_request,
};
use http::header::{AUTHORIZATION, CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::auth::{Grants, constant_time_eq, verify_hs256};
use crate::broker::HistoryQuery;
use crate::json;
use crate::outbox::OutboxStream;
use crate::server::Shared;

/// Largest request head.
const MAX_HEAD: usize = 16 * 1024;
/// How long a connection may sit between requests, or take to send a head or a body.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

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
struct Response {
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
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

    fn error(status: StatusCode, message: &str) -> Response {
        Response::new(status, "application/json", json::error_body(message))
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

/// Serves one TCP connection: HTTP requests until it closes, or one WebSocket.
pub(crate) async fn serve(mut tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let head = tokio::select! {
            head = timeout(IDLE_TIMEOUT, read_head(&mut tcp, &mut buf)) => head,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (request, consumed) = match head {
            Ok(Ok(Some(parsed))) => parsed,
            // EOF or idle between requests, or a read error: nothing to answer.
            Ok(Ok(None)) | Ok(Err(HeadError::Io)) | Err(_) => return,
            Ok(Err(HeadError::Invalid(e))) => return refuse(tcp, &e.response()).await,
        };
        buf.advance(consumed);
        if request.uri().path() == "/ws" {
            upgrade(tcp, request, buf, peer, shared).await;
            return;
        }
        shared.metrics.http_requests.fetch_add(1, Relaxed);
        let head_only = request.method() == Method::HEAD;
        let mut keep_alive = wants_keep_alive(&request);

        let body = match read_body(&mut tcp, &mut buf, &request, &shared).await {
            Ok(body) => body,
            Err(BodyError::Io) => return,
            // The rest of the request cannot be framed: answer, then close gracefully.
            Err(BodyError::Reply(response)) => {
                return refuse(tcp, &response.encode(false, head_only)).await;
            }
        };
        let response = route(&shared, &request, body).await;
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

enum HeadError {
    Io,
    Invalid(HandshakeError),
}

/// Reads until a complete request head is in `buf`. `Ok(None)`: the connection closed.
async fn read_head(
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<Option<(Request<()>, usize)>, HeadError> {
    loop {
        if !buf.is_empty() {
            if let Some(parsed) = parse_request(buf, MAX_HEAD).map_err(HeadError::Invalid)? {
                return Ok(Some(parsed));
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

fn wants_keep_alive(request: &Request<()>) -> bool {
    let connection = request
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .fold((false, false), |(close, keep), token| {
            (
                close || token.eq_ignore_ascii_case("close"),
                keep || token.eq_ignore_ascii_case("keep-alive"),
            )
        });
    match request.version() {
        Version::HTTP_10 => connection.1 && !connection.0,
        _ => !connection.0,
    }
}

enum BodyError {
    Io,
    Reply(Response),
}

async fn read_body(
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
    request: &Request<()>,
    shared: &Shared,
) -> Result<Bytes, BodyError> {
    let headers = request.headers();
    let reply = |status, message: &str| Err(BodyError::Reply(Response::error(status, message)));
    if headers.contains_key(TRANSFER_ENCODING) {
        return reply(
            StatusCode::LENGTH_REQUIRED,
            "chunked bodies are not supported: send Content-Length",
        );
    }
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    let length = match (lengths.next(), lengths.next()) {
        (None, _) if request.method() == Method::POST => {
            return reply(StatusCode::LENGTH_REQUIRED, "POST needs a Content-Length");
        }
        (None, _) => 0,
        (Some(value), None) => match value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            Some(n) => n,
            None => return reply(StatusCode::BAD_REQUEST, "invalid Content-Length"),
        },
        (Some(_), Some(_)) => {
            return reply(StatusCode::BAD_REQUEST, "more than one Content-Length");
        }
    };
    let max = shared.config.max_message_size;
    if length > max as u64 {
        return reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body of {length} bytes is over the limit of {max} bytes"),
        );
    }
    let length = length as usize;
    let expects_continue = headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue && buf.len() < length {
        tcp.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| BodyError::Io)?;
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
        Ok(Ok(())) => Ok(buf.split_to(length).freeze()),
        _ => Err(BodyError::Io),
    }
}

/// The value of query parameter `name`, percent-decoded (`+` is a space).
pub(crate) fn query_param(request: &Request<()>, name: &str) -> Option<String> {
    let query = request.uri().query()?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key)? == name).then(|| percent_decode(value))?
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A channel name the hub accepts: 1 to 255 bytes, no control characters.
pub(crate) fn check_channel(channel: &str) -> Result<(), &'static str> {
    if channel.is_empty() {
        return Err("channel must not be empty");
    }
    if channel.len() > 255 {
        return Err("channel must be at most 255 bytes");
    }
    if channel.chars().any(char::is_control) {
        return Err("channel must not contain control characters");
    }
    Ok(())
}

async fn route(shared: &Shared, request: &Request<()>, body: Bytes) -> Response {
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
        if let Some(refusal) = check_api_key(shared, request) {
            return refusal;
        }
        return match api {
            "publish" => api_publish(shared, body).await,
            "history" => api_history(shared, request).await,
            "presence" => api_presence(shared, request).await,
            _ => api_channels(shared),
        };
    }
    let response = match path {
        "/healthz" => Response::new(StatusCode::OK, "text/plain; charset=utf-8", "ok"),
        "/metrics" => Response::new(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(),
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

fn check_api_key(shared: &Shared, request: &Request<()>) -> Option<Response> {
    let key = shared.config.api_key.as_ref()?;
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

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn api_publish(shared: &Shared, body: Bytes) -> Response {
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return Response::error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
    };
    let (channel, data) = match publish_fields(&value, &body) {
        Ok(fields) => fields,
        Err(message) => return Response::error(StatusCode::BAD_REQUEST, &message),
    };
    match shared.broker.publish(channel, data).await {
        Ok(position) => {
            shared.metrics.publishes.fetch_add(1, Relaxed);
            let mut out = Vec::with_capacity(64);
            out.extend_from_slice(br#"{"offset":"#);
            json::number(&mut out, position.offset);
            out.extend_from_slice(br#","epoch":"#);
            json::string(&mut out, &position.epoch);
            out.push(b'}');
            Response::json(out)
        }
        Err(e) => Response::error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// The `channel` and `data` of a publish body: `value` is `body` parsed.
pub(crate) fn publish_fields<'a>(
    value: &'a Value,
    body: &[u8],
) -> Result<(&'a str, Bytes), String> {
    let Value::Object(object) = value else {
        return Err("expected a JSON object with \"channel\" and \"data\"".into());
    };
    let channel = channel_field(object)?;
    Ok((channel, raw_data(body)?))
}

/// The `data` member of a publish exactly as the publisher wrote it: parsing it into a value
/// and writing it back would reorder keys and round numbers (big integers, `1e2`, `101.50`),
/// and subscribers must get what was published.
pub(crate) fn raw_data(body: &[u8]) -> Result<Bytes, String> {
    #[derive(serde::Deserialize)]
    struct Publish<'a> {
        #[serde(borrow)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    let publish: Publish<'_> =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let data = publish.data.ok_or_else(|| "missing \"data\"".to_owned())?;
    Ok(Bytes::copy_from_slice(data.get().as_bytes()))
}

/// The `channel` field, checked.
pub(crate) fn channel_field(object: &serde_json::Map<String, Value>) -> Result<&str, String> {
    match object.get("channel") {
        Some(Value::String(channel)) => {
            check_channel(channel).map_err(str::to_owned)?;
            Ok(channel)
        }
        Some(_) => Err("\"channel\" must be a string".into()),
        None => Err("missing \"channel\"".into()),
    }
}

fn channel_param(request: &Request<()>) -> Result<String, Response> {
    let channel = query_param(request, "channel").ok_or_else(|| {
        Response::error(
            StatusCode::BAD_REQUEST,
            "missing query parameter \"channel\"",
        )
    })?;
    check_channel(&channel).map_err(|m| Response::error(StatusCode::BAD_REQUEST, m))?;
    Ok(channel)
}

fn number_param<T: std::str::FromStr>(
    request: &Request<()>,
    name: &str,
) -> Result<Option<T>, Response> {
    match query_param(request, name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            Response::error(
                StatusCode::BAD_REQUEST,
                &format!("query parameter \"{name}\" must be a non-negative integer"),
            )
        }),
    }
}

async fn api_history(shared: &Shared, request: &Request<()>) -> Response {
    let params = channel_param(request).and_then(|channel| {
        let since = number_param::<u64>(request, "since")?;
        let limit = number_param::<usize>(request, "limit")?;
        Ok((channel, since, limit))
    });
    let (channel, since, limit) = match params {
        Ok(p) => p,
        Err(response) => return response,
    };
    let query = HistoryQuery {
        since,
        limit: limit.unwrap_or(usize::MAX),
    };
    match shared.broker.history(&channel, query).await {
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
        Err(e) => Response::error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn api_presence(shared: &Shared, request: &Request<()>) -> Response {
    let channel = match channel_param(request) {
        Ok(c) => c,
        Err(response) => return response,
    };
    match shared.broker.presence(&channel).await {
        Ok(clients) => {
            let mut out = Vec::with_capacity(64);
            out.extend_from_slice(br#"{"clients":"#);
            json::clients(&mut out, &clients);
            out.push(b'}');
            Response::json(out)
        }
        Err(e) => Response::error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

fn api_channels(shared: &Shared) -> Response {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(br#"{"channels":["#);
    for (i, (channel, subscribers)) in shared.fanout.channel_counts().iter().enumerate() {
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

/// Keeps the open-WebSocket count while a connection lives.
struct WebSocketSlot<'a>(&'a Shared);

impl Drop for WebSocketSlot<'_> {
    fn drop(&mut self) {
        self.0.websockets.fetch_sub(1, Relaxed);
    }
}

/// `/ws`: validates the upgrade, checks origin, token and the connection limit (the hub's
/// decisions), lets duplex-proto's handshake decide the rest (permessage-deflate, the
/// answer), answers 101 and runs the session.
async fn upgrade(
    mut tcp: TcpStream,
    request: Request<()>,
    leftover: BytesMut,
    peer: SocketAddr,
    shared: Arc<Shared>,
) {
    let offer = match validate_request(&request) {
        Ok(offer) => offer,
        Err(e) => return refuse(tcp, &e.response()).await,
    };
    let grants = match admit(&shared, &request, &offer) {
        Ok(grants) => grants,
        Err(reject) => {
            tracing::debug!(%peer, status = %reject.status, reason = reject.reason, "websocket refused");
            shared.metrics.connections_refused.fetch_add(1, Relaxed);
            return refuse(tcp, &Refused::from(reject).encode_http11()).await;
        }
    };
    let open = shared.websockets.fetch_add(1, Relaxed);
    let _slot = WebSocketSlot(&shared);
    let choice = if open >= shared.config.max_connections {
        shared.metrics.connections_refused.fetch_add(1, Relaxed);
        let reason = format!(
            "too many connections (limit {}); try again later",
            shared.config.max_connections
        );
        Err(Reject::new(StatusCode::SERVICE_UNAVAILABLE, reason)
            .header(http::header::RETRY_AFTER, HeaderValue::from_static("5")))
    } else {
        Ok(Accept::default())
    };
    let handshake = ServerHandshake::new(&shared.ws_config).deflate(shared.deflate.as_ref());
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
    let negotiated = connection.deflate().copied();
    let (stream, outbox) = OutboxStream::new(tcp, shared.config.queue_bytes, negotiated);
    let ws = WebSocket::from_connection(
        stream,
        connection,
        shared.ws_options.clone(),
        leftover,
        None,
    );
    let shared_deflate = negotiated.is_some_and(|n| {
        n.accepts_prepared(
            Role::Server,
            duplex_proto::extensions::deflate::MAX_WINDOW_BITS,
        )
    });
    tracing::debug!(%peer, user = grants.user, shared_deflate, "websocket accepted");
    crate::session::run(ws, outbox, shared.clone(), grants, shared_deflate).await;
}

/// Origin and token checks: the grants, or the refusal (401 with `WWW-Authenticate: Bearer`).
fn admit(shared: &Shared, request: &Request<()>, offer: &ClientOffer) -> Result<Grants, Reject> {
    let config = &shared.config;
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

    fn request(target: &str) -> Request<()> {
        Request::get(target).body(()).unwrap()
    }

    #[test]
    fn query_parameters_are_decoded() {
        let r = request("/api/history?channel=chat%3Aroom+1&since=5&flag");
        assert_eq!(query_param(&r, "channel").as_deref(), Some("chat:room 1"));
        assert_eq!(query_param(&r, "since").as_deref(), Some("5"));
        assert_eq!(query_param(&r, "flag").as_deref(), Some(""));
        assert_eq!(query_param(&r, "limit"), None);
        assert_eq!(query_param(&request("/x?a=%zz"), "a"), None);
    }

    #[test]
    fn channel_names() {
        assert!(check_channel("chat:lobby").is_ok());
        assert!(check_channel("").is_err());
        assert!(check_channel("a\nb").is_err());
        assert!(check_channel(&"x".repeat(256)).is_err());
    }

    #[test]
    fn keep_alive_rules() {
        let mut r = request("/");
        assert!(wants_keep_alive(&r));
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        assert!(!wants_keep_alive(&r));
        let mut r = request("/");
        *r.version_mut() = Version::HTTP_10;
        assert!(!wants_keep_alive(&r));
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("Keep-Alive"));
        assert!(wants_keep_alive(&r));
    }

    #[test]
    fn assets_include_the_demo_page_and_client() {
        assert!(asset("index.html").is_some());
        assert!(asset("duplex.js").is_some());
        assert!(asset("../Cargo.toml").is_none());
    }
}
