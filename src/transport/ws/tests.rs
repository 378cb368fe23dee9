use bytes::BytesMut;

use super::*;

fn config() -> WsConfig {
    WsConfig::with_defaults()
}

fn request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A client frame: masked, as RFC 6455 requires.
fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![opcode | if fin { 0x80 } else { 0 }];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n < 65536 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;

fn upgraded() -> WsState {
    let mut ws = WsState::default();
    ws.pending_mut()
        .extend_from_slice(request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n").as_bytes());
    assert!(ws.upgrade(&config(), &mut BytesMut::new()).unwrap());
    let n = ws.out().len();
    ws.sent(n);
    ws
}

/// Unmasked server frames in `out`: (opcode, payload) each.
fn server_frames(mut out: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while !out.is_empty() {
        assert_eq!(out[0] & 0x80, 0x80, "server frames are final");
        assert_eq!(out[1] & 0x80, 0, "server frames are unmasked");
        let (len, at) = match out[1] & 0x7f {
            126 => (u16::from_be_bytes([out[2], out[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(out[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        frames.push((out[0] & 0x0f, out[at..at + len].to_vec()));
        out = &out[at + len..];
    }
    frames
}

#[test]
fn the_accept_key_is_rfc_6455s_example() {
    // RFC 6455 section 1.3.
    assert_eq!(
        tungstenite::handshake::derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    let head = request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n");
    let (len, response) = upgrade_response(head.as_bytes(), &config())
        .unwrap()
        .unwrap();
    assert_eq!(len, head.len());
    assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert!(response.contains("Sec-WebSocket-Protocol: mqtt\r\n"));
    assert!(response.ends_with("\r\n\r\n"));
}

#[test]
fn the_first_supported_subprotocol_offered_is_chosen() {
    for (offered, chosen) in [
        ("mqttv3.1", "mqttv3.1"),
        ("mqttv3.1.1", "mqttv3.1.1"),
        ("chat, mqtt", "mqtt"),
        ("mqttv3.1, mqtt", "mqttv3.1"),
    ] {
        let head = request("/mqtt", &format!("Sec-WebSocket-Protocol: {offered}\r\n"));
        let (_, response) = upgrade_response(head.as_bytes(), &config())
            .unwrap()
            .unwrap();
        assert!(
            response.contains(&format!("Sec-WebSocket-Protocol: {chosen}\r\n")),
            "{offered}: {response}"
        );
    }
}

#[test]
fn upgrade_refusals_say_why() {
    let cases = [
        (request("/", "Sec-WebSocket-Protocol: mqtt\r\n"), 404),
        (request("/mqtt/x", "Sec-WebSocket-Protocol: mqtt\r\n"), 404),
        (request("/mqtt", ""), 400),
        (request("/mqtt", "Sec-WebSocket-Protocol: chat\r\n"), 400),
        ("GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), 426),
        ("POST /mqtt HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), 405),
        ("\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c".to_string(), 400),
        (
            request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n")
                .replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
            400,
        ),
        (
            request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n")
                .replace("Version: 13", "Version: 8"),
            426,
        ),
    ];
    for (head, status) in cases {
        let refusal = upgrade_response(head.as_bytes(), &config()).unwrap_err();
        assert_eq!(refusal.status, status, "{head:?}: {}", refusal.reason);
        assert!(refusal
            .response()
            .starts_with(&format!("HTTP/1.1 {status} ")));
    }
    let mut lenient = config();
    lenient.fail_if_no_subprotocol = false;
    let (_, response) = upgrade_response(request("/mqtt", "").as_bytes(), &lenient)
        .unwrap()
        .unwrap();
    assert!(!response.contains("Sec-WebSocket-Protocol"));
    // A query string is not part of the path.
    assert!(upgrade_response(
        request("/mqtt?x=1", "Sec-WebSocket-Protocol: mqtt\r\n").as_bytes(),
        &config()
    )
    .is_ok());
}

#[test]
fn an_incomplete_head_waits_and_an_endless_one_is_refused() {
    let head = request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n");
    for cut in 0..head.len() {
        assert_eq!(
            upgrade_response(&head.as_bytes()[..cut], &config()),
            Ok(None)
        );
    }
    let endless = format!("GET /mqtt HTTP/1.1\r\nX: {}", "a".repeat(9000));
    assert_eq!(
        upgrade_response(endless.as_bytes(), &config())
            .unwrap_err()
            .status,
        431
    );
}

#[test]
fn frames_sent_right_behind_the_request_are_decoded() {
    let mut ws = WsState::default();
    let mut wire = request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n").into_bytes();
    wire.extend(client_frame(BINARY, true, b"\xc0\x00"));
    ws.pending_mut().extend_from_slice(&wire[..10]);
    let mut rbuf = BytesMut::new();
    assert!(!ws.upgrade(&config(), &mut rbuf).unwrap());
    ws.pending_mut().extend_from_slice(&wire[10..]);
    assert!(ws.upgrade(&config(), &mut rbuf).unwrap());
    assert_eq!(&rbuf[..], b"\xc0\x00");
    assert!(ws.upgraded);
}

#[test]
fn two_packets_in_one_frame_and_one_packet_over_three_frames() {
    let mut ws = upgraded();
    let ping_and_disconnect = b"\xc0\x00\xe0\x00";
    let publish = b"\x30\x0a\x00\x03a/bhello";
    let mut wire = client_frame(BINARY, true, ping_and_disconnect);
    // One message in three fragments,
    wire.extend(client_frame(BINARY, false, &publish[..3]));
    wire.extend(client_frame(CONTINUATION, false, &publish[3..7]));
    // a ping between fragments (allowed: control frames may interleave),
    wire.extend(client_frame(0x9, true, b"hi"));
    wire.extend(client_frame(CONTINUATION, true, &publish[7..]));
    // and a second message of three frames of its own.
    for part in [&publish[..1], &publish[1..2], &publish[2..]] {
        wire.extend(client_frame(BINARY, true, part));
    }
    let mut expected = ping_and_disconnect.to_vec();
    expected.extend_from_slice(publish);
    expected.extend_from_slice(publish);
    // Fed whole, and cut at every byte: the MQTT bytes are the same.
    for cut in 0..wire.len() {
        let mut ws = upgraded();
        let mut rbuf = BytesMut::new();
        for part in [&wire[..cut], &wire[cut..]] {
            assert_eq!(ws.received(part, &mut rbuf).unwrap(), WsReceived::Open);
        }
        assert_eq!(&rbuf[..], &expected[..], "cut at {cut}");
        assert_eq!(server_frames(ws.out()), [(0xa, b"hi".to_vec())]);
    }
    let mut rbuf = BytesMut::new();
    for byte in &wire {
        ws.received(std::slice::from_ref(byte), &mut rbuf).unwrap();
    }
    assert_eq!(&rbuf[..], &expected[..]);
}

#[test]
fn a_large_frame_is_streamed_into_the_read_buffer() {
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let wire = client_frame(BINARY, true, &payload);
    let mut ws = upgraded();
    let mut rbuf = BytesMut::new();
    for chunk in wire.chunks(16 * 1024) {
        ws.received(chunk, &mut rbuf).unwrap();
        // No copy of the frame is kept while it arrives.
        assert!(ws.pending.len() < 16, "{}", ws.pending.len());
    }
    assert_eq!(&rbuf[..], &payload[..]);
}

#[test]
fn a_text_frame_is_closed_with_1003() {
    let mut ws = upgraded();
    let mut rbuf = BytesMut::new();
    let err = ws
        .received(&client_frame(0x1, true, b"hello"), &mut rbuf)
        .unwrap_err();
    assert!(matches!(err, WsError::TextFrame));
    let frames = server_frames(ws.out());
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, 0x8);
    assert_eq!(&frames[0].1[..2], &1003u16.to_be_bytes());
    assert!(rbuf.is_empty());
    // Nothing more goes out after the Close frame.
    assert_eq!(ws.stage(b"\xd0\x00"), 0);
}

#[test]
fn protocol_violations_are_closed_with_1002() {
    let unmasked = vec![0x82, 0x02, 0xc0, 0x00];
    let mut reserved = client_frame(BINARY, true, b"\xc0\x00");
    reserved[0] |= 0x40;
    let mut big_ping = client_frame(0x9, true, &[0; 126]);
    big_ping.truncate(20);
    let stray = client_frame(CONTINUATION, true, b"\xc0\x00");
    let mut nested = client_frame(BINARY, false, b"\xc0");
    nested.extend(client_frame(BINARY, true, b"\x00"));
    for wire in [unmasked, reserved, big_ping, stray, nested] {
        let mut ws = upgraded();
        let err = ws.received(&wire, &mut BytesMut::new()).unwrap_err();
        assert!(matches!(err, WsError::Protocol(_)), "{wire:?}: {err}");
        let frames = server_frames(ws.out());
        assert_eq!(frames.last().unwrap().0, 0x8);
        assert_eq!(&frames.last().unwrap().1[..2], &1002u16.to_be_bytes());
    }
}

#[test]
fn a_close_frame_is_answered_and_ends_the_stream() {
    let mut ws = upgraded();
    let mut wire = client_frame(BINARY, true, b"\xc0\x00");
    wire.extend(client_frame(0x8, true, &1000u16.to_be_bytes()));
    let mut rbuf = BytesMut::new();
    assert_eq!(ws.received(&wire, &mut rbuf).unwrap(), WsReceived::Closed);
    assert_eq!(&rbuf[..], b"\xc0\x00");
    assert_eq!(
        server_frames(ws.out()),
        [(0x8, 1000u16.to_be_bytes().to_vec())]
    );
    // Closing afterwards sends no second Close frame.
    let n = ws.out().len();
    ws.sent(n);
    ws.close();
    assert!(ws.out().is_empty());
}

#[test]
fn output_goes_out_in_bounded_binary_frames() {
    let mut ws = upgraded();
    let output: Vec<u8> = (0..150_000u32).map(|i| i as u8).collect();
    let taken = ws.stage(&output);
    assert_eq!(taken, MAX_OUT_FRAME);
    // While a full frame waits, nothing more is framed.
    assert_eq!(ws.stage(&output[taken..]), 0);
    let frames = server_frames(ws.out());
    assert_eq!(frames, [(0x2, output[..MAX_OUT_FRAME].to_vec())]);
    let n = ws.out().len();
    ws.sent(n);
    assert_eq!(ws.stage(&output[taken..]), MAX_OUT_FRAME);
    ws.close();
    let frames = server_frames(ws.out());
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[1], (0x8, 1000u16.to_be_bytes().to_vec()));
    // Before the upgrade nothing is framed.
    assert_eq!(WsState::default().stage(b"\x20\x02\x00\x00"), 0);
}

#[test]
fn pongs_to_a_client_that_does_not_read_make_the_state_backlogged() {
    // Framed output alone never does: staging stops at one waiting frame.
    let mut ws = upgraded();
    let output = vec![7u8; 4 * MAX_OUT_FRAME];
    // A frame's worth less one byte waits: one more frame is still staged.
    ws.out.extend_from_slice(&vec![0u8; MAX_OUT_FRAME - 1]);
    assert_eq!(ws.stage(&output), MAX_OUT_FRAME);
    assert_eq!(ws.stage(&output), 0);
    assert!(!ws.backlogged(), "{} bytes of frames", ws.out().len());
    // Every Ping queues its Pong, until the driver must stop reading.
    let mut ws = upgraded();
    let ping = client_frame(0x9, true, &[b'p'; 125]);
    let mut rbuf = BytesMut::new();
    let mut pings = 0;
    while !ws.backlogged() {
        assert_eq!(ws.received(&ping, &mut rbuf).unwrap(), WsReceived::Open);
        pings += 1;
        assert!(pings < 10_000, "still not backlogged after {pings} Pongs");
    }
    assert!(rbuf.is_empty());
    let pongs = server_frames(ws.out());
    assert_eq!(pongs.len(), pings);
    assert!(pongs.iter().all(|p| *p == (0xA, vec![b'p'; 125])));
    // Written, it reads again.
    let n = ws.out().len();
    ws.sent(n);
    assert!(!ws.backlogged());
}
