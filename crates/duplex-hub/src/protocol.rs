//! The hub's protocol, typed: what a client may ask (a WebSocket [`Command`], the HTTP API's
//! publish body and query parameters), parsed in this one module, and how a refusal is
//! written ([`ErrorCode`], [`Refusal`], [`Id`]). `docs/hub.md` is the specification; the
//! wire format is pinned by `tests/protocol.rs`.
//!
//! Parsing checks the form of a request only (JSON, fields, channel names). What depends on
//! the connection (grants, subscriptions, rate limits) or the broker is decided by the
//! session or the HTTP API, which answer with the same [`Refusal`]s.

use bytes::Bytes;
use http::{Request, StatusCode};
use serde_json::{Map, Value};

use crate::broker::BrokerError;
use crate::json;

/// The `code` of an error reply (`{"ok":false,"error":{"code":CODE,...}}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ErrorCode {
    /// Not JSON, not an object, a missing or ill-typed field, a bad channel name, a binary
    /// message.
    BadRequest,
    /// `op` names no command.
    UnknownOp,
    /// The connection's grants do not cover the channel.
    Forbidden,
    /// A second subscribe to the same channel.
    AlreadySubscribed,
    /// An unsubscribe from a channel not subscribed.
    NotSubscribed,
    /// More than `max_subscriptions` on one connection.
    LimitExceeded,
    /// More publishes than `publish_rate`/`publish_burst` allow.
    RateLimited,
    /// The broker failed ([`BrokerError::Failed`]).
    Internal,
    /// The broker's backend cannot be reached ([`BrokerError::Unavailable`]): retry later.
    BrokerUnavailable,
    /// A new channel over the hub's channel cap ([`BrokerError::Full`]): retry later.
    ChannelLimit,
    /// A publish while the fan-out queues hold `fanout_queue_bytes` (the hub's subscribers
    /// are being written more slowly than publications arrive): retry in a moment. The
    /// publication was not stored.
    Overloaded,
}

impl ErrorCode {
    /// Every code, for tests and documentation.
    #[cfg(test)]
    pub(crate) const ALL: [ErrorCode; 11] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownOp,
        ErrorCode::Forbidden,
        ErrorCode::AlreadySubscribed,
        ErrorCode::NotSubscribed,
        ErrorCode::LimitExceeded,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::BrokerUnavailable,
        ErrorCode::ChannelLimit,
        ErrorCode::Overloaded,
    ];

    /// The code as written on the wire.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::BrokerUnavailable => "broker_unavailable",
            ErrorCode::ChannelLimit => "channel_limit",
            ErrorCode::Overloaded => "overloaded",
        }
    }

    /// The HTTP status of the same refusal in the HTTP API (RFC 9110 section 15). The API
    /// refuses with `BadRequest` (400), `Internal` (500: the broker failed) and
    /// `BrokerUnavailable` (503: the broker, a service behind the hub, cannot be reached now),
    /// `ChannelLimit` and `Overloaded` (503: the hub's capacity); the others would mean the
    /// same there.
    pub(crate) fn http_status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest | ErrorCode::UnknownOp => StatusCode::BAD_REQUEST,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::AlreadySubscribed | ErrorCode::NotSubscribed => StatusCode::CONFLICT,
            ErrorCode::LimitExceeded | ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            // The hub's capacity, not the client's rate: 503, as a full connection table.
            ErrorCode::BrokerUnavailable | ErrorCode::ChannelLimit | ErrorCode::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

