//! What an OpenSSL session reads and writes instead of a socket: TLS records that
//! came from the peer (`feed`) and records waiting to go to it (`pending`). The
//! server's PSK sessions (`psk.rs`) and the bridge's PSK client (`psk_client.rs`)
//! both keep the socket to themselves and move bytes through this, so OpenSSL never
//! blocks and never touches a file descriptor.
//!
//! Reading from an empty inbox is `WouldBlock` (OpenSSL's WANT_READ); writing always
//! takes everything: the owner bounds the outbox by what it encrypts.

use std::io::{self, Read, Write};

#[derive(Default)]
pub(crate) struct Pipe {
    inbox: Vec<u8>,
    read_at: usize,
    outbox: Vec<u8>,
    sent: usize,
}

impl Pipe {
    /// Records from the peer, for OpenSSL to read.
    pub(crate) fn feed(&mut self, wire: &[u8]) {
        self.inbox.extend_from_slice(wire);
    }

    /// Records waiting for the socket.
    pub(crate) fn pending(&self) -> &[u8] {
        &self.outbox[self.sent..]
    }

    /// `n` bytes of `pending` went out.
    pub(crate) fn sent(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.outbox.len());
        if self.sent == self.outbox.len() {
            // All out: an idle connection holds no outbox.
            self.outbox = Vec::new();
            self.sent = 0;
        }
    }

    /// Everything pending, as if sent (tests moving records by hand).
    #[cfg(test)]
    pub(crate) fn take_pending(&mut self) -> Vec<u8> {
        let out = self.pending().to_vec();
        self.sent(out.len());
        out
    }
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = &self.inbox[self.read_at..];
        if rest.is_empty() {
            // Nothing buffered: an idle connection holds no inbox.
            self.inbox = Vec::new();
            self.read_at = 0;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.read_at += n;
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbox.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_go_through_in_order_and_an_empty_inbox_would_block() {
        let mut pipe = Pipe::default();
        let mut buf = [0u8; 4];
        assert_eq!(
            pipe.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        pipe.feed(b"abcdef");
        assert_eq!(pipe.read(&mut buf).unwrap(), 4);
        assert_eq!(&buf, b"abcd");
        assert_eq!(pipe.read(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"ef");
        assert!(pipe.read(&mut buf).is_err());
        pipe.write_all(b"0123").unwrap();
        pipe.sent(1);
        assert_eq!(pipe.pending(), b"123");
        pipe.write_all(b"4").unwrap();
        assert_eq!(pipe.take_pending(), b"1234");
        assert!(pipe.pending().is_empty());
        pipe.sent(10);
        assert!(pipe.pending().is_empty());
    }
}
