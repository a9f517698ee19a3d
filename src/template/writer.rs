//! The buffer an expansion writes into, in two forms with one interface, chosen per template.
//!
//! Expansion copies short pieces (literal text between macros, prepared values) as fixed 16- or
//! 32-byte blocks and cuts them back. Into a `String`, each such copy checks character
//! boundaries three times; into the string's bytes it checks none, but the result must then be
//! checked as UTF-8 once, which costs a fixed amount plus a little per byte. The bytes win from
//! about four macros on (measured with callgrind: `examples/expand_instructions.rs`), so a
//! template with more macros than [`BYTES_FROM`] writes bytes and a shorter one the string.

/// Templates with more macros than this write into bytes ([`Bytes`]), the others into the string.
pub(super) const BYTES_FROM: usize = 4;

/// Where expansion appends. Every method appends whole characters (or ASCII), so the buffer
/// is valid UTF-8 between calls.
pub(super) trait Out {
    /// Bytes written so far.
    fn len(&self) -> usize;
    /// The text written so far.
    fn bytes(&self) -> &[u8];
    /// Cut back to `len`, a length this buffer had before.
    fn truncate(&mut self, len: usize);
    /// Append `text[start..start + len]`, which starts and ends on character boundaries. When
    /// `text` has at least `BLOCK` bytes from `start` and the buffer room for them, the piece
    /// is copied as exactly `BLOCK` bytes and cut back: a fixed-size copy is a couple of moves,
    /// one of unknown length a call into `memcpy`.
    fn piece<const BLOCK: usize>(&mut self, text: &str, start: usize, len: usize);
    /// Append `s`.
    fn push_str(&mut self, s: &str);
    /// Append the first `end` bytes of `s`, all ASCII.
    fn ascii_prefix(&mut self, s: &str, end: usize);
    /// Append one ASCII byte.
    fn ascii(&mut self, b: u8);
    /// Append ASCII bytes.
    fn ascii_run(&mut self, b: &[u8]);
    /// Append a percent escape, three ASCII bytes.
    fn escape(&mut self, e: &str);
}

impl Out for String {
    #[inline(always)]
    fn len(&self) -> usize {
        String::len(self)
    }

    #[inline(always)]
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }

    #[inline(always)]
    fn truncate(&mut self, len: usize) {
        String::truncate(self, len);
    }

    #[inline(always)]
    fn piece<const BLOCK: usize>(&mut self, text: &str, start: usize, len: usize) {
        let at = self.len();
        match text.get(start..start + BLOCK) {
            // `get` fails off a character boundary (non-ASCII HTML code): the general copy then.
            Some(block) if len <= BLOCK && self.capacity() - at >= BLOCK => {
                self.push_str(block);
                self.truncate(at + len);
            }
            _ => self.push_str(text.get(start..start + len).unwrap_or_default()),
        }
    }

    #[inline(always)]
    fn push_str(&mut self, s: &str) {
        String::push_str(self, s);
    }

    #[inline(always)]
    fn ascii_prefix(&mut self, s: &str, end: usize) {
        String::push_str(self, s.get(..end).unwrap_or_default());
    }

    #[inline(always)]
    fn ascii(&mut self, b: u8) {
        // `& 0x7f` tells the compiler the byte is ASCII, so a push is one store and no call.
        self.push(char::from(b & 0x7f));
    }

    #[inline(always)]
    fn ascii_run(&mut self, b: &[u8]) {
        for &b in b {
            self.push(char::from(b & 0x7f));
        }
    }

    #[inline(always)]
    fn escape(&mut self, e: &str) {
        // Always three: the test lets the compiler copy exactly three bytes, no call.
        if e.len() == 3 {
            String::push_str(self, e);
        }
    }
}

/// A string's bytes, appended to without character-boundary checks, made a string again by
/// [`Bytes::finish`] with one UTF-8 check.
pub(super) struct Bytes(pub(super) Vec<u8>);

impl Bytes {
    /// Take `out`'s bytes to append to.
    #[inline(always)]
    pub(super) fn take(out: &mut String) -> Bytes {
        Bytes(std::mem::take(out).into_bytes())
    }

    /// Give the bytes back to `out` as a string.
    #[inline(always)]
    pub(super) fn finish(self, out: &mut String) {
        *out = match String::from_utf8(self.0) {
            Ok(s) => s,
            // Not reached: every method of `Out` appends whole characters or ASCII.
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
    }
}

impl Out for Bytes {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len()
    }

    #[inline(always)]
    fn bytes(&self) -> &[u8] {
        &self.0
    }

    #[inline(always)]
    fn truncate(&mut self, len: usize) {
        self.0.truncate(len);
    }

    #[inline(always)]
    fn piece<const BLOCK: usize>(&mut self, text: &str, start: usize, len: usize) {
        let (text, out) = (text.as_bytes(), &mut self.0);
        let at = out.len();
        match text.get(start..start + BLOCK) {
            Some(block) if len <= BLOCK && out.capacity() - at >= BLOCK => {
                out.extend_from_slice(block);
                out.truncate(at + len);
            }
            _ => out.extend_from_slice(text.get(start..start + len).unwrap_or_default()),
        }
    }

    #[inline(always)]
    fn push_str(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    #[inline(always)]
    fn ascii_prefix(&mut self, s: &str, end: usize) {
        self.0
            .extend_from_slice(s.as_bytes().get(..end).unwrap_or_default());
    }

    #[inline(always)]
    fn ascii(&mut self, b: u8) {
        self.0.push(b);
    }

    #[inline(always)]
    fn ascii_run(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }

    #[inline(always)]
    fn escape(&mut self, e: &str) {
        if let Ok(e) = <&[u8; 3]>::try_from(e.as_bytes()) {
            self.0.extend_from_slice(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write<O: Out>(out: &mut O) {
        let text = "ab&c=é€xyz                                ";
        out.piece::<16>(text, 0, 2);
        out.piece::<16>(text, 2, 3);
        out.piece::<32>(text, 5, 5);
        out.ascii(b'%');
        out.ascii_run(b"26");
        out.ascii_prefix("clean€", 5);
        out.escape("%2F");
        out.push_str("ü");
        let keep = out.len();
        out.push_str("gone");
        out.truncate(keep);
    }

    #[test]
    fn string_and_bytes_write_the_same_text() {
        let mut s = String::with_capacity(64);
        write(&mut s);
        let mut b = Bytes(Vec::with_capacity(64));
        write(&mut b);
        assert_eq!(b.bytes(), s.as_bytes());
        let mut back = String::new();
        b.finish(&mut back);
        assert_eq!(back, "ab&c=é€%26clean%2Fü");
        // Without room for a block, the general copy gives the same.
        let (mut s, mut b) = (String::new(), Bytes(Vec::new()));
        write(&mut s);
        write(&mut b);
        assert_eq!(b.bytes(), s.as_bytes());
    }
}
