//! One held client connection for `scale-hold`: plain TCP, TLS (rustls client, sans-IO
//! driven here), or WebSocket over TCP; MQTT bytes in and out, nothing else.
//! Only what idle clients need: send a few bytes (CONNECT, PINGREQ), read what comes.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Which listener the connections use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Tcp,
    Tls,
    Ws,
}

/// A client TLS config trusting only `cafile` (the brokers' shared test CA).
pub fn tls_config(cafile: &Path) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cafile)
        .with_context(|| format!("reading {}", cafile.display()))?
    {
        roots
            .add(cert.with_context(|| format!("a certificate in {}", cafile.display()))?)
            .with_context(|| format!("adding a CA from {}", cafile.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every connection a full handshake: the clients share this config, and with its
    // session cache they would resume with the tickets earlier clients got.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

pub enum Link {
    Tcp(TcpStream),
    Tls(TcpStream, Box<ClientConnection>),
    /// The socket and the frames read and not yet unframed.
    Ws(TcpStream, BytesMut),
}

impl Link {
    /// Connect and finish the TLS handshake or WebSocket upgrade (no MQTT yet).
    /// From `source` (a loopback address, port chosen at connect) when given.
    pub async fn open(
        addr: SocketAddr,
        source: Option<std::net::IpAddr>,
        kind: Kind,
        tls: Option<&Arc<ClientConfig>>,
    ) -> Result<Link> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = source {
            // Leave the port to connect(), which only needs the 4-tuple unique: a
            // port bound here would be exclusive.
            set_int_opt(&socket, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("binding {ip}"))?;
        }
        // Closed with a reset, not a FIN: no TIME_WAIT left on the generator's side.
        // 19,000 closed connections per run would otherwise hold most of the ephemeral
        // ports for a minute and slow every later run's connects to a crawl.
        zero_linger(&socket)?;
        let mut stream = socket
            .connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(match kind {
            Kind::Tcp => Link::Tcp(stream),
            Kind::Ws => {
                let rest = crate::ws_frames::upgrade(&mut stream, addr).await?;
                Link::Ws(stream, rest)
            }
            Kind::Tls => {
                let config = tls.context("a TLS link needs --cafile")?.clone();
                let name = ServerName::IpAddress(addr.ip().into());
                let mut conn = Box::new(ClientConnection::new(config, name)?);
                while conn.is_handshaking() {
                    write_tls(&mut stream, &mut conn).await?;
                    if conn.is_handshaking() && read_tls(&mut stream, &mut conn).await? == 0 {
                        bail!("closed during the TLS handshake");
                    }
                }
                write_tls(&mut stream, &mut conn).await?;
                Link::Tls(stream, conn)
            }
        })
    }

    /// Send MQTT bytes.
    pub async fn send(&mut self, mqtt: &[u8]) -> Result<()> {
        match self {
            Link::Tcp(stream) => stream.write_all(mqtt).await?,
            Link::Ws(stream, _) => {
                let mut frame = BytesMut::new();
                crate::ws_frames::frame_into(mqtt, &mut frame);
                stream.write_all(&frame).await?;
            }
            Link::Tls(stream, conn) => {
                conn.writer().write_all(mqtt)?;
                write_tls(stream, conn).await?;
            }
        }
        Ok(())
    }

    /// Read once and append the MQTT bytes to `into`; false when the broker closed.
    pub async fn recv(&mut self, into: &mut BytesMut) -> Result<bool> {
        match self {
            Link::Tcp(stream) => Ok(stream.read_buf(into).await? > 0),
            Link::Ws(stream, wire) => {
                if wire.is_empty() && stream.read_buf(wire).await? == 0 {
                    return Ok(false);
                }
                crate::ws_frames::unframe(wire, into)?;
                Ok(true)
            }
            Link::Tls(stream, conn) => {
                if read_tls(stream, conn).await? == 0 {
                    return Ok(false);
                }
                let mut chunk = [0u8; 512];
                loop {
                    match conn.reader().read(&mut chunk) {
                        Ok(0) => return Ok(false), // close_notify
                        Ok(n) => into.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                }
                // Session tickets and alerts the read produced nothing to answer; flush
                // anyway in case a key update wants out.
                write_tls(stream, conn).await?;
                Ok(true)
            }
        }
    }
}

fn set_int_opt(socket: &TcpSocket, level: i32, name: i32, value: i32) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open (we own the socket); `value` outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setsockopt");
    }
    Ok(())
}

/// SO_LINGER on with a zero timeout (tokio deprecates `set_linger` because a
/// non-zero linger blocks on drop; a zero one resets at once).
fn zero_linger(socket: &TcpSocket) -> Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the descriptor is open (we own the socket); `linger` outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setting SO_LINGER");
    }
    Ok(())
}

async fn write_tls(stream: &mut TcpStream, conn: &mut ClientConnection) -> Result<()> {
    while conn.wants_write() {
        let mut out = Vec::new();
        conn.write_tls(&mut out)?;
        stream.write_all(&out).await?;
    }
    Ok(())
}

/// One socket read fed to the TLS session; the bytes read (0: closed).
async fn read_tls(stream: &mut TcpStream, conn: &mut ClientConnection) -> Result<usize> {
    let mut buf = [0u8; 8192];
    let n = stream.read(&mut buf).await?;
    let mut rest = &buf[..n];
    while !rest.is_empty() {
        conn.read_tls(&mut rest)?;
        conn.process_new_packets().context("TLS")?;
    }
    Ok(n)
}
