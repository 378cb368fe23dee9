//! A client that sends and never reads is held back by its socket, whatever the
//! transport answers on its own: a real driver on a loopback socket, a TLS 1.3
//! client (OpenSSL) flooding KeyUpdate requests, each of which the server's PSK
//! session (OpenSSL too) answers with a KeyUpdate of its own.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslMethod, SslRef, SslVerifyMode, SslVersion};

use crate::broker::Broker;
use crate::config::TlsConfig;
use crate::transport::psk::PskServer;
use crate::transport::psk_file::PskTable;
use crate::transport::tls::{TlsListener, TlsServer};

/// What the client may get the broker to take from it: the socket buffers on both
/// sides (a few hundred KiB) and what the transport may hold, with room to spare.
const HELD_BACK_BYTES: usize = 1024 * 1024;
/// What it tries to send: far past that.
const FLOOD_BYTES: usize = 4 * HELD_BACK_BYTES;

extern "C" {
    // libssl's, which the `openssl` crate links but does not wrap.
    fn SSL_key_update(ssl: *mut std::ffi::c_void, updatetype: std::ffi::c_int) -> std::ffi::c_int;
}
const SSL_KEY_UPDATE_REQUESTED: std::ffi::c_int = 1;

/// Fixed socket buffers (the kernel doubles them), instead of ones that grow to
/// tens of MB: what the kernel holds stays small next to `HELD_BACK_BYTES`.
fn socket_buffers(fd: i32, receive: libc::c_int, send: libc::c_int) {
    for (opt, size) in [(libc::SO_RCVBUF, receive), (libc::SO_SNDBUF, send)] {
        // SAFETY: `fd` is an open socket; the value is a c_int of the given size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
    }
}

/// A broker serving one PSK listener's connection on a loopback port.
async fn serve_psk(broker: Arc<Broker>) -> u16 {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut tls = TlsConfig::with_defaults();
    tls.certfile = root.join("etc/certs/cert.pem");
    tls.keyfile = root.join("etc/certs/key.pem");
    tls.cacertfile = None;
    tls.tls_versions = vec!["tlsv1.3".into()];
    tls.psk_ciphers = vec!["PSK-AES128-GCM-SHA256".into()];
    let (table, _) = PskTable::parse("device-1:5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f", ":");
    let server = PskServer::new("mqtt:ssl:test", &tls, Arc::new(table)).unwrap();
    let layers = super::ListenerLayers {
        proxy: None,
        tls: Some(Arc::new(TlsListener {
            server: TlsServer::Psk(server),
            handshake_timeout: Duration::from_secs(5),
            peer_cert_as_username: None,
        })),
        ws: None,
    };
    super::test_listener::serve(broker, Some(layers), 4, |stream| {
        socket_buffers(stream.as_raw_fd(), 64 * 1024, 64 * 1024)
    })
    .await
}

/// Connect a TLS 1.3 certificate client (CONNECT first if `connected`), then send
/// KeyUpdate requests without ever reading; the bytes the broker took.
fn flood_key_updates(port: u16, connected: bool) -> usize {
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // It never reads: a small receive buffer.
    socket_buffers(tcp.as_raw_fd(), 4096, 64 * 1024);
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
    let connector = b.build();
    let mut config = connector.configure().unwrap();
    config.set_verify_hostname(false);
    let mut tls = config.connect("localhost", tcp).unwrap();
    if connected {
        tls.write_all(b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04test")
            .unwrap();
        let mut connack = [0u8; 4];
        tls.read_exact(&mut connack).unwrap();
        assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    }
    // From here on the client never reads: the broker's answers pile up.
    tls.get_ref()
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let ssl = tls.ssl() as *const SslRef as *mut std::ffi::c_void;
    let mut sent = 0;
    while sent < FLOOD_BYTES {
        // SAFETY: `ssl` is the live session `tls` owns, past its handshake.
        if unsafe { SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED) } != 1 {
            break;
        }
        // The request goes out with the next handshake step: 27 bytes.
        if tls.do_handshake().is_err() {
            break; // the socket took no more within the timeout
        }
        sent += 27;
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_key_updates_without_reading_is_held_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::config::Config::defaults(dir.path());
    config.node.data_dir = dir.path().join("data");
    let broker = Broker::open(config).unwrap();
    let port = serve_psk(broker).await;
    for connected in [false, true] {
        let sent = tokio::task::spawn_blocking(move || flood_key_updates(port, connected))
            .await
            .unwrap();
        assert!(
            sent < HELD_BACK_BYTES,
            "connected: {connected}: the broker took {} KiB of KeyUpdate requests",
            sent >> 10
        );
    }
}
