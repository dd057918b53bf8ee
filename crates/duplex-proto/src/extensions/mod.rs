//! Extension negotiation: the `Sec-WebSocket-Extensions` header (RFC 6455 section 9.1) and,
//! with the `deflate` feature, permessage-deflate (RFC 7692) in [`deflate`].
//!
//! The grammar (RFC 6455 section 9.1, list rules from RFC 7230 section 7):
//!
//! ```text
//! Sec-WebSocket-Extensions = extension-list
//! extension-list  = 1#extension
//! extension       = extension-token *( ";" extension-param )
//! extension-token = registered-token
//! extension-param = token [ "=" (token | quoted-string) ]
//!     ; a quoted-string value must be a token once unescaped
//! ```
//!
//! [`parse()`] accepts optional whitespace around `,`, `;` and `=`, and ignores empty list
//! elements (`a, , b`) as RFC 7230 section 7 asks of recipients; anything else that does not fit
//! the grammar is an error, reported with its byte offset. [`format()`] writes the canonical
//! form (`name; param; param=value`, offers joined by `, `).
//!
//! ```
//! use duplex_proto::extensions::{format, parse};
//! let offers = parse("permessage-deflate; client_max_window_bits, permessage-deflate")?;
//! assert_eq!(offers.len(), 2);
//! assert_eq!(offers[0].name, "permessage-deflate");
//! assert_eq!(offers[0].params, [("client_max_window_bits".to_string(), None)]);
//! assert_eq!(format(&offers), "permessage-deflate; client_max_window_bits, permessage-deflate");
//! # Ok::<(), duplex_proto::extensions::ExtensionError>(())
//! ```

use std::fmt;

use crate::config::ConfigError;

#[cfg(feature = "deflate")]
pub mod deflate;

/// One element of a `Sec-WebSocket-Extensions` list: an extension name and its parameters, in
/// the order they were written. Quoted values are stored unescaped.
///
/// ```
/// use duplex_proto::extensions::ExtensionOffer;
/// let offer = ExtensionOffer::new("permessage-deflate").with_param("server_max_window_bits", Some("10"));
/// assert_eq!(offer.to_string(), "permessage-deflate; server_max_window_bits=10");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExtensionOffer {
    /// The extension token, e.g. `permessage-deflate`.
    pub name: String,
    /// `(name, value)` pairs; `None` for a parameter written without `=`.
    pub params: Vec<(String, Option<String>)>,
}

impl ExtensionOffer {
    /// An extension without parameters.
    ///
    /// ```
    /// use duplex_proto::extensions::ExtensionOffer;
    /// assert!(ExtensionOffer::new("permessage-deflate").params.is_empty());
    /// ```
    pub fn new(name: impl Into<String>) -> ExtensionOffer {
        ExtensionOffer {
            name: name.into(),
            params: Vec::new(),
        }
    }

    /// Appends a parameter (builder style).
    ///
    /// ```
    /// use duplex_proto::extensions::ExtensionOffer;
    /// let offer = ExtensionOffer::new("x").with_param("a", None).with_param("b", Some("1"));
    /// assert_eq!(offer.to_string(), "x; a; b=1");
    /// ```
    pub fn with_param(mut self, name: impl Into<String>, value: Option<&str>) -> ExtensionOffer {
        self.params.push((name.into(), value.map(str::to_owned)));
        self
    }

    /// Whether this element names the extension `name` (ASCII case-insensitive, as HTTP tokens
    /// are compared).
    ///
    /// ```
    /// use duplex_proto::extensions::ExtensionOffer;
    /// assert!(ExtensionOffer::new("PerMessage-Deflate").is("permessage-deflate"));
    /// ```
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

impl fmt::Display for ExtensionOffer {
    /// The canonical form: `name; param; param=value`; values that are not tokens are quoted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        for (name, value) in &self.params {
            write!(f, "; {name}")?;
            match value {
                None => {}
                Some(v) if is_token(v) => write!(f, "={v}")?,
                Some(v) => {
                    f.write_str("=\"")?;
                    for c in v.chars() {
                        if c == '"' || c == '\\' {
                            f.write_str("\\")?;
                        }
                        write!(f, "{c}")?;
                    }
                    f.write_str("\"")?;
                }
            }
        }
        Ok(())
    }
}

