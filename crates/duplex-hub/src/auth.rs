//! Authentication: HS256 JSON Web Tokens for connections, channel patterns, the API key.
//!
//! Only what the hub needs of RFC 7519/7515: compact serialization, base64url without padding,
//! `alg` must be `HS256` (so `none` and algorithm confusion are refused up front), the signature
//! is checked in constant time before the claims are even parsed, `exp` is required.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What a connection may do, from its token (or everything without authentication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    /// The user (`sub`), shown in presence.
    pub user: String,
    /// Channel patterns the connection may subscribe to; `None`: any.
    pub subscribe: Option<Vec<String>>,
    /// Channel patterns the connection may publish to; `None`: any.
    pub publish: Option<Vec<String>>,
}

impl Grants {
    /// Anyone may do anything (no `--token-secret`).
    pub fn anonymous(user: String) -> Grants {
        Grants {
            user,
            subscribe: None,
            publish: None,
        }
    }

    /// Whether subscribing to `channel` is allowed.
    pub fn may_subscribe(&self, channel: &str) -> bool {
        allowed(self.subscribe.as_deref(), channel)
    }

    /// Whether publishing to `channel` is allowed.
    pub fn may_publish(&self, channel: &str) -> bool {
        allowed(self.publish.as_deref(), channel)
    }
}

fn allowed(patterns: Option<&[String]>, channel: &str) -> bool {
    patterns.is_none_or(|patterns| patterns.iter().any(|p| glob_match(p, channel)))
}

/// Why a token was refused (sent to the client in the 401 body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts, or a part is not the JSON it should be.
    Malformed(&'static str),
    /// `alg` is not `HS256`.
    Algorithm(String),
    /// The signature does not match.
    BadSignature,
    /// `exp` is in the past.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `exp` or `sub` is missing.
    MissingClaim(&'static str),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Malformed(what) => write!(f, "malformed token: {what}"),
            TokenError::Algorithm(alg) => {
                write!(f, "token algorithm {alg:?} is not accepted (only HS256)")
            }
            TokenError::BadSignature => f.write_str("token signature does not match"),
            TokenError::Expired => f.write_str("token expired"),
            TokenError::NotYetValid => f.write_str("token not valid yet (nbf)"),
            TokenError::MissingClaim(claim) => write!(f, "token has no {claim:?} claim"),
        }
    }
}

impl std::error::Error for TokenError {}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
    channels: Option<Vec<String>>,
    publish: Option<Vec<String>>,
}

/// Verifies an HS256 token with `secret` at `now` (seconds since the Unix epoch) and returns
/// the grants it carries.
///
/// ```
/// # use duplex_hub::auth::{sign_hs256, verify_hs256};
/// let token = sign_hs256(br#"{"sub":"ada","exp":2000000000,"channels":["chat:*"]}"#, b"k");
/// let grants = verify_hs256(&token, b"k", 1_700_000_000).unwrap();
/// assert_eq!(grants.user, "ada");
/// assert!(grants.may_subscribe("chat:lobby") && !grants.may_subscribe("admin"));
/// assert!(verify_hs256(&token, b"other", 1_700_000_000).is_err());
/// ```
pub fn verify_hs256(token: &str, secret: &[u8], now: u64) -> Result<Grants, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("expected three dot-separated parts"));
    };
    let decode = |part: &str, what| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| TokenError::Malformed(what))
    };
    let header: Header = serde_json::from_slice(&decode(header, "header is not base64url")?)
        .map_err(|_| TokenError::Malformed("header is not a JSON object with \"alg\""))?;
    if header.alg != "HS256" {
        return Err(TokenError::Algorithm(header.alg));
    }
    let signature = decode(signature, "signature is not base64url")?;
    let signed_len = token.len() - signature_len(token);
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(&token.as_bytes()[..signed_len]);
    mac.verify_slice(&signature)
        .map_err(|_| TokenError::BadSignature)?;

    let claims: Claims = serde_json::from_slice(&decode(payload, "payload is not base64url")?)
        .map_err(|_| TokenError::Malformed("payload is not a JSON object of the known claims"))?;
    let exp = claims.exp.ok_or(TokenError::MissingClaim("exp"))?;
    if exp <= now as f64 {
        return Err(TokenError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now as f64) {
        return Err(TokenError::NotYetValid);
    }
    let user = claims.sub.ok_or(TokenError::MissingClaim("sub"))?;
    Ok(Grants {
        user,
        subscribe: claims.channels,
        publish: claims.publish,
    })
}

/// Length of the last part plus its dot: the signed input is everything before it.
fn signature_len(token: &str) -> usize {
    token.rsplit('.').next().map_or(0, |s| s.len() + 1)
}