/// A request the hub refuses: its code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl Refusal {
    /// A refusal with `code`.
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// A malformed request.
    pub(crate) fn bad_request(message: impl Into<String>) -> Refusal {
        Refusal::new(ErrorCode::BadRequest, message)
    }

    /// A broker call failed: `broker_unavailable` when its backend cannot be reached,
    /// `internal` otherwise.
    pub(crate) fn broker(error: &BrokerError) -> Refusal {
        let code = match error {
            BrokerError::Unavailable(_) => ErrorCode::BrokerUnavailable,
            BrokerError::Failed(_) => ErrorCode::Internal,
            BrokerError::Full(_) => ErrorCode::ChannelLimit,
        };
        Refusal::new(code, error.to_string())
    }

    /// A publish refused by the fan-out queue bound (`fanout_queue_bytes`), before it was
    /// stored.
    pub(crate) fn overloaded(limit: usize) -> Refusal {
        Refusal::new(
            ErrorCode::Overloaded,
            format!(
                "the hub is overloaded: its fan-out queues are full ({limit} bytes, \
                 fanout_queue_bytes); not published, retry in a moment"
            ),
        )
    }

    /// A binary WebSocket message: commands are JSON text.
    pub(crate) fn binary_message() -> Refusal {
        Refusal::bad_request("binary messages are not supported: send JSON text")
    }
}

/// A command's `id`, any JSON value, repeated in its reply (`null` when the command had none
/// or could not be parsed far enough to find it).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Id(Option<Value>);

impl Id {
    /// `{"id":ID,"ok":true` (the caller adds fields and the closing brace).
    pub(crate) fn ok(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(br#"{"id":"#);
        self.write(&mut out);
        out.extend_from_slice(br#","ok":true"#);
        out
    }

    /// `{"id":ID,"ok":false,"error":{"code":CODE,"message":MESSAGE}}`
    pub(crate) fn refuse(&self, refusal: &Refusal) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + refusal.message.len());
        out.extend_from_slice(br#"{"id":"#);
        self.write(&mut out);
        out.extend_from_slice(br#","ok":false,"error":{"code":"#);
        json::string(&mut out, refusal.code.as_str());
        out.extend_from_slice(br#","message":"#);
        json::string(&mut out, &refusal.message);
        out.extend_from_slice(b"}}");
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        match &self.0 {
            Some(id) => {
                // Writing to a Vec cannot fail, and a parsed Value always serializes.
                let _ = serde_json::to_writer(&mut *out, id);
            }
            None => out.extend_from_slice(b"null"),
        }
    }
}

/// Where a resubscribing client left off: `{"epoch":E,"offset":N}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Since {
    pub(crate) epoch: String,
    pub(crate) offset: u64,
}

/// A publication to make: from `{"op":"publish",...}` or the body of `POST /api/publish`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Publish {
    pub(crate) channel: String,
    /// The `data` member exactly as the publisher wrote it.
    pub(crate) data: Bytes,
}

/// A WebSocket command (`{"id":ID,"op":OP,...}`, see docs/hub.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// `subscribe`: live publications of `channel`, after those since `since` if given.
    Subscribe {
        channel: String,
        since: Option<Since>,
    },
    /// `unsubscribe`: no more pushes of `channel`.
    Unsubscribe { channel: String },
    /// `publish`: `data` to `channel`.
    Publish(Publish),
    /// `presence`: who is subscribed to `channel`.
    Presence { channel: String },
    /// `ping`: an empty reply.
    Ping,
}