/// A `Sec-WebSocket-Extensions` value that does not parse, or an extension negotiation that
/// failed.
///
/// The syntax variants come from [`parse()`]; the others from the negotiation in
/// [`deflate`] (feature `deflate`), where the server uses them to explain why it declined an
/// offer and the client to explain why it must fail the connection (RFC 7692 section 5).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExtensionError {
    /// Not RFC 6455 section 9.1 syntax: at byte offset `pos`, `expected` was expected.
    Syntax {
        /// Byte offset in the header value.
        pos: usize,
        /// What the grammar allows there.
        expected: &'static str,
    },
    /// A quoted-string parameter value that is not a token once unescaped (section 9.1).
    QuotedValueNotToken {
        /// Byte offset of the opening quote.
        pos: usize,
    },
    /// A parameter the extension does not define.
    UnknownParam(String),
    /// The same parameter twice in one offer or response.
    DuplicateParam(String),
    /// A parameter with a value it may not have, without a value it needs, or with a value
    /// out of range.
    InvalidParamValue {
        /// Parameter name.
        param: String,
        /// The value as received (`None`: written without `=`).
        value: Option<String>,
    },
    /// A parameter in the server's response that the client's offer did not allow.
    UnexpectedParam(String),
    /// A parameter that must be present is missing (a response ignoring a limit the client
    /// offered, or an offer that cannot meet the server's configured limits).
    MissingParam(String),
    /// The extension appears more than once in a response.
    DuplicateExtension(String),
    /// The response names an extension the client did not offer.
    NotOffered(String),
    /// The local configuration is invalid (a caller error, not the peer's).
    Config(ConfigError),
}

