//! rumqttd's own 3.1.1 / 5 codec, where the edge needs a whole packet
//! decoded: the CONNECT it rewrites before the broker sees it. Framing and
//! header inspection are `hearth_protocol::mqtt`'s.

use bytes::BytesMut;
use hearth_protocol::mqtt::MqttVersion;
use rumqttd::protocol::{v4::V4, v5::V5, Packet, Protocol};

/// Decodes one whole packet with rumqttd's codec for `version`.
pub fn decode(version: MqttVersion, packet: &[u8], max_len: usize) -> Result<Packet, String> {
    let mut buf = BytesMut::from(packet);
    let result = match version {
        MqttVersion::V311 => V4.read_mut(&mut buf, max_len),
        MqttVersion::V5 => V5.read_mut(&mut buf, max_len),
    };
    result.map_err(|e| format!("{e:?}"))
}

/// Encodes a packet with rumqttd's codec for `version`.
pub fn encode(version: MqttVersion, packet: Packet, out: &mut BytesMut) -> Result<(), String> {
    let result = match version {
        MqttVersion::V311 => V4.write(packet, out),
        MqttVersion::V5 => V5.write(packet, out),
    };
    result.map(|_| ()).map_err(|e| format!("{e:?}"))
}

/// Replaces a CONNECT's client id and drops its credentials: identity comes
/// from the certificate, and only the edge reaches the broker.
pub fn rewrite_connect(packet: Packet, client_id: String) -> Packet {
    match packet {
        Packet::Connect(mut connect, properties, will, will_properties, _) => {
            connect.client_id = client_id;
            // Keep-alive 0 means "no keep-alive" (3.1.1 §3.1.2.10, 5
            // §3.1.2.10), but rumqttd times such a client out at once. The
            // broker is given a long one instead, and the relay keeps the
            // broker side alive for the client (see relay::BROKER_PING).
            if connect.keep_alive == 0 {
                connect.keep_alive = SILENT_CLIENT_KEEP_ALIVE;
            }
            // The broker is reached only in-process: a client's own user
            // name and password (identity comes from its certificate) are
            // not passed on.
            Packet::Connect(connect, properties, will, will_properties, None)
        }
        other => other,
    }
}

/// The keep-alive the broker sees for a client that asked for none.
pub const SILENT_CLIENT_KEEP_ALIVE: u16 = 3600;

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::mqtt::{connect_version, next_frame};
    use rumqttd::protocol::{Connect, Login};

    /// The broker reads client packets with this codec after the edge has
    /// passed them: a v5 property that runs past its packet must close
    /// the connection, not be taken for a partial read (vendor/README.md).
    #[test]
    fn a_v5_packet_whose_properties_run_past_it_is_malformed_not_partial() {
        // SUBSCRIBE, pkid 1, 2 bytes of properties: a subscription
        // identifier whose variable byte integer never ends.
        let mut stream = BytesMut::from(&[0x82, 5, 0, 1, 2, 0x0b, 0x80][..]);
        let result = V5.read_mut(&mut stream, 1024);
        assert!(
            matches!(result, Err(rumqttd::protocol::Error::MalformedPacket)),
            "{result:?}"
        );
        assert!(stream.is_empty(), "the frame was consumed");
    }

    #[test]
    fn connect_is_rewritten_with_the_hub_client_id_and_no_login() {
        for version in [MqttVersion::V311, MqttVersion::V5] {
            let mut bytes = BytesMut::new();
            let original = Packet::Connect(
                Connect {
                    keep_alive: 30,
                    client_id: "anything".into(),
                    clean_session: true,
                },
                None,
                None,
                None,
                Some(Login {
                    username: "user".into(),
                    password: "pw".into(),
                }),
            );
            encode(version, original, &mut bytes).unwrap();
            let frame = next_frame(&bytes, 1024).unwrap().unwrap();
            assert_eq!(connect_version(&bytes, &frame).unwrap(), version);
            let decoded = decode(version, &bytes, 1024).unwrap();
            let rewritten = rewrite_connect(decoded, "dev1".into());
            let mut out = BytesMut::new();
            encode(version, rewritten, &mut out).unwrap();
            match decode(version, &out, 1024).unwrap() {
                Packet::Connect(c, _, _, _, l) => {
                    assert_eq!(c.client_id, "dev1");
                    assert_eq!(c.keep_alive, 30);
                    assert_eq!(l, None, "the client's own login is not passed on");
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