impl Command {
    /// Parses one command from a text message. The refusal carries the `id` as far as it
    /// was found, so that the client can match it.
    pub(crate) fn parse(bytes: &[u8]) -> Result<(Id, Command), (Id, Refusal)> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| (Id(None), Refusal::bad_request(format!("not JSON: {e}"))))?;
        let Value::Object(mut object) = value else {
            return Err((Id(None), Refusal::bad_request("a command is a JSON object")));
        };
        let id = Id(object.remove("id"));
        match Command::from_object(object, bytes) {
            Ok(command) => Ok((id, command)),
            Err(refusal) => Err((id, refusal)),
        }
    }

    fn from_object(mut object: Map<String, Value>, bytes: &[u8]) -> Result<Command, Refusal> {
        let op = match object.get("op") {
            Some(Value::String(op)) => op.as_str(),
            Some(_) => return Err(Refusal::bad_request("\"op\" must be a string")),
            None => return Err(Refusal::bad_request("missing \"op\"")),
        };
        match op {
            "subscribe" => {
                let channel = take_channel(&mut object)?;
                let since = match object.get("since") {
                    None | Some(Value::Null) => None,
                    Some(since) => Some(parse_since(since).ok_or_else(|| {
                        Refusal::bad_request(
                            "\"since\" must be {\"epoch\": string, \"offset\": non-negative integer}",
                        )
                    })?),
                };
                Ok(Command::Subscribe { channel, since })
            }
            "unsubscribe" => Ok(Command::Unsubscribe {
                channel: take_channel(&mut object)?,
            }),
            "publish" => {
                let channel = take_channel(&mut object)?;
                if !object.contains_key("data") {
                    return Err(Refusal::bad_request("missing \"data\""));
                }
                let data = raw_data(bytes)?;
                Ok(Command::Publish(Publish { channel, data }))
            }
            "presence" => Ok(Command::Presence {
                channel: take_channel(&mut object)?,
            }),
            "ping" => Ok(Command::Ping),
            other => Err(Refusal::new(
                ErrorCode::UnknownOp,
                format!(
                    "unknown op {other:?}: expected subscribe, unsubscribe, publish, presence or ping"
                ),
            )),
        }
    }
}

impl Publish {
    /// The body of `POST /api/publish`: `{"channel":C,"data":D}`; the data is a copy of its
    /// bytes in `body`, in an allocation of its own. Not a slice of `body`: the memory broker
    /// keeps a publication in history, and a slice would keep the whole request body alive
    /// with it, or, with hyper, the connection's read buffer it was split from (about 7 KiB
    /// per publication in the soak, where the history budget charges its data plus 128
    /// bytes: 82 MiB held for 2 MiB charged, issue 12).
    ///
    /// One pass that borrows from the body ([`PublishBody`]) answers every ordinary
    /// publication; anything it does not take (escapes in a key or in the channel name, a
    /// refusal of any kind) goes through [`Publish::from_http_body_slow`], which decides and
    /// words every refusal. Both accept the same bodies, with one exception: the one pass
    /// checks `data` and unknown members for JSON syntax only, so a number out of `f64`'s range
    /// or a lone surrogate escape inside them is embedded as published (RFC 8259 allows
    /// both) where the slow path would refuse it.
    pub(crate) fn from_http_body(body: &[u8]) -> Result<Publish, Refusal> {
        if let Ok(PublishBody {
            channel: Some(channel),
            data: Some(data),
        }) = serde_json::from_slice::<PublishBody<'_>>(body)
        {
            // A plain string (no escapes) that is a valid channel name; else the slow path.
            if let Ok(channel) = serde_json::from_str::<&str>(channel.get()) {
                if check_channel(channel).is_ok() {
                    return Ok(Publish {
                        channel: channel.to_owned(),
                        data: Bytes::copy_from_slice(data.get().as_bytes()),
                    });
                }
            }
        }
        Publish::from_http_body_slow(body)
    }

    /// The body parsed into a `Value` first: the reference for [`Publish::from_http_body`],
    /// and where its refusals are worded.
    fn from_http_body_slow(body: &[u8]) -> Result<Publish, Refusal> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| Refusal::bad_request(format!("invalid JSON: {e}")))?;
        let Value::Object(mut object) = value else {
            return Err(Refusal::bad_request(
                "expected a JSON object with \"channel\" and \"data\"",
            ));
        };
        let channel = take_channel(&mut object)?;
        Ok(Publish {
            channel,
            data: raw_data(body)?,
        })
    }
}