impl fmt::Display for ExtensionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtensionError::Syntax { pos, expected } => {
                write!(
                    f,
                    "invalid extension header: expected {expected} at byte {pos}"
                )
            }
            ExtensionError::QuotedValueNotToken { pos } => {
                write!(f, "quoted parameter value at byte {pos} is not a token")
            }
            ExtensionError::UnknownParam(p) => write!(f, "unknown extension parameter {p}"),
            ExtensionError::DuplicateParam(p) => write!(f, "duplicate extension parameter {p}"),
            ExtensionError::InvalidParamValue { param, value: None } => {
                write!(f, "extension parameter {param} needs a value")
            }
            ExtensionError::InvalidParamValue {
                param,
                value: Some(v),
            } => write!(f, "invalid value {v:?} for extension parameter {param}"),
            ExtensionError::UnexpectedParam(p) => {
                write!(f, "extension parameter {p} was not offered")
            }
            ExtensionError::MissingParam(p) => {
                write!(f, "extension parameter {p} is required")
            }
            ExtensionError::DuplicateExtension(e) => {
                write!(f, "extension {e} appears more than once")
            }
            ExtensionError::NotOffered(e) => write!(f, "extension {e} was not offered"),
            ExtensionError::Config(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ExtensionError {}

impl From<ConfigError> for ExtensionError {
    fn from(e: ConfigError) -> Self {
        ExtensionError::Config(e)
    }
}

/// Parses a `Sec-WebSocket-Extensions` value (RFC 6455 section 9.1): offers separated by `,`,
/// parameters by `;`, values as token or quoted-string.
///
/// Several header lines are joined with `, ` before parsing (RFC 7230 section 3.2.2). An empty
/// or all-whitespace value gives an empty list.
///
/// ```
/// use duplex_proto::extensions::{parse, ExtensionError};
/// let offers = parse(r#"foo; a="1" , bar;b"#)?;
/// assert_eq!(offers[0].params, [("a".to_string(), Some("1".to_string()))]);
/// assert_eq!(offers[1].name, "bar");
/// assert_eq!(parse("foo bar"), Err(ExtensionError::Syntax { pos: 4, expected: "`;` or `,`" }));
/// # Ok::<(), ExtensionError>(())
/// ```
pub fn parse(header: &str) -> Result<Vec<ExtensionOffer>, ExtensionError> {
    let mut p = Parser {
        s: header.as_bytes(),
        pos: 0,
    };
    let mut offers = Vec::new();
    loop {
        p.skip_ows();
        match p.peek() {
            None => return Ok(offers),
            Some(b',') => {
                // Empty list element.
                p.pos += 1;
                continue;
            }
            Some(_) => {}
        }
        let name = p.token("an extension name")?;
        let mut offer = ExtensionOffer::new(name);
        loop {
            p.skip_ows();
            match p.peek() {
                None => break,
                Some(b',') => {
                    p.pos += 1;
                    break;
                }
                Some(b';') => p.pos += 1,
                Some(_) => return Err(p.error("`;` or `,`")),
            }
            p.skip_ows();
            let param = p.token("a parameter name")?;
            p.skip_ows();
            let value = if p.peek() == Some(b'=') {
                p.pos += 1;
                p.skip_ows();
                Some(if p.peek() == Some(b'"') {
                    p.quoted()?
                } else {
                    p.token("a token or quoted-string value")?
                })
            } else {
                None
            };
            offer.params.push((param, value));
        }
        offers.push(offer);
    }
}

/// Formats extensions as a `Sec-WebSocket-Extensions` value, the inverse of [`parse()`].
///
/// ```
/// use duplex_proto::extensions::{format, ExtensionOffer};
/// let exts = [
///     ExtensionOffer::new("permessage-deflate").with_param("client_no_context_takeover", None),
///     ExtensionOffer::new("x-other").with_param("p", Some("a b")),
/// ];
/// assert_eq!(format(&exts), r#"permessage-deflate; client_no_context_takeover, x-other; p="a b""#);
/// ```
pub fn format(exts: &[ExtensionOffer]) -> String {
    let mut out = String::new();
    for (i, ext) in exts.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&ext.to_string());
    }
    out
}

