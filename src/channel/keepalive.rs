//! Which keepalive a new connection is held to.
//!
//! The client asks for one in CONNECT. An MQTT 5 client can be told another in CONNACK
//! (Server Keep Alive), and then both sides use that one [MQTT-3.2.2-21]; without it the
//! server must use the client's [MQTT-3.2.2-22]. So: `server_keepalive` overrides every
//! v5 client; otherwise `max_keepalive` lowers a longer keepalive, or 0 (none), to
//! itself. A v3 client cannot be told, so, as Mosquitto does, one above
//! `max_keepalive` (or with 0) is refused with return code 2, identifier rejected.

use crate::codec::{ProtocolVersion, ReasonCode};
use crate::config::ZoneConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Keepalive {
    /// Seconds the broker enforces (× 1.5, see `keepalive_backoff`); 0 = none.
    pub seconds: u16,
    /// Server Keep Alive for the CONNACK, when it differs from what the client asked.
    pub server_keep_alive: Option<u16>,
}

/// The keepalive for a client that asked for `asked` seconds, or the CONNACK reason
/// that refuses it.
pub(crate) fn negotiate(
    version: ProtocolVersion,
    asked: u16,
    zone: &ZoneConfig,
) -> Result<Keepalive, ReasonCode> {
    let over_cap = zone
        .keepalive_cap()
        .filter(|&cap| asked == 0 || asked > cap);
    if version.is_v5() {
        let told = zone.server_keepalive.or(over_cap);
        return Ok(Keepalive {
            seconds: told.unwrap_or(asked),
            server_keep_alive: told,
        });
    }
    if over_cap.is_some() {
        return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    }
    Ok(Keepalive {
        seconds: asked,
        server_keep_alive: None,
    })
}

/// How many PINGREQs `wire` holds if it holds nothing else (a hibernated
/// connection's keepalive, answered without waking it); None for anything else,
/// including part of a packet. PINGREQ is the same two bytes in every version.
pub(crate) fn only_pings(wire: &[u8]) -> Option<usize> {
    let pings = wire.chunks(2).take_while(|p| p == &[0xC0, 0x00]).count();
    (pings > 0 && pings * 2 == wire.len()).then_some(pings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProtocolVersion::{V3_1, V3_1_1, V5};

    #[test]
    fn only_whole_pingreqs_count_as_pings() {
        assert_eq!(only_pings(&[0xC0, 0x00]), Some(1));
        assert_eq!(only_pings(&[0xC0, 0x00, 0xC0, 0x00, 0xC0, 0x00]), Some(3));
        assert_eq!(only_pings(&[]), None);
        assert_eq!(only_pings(&[0xC0]), None, "half a PINGREQ");
        assert_eq!(only_pings(&[0xC0, 0x00, 0xC0]), None);
        assert_eq!(
            only_pings(&[0xC0, 0x01, 0x00]),
            None,
            "a PINGREQ with a body"
        );
        assert_eq!(
            only_pings(&[0xC0, 0x00, 0x30, 0x00]),
            None,
            "then a PUBLISH"
        );
        assert_eq!(only_pings(&[0xE0, 0x00]), None, "DISCONNECT");
    }

    fn zone(max_keepalive: u16, server_keepalive: Option<u16>) -> ZoneConfig {
        ZoneConfig {
            max_keepalive,
            server_keepalive,
            ..ZoneConfig::DEFAULT
        }
    }

    fn ok(seconds: u16, server_keep_alive: Option<u16>) -> Result<Keepalive, ReasonCode> {
        Ok(Keepalive {
            seconds,
            server_keep_alive,
        })
    }

    #[test]
    fn the_defaults_keep_what_the_client_asked() {
        for version in [V3_1, V3_1_1, V5] {
            for asked in [0, 1, 60, 65535] {
                assert_eq!(
                    negotiate(version, asked, &ZoneConfig::DEFAULT),
                    ok(asked, None)
                );
                assert_eq!(negotiate(version, asked, &zone(0, None)), ok(asked, None));
            }
        }
    }

    #[test]
    fn max_keepalive_lowers_v5_clients_and_refuses_v3_ones() {
        let z = zone(60, None);
        assert_eq!(negotiate(V5, 30, &z), ok(30, None));
        assert_eq!(negotiate(V5, 60, &z), ok(60, None));
        assert_eq!(negotiate(V5, 61, &z), ok(60, Some(60)));
        assert_eq!(negotiate(V5, 0, &z), ok(60, Some(60)), "0 means none");
        for v3 in [V3_1, V3_1_1] {
            assert_eq!(negotiate(v3, 60, &z), ok(60, None));
            assert_eq!(
                negotiate(v3, 61, &z),
                Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID)
            );
            assert_eq!(
                negotiate(v3, 0, &z),
                Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID)
            );
            assert_eq!(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID.to_v3_connack(), 2);
        }
    }

    #[test]
    fn server_keepalive_overrides_every_v5_client_and_no_v3_one() {
        let z = zone(60, Some(120));
        for asked in [0, 30, 61, 500] {
            assert_eq!(negotiate(V5, asked, &z), ok(120, Some(120)));
        }
        assert_eq!(negotiate(V3_1_1, 30, &z), ok(30, None));
        assert_eq!(
            negotiate(V3_1_1, 500, &z),
            Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID)
        );
        assert_eq!(negotiate(V5, 0, &zone(65535, Some(5))), ok(5, Some(5)));
    }
}
