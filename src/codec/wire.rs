//! Wire primitives shared by the decoder and the encoder: big-endian integers, variable
//! byte integers, length-prefixed UTF-8 strings and binary data.
//!
//! `Reader` works on a `Bytes` holding exactly one packet body, so running out of bytes
//! here means a malformed packet, never "wait for more input"; framing decides that.
//! Payloads are sliced out of the body, not copied.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};

/// Largest value a variable byte integer can hold (4 groups of 7 bits).
pub(crate) const VARINT_MAX: u32 = 268_435_455;

/// Parses a variable byte integer from the start of `buf`.
///
/// `Ok(None)` if `buf` ends before the integer does; `Err` if a fourth byte still has the
/// continuation bit, as a fifth byte is never allowed. Returns the value and its length.
pub(crate) fn varint_prefix(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (i, byte) in buf.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        Err(DecodeError::MalformedRemainingLength)
    } else {
        Ok(None)
    }
}

/// Checks that `bytes` is an MQTT UTF-8 string: valid UTF-8 (which already excludes the
/// surrogates U+D800..U+DFFF) and no U+0000 [MQTT-1.5.4-1, MQTT-1.5.4-2].
pub(crate) fn check_utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
    if s.contains('\0') {
        return Err(DecodeError::InvalidUtf8);
    }
    Ok(s)
}

/// Cursor over one packet body. Each read names the field so that a truncated packet
/// reports which field it ended in.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn need(&self, n: usize, truncated: &'static str) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            Err(DecodeError::Malformed(truncated))
        } else {
            Ok(())
        }
    }

    pub(crate) fn u8(&mut self, truncated: &'static str) -> Result<u8, DecodeError> {
        self.need(1, truncated)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self, truncated: &'static str) -> Result<u16, DecodeError> {
        self.need(2, truncated)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self, truncated: &'static str) -> Result<u32, DecodeError> {
        self.need(4, truncated)?;
        Ok(self.buf.get_u32())
    }

    /// A variable byte integer inside the body (property length, Subscription Identifier).
    pub(crate) fn varint(&mut self, truncated: &'static str) -> Result<u32, DecodeError> {
        let parsed = varint_prefix(&self.buf)
            .map_err(|_| DecodeError::Malformed("variable byte integer is longer than 4 bytes"))?;
        match parsed {
            Some((value, len)) => {
                self.buf.advance(len);
                Ok(value)
            }
            None => Err(DecodeError::Malformed(truncated)),
        }
    }

    /// The next `n` bytes as their own reader (a property block).
    pub(crate) fn take(
        &mut self,
        n: usize,
        truncated: &'static str,
    ) -> Result<Reader, DecodeError> {
        self.need(n, truncated)?;
        Ok(Reader::new(self.buf.split_to(n)))
    }

    /// Binary data: u16 length, then that many bytes.
    pub(crate) fn binary(&mut self, truncated: &'static str) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16(truncated)?);
        self.need(len, truncated)?;
        Ok(self.buf.split_to(len))
    }

    /// A UTF-8 string kept as bytes (topic names, which stay zero-copy).
    pub(crate) fn utf8(&mut self, truncated: &'static str) -> Result<Bytes, DecodeError> {
        let bytes = self.binary(truncated)?;
        check_utf8(&bytes)?;
        Ok(bytes)
    }

    pub(crate) fn string(&mut self, truncated: &'static str) -> Result<String, DecodeError> {
        let bytes = self.binary(truncated)?;
        Ok(check_utf8(&bytes)?.to_owned())
    }

    /// Everything left (a PUBLISH payload).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Fails if any bytes are left after the last field.
    pub(crate) fn finish(&self, trailing: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(trailing))
        }
    }
}

/// Where encoded bytes go. The encoder runs each body twice: into a `ByteCount` to learn
/// the remaining length (and to hit every error before writing anything), then into the
/// output. One code path for both is what guarantees the length prefix is right.
pub(crate) trait Sink {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_slice(&mut self, v: &[u8]);
}

/// A `Sink` that only counts.
#[derive(Default)]
pub(crate) struct ByteCount(pub(crate) usize);

impl Sink for ByteCount {
    fn put_u8(&mut self, _: u8) {
        self.0 += 1;
    }
    fn put_u16(&mut self, _: u16) {
        self.0 += 2;
    }
    fn put_u32(&mut self, _: u32) {
        self.0 += 4;
    }
    fn put_slice(&mut self, v: &[u8]) {
        self.0 += v.len();
    }
}

impl Sink for BytesMut {
    fn put_u8(&mut self, v: u8) {
        BufMut::put_u8(self, v);
    }
    fn put_u16(&mut self, v: u16) {
        BufMut::put_u16(self, v);
    }
    fn put_u32(&mut self, v: u32) {
        BufMut::put_u32(self, v);
    }
    fn put_slice(&mut self, v: &[u8]) {
        BufMut::put_slice(self, v);
    }
}

/// Writes a variable byte integer; `field` names it if it is out of range.
pub(crate) fn put_varint<S: Sink>(
    out: &mut S,
    value: u32,
    field: &'static str,
) -> Result<(), EncodeError> {
    if value > VARINT_MAX {
        return Err(EncodeError::ValueOutOfRange { field, value });
    }
    let mut rest = value;
    loop {
        let mut byte = (rest & 0x7F) as u8;
        rest >>= 7;
        if rest > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if rest == 0 {
            return Ok(());
        }
    }
}

/// Binary data or a string: u16 length, then the bytes.
pub(crate) fn put_binary<S: Sink>(
    out: &mut S,
    bytes: &[u8],
    field: &'static str,
) -> Result<(), EncodeError> {
    let len = u16::try_from(bytes.len()).map_err(|_| EncodeError::FieldTooLong {
        field,
        len: bytes.len(),
    })?;
    out.put_u16(len);
    out.put_slice(bytes);
    Ok(())
}

pub(crate) fn put_string<S: Sink>(
    out: &mut S,
    s: &str,
    field: &'static str,
) -> Result<(), EncodeError> {
    put_binary(out, s.as_bytes(), field)
}