/// Signs `claims` (a JSON object) as an HS256 token: for tests and tooling.
pub fn sign_hs256(claims: &[u8], secret: &[u8]) -> String {
    let mut token = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims));
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(token.as_bytes());
    let signature = mac.finalize().into_bytes();
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    token
}

/// Matches `name` against `pattern`, where `*` stands for any run of characters (including
/// none and including `:`), and everything else matches itself.
///
/// ```
/// # use duplex_hub::auth::glob_match;
/// assert!(glob_match("chat:*", "chat:lobby"));
/// assert!(glob_match("*:news", "sport:news"));
/// assert!(!glob_match("chat:*", "chatroom"));
/// ```
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and the name position it is currently standing for.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            // Let the star swallow one more character and retry after it.
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Compares two secrets without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn token(claims: &str) -> String {
        sign_hs256(claims.as_bytes(), b"secret")
    }

    #[test]
    fn valid_token_gives_grants() {
        let t = token(
            r#"{"sub":"u1","exp":1700000100,"channels":["chat:*"],"publish":["chat:lobby"]}"#,
        );
        let g = verify_hs256(&t, b"secret", NOW).unwrap();
        assert_eq!(g.user, "u1");
        assert!(g.may_subscribe("chat:x"));
        assert!(!g.may_subscribe("news"));
        assert!(g.may_publish("chat:lobby"));
        assert!(!g.may_publish("chat:other"));
    }

    #[test]
    fn absent_patterns_allow_everything_and_empty_lists_nothing() {
        let g = verify_hs256(&token(r#"{"sub":"u","exp":1800000000}"#), b"secret", NOW).unwrap();
        assert!(g.may_subscribe("any") && g.may_publish("any"));
        let g = verify_hs256(
            &token(r#"{"sub":"u","exp":1800000000,"channels":[],"publish":[]}"#),
            b"secret",
            NOW,
        )
        .unwrap();
        assert!(!g.may_subscribe("any") && !g.may_publish("any"));
    }

    #[test]
    fn refusals_say_why() {
        let ok = token(r#"{"sub":"u","exp":1800000000}"#);
        assert_eq!(
            verify_hs256(&ok, b"wrong", NOW),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify_hs256(&token(r#"{"sub":"u","exp":1600000000}"#), b"secret", NOW),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify_hs256(&token(r#"{"sub":"u"}"#), b"secret", NOW),
            Err(TokenError::MissingClaim("exp"))
        );
        assert_eq!(
            verify_hs256(&token(r#"{"exp":1800000000}"#), b"secret", NOW),
            Err(TokenError::MissingClaim("sub"))
        );
        assert!(matches!(
            verify_hs256("a.b", b"secret", NOW),
            Err(TokenError::Malformed(_))
        ));
        // A tampered payload with the original signature.
        let mut parts: Vec<&str> = ok.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"sub":"admin","exp":1800000000}"#);
        parts[1] = &forged;
        assert_eq!(
            verify_hs256(&parts.join("."), b"secret", NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn other_algorithms_are_refused() {
        for alg in ["none", "HS512", "RS256"] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}"}}"#));
            let payload = URL_SAFE_NO_PAD.encode(r#"{"sub":"u","exp":1800000000}"#);
            let t = format!("{header}.{payload}.");
            assert_eq!(
                verify_hs256(&t, b"secret", NOW),
                Err(TokenError::Algorithm(alg.into()))
            );
        }
    }

    #[test]
    fn padding_is_refused() {
        let t = token(r#"{"sub":"u","exp":1800000000}"#) + "=";
        assert!(verify_hs256(&t, b"secret", NOW).is_err());
    }

    #[test]
    fn rfc7515_hs256_example_verifies() {
        // RFC 7515 appendix A.1 (the JWK "k" value, decoded).
        let key = URL_SAFE_NO_PAD
            .decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
            .unwrap();
        let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.\
                     eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.\
                     dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        // Signature and alg are right; the example has no "sub" and expired in 2011.
        assert_eq!(
            verify_hs256(token, &key, 1_300_000_000),
            Err(TokenError::MissingClaim("sub"))
        );
        assert_eq!(verify_hs256(token, &key, NOW), Err(TokenError::Expired));
    }

    #[test]
    fn glob_patterns() {
        let cases = [
            ("chat", "chat", true),
            ("chat", "chat2", false),
            ("*", "", true),
            ("*", "anything:at:all", true),
            ("chat:*", "chat:", true),
            ("chat:*", "chat", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*room", "chat:room", true),
            ("*:*:*", "a:b:c", true),
            ("*:*:*", "a:b", false),
            ("a**", "abc", true),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(glob_match(pattern, name), expected, "{pattern} ~ {name}");
        }
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"key", b"key"));
        assert!(!constant_time_eq(b"key", b"kez"));
        assert!(!constant_time_eq(b"key", b"keys"));
    }
}
