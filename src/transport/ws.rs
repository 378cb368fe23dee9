//! MQTT over WebSocket (RFC 6455, server side) as a sans-IO transport state: the
//! HTTP upgrade, then frames in (their binary payloads appended to the read buffer)
//! and the channel's output out as binary frames. It never touches a socket: the
//! driver hands it what it read and writes what it has in `out`.
//!
//! Frame headers are parsed and formatted by tungstenite (`FrameHeader`), and the
//! accept key is its `derive_accept_key`; the request head is parsed by httparse.
//! tungstenite's `WebSocketContext` is not used: it buffers each whole message in a
//! read buffer it keeps (128 KiB by default) and keeps its write buffer at its high
//! mark, which every hibernated connection would carry. Here a data frame's payload
//! is unmasked straight into the read buffer as it arrives, so an idle WebSocket
//! connection holds a few dozen bytes of state, and MQTT packets may span frames and
//! one frame may hold several packets: only the channel decodes packets.

use std::io::Cursor;

use bytes::{Buf, BytesMut};
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::config::WsConfig;

/// Outgoing data frames carry at most this much of the channel's output, and no more
/// is framed while this much waits for the socket: a slow reader holds the channel
/// back as it does on plain TCP.
pub(crate) const MAX_OUT_FRAME: usize = 64 * 1024;
/// Past this much waiting for the socket, the connection reads no more from the
/// client until it is written: framed output alone stays under two frames, but every
/// Ping read queues a Pong, and a client that pings without reading would otherwise
/// grow `out` without bound.
const MAX_OUT_BACKLOG: usize = 3 * MAX_OUT_FRAME;
/// An HTTP request head longer than this is refused (431).
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// RFC 6455 5.5: control frames carry at most 125 bytes.
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// A WebSocket connection's state.
#[derive(Debug, Default)]
pub(crate) struct WsState {
    upgraded: bool,
    /// Wire bytes not yet taken: the request head while upgrading, then at most an
    /// incomplete frame header and what a read brought after it.
    pending: BytesMut,
    /// The frame being read.
    frame: Option<InFrame>,
    /// Inside a fragmented binary message: continuation frames are due.
    continuing: bool,
    /// Bytes for the socket: the upgrade response, frames.
    out: BytesMut,
    /// A Close frame was queued: nothing more is sent after it.
    close_sent: bool,
}

#[derive(Debug)]
struct InFrame {
    kind: FrameKind,
    mask: [u8; 4],
    /// Payload bytes already unmasked (the mask's position).
    done: u64,
    remaining: u64,
}

#[derive(Debug)]
enum FrameKind {
    Data,
    /// A control frame's payload is collected (at most 125 bytes).
    Control(Control, BytesMut),
}

/// Why a WebSocket connection is closed: the close code sent to the client says it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    #[error("WebSocket: text frames are not MQTT (closed with 1003)")]
    TextFrame,
    #[error("WebSocket protocol error: {0} (closed with 1002)")]
    Protocol(String),
    #[error("WebSocket upgrade refused ({status}): {reason}")]
    Refused { status: u16, reason: String },
}

/// What a call to `received` found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WsReceived {
    Open,
    /// The client sent a Close frame (answered): like end of stream.
    Closed,
}

impl WsState {
    /// Where a lower layer (TLS) appends the plaintext it decrypted.
    pub fn pending_mut(&mut self) -> &mut BytesMut {
        &mut self.pending
    }

    pub fn out(&self) -> &[u8] {
        &self.out
    }

    /// So much waits for the socket that nothing more may be read (see
    /// `MAX_OUT_BACKLOG`).
    pub fn backlogged(&self) -> bool {
        self.out.len() >= MAX_OUT_BACKLOG
    }

    /// `n` bytes of `out` went to the socket (or to the TLS layer).
    pub fn sent(&mut self, n: usize) {
        self.out.advance(n);
        if self.out.is_empty() {
            // An idle connection keeps no write buffer.
            self.out = BytesMut::new();
        }
    }

    /// Try to complete the HTTP upgrade from what is pending: Ok(true) once the
    /// response (101) is queued, with any frames already sent behind the request
    /// decoded into `rbuf`; Ok(false) while the head is incomplete. A refusal queues
    /// its HTTP response (4xx) and says why.
    pub fn upgrade(&mut self, config: &WsConfig, rbuf: &mut BytesMut) -> Result<bool, WsError> {
        match upgrade_response(&self.pending, config) {
            Ok(None) => Ok(false),
            Ok(Some((head_len, response))) => {
                self.pending.advance(head_len);
                self.out.extend_from_slice(response.as_bytes());
                self.upgraded = true;
                self.decode(rbuf)?;
                Ok(true)
            }
            Err(refused) => {
                self.out.extend_from_slice(refused.response().as_bytes());
                self.close_sent = true;
                Err(WsError::Refused {
                    status: refused.status,
                    reason: refused.reason,
                })
            }
        }
    }

