//! The driver's side of MQTT 5 enhanced authentication (§4.12): between CONNECT and
//! CONNACK, carry an exchange's data back and forth in AUTH packets. What to answer is
//! the exchange's (`hooks::AuthExchange`, pure); this module only moves the bytes.
//!
//! Bounded: at most `MAX_ROUNDS` AUTH packets from the client, each within the zone's
//! `idle_timeout` (the bound a CONNECT has). Anything but an AUTH (0x18) of the same
//! method in between is a protocol error, refused with CONNACK 0x82.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::{read_more, FINAL_WRITE};
use crate::broker::Broker;
use crate::channel::connect::refuse_unadmitted;
use crate::codec::{self, Auth, Connect, Packet, Properties, ProtocolVersion, ReasonCode};
use crate::hooks::AuthStep;
use crate::transport::Transport;

/// AUTH packets a client may send before it is in; SCRAM needs one.
const MAX_ROUNDS: usize = 4;

/// A client that authenticated by an exchange: what the CONNACK must carry.
#[derive(Debug, Clone)]
pub(crate) struct Enhanced {
    pub method: String,
    pub data: Option<bytes::Bytes>,
    pub superuser: bool,
}

/// The connection's socket halves, transport and read buffer, lent for the exchange.
pub(crate) struct Wire<'a> {
    pub reader: &'a OwnedReadHalf,
    pub writer: &'a mut OwnedWriteHalf,
    pub transport: &'a mut Transport,
    pub rbuf: &'a mut BytesMut,
}

/// How an exchange ended when it did not let the client in.
enum Refusal {
    /// Refuse with a CONNACK of this reason.
    Connack(ReasonCode),
    /// The client went away (or stopped talking): close without a word.
    Gone,
}

/// Run the exchange `connect` asks for. `Ok(None)`: it asks for none, or for a method
/// no hook serves (then `channel::connect` refuses it with 0x8C, as it always did).
/// On success the client's username becomes the one the exchange authenticated.
/// `Err`: the client was refused (the CONNACK is sent) or went away; the connection
/// is over.
pub(crate) async fn run(
    broker: &Broker,
    idle_timeout: Duration,
    peer: SocketAddr,
    connect: &mut Connect,
    wire: Wire<'_>,
) -> Result<Option<Enhanced>, ()> {
    let Wire {
        reader,
        writer,
        transport,
        rbuf,
    } = wire;
    let now_s = broker.now_ms() / 1000;
    let username = connect.username.as_deref();
    let banned = broker
        .banned
        .check(&connect.client_id, username, peer.ip(), now_s);
    let exchanged = async {
        // Before any exchange (a SCRAM round costs the server a PBKDF2 lookup):
        // `channel::connect` checks again with what the exchange proved.
        if let Some(kind) = banned {
            tracing::info!(client_id = %connect.client_id, %peer, by = kind.name(), "banned client refused");
            return Err(Refusal::Connack(ReasonCode::BANNED));
        }
        exchange(
            broker,
            idle_timeout,
            connect,
            reader,
            writer,
            transport,
            rbuf,
        )
        .await
    };
    match exchanged.await {
        Ok(enhanced) => Ok(enhanced),
        Err(Refusal::Gone) => Err(()),
        Err(Refusal::Connack(reason)) => {
            if let Some(connack) = refuse_unadmitted(peer, connect, reason).0 {
                let last = transport.send_all(writer, &connack);
                let _ = tokio::time::timeout(FINAL_WRITE, last).await;
            }
            Err(())
        }
    }
}

async fn exchange(
    broker: &Broker,
    idle_timeout: Duration,
    connect: &mut Connect,
    reader: &OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    transport: &mut Transport,
    rbuf: &mut BytesMut,
) -> Result<Option<Enhanced>, Refusal> {
    if connect.protocol != ProtocolVersion::V5 {
        return Ok(None);
    }
    let Some(method) = connect.properties.authentication_method.clone() else {
        return Ok(None);
    };
    let Some(mut exchange) = broker.hooks.enhanced_auth(&method) else {
        return Ok(None);
    };
    let first = connect.properties.authentication_data.clone();
    let mut step = exchange.step(first.as_deref().unwrap_or(&[]));
    for _ in 0..MAX_ROUNDS {
        match step {
            AuthStep::Done {
                username,
                data,
                superuser,
            } => {
                tracing::debug!(client_id = %connect.client_id, %username, method, "enhanced authentication succeeded");
                connect.username = Some(username);
                return Ok(Some(Enhanced {
                    method,
                    data,
                    superuser,
                }));
            }
            AuthStep::Fail(reason) => return Err(Refusal::Connack(reason)),
            AuthStep::Continue(data) => {
                let auth = Packet::Auth(Auth {
                    reason: ReasonCode::CONTINUE_AUTHENTICATION,
                    properties: Properties {
                        authentication_method: Some(method.clone()),
                        authentication_data: Some(data),
                        ..Properties::default()
                    },
                });
                let mut out = BytesMut::new();
                if codec::encode(&auth, ProtocolVersion::V5, &mut out).is_err() {
                    return Err(Refusal::Connack(ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR));
                }
                if transport.send_all(writer, &out).await.is_err() {
                    return Err(Refusal::Gone);
                }
                let answer =
                    next_packet(broker, idle_timeout, reader, writer, transport, rbuf).await?;
                let data = match answer {
                    Packet::Auth(a)
                        if a.reason == ReasonCode::CONTINUE_AUTHENTICATION
                            && a.properties.authentication_method.as_deref()
                                == Some(method.as_str()) =>
                    {
                        a.properties.authentication_data.unwrap_or_default()
                    }
                    Packet::Disconnect(_) => return Err(Refusal::Gone),
                    other => {
                        tracing::info!(client_id = %connect.client_id, packet = other.name(), "not the AUTH an enhanced authentication waits for");
                        return Err(Refusal::Connack(ReasonCode::PROTOCOL_ERROR));
                    }
                };
                step = exchange.step(&data);
            }
        }
    }
    tracing::info!(client_id = %connect.client_id, method, "enhanced authentication took too many rounds");
    Err(Refusal::Connack(ReasonCode::PROTOCOL_ERROR))
}

/// The client's next packet, within `idle_timeout`.
async fn next_packet(
    broker: &Broker,
    idle_timeout: Duration,
    reader: &OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    transport: &mut Transport,
    rbuf: &mut BytesMut,
) -> Result<Packet, Refusal> {
    let max_packet = broker.config.mqtt.max_packet_size as usize;
    let reading = async {
        loop {
            match codec::decode(rbuf, ProtocolVersion::V5, max_packet) {
                Ok(Some(packet)) => return Ok(packet),
                Ok(None) => {}
                Err(e) => {
                    tracing::info!(error = %e, "bad packet during enhanced authentication");
                    return Err(Refusal::Connack(e.reason_code()));
                }
            }
            read_more(reader, writer, transport, rbuf)
                .await
                .map_err(|_| Refusal::Gone)?;
        }
    };
    match tokio::time::timeout(idle_timeout, reading).await {
        Ok(result) => result,
        Err(_) => Err(Refusal::Gone),
    }
}
