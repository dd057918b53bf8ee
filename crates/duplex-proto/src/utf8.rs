//! Incremental UTF-8 validation across fragments and partial frames (RFC 6455 section 8.1).
//!
//! A text message may be split anywhere, even inside a character, across frames and across
//! reads. [`Utf8Validator`] carries at most three bytes of an unfinished character between calls
//! and fails on the first byte that can no longer start or continue valid UTF-8, so a connection
//! can be failed as soon as bad data arrives rather than once the whole message is in.

/// Validation failed: the text is not UTF-8. Maps to close code 1007.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

/// Streaming UTF-8 validator.
///
/// ```
/// use duplex_proto::utf8::Utf8Validator;
/// let text = "grüß dich".as_bytes();
/// let mut v = Utf8Validator::new();
/// v.feed(&text[..3]).unwrap(); // ends inside 'ü'
/// v.feed(&text[3..]).unwrap();
/// assert!(v.finish().is_ok());
///
/// let mut v = Utf8Validator::new();
/// assert!(v.feed(&[0xce, 0xba, 0xe1, 0xbd]).is_ok()); // unfinished but still possible
/// assert!(v.feed(&[0xc0]).is_err()); // can never complete that character
/// ```
#[derive(Debug, Clone, Default)]
pub struct Utf8Validator {
    partial: [u8; 4],
    partial_len: u8,
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub const fn new() -> Self {
        Utf8Validator {
            partial: [0; 4],
            partial_len: 0,
        }
    }

    /// Validates the next piece of the message.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), InvalidUtf8> {
        // Most text on the wire is ASCII, and short messages are the common case: a word-wise
        // check is a few instructions where the general validator's setup costs dozens.
        if self.partial_len == 0 && chunk.len() < 64 && chunk.is_ascii() {
            return Ok(());
        }
        if self.partial_len > 0 {
            let have = usize::from(self.partial_len);
            let need = sequence_len(self.partial[0]) - have;
            let take = need.min(chunk.len());
            self.partial[have..have + take].copy_from_slice(&chunk[..take]);
            let len = have + take;
            match std::str::from_utf8(&self.partial[..len]) {
                Ok(_) => self.partial_len = 0,
                Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                Err(_) => {
                    // Still unfinished: only possible when the chunk ran out.
                    self.partial_len = len as u8;
                    return Ok(());
                }
            }
            chunk = &chunk[take..];
        }
        match simdutf8::compat::from_utf8(chunk) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                let tail = &chunk[e.valid_up_to()..];
                self.partial[..tail.len()].copy_from_slice(tail);
                self.partial_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// Ends the message: an unfinished character at the end is an error.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let unfinished = self.partial_len > 0;
        self.partial_len = 0;
        if unfinished { Err(InvalidUtf8) } else { Ok(()) }
    }

    /// Whether the validator is between characters (nothing carried over).
    pub fn is_at_boundary(&self) -> bool {
        self.partial_len == 0
    }
}

/// Validates a complete piece of text in one call.
#[inline]
pub fn validate(bytes: &[u8]) -> Result<(), InvalidUtf8> {
    simdutf8::basic::from_utf8(bytes)
        .map(|_| ())
        .map_err(|_| InvalidUtf8)
}

/// Length of the sequence a valid lead byte starts. Only called with bytes the validator kept as
/// the start of an unfinished character, which are always valid lead bytes.
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split_agrees(data: &[u8]) {
        let expected = std::str::from_utf8(data).is_ok();
        for split in 0..=data.len() {
            let mut v = Utf8Validator::new();
            let ok = v.feed(&data[..split]).is_ok()
                && v.feed(&data[split..]).is_ok()
                && v.finish().is_ok();
            assert_eq!(ok, expected, "{data:02x?} split at {split}");
        }
        // Byte by byte, the hardest chunking.
        let mut v = Utf8Validator::new();
        let ok = data.iter().all(|b| v.feed(std::slice::from_ref(b)).is_ok()) && v.finish().is_ok();
        assert_eq!(ok, expected, "{data:02x?} byte by byte");
    }

    #[test]
    fn known_cases() {
        split_agrees("κόσμε".as_bytes());
        split_agrees(b"\xf4\x90\x80\x80"); // above U+10FFFF
        split_agrees(b"\xed\xa0\x80"); // surrogate
        split_agrees(b"\xc0\xaf"); // overlong
        split_agrees(b"\xf0\x9f\x98\x80 ok");
        split_agrees(b"\xe2\x82"); // truncated at end
    }

    #[test]
    fn fails_fast_on_impossible_prefix() {
        let mut v = Utf8Validator::new();
        // 0xf4 0x90 can never start a valid character: fail without waiting for more.
        assert_eq!(v.feed(b"abc\xf4\x90"), Err(InvalidUtf8));
        let mut v = Utf8Validator::new();
        assert!(v.feed(b"\xf4").is_ok());
        assert_eq!(v.feed(b"\x90"), Err(InvalidUtf8));
    }

    proptest! {
        #[test]
        fn agrees_with_std_at_every_split(data in proptest::collection::vec(any::<u8>(), 0..24)) {
            split_agrees(&data);
        }

        #[test]
        fn agrees_with_std_on_mostly_valid_text(s in "\\PC{0,16}", junk in any::<u8>(), at in 0usize..64) {
            let mut data = s.into_bytes();
            let at = at.min(data.len());
            data.insert(at, junk);
            split_agrees(&data);
        }
    }
}