    /// Wire bytes after the upgrade: append the binary payloads they carry to `rbuf`.
    /// A protocol violation queues a Close frame with its code and is an error.
    pub fn received(&mut self, wire: &[u8], rbuf: &mut BytesMut) -> Result<WsReceived, WsError> {
        self.pending.extend_from_slice(wire);
        self.decode(rbuf)
    }

    /// Decode what is pending (after the upgrade).
    pub fn decode(&mut self, rbuf: &mut BytesMut) -> Result<WsReceived, WsError> {
        if !self.upgraded {
            return Ok(WsReceived::Open);
        }
        let result = self.decode_frames(rbuf);
        if self.pending.is_empty() {
            self.pending = BytesMut::new();
        }
        match result {
            Err(WsError::TextFrame) => self.queue_close(CloseCode::Unsupported, "text frame"),
            Err(WsError::Protocol(_)) => self.queue_close(CloseCode::Protocol, ""),
            _ => {}
        }
        result
    }

    fn decode_frames(&mut self, rbuf: &mut BytesMut) -> Result<WsReceived, WsError> {
        loop {
            let Some(frame) = self.frame.as_mut() else {
                let mut cursor = Cursor::new(&self.pending[..]);
                let parsed = FrameHeader::parse(&mut cursor)
                    .map_err(|e| WsError::Protocol(e.to_string()))?;
                let Some((header, len)) = parsed else {
                    return Ok(WsReceived::Open);
                };
                let header_len = cursor.position() as usize;
                self.pending.advance(header_len);
                self.frame = Some(self.start_frame(header, len)?);
                continue;
            };
            // As much of the payload as is here, unmasked into its destination: the
            // read buffer (data) or the frame's own few bytes (control).
            let take = usize::try_from(frame.remaining)
                .unwrap_or(usize::MAX)
                .min(self.pending.len());
            let chunk = self.pending.split_to(take);
            let into: &mut BytesMut = match &mut frame.kind {
                FrameKind::Data => rbuf,
                FrameKind::Control(_, payload) => payload,
            };
            let start = into.len();
            into.extend_from_slice(&chunk);
            unmask(&mut into[start..], frame.mask, frame.done);
            frame.done += take as u64;
            frame.remaining -= take as u64;
            if frame.remaining > 0 {
                return Ok(WsReceived::Open);
            }
            if let Some(InFrame {
                kind: FrameKind::Control(control, payload),
                ..
            }) = self.frame.take()
            {
                if self.control(control, &payload) == WsReceived::Closed {
                    return Ok(WsReceived::Closed);
                }
            }
        }
    }

    /// Check a frame header against RFC 6455 and what MQTT over WebSocket allows.
    fn start_frame(&mut self, header: FrameHeader, len: u64) -> Result<InFrame, WsError> {
        let protocol = |what: &str| Err(WsError::Protocol(what.to_string()));
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return protocol("reserved bits set (no extension was negotiated)");
        }
        // RFC 6455 5.1: a server closes the connection on an unmasked client frame.
        let Some(mask) = header.mask else {
            return protocol("unmasked frame from the client");
        };
        let kind = match header.opcode {
            OpCode::Data(Data::Binary) if self.continuing => {
                return protocol("a new message inside a fragmented one");
            }
            OpCode::Data(Data::Binary) => {
                self.continuing = !header.is_final;
                FrameKind::Data
            }
            OpCode::Data(Data::Continue) if self.continuing => {
                self.continuing = !header.is_final;
                FrameKind::Data
            }
            OpCode::Data(Data::Continue) => {
                return protocol("a continuation frame out of a message")
            }
            OpCode::Data(Data::Text) => return Err(WsError::TextFrame),
            OpCode::Control(_) if !header.is_final => {
                return protocol("a fragmented control frame")
            }
            OpCode::Control(_) if len > MAX_CONTROL_PAYLOAD => {
                return protocol("a control frame over 125 bytes")
            }
            OpCode::Control(control @ (Control::Close | Control::Ping | Control::Pong)) => {
                FrameKind::Control(control, BytesMut::new())
            }
            _ => return protocol("a reserved opcode"),
        };
        Ok(InFrame {
            kind,
            mask,
            done: 0,
            remaining: len,
        })
    }

    /// A complete control frame: Ping is answered with Pong, Close with Close.
    fn control(&mut self, control: Control, payload: &[u8]) -> WsReceived {
        match control {
            Control::Ping if !self.close_sent => {
                self.queue_frame(OpCode::Control(Control::Pong), payload);
                WsReceived::Open
            }
            Control::Close => {
                if !self.close_sent {
                    // Echo the client's status code (RFC 6455 5.5.1).
                    let code = payload.get(..2).unwrap_or(&[]).to_vec();
                    self.queue_frame(OpCode::Control(Control::Close), &code);
                    self.close_sent = true;
                }
                WsReceived::Closed
            }
            _ => WsReceived::Open,
        }
    }

    /// Frame what the channel has for the client (at most `MAX_OUT_FRAME` per frame,
    /// and only while less than that waits): the count of its bytes taken.
    pub fn stage(&mut self, output: &[u8]) -> usize {
        if !self.upgraded || self.close_sent || self.out.len() >= MAX_OUT_FRAME {
            return 0;
        }
        let n = output.len().min(MAX_OUT_FRAME);
        if n > 0 {
            self.queue_frame(OpCode::Data(Data::Binary), &output[..n]);
        }
        n
    }

    /// Frame all of `bytes` (a refusing CONNACK), whatever waits already.
    pub fn stage_all(&mut self, bytes: &[u8]) {
        if !self.upgraded || self.close_sent {
            return;
        }
        for chunk in bytes.chunks(MAX_OUT_FRAME) {
            self.queue_frame(OpCode::Data(Data::Binary), chunk);
        }
    }

    /// The session ends: a Close frame (1000) goes out after what waits, unless one
    /// went already.
    pub fn close(&mut self) {
        if self.upgraded && !self.close_sent {
            self.queue_close(CloseCode::Normal, "");
        }
    }

    fn queue_close(&mut self, code: CloseCode, reason: &str) {
        if self.close_sent {
            return;
        }
        let mut payload = u16::from(code).to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        self.queue_frame(OpCode::Control(Control::Close), &payload);
        self.close_sent = true;
    }

    /// A final, unmasked (server) frame into `out`.
    fn queue_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        let header = FrameHeader {
            opcode,
            ..FrameHeader::default()
        };
        let mut head = [0u8; 14];
        let mut cursor = Cursor::new(&mut head[..]);
        // 14 bytes hold any header; writing to a slice cannot fail otherwise.
        if header.format(payload.len() as u64, &mut cursor).is_ok() {
            let len = cursor.position() as usize;
            self.out.reserve(len + payload.len());
            self.out.extend_from_slice(&head[..len]);
            self.out.extend_from_slice(payload);
        }
    }
}