/// What one pass over a publish body borrows: the raw value of the last `channel` member (a
/// `Value` map keeps the last too) and of the only `data` member. Fails (and the caller takes
/// the slow path) on anything else: not an object, a key with escapes, a second `data`.
struct PublishBody<'a> {
    channel: Option<&'a serde_json::value::RawValue>,
    data: Option<&'a serde_json::value::RawValue>,
}

impl<'de> serde::Deserialize<'de> for PublishBody<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PublishBodyVisitor)
    }
}

struct PublishBodyVisitor;

impl<'de> serde::de::Visitor<'de> for PublishBodyVisitor {
    type Value = PublishBody<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut body = PublishBody {
            channel: None,
            data: None,
        };
        // `&str` keys borrow from the body: a key with escapes fails here (slow path).
        while let Some(key) = map.next_key::<&'de str>()? {
            match key {
                "channel" => body.channel = Some(map.next_value()?),
                "data" if body.data.is_some() => {
                    return Err(serde::de::Error::duplicate_field("data"));
                }
                "data" => body.data = Some(map.next_value()?),
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(body)
    }
}

/// The query of `GET /api/history`: `channel`, and optionally `since` and `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HistoryParams {
    pub(crate) channel: String,
    pub(crate) since: Option<u64>,
    pub(crate) limit: Option<usize>,
}

impl HistoryParams {
    /// From the request's query parameters.
    pub(crate) fn from_request(request: &Request<()>) -> Result<HistoryParams, Refusal> {
        Ok(HistoryParams {
            channel: channel_param(request)?,
            since: number_param(request, "since")?,
            limit: number_param(request, "limit")?,
        })
    }
}

/// The `channel` query parameter, checked (`GET /api/presence`, `GET /api/history`).
pub(crate) fn channel_param(request: &Request<()>) -> Result<String, Refusal> {
    let channel = query_param(request, "channel")
        .ok_or_else(|| Refusal::bad_request("missing query parameter \"channel\""))?;
    check_channel(&channel).map_err(Refusal::bad_request)?;
    Ok(channel)
}

fn number_param<T: std::str::FromStr>(
    request: &Request<()>,
    name: &str,
) -> Result<Option<T>, Refusal> {
    match query_param(request, name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            Refusal::bad_request(format!(
                "query parameter \"{name}\" must be a non-negative integer"
            ))
        }),
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

/// Every value of query parameter `name`, in order, percent-decoded (`/sse?channel=a&channel=b`).
/// A value that does not decode to UTF-8 is `None`.
pub(crate) fn query_params(request: &Request<()>, name: &str) -> Vec<Option<String>> {
    let Some(query) = request.uri().query() else {
        return Vec::new();
    };
    query
        .split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key)? == name).then(|| percent_decode(value))
        })
        .collect()
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

/// The `channel` member, checked, moved out of `object`.
fn take_channel(object: &mut Map<String, Value>) -> Result<String, Refusal> {
    match object.remove("channel") {
        Some(Value::String(channel)) => {
            check_channel(&channel).map_err(Refusal::bad_request)?;
            Ok(channel)
        }
        Some(_) => Err(Refusal::bad_request("\"channel\" must be a string")),
        None => Err(Refusal::bad_request("missing \"channel\"")),
    }
}

fn parse_since(value: &Value) -> Option<Since> {
    let object = value.as_object()?;
    let epoch = object.get("epoch")?.as_str()?.to_owned();
    let offset = object.get("offset")?.as_u64()?;
    Some(Since { epoch, offset })
}