/// `tchar` of RFC 7230 section 3.2.6.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A non-empty run of `tchar`.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn error(&self, expected: &'static str) -> ExtensionError {
        ExtensionError::Syntax {
            pos: self.pos,
            expected,
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn token(&mut self, expected: &'static str) -> Result<String, ExtensionError> {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.error(expected));
        }
        // tchar is ASCII, so the slice is valid UTF-8 on its own.
        Ok(String::from_utf8_lossy(&self.s[start..self.pos]).into_owned())
    }

    /// A quoted-string (RFC 7230 section 3.2.6) whose unescaped content must be a token.
    fn quoted(&mut self) -> Result<String, ExtensionError> {
        let open = self.pos;
        self.pos += 1;
        let mut value = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.error("a closing `\"`")),
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(c) if c == b'\t' || c >= 0x20 && c != 0x7f => {
                            value.push(c);
                            self.pos += 1;
                        }
                        _ => return Err(self.error("an escaped character")),
                    }
                }
                // qdtext: HTAB, SP, VCHAR except `"` and `\`, obs-text.
                Some(c) if c == b'\t' || c >= 0x20 && c != 0x7f => {
                    value.push(c);
                    self.pos += 1;
                }
                Some(_) => return Err(self.error("a quoted-string character")),
            }
        }
        if value.is_empty() || !value.iter().all(|&b| is_tchar(b)) {
            return Err(ExtensionError::QuotedValueNotToken { pos: open });
        }
        Ok(String::from_utf8_lossy(&value).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(name: &str, params: &[(&str, Option<&str>)]) -> ExtensionOffer {
        params
            .iter()
            .fold(ExtensionOffer::new(name), |o, (k, v)| o.with_param(*k, *v))
    }

    #[test]
    fn parses_lists_params_and_values() {
        let cases: &[(&str, Vec<ExtensionOffer>)] = &[
            ("", vec![]),
            ("  \t ", vec![]),
            (" , ,", vec![]),
            ("foo", vec![offer("foo", &[])]),
            ("foo;a", vec![offer("foo", &[("a", None)])]),
            (
                "foo ; a = 1 ;b\t;c=\"2\"",
                vec![offer(
                    "foo",
                    &[("a", Some("1")), ("b", None), ("c", Some("2"))],
                )],
            ),
            (
                "permessage-deflate; client_max_window_bits, permessage-deflate",
                vec![
                    offer("permessage-deflate", &[("client_max_window_bits", None)]),
                    offer("permessage-deflate", &[]),
                ],
            ),
            (
                "a,, b ;x=y ,",
                vec![offer("a", &[]), offer("b", &[("x", Some("y"))])],
            ),
            // An escaped token character is still a token.
            (r#"a;p="1\0""#, vec![offer("a", &[("p", Some("10"))])]),
        ];
        for (header, expected) in cases {
            assert_eq!(&parse(header).unwrap(), expected, "{header:?}");
        }
    }

    #[test]
    fn rejects_garbage_with_position() {
        let syntax = |pos, expected| Err(ExtensionError::Syntax { pos, expected });
        let cases: &[(&str, Result<Vec<ExtensionOffer>, ExtensionError>)] = &[
            (";a", syntax(0, "an extension name")),
            ("foo bar", syntax(4, "`;` or `,`")),
            ("foo;", syntax(4, "a parameter name")),
            ("foo; ;a", syntax(5, "a parameter name")),
            ("foo;a=", syntax(6, "a token or quoted-string value")),
            ("foo;a=,", syntax(6, "a token or quoted-string value")),
            ("foo;a=b c", syntax(8, "`;` or `,`")),
            ("foo;a=\"b", syntax(8, "a closing `\"`")),
            ("foo;a=\"b\\", syntax(9, "an escaped character")),
            ("foo;a=\"b\x01\"", syntax(8, "a quoted-string character")),
            ("fo\"o", syntax(2, "`;` or `,`")),
            ("foo;a==1", syntax(6, "a token or quoted-string value")),
            ("foo;a=1=2", syntax(7, "`;` or `,`")),
            (
                "foo;a=\"\"",
                Err(ExtensionError::QuotedValueNotToken { pos: 6 }),
            ),
            (
                "foo;a=\"1 2\"",
                Err(ExtensionError::QuotedValueNotToken { pos: 6 }),
            ),
            (
                "foo;a=\"x,y\"",
                Err(ExtensionError::QuotedValueNotToken { pos: 6 }),
            ),
            ("fo\u{e9}", syntax(2, "`;` or `,`")),
            ("foo\r\n", syntax(3, "`;` or `,`")),
        ];
        for (header, expected) in cases {
            assert_eq!(&parse(header), expected, "{header:?}");
        }
    }

    #[test]
    fn format_round_trips_through_parse() {
        let exts = vec![
            offer(
                "permessage-deflate",
                &[
                    ("server_no_context_takeover", None),
                    ("server_max_window_bits", Some("10")),
                ],
            ),
            offer("x", &[("q", Some("needs \"quoting\""))]),
        ];
        let text = format(&exts);
        assert_eq!(
            text,
            r#"permessage-deflate; server_no_context_takeover; server_max_window_bits=10, x; q="needs \"quoting\"""#
        );
        // The quoted value is not a token, so it does not parse back; the token-only part does.
        assert_eq!(parse(&format(&exts[..1])).unwrap(), exts[..1]);
        assert_eq!(format(&[]), "");
    }

    #[test]
    fn errors_display() {
        let e = parse("a b").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid extension header: expected `;` or `,` at byte 2"
        );
        assert_eq!(
            ExtensionError::InvalidParamValue {
                param: "server_max_window_bits".into(),
                value: Some("16".into())
            }
            .to_string(),
            "invalid value \"16\" for extension parameter server_max_window_bits"
        );
    }
}