/// XOR `data` with the frame's mask, `offset` bytes into the payload.
fn unmask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    let start = (offset % 4) as usize;
    for (i, byte) in data.iter_mut().enumerate() {
        *byte ^= mask[(start + i) % 4];
    }
}

/// An upgrade request answered with an HTTP error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: u16,
    pub reason: String,
}

impl Refusal {
    fn new(status: u16, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
        }
    }

    /// The HTTP response: status, and what a client needs to retry correctly.
    fn response(&self) -> String {
        let (text, extra) = match self.status {
            400 => ("Bad Request", ""),
            404 => ("Not Found", ""),
            405 => ("Method Not Allowed", "Allow: GET\r\n"),
            426 => (
                "Upgrade Required",
                "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            ),
            431 => ("Request Header Fields Too Large", ""),
            _ => ("Error", ""),
        };
        format!(
            "HTTP/1.1 {} {text}\r\n{extra}Connection: close\r\nContent-Length: 0\r\n\r\n",
            self.status
        )
    }
}

/// The server's answer to an upgrade request head (RFC 6455 4.2): None while the head
/// is incomplete; Some((its length, the 101 response)); or the refusal.
pub(crate) fn upgrade_response(
    head: &[u8],
    config: &WsConfig,
) -> Result<Option<(usize, String)>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(head) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if head.len() > MAX_REQUEST_HEAD => {
            return Err(Refusal::new(431, "request head over 8 KiB"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Refusal::new(400, format!("not an HTTP request: {e}"))),
    };
    let headers = &*request.headers;
    let header = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &'static str, token: &str| {
        header(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let path = request.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if path != config.mqtt_path {
        return Err(Refusal::new(
            404,
            format!("path {path:?} is not {:?}", config.mqtt_path),
        ));
    }
    if request.method != Some("GET") {
        return Err(Refusal::new(
            405,
            format!("method {:?}", request.method.unwrap_or("")),
        ));
    }
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(Refusal::new(426, "not a WebSocket upgrade request"));
    }
    if !has_token("sec-websocket-version", "13") {
        return Err(Refusal::new(426, "Sec-WebSocket-Version is not 13"));
    }
    let key = header("sec-websocket-key")
        .next()
        .map(str::trim)
        .unwrap_or("");
    // A base64 nonce of 16 bytes is 24 characters ending in "==".
    if key.len() != 24 || !key.ends_with("==") {
        return Err(Refusal::new(400, "no valid Sec-WebSocket-Key"));
    }
    let offered: Vec<&str> = header("sec-websocket-protocol")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let chosen = offered
        .iter()
        .find(|p| config.supported_subprotocols.iter().any(|s| s == *p));
    let protocol_line = match (chosen, offered.is_empty()) {
        (Some(p), _) => format!("Sec-WebSocket-Protocol: {p}\r\n"),
        (None, true) if !config.fail_if_no_subprotocol => String::new(),
        (None, true) => return Err(Refusal::new(400, "no Sec-WebSocket-Protocol offered")),
        (None, false) => {
            return Err(Refusal::new(
                400,
                format!("none of the subprotocols {offered:?} is supported"),
            ))
        }
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    Ok(Some((
        head_len,
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n{protocol_line}\r\n"
        ),
    )))
}

#[cfg(test)]
mod tests;