/// The `data` member of a publish exactly as the publisher wrote it: parsing it into a value
/// and writing it back would reorder keys and round numbers (big integers, `1e2`, `101.50`),
/// and subscribers must get what was published.
fn raw_data(body: &[u8]) -> Result<Bytes, Refusal> {
    #[derive(serde::Deserialize)]
    struct Publish<'a> {
        #[serde(borrow)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    let publish: Publish<'_> = serde_json::from_slice(body)
        .map_err(|e| Refusal::bad_request(format!("invalid JSON: {e}")))?;
    let data = publish
        .data
        .ok_or_else(|| Refusal::bad_request("missing \"data\""))?;
    // Copied, not a slice of `body`: a publication is kept in history, and a slice would keep
    // the whole request (or a read buffer shared with it) alive past what the history byte
    // budget charges for it.
    Ok(Bytes::copy_from_slice(data.get().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles only while it names every variant: a new code must be added to the table.
    fn position(code: ErrorCode) -> usize {
        match code {
            ErrorCode::BadRequest => 0,
            ErrorCode::UnknownOp => 1,
            ErrorCode::Forbidden => 2,
            ErrorCode::AlreadySubscribed => 3,
            ErrorCode::NotSubscribed => 4,
            ErrorCode::LimitExceeded => 5,
            ErrorCode::RateLimited => 6,
            ErrorCode::Internal => 7,
            ErrorCode::BrokerUnavailable => 8,
            ErrorCode::ChannelLimit => 9,
            ErrorCode::Overloaded => 10,
        }
    }

    #[test]
    fn every_error_code_has_its_documented_wire_string_once() {
        let table = [
            (ErrorCode::BadRequest, "bad_request", 400),
            (ErrorCode::UnknownOp, "unknown_op", 400),
            (ErrorCode::Forbidden, "forbidden", 403),
            (ErrorCode::AlreadySubscribed, "already_subscribed", 409),
            (ErrorCode::NotSubscribed, "not_subscribed", 409),
            (ErrorCode::LimitExceeded, "limit_exceeded", 429),
            (ErrorCode::RateLimited, "rate_limited", 429),
            (ErrorCode::Internal, "internal", 500),
            (ErrorCode::BrokerUnavailable, "broker_unavailable", 503),
            (ErrorCode::ChannelLimit, "channel_limit", 503),
            (ErrorCode::Overloaded, "overloaded", 503),
        ];
        assert_eq!(table.len(), ErrorCode::ALL.len());
        for (i, (code, wire, status)) in table.into_iter().enumerate() {
            assert_eq!(ErrorCode::ALL[i], code);
            assert_eq!(position(code), i);
            assert_eq!(code.as_str(), wire);
            assert_eq!(code.http_status().as_u16(), status, "{wire}");
        }
        let mut strings: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        strings.sort_unstable();
        strings.dedup();
        assert_eq!(
            strings.len(),
            ErrorCode::ALL.len(),
            "two codes share a string"
        );
        // docs/hub.md lists every code.
        let docs = include_str!("../../../docs/hub.md");
        for code in ErrorCode::ALL {
            assert!(docs.contains(&format!("`{}`", code.as_str())), "{code:?}");
        }
    }

    fn parse(text: &str) -> Result<(Id, Command), (Id, Refusal)> {
        Command::parse(text.as_bytes())
    }

    fn refusal(text: &str) -> (Option<Value>, ErrorCode, String) {
        match parse(text) {
            Ok(parsed) => panic!("{text} parsed: {parsed:?}"),
            Err((id, refusal)) => (id.0, refusal.code, refusal.message),
        }
    }

    #[test]
    fn commands_parse_into_typed_values() {
        let (id, command) = parse(r#"{"id":1,"op":"subscribe","channel":"chat"}"#).unwrap();
        assert_eq!(id, Id(Some(Value::from(1))));
        assert_eq!(
            command,
            Command::Subscribe {
                channel: "chat".into(),
                since: None
            }
        );
        let (_, command) =
            parse(r#"{"op":"subscribe","channel":"c","since":{"epoch":"e1","offset":12}}"#)
                .unwrap();
        assert_eq!(
            command,
            Command::Subscribe {
                channel: "c".into(),
                since: Some(Since {
                    epoch: "e1".into(),
                    offset: 12
                })
            }
        );
        let (id, command) =
            parse(r#"{"op":"subscribe","channel":"c","since":null,"id":"x"}"#).unwrap();
        assert_eq!(id, Id(Some(Value::from("x"))));
        assert!(matches!(command, Command::Subscribe { since: None, .. }));
        let (_, command) = parse(r#"{"op":"unsubscribe","channel":"c"}"#).unwrap();
        assert_eq!(
            command,
            Command::Unsubscribe {
                channel: "c".into()
            }
        );
        let (_, command) = parse(r#"{"op":"presence","channel":"c"}"#).unwrap();
        assert_eq!(
            command,
            Command::Presence {
                channel: "c".into()
            }
        );
        let (id, command) = parse(r#"{"op":"ping"}"#).unwrap();
        assert_eq!((id, command), (Id(None), Command::Ping));
    }

    #[test]
    fn published_data_is_kept_as_written() {
        let (_, command) =
            parse(r#"{"op":"publish","channel":"c","data":{"b":1e2, "a":101.50}}"#).unwrap();
        assert_eq!(
            command,
            Command::Publish(Publish {
                channel: "c".into(),
                data: Bytes::from_static(br#"{"b":1e2, "a":101.50}"#),
            })
        );
        let publish = Publish::from_http_body(&Bytes::from_static(
            br#"{"data":123456789012345678901234567890,"channel":"n"}"#,
        ))
        .unwrap();
        assert_eq!(publish.channel, "n");
        assert_eq!(&publish.data[..], b"123456789012345678901234567890");
    }

    #[test]
    fn malformed_commands_are_refused_with_their_code_and_id() {
        let bad = ErrorCode::BadRequest;
        let cases: [(&str, Option<Value>, ErrorCode, &str); 12] = [
            (
                "nope",
                None,
                bad,
                "not JSON: expected ident at line 1 column 2",
            ),
            ("[1,2]", None, bad, "a command is a JSON object"),
            (r#"{"id":2}"#, Some(2.into()), bad, "missing \"op\""),
            (
                r#"{"id":3,"op":7}"#,
                Some(3.into()),
                bad,
                "\"op\" must be a string",
            ),
            (
                r#"{"id":[1],"op":"teleport"}"#,
                Some(serde_json::json!([1])),
                ErrorCode::UnknownOp,
                "unknown op \"teleport\": expected subscribe, unsubscribe, publish, presence or ping",
            ),
            (r#"{"op":"subscribe"}"#, None, bad, "missing \"channel\""),
            (
                r#"{"op":"presence","channel":5}"#,
                None,
                bad,
                "\"channel\" must be a string",
            ),
            (
                r#"{"op":"unsubscribe","channel":""}"#,
                None,
                bad,
                "channel must not be empty",
            ),
            (
                r#"{"op":"subscribe","channel":"c","since":{"offset":"x"}}"#,
                None,
                bad,
                "\"since\" must be {\"epoch\": string, \"offset\": non-negative integer}",
            ),
            (
                r#"{"op":"publish","channel":"c"}"#,
                None,
                bad,
                "missing \"data\"",
            ),
            (
                r#"{"op":"publish","channel":"c","data":null}"#,
                None,
                bad,
                "missing \"data\"",
            ),
            (
                r#"{"op":"publish","channel":"c","data":1,"data":2}"#,
                None,
                bad,
                "invalid JSON: duplicate field `data` at line 1 column 45",
            ),
        ];
        for (text, id, code, message) in cases {
            assert_eq!(refusal(text), (id, code, message.to_owned()), "{text}");
        }
    }

    #[test]
    fn replies_are_written_byte_for_byte() {
        let id = Id(Some(serde_json::json!({"n": 1.5})));
        let mut ok = id.ok();
        ok.push(b'}');
        assert_eq!(ok, br#"{"id":{"n":1.5},"ok":true}"#);
        let refused = Id(None).refuse(&Refusal::new(ErrorCode::Forbidden, "no \"x\""));
        assert_eq!(
            refused,
            br#"{"id":null,"ok":false,"error":{"code":"forbidden","message":"no \"x\""}}"#
        );
    }

    #[test]
    fn http_inputs_are_checked() {
        let request = |target: &str| Request::get(target).body(()).unwrap();
        let r = request("/api/history?channel=chat%3Aroom+1&since=5&flag");
        assert_eq!(query_param(&r, "channel").as_deref(), Some("chat:room 1"));
        assert_eq!(query_param(&r, "since").as_deref(), Some("5"));
        assert_eq!(query_param(&r, "flag").as_deref(), Some(""));
        assert_eq!(query_param(&r, "limit"), None);
        assert_eq!(query_param(&request("/x?a=%zz"), "a"), None);
        assert_eq!(
            HistoryParams::from_request(&r),
            Ok(HistoryParams {
                channel: "chat:room 1".into(),
                since: Some(5),
                limit: None
            })
        );
        let refused = HistoryParams::from_request(&request("/api/history?channel=c&limit=-1"));
        assert_eq!(
            refused,
            Err(Refusal::bad_request(
                "query parameter \"limit\" must be a non-negative integer"
            ))
        );
        assert_eq!(
            channel_param(&request("/api/presence")),
            Err(Refusal::bad_request("missing query parameter \"channel\""))
        );
        assert_eq!(
            Publish::from_http_body(&Bytes::from_static(b"[]")),
            Err(Refusal::bad_request(
                "expected a JSON object with \"channel\" and \"data\""
            ))
        );
        assert!(Publish::from_http_body(&Bytes::from_static(br#"{"channel":"c"}"#)).is_err());
    }

    /// The one-pass parse of a publish body gives what the `Value` parse gives, for bodies
    /// it takes and for the ones it leaves to the slow path (refusals included).
    #[test]
    fn publish_bodies_parse_as_the_value_parse_does() {
        let bodies: &[&[u8]] = &[
            br#"{"channel":"chat","data":{"text":"hi","n":[1,2.50,1e2]}}"#,
            br#" { "data" : "x" , "channel" : "a:b" , "extra" : {"k":[null,true]} } "#,
            br#"{"channel":"one","channel":"two","data":1}"#,
            br#"{"channel":"ch\u0061t","data":1}"#,
            br#"{"ch\u0061nnel":"chat","data":1}"#,
            br#"{"channel":"a\nb","data":1}"#,
            br#"{"channel":"a\u0000b","data":1}"#,
            br#"{"channel":"","data":1}"#,
            br#"{"channel":5,"data":1}"#,
            br#"{"channel":"c","data":1,"data":2}"#,
            br#"{"data":1}"#,
            br#"{"channel":"c"}"#,
            br#"{"channel":"c","data":1} x"#,
            br#"{"channel":"c","data":[1,}"#,
            br#"[{"channel":"c","data":1}]"#,
            br#""chat""#,
            b"",
            b"{\"channel\":\"c\",\"data\":\"\xff\"}",
        ];
        for body in bodies {
            let bytes = Bytes::copy_from_slice(body);
            let slow = Publish::from_http_body_slow(body);
            assert_eq!(
                Publish::from_http_body(&bytes),
                slow,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let body = Bytes::copy_from_slice(br#"{"channel":"c","data":[1, 2]}"#);
        let publish = Publish::from_http_body(&body).unwrap();
        assert_eq!(&publish.data[..], b"[1, 2]");
        // A copy in an allocation of its own, not a slice keeping the body alive.
        assert!(!body.as_ptr_range().contains(&publish.data.as_ptr()));
        assert!(publish.data.is_unique());
    }

    #[test]
    fn channel_names() {
        assert!(check_channel("chat:lobby").is_ok());
        assert!(check_channel(&"x".repeat(255)).is_ok());
        assert!(check_channel("").is_err());
        assert!(check_channel("a\nb").is_err());
        assert!(check_channel(&"x".repeat(256)).is_err());
    }
}
