//! The node-to-node frames: one protobuf message (`Frame`, encoded with prost), each
//! sent as a 4-byte big-endian length and the encoded bytes.
//!
//! On the wire a frame is flat: `kind` (field 1) says which [`Body`] it is and the
//! body's fields have their own tags, so a node skips fields it does not know, as
//! protobuf does, and a new kind or field gets a new number. The `prost::Message`
//! impls are written out with prost's encoding functions rather than derived: the
//! derive macro's dependencies change the build of bindgen, and so of RocksDB.
//!
//! | tag | field | kinds |
//! |-----|-------|-------|
//! | 1 | kind u32 | all |
//! | 2 | version u32 | Hello, Challenge |
//! | 3 | node string | Hello, Challenge |
//! | 4 | nonce bytes | Hello, Challenge |
//! | 5 | proof bytes | Challenge, Proof |
//! | 6 | reason string | Refused |
//! | 7 | bridge string | Forward |
//! | 8 | messages repeated `Carried` | Forward |
//! | 9 | upto u64 | ForwardAck |
//! | 10 | ok bool | ForwardAck |
//! | 11 | at_ms u64 | Ping, Pong |

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

/// Bumped when a frame changes meaning (not when one is added).
pub const PROTOCOL_VERSION: u32 = 1;

/// What a frame says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Dialer -> acceptor: who I am, my nonce.
    Hello(Hello),
    /// Acceptor -> dialer: who I am, my nonce, my proof.
    Challenge(Challenge),
    /// Dialer -> acceptor: my proof.
    Proof(Proof),
    /// Acceptor -> dialer: the link is up.
    Welcome,
    /// Either side: the link is refused or ends, and why.
    Refused(Refused),
    /// RPC bridge: messages to publish on the receiving node.
    Forward(Forward),
    /// RPC bridge: everything up to `upto` is stored on the receiving node.
    ForwardAck(ForwardAck),
    Ping(Ping),
    Pong(Ping),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hello {
    pub version: u32,
    pub node: String,
    pub nonce: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Challenge {
    pub version: u32,
    pub node: String,
    pub nonce: Vec<u8>,
    pub proof: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Proof {
    pub proof: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Refused {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Forward {
    /// Which bridge of the sender (for logs and counts).
    pub bridge: String,
    pub messages: Vec<Carried>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ForwardAck {
    pub upto: u64,
    /// False: the receiver could not store them (nothing is acknowledged).
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ping {
    pub at_ms: u64,
}

/// One forwarded message: its cache seq on the sending node and the message in the
/// store's own encoding (`StoredMessage`, versioned).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Carried {
    pub seq: u64,
    pub message: Bytes,
}

mod kind {
    pub const HELLO: u32 = 1;
    pub const CHALLENGE: u32 = 2;
    pub const PROOF: u32 = 3;
    pub const WELCOME: u32 = 4;
    pub const REFUSED: u32 = 5;
    pub const FORWARD: u32 = 6;
    pub const FORWARD_ACK: u32 = 7;
    pub const PING: u32 = 8;
    pub const PONG: u32 = 9;
}

/// A frame as it is on the wire (see the module docs for the tags).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    kind: u32,
    version: u32,
    node: String,
    nonce: Vec<u8>,
    proof: Vec<u8>,
    reason: String,
    bridge: String,
    messages: Vec<Carried>,
    upto: u64,
    ok: bool,
    at_ms: u64,
}

impl Frame {
    pub fn of(body: Body) -> Frame {
        let mut f = Frame::default();
        match body {
            Body::Hello(h) => {
                f.kind = kind::HELLO;
                (f.version, f.node, f.nonce) = (h.version, h.node, h.nonce);
            }
            Body::Challenge(c) => {
                f.kind = kind::CHALLENGE;
                (f.version, f.node, f.nonce, f.proof) = (c.version, c.node, c.nonce, c.proof);
            }
            Body::Proof(p) => {
                f.kind = kind::PROOF;
                f.proof = p.proof;
            }
            Body::Welcome => f.kind = kind::WELCOME,
            Body::Refused(r) => {
                f.kind = kind::REFUSED;
                f.reason = r.reason;
            }
            Body::Forward(fw) => {
                f.kind = kind::FORWARD;
                (f.bridge, f.messages) = (fw.bridge, fw.messages);
            }
            Body::ForwardAck(a) => {
                f.kind = kind::FORWARD_ACK;
                (f.upto, f.ok) = (a.upto, a.ok);
            }
            Body::Ping(p) => {
                f.kind = kind::PING;
                f.at_ms = p.at_ms;
            }
            Body::Pong(p) => {
                f.kind = kind::PONG;
                f.at_ms = p.at_ms;
            }
        }
        f
    }

    /// What the frame says; `None` for a kind this node does not know.
    pub fn body(self) -> Option<Body> {
        let f = self;
        Some(match f.kind {
            kind::HELLO => Body::Hello(Hello {
                version: f.version,
                node: f.node,
                nonce: f.nonce,
            }),
            kind::CHALLENGE => Body::Challenge(Challenge {
                version: f.version,
                node: f.node,
                nonce: f.nonce,
                proof: f.proof,
            }),
            kind::PROOF => Body::Proof(Proof { proof: f.proof }),
            kind::WELCOME => Body::Welcome,
            kind::REFUSED => Body::Refused(Refused { reason: f.reason }),
            kind::FORWARD => Body::Forward(Forward {
                bridge: f.bridge,
                messages: f.messages,
            }),
            kind::FORWARD_ACK => Body::ForwardAck(ForwardAck {
                upto: f.upto,
                ok: f.ok,
            }),
            kind::PING => Body::Ping(Ping { at_ms: f.at_ms }),
            kind::PONG => Body::Pong(Ping { at_ms: f.at_ms }),
            _ => return None,
        })
    }
}

impl prost::Message for Frame {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        use encoding::{bytes, message, string, uint32, uint64};
        uint32::encode(1, &self.kind, buf);
        if self.version != 0 {
            uint32::encode(2, &self.version, buf);
        }
        if !self.node.is_empty() {
            string::encode(3, &self.node, buf);
        }
        if !self.nonce.is_empty() {
            bytes::encode(4, &self.nonce, buf);
        }
        if !self.proof.is_empty() {
            bytes::encode(5, &self.proof, buf);
        }
        if !self.reason.is_empty() {
            string::encode(6, &self.reason, buf);
        }
        if !self.bridge.is_empty() {
            string::encode(7, &self.bridge, buf);
        }
        message::encode_repeated(8, &self.messages, buf);
        if self.upto != 0 {
            uint64::encode(9, &self.upto, buf);
        }
        if self.ok {
            encoding::bool::encode(10, &self.ok, buf);
        }
        if self.at_ms != 0 {
            uint64::encode(11, &self.at_ms, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        use encoding::{bytes, message, string, uint32, uint64};
        match tag {
            1 => uint32::merge(wire_type, &mut self.kind, buf, ctx),
            2 => uint32::merge(wire_type, &mut self.version, buf, ctx),
            3 => string::merge(wire_type, &mut self.node, buf, ctx),
            4 => bytes::merge(wire_type, &mut self.nonce, buf, ctx),
            5 => bytes::merge(wire_type, &mut self.proof, buf, ctx),
            6 => string::merge(wire_type, &mut self.reason, buf, ctx),
            7 => string::merge(wire_type, &mut self.bridge, buf, ctx),
            8 => message::merge_repeated(wire_type, &mut self.messages, buf, ctx),
            9 => uint64::merge(wire_type, &mut self.upto, buf, ctx),
            10 => encoding::bool::merge(wire_type, &mut self.ok, buf, ctx),
            11 => uint64::merge(wire_type, &mut self.at_ms, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        use encoding::{bytes, message, string, uint32, uint64};
        let opt = |present: bool, len: usize| if present { len } else { 0 };
        uint32::encoded_len(1, &self.kind)
            + opt(self.version != 0, uint32::encoded_len(2, &self.version))
            + opt(!self.node.is_empty(), string::encoded_len(3, &self.node))
            + opt(!self.nonce.is_empty(), bytes::encoded_len(4, &self.nonce))
            + opt(!self.proof.is_empty(), bytes::encoded_len(5, &self.proof))
            + opt(
                !self.reason.is_empty(),
                string::encoded_len(6, &self.reason),
            )
            + opt(
                !self.bridge.is_empty(),
                string::encoded_len(7, &self.bridge),
            )
            + message::encoded_len_repeated(8, &self.messages)
            + opt(self.upto != 0, uint64::encoded_len(9, &self.upto))
            + opt(self.ok, encoding::bool::encoded_len(10, &self.ok))
            + opt(self.at_ms != 0, uint64::encoded_len(11, &self.at_ms))
    }

    fn clear(&mut self) {
        *self = Frame::default();
    }
}

impl prost::Message for Carried {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if self.seq != 0 {
            encoding::uint64::encode(1, &self.seq, buf);
        }
        if !self.message.is_empty() {
            encoding::bytes::encode(2, &self.message, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => encoding::uint64::merge(wire_type, &mut self.seq, buf, ctx),
            2 => encoding::bytes::merge(wire_type, &mut self.message, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        (if self.seq != 0 {
            encoding::uint64::encoded_len(1, &self.seq)
        } else {
            0
        }) + (if self.message.is_empty() {
            0
        } else {
            encoding::bytes::encoded_len(2, &self.message)
        })
    }

    fn clear(&mut self) {
        *self = Carried::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn roundtrip(body: Body) {
        let f = Frame::of(body.clone());
        let bytes = f.encode_to_vec();
        assert_eq!(bytes.len(), f.encoded_len());
        assert_eq!(Frame::decode(&bytes[..]).unwrap().body(), Some(body));
    }

    #[test]
    fn every_body_survives_the_wire() {
        roundtrip(Body::Hello(Hello {
            version: PROTOCOL_VERSION,
            node: "a@127.0.0.1".into(),
            nonce: vec![1, 2, 3],
        }));
        roundtrip(Body::Challenge(Challenge {
            version: 1,
            node: "b@127.0.0.1".into(),
            nonce: vec![9; 32],
            proof: vec![7; 32],
        }));
        roundtrip(Body::Proof(Proof { proof: vec![5; 32] }));
        roundtrip(Body::Welcome);
        roundtrip(Body::Refused(Refused {
            reason: "bad cookie".into(),
        }));
        roundtrip(Body::Forward(Forward {
            bridge: "up".into(),
            messages: vec![
                Carried {
                    seq: 1,
                    message: Bytes::from_static(b"m1"),
                },
                Carried {
                    seq: 300,
                    message: Bytes::from_static(b""),
                },
            ],
        }));
        roundtrip(Body::ForwardAck(ForwardAck {
            upto: 300,
            ok: true,
        }));
        roundtrip(Body::ForwardAck(ForwardAck { upto: 0, ok: false }));
        roundtrip(Body::Ping(Ping { at_ms: 42 }));
        roundtrip(Body::Pong(Ping { at_ms: 0 }));
    }

    #[test]
    fn unknown_fields_are_skipped_and_unknown_kinds_are_none() {
        let mut bytes = Frame::of(Body::Welcome).encode_to_vec();
        // Field 99, a string a newer node might add.
        encoding::string::encode(99, &"later".to_string(), &mut bytes);
        assert_eq!(
            Frame::decode(&bytes[..]).unwrap().body(),
            Some(Body::Welcome)
        );
        let mut other = Vec::new();
        encoding::uint32::encode(1, &77, &mut other);
        assert_eq!(Frame::decode(&other[..]).unwrap().body(), None);
        assert!(Frame::decode(&[0x0a, 0xff][..]).is_err(), "truncated");
    }
}
