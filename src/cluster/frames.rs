//! The node-to-node frames: prost messages, each sent as a 4-byte big-endian length
//! and the encoded `Frame`. A field added later gets a new tag; an old node skips
//! tags it does not know, as protobuf does.

/// Bumped when a frame changes meaning (not when one is added).
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Frame {
    #[prost(oneof = "Body", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9")]
    pub body: Option<Body>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Body {
    /// Dialer -> acceptor: who I am, my nonce.
    #[prost(message, tag = "1")]
    Hello(Hello),
    /// Acceptor -> dialer: who I am, my nonce, my proof.
    #[prost(message, tag = "2")]
    Challenge(Challenge),
    /// Dialer -> acceptor: my proof.
    #[prost(message, tag = "3")]
    Proof(Proof),
    /// Acceptor -> dialer: the link is up.
    #[prost(message, tag = "4")]
    Welcome(Welcome),
    /// Either side: the link is refused or ends, and why.
    #[prost(message, tag = "5")]
    Refused(Refused),
    /// RPC bridge: messages to publish on the receiving node.
    #[prost(message, tag = "6")]
    Forward(Forward),
    /// RPC bridge: everything up to `upto` is durable on the receiving node.
    #[prost(message, tag = "7")]
    ForwardAck(ForwardAck),
    #[prost(message, tag = "8")]
    Ping(Ping),
    #[prost(message, tag = "9")]
    Pong(Ping),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(string, tag = "2")]
    pub node: String,
    #[prost(bytes = "vec", tag = "3")]
    pub nonce: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Challenge {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(string, tag = "2")]
    pub node: String,
    #[prost(bytes = "vec", tag = "3")]
    pub nonce: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub proof: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Proof {
    #[prost(bytes = "vec", tag = "1")]
    pub proof: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Welcome {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Refused {
    #[prost(string, tag = "1")]
    pub reason: String,
}

/// One forwarded message: its cache seq on the sending node and the message in the
/// store's own encoding (`StoredMessage`, versioned).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Carried {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(bytes = "bytes", tag = "2")]
    pub message: bytes::Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Forward {
    /// Which bridge of the sender (for logs and counts).
    #[prost(string, tag = "1")]
    pub bridge: String,
    #[prost(message, repeated, tag = "2")]
    pub messages: Vec<Carried>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ForwardAck {
    #[prost(uint64, tag = "1")]
    pub upto: u64,
    /// Messages the receiver could not store (false acks nothing).
    #[prost(bool, tag = "2")]
    pub ok: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Ping {
    #[prost(uint64, tag = "1")]
    pub at_ms: u64,
}

impl Frame {
    pub fn of(body: Body) -> Frame {
        Frame { body: Some(body) }
    }
}
