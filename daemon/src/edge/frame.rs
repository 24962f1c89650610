//! MQTT framing at the edge: finding packet boundaries in a byte stream,
//! reading and rewriting the CONNECT packet with rumqttd's own codecs, and
//! the few packets the edge itself sends.

use bytes::BytesMut;
use rumqttd::protocol::{v4::V4, v5::V5, Login, Packet, Protocol};

/// MQTT control packet types (the high nibble of the first byte).
pub mod kind {
    /// CONNECT
    pub const CONNECT: u8 = 1;
    /// CONNACK
    pub const CONNACK: u8 = 2;
    /// PUBLISH
    pub const PUBLISH: u8 = 3;
    /// PUBACK
    pub const PUBACK: u8 = 4;
    /// PUBREC
    pub const PUBREC: u8 = 5;
    /// PUBREL
    pub const PUBREL: u8 = 6;
    /// PUBCOMP
    pub const PUBCOMP: u8 = 7;
    /// SUBSCRIBE
    pub const SUBSCRIBE: u8 = 8;
    /// SUBACK
    pub const SUBACK: u8 = 9;
    /// UNSUBSCRIBE
    pub const UNSUBSCRIBE: u8 = 10;
    /// UNSUBACK
    pub const UNSUBACK: u8 = 11;
    /// PINGREQ
    pub const PINGREQ: u8 = 12;
    /// PINGRESP
    pub const PINGRESP: u8 = 13;
    /// DISCONNECT
    pub const DISCONNECT: u8 = 14;
    /// AUTH (MQTT 5)
    pub const AUTH: u8 = 15;
}

/// The protocol a client speaks, from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// The byte stream is not MQTT the edge will pass on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The remaining-length field is longer than four bytes.
    #[error("malformed remaining length")]
    MalformedLength,
    /// The packet is larger than the configured limit.
    #[error("packet of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The CONNECT does not name MQTT 3.1.1 or 5.
    #[error("unsupported protocol name or level")]
    UnsupportedProtocol,
    /// The CONNECT does not decode.
    #[error("malformed CONNECT: {0}")]
    MalformedConnect(String),
}

/// Where one complete packet sits at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// The first byte: type in the high nibble, flags in the low.
    pub first_byte: u8,
    /// Fixed header length (1 + length bytes).
    pub header_len: usize,
    /// The whole packet's length.
    pub len: usize,
}

impl Frame {
    /// The control packet type.
    pub fn kind(&self) -> u8 {
        self.first_byte >> 4
    }

    /// The fixed header flags.
    pub fn flags(&self) -> u8 {
        self.first_byte & 0x0f
    }
}

/// Finds the first complete packet in `buf`. `Ok(None)` means more bytes
/// are needed. Packets longer than `max_len` are refused as soon as their
/// header is seen, before their body is buffered.
pub fn next_frame(buf: &[u8], max_len: usize) -> Result<Option<Frame>, FrameError> {
    let Some(&first_byte) = buf.first() else {
        return Ok(None);
    };
    let mut remaining: usize = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            let header_len = 2 + i;
            let len = header_len + remaining;
            if len > max_len {
                return Err(FrameError::TooLarge(len));
            }
            if buf.len() < len {
                return Ok(None);
            }
            return Ok(Some(Frame {
                first_byte,
                header_len,
                len,
            }));
        }
    }
    Err(FrameError::MalformedLength)
}

/// The whole length the first packet in `buf` announces, once its fixed
/// header is complete (the packet itself may not be).
pub fn announced_len(buf: &[u8]) -> Option<usize> {
    let mut remaining: usize = 0;
    for i in 0..4 {
        let byte = *buf.get(1 + i)?;
        remaining |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(2 + i + remaining);
        }
    }
    None
}

/// The protocol level a CONNECT packet names (`packet` is the whole frame).
pub fn connect_version(packet: &[u8], frame: &Frame) -> Result<MqttVersion, FrameError> {
    // A frame that does not fit the packet it came with is no CONNECT.
    let body = packet.get(frame.header_len..frame.len).unwrap_or_default();
    match body {
        [0, 4, b'M', b'Q', b'T', b'T', 4, ..] => Ok(MqttVersion::V311),
        [0, 4, b'M', b'Q', b'T', b'T', 5, ..] => Ok(MqttVersion::V5),
        _ => Err(FrameError::UnsupportedProtocol),
    }
}

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

/// Replaces a CONNECT's client id and credentials. The client's username
/// and password never reach the broker: identity comes from the
/// certificate, and the broker only admits the edge's per-boot credential.
pub fn rewrite_connect(packet: Packet, client_id: String, login: Login) -> Packet {
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
            Packet::Connect(connect, properties, will, will_properties, Some(login))
        }
        other => other,
    }
}

/// The keep-alive the broker sees for a client that asked for none.
pub const SILENT_CLIENT_KEEP_ALIVE: u16 = 3600;

/// CONNACK rejecting a zero-byte client id without a clean session
/// (3.1.1 §3.1.3.1 [MQTT-3.1.3-8]: return code 2).
pub const CONNACK_IDENTIFIER_REJECTED: &[u8] = &[0x20, 0x02, 0x00, 0x02];

/// CONNACK refusing a client as not authorized (3.1.1: return code 5;
/// 5: reason 0x87), sent before closing.
pub fn connack_not_authorized(version: MqttVersion) -> &'static [u8] {
    match version {
        MqttVersion::V311 => &[0x20, 0x02, 0x00, 0x05],
        MqttVersion::V5 => &[0x20, 0x03, 0x00, 0x87, 0x00],
    }
}

/// CONNACK refusing an unsupported protocol level (3.1.1 return code 1).
pub const CONNACK_UNACCEPTABLE_PROTOCOL: &[u8] = &[0x20, 0x02, 0x00, 0x01];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announced_length_is_known_once_the_header_is() {
        assert_eq!(announced_len(&[0x30]), None);
        assert_eq!(announced_len(&[0x30, 0x80]), None);
        assert_eq!(announced_len(&[0x30, 0x80, 0x01]), Some(3 + 128));
        assert_eq!(announced_len(&[0x30, 0x05, 0, 1]), Some(7));
    }
    use rumqttd::protocol::Connect;

    #[test]
    fn frames_are_found_only_when_complete() {
        assert_eq!(next_frame(&[], 100), Ok(None));
        assert_eq!(next_frame(&[0x30], 100), Ok(None));
        assert_eq!(next_frame(&[0x30, 3, 0, 1], 100), Ok(None));
        let f = next_frame(&[0x30, 3, 0, 1, b'a', 0xc0], 100)
            .unwrap()
            .unwrap();
        assert_eq!((f.kind(), f.header_len, f.len), (kind::PUBLISH, 2, 5));
        // 200 = 0xc8 0x01 as a variable byte integer.
        let mut big = vec![0x30, 0xc8, 0x01];
        big.resize(203, 0);
        assert_eq!(next_frame(&big, 1000).unwrap().unwrap().len, 203);
    }

    #[test]
    fn oversized_and_malformed_lengths_are_refused_from_the_header() {
        assert_eq!(
            next_frame(&[0x30, 0xc8, 0x01], 100),
            Err(FrameError::TooLarge(203))
        );
        assert_eq!(
            next_frame(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], usize::MAX),
            Err(FrameError::MalformedLength)
        );
    }

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
    fn a_frame_longer_than_its_packet_is_no_connect() {
        let packet = [0x10, 10, 0, 4, b'M', b'Q', b'T', b'T', 4];
        let frame = Frame {
            first_byte: 0x10,
            header_len: 2,
            len: 12,
        };
        assert!(matches!(
            connect_version(&packet, &frame),
            Err(FrameError::UnsupportedProtocol)
        ));
    }

    #[test]
    fn connect_is_rewritten_with_the_edge_credential() {
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
            let login = Login {
                username: "edge".into(),
                password: "secret".into(),
            };
            let rewritten = rewrite_connect(decoded, "dev1".into(), login.clone());
            let mut out = BytesMut::new();
            encode(version, rewritten, &mut out).unwrap();
            match decode(version, &out, 1024).unwrap() {
                Packet::Connect(c, _, _, _, l) => {
                    assert_eq!(c.client_id, "dev1");
                    assert_eq!(c.keep_alive, 30);
                    assert_eq!(l, Some(login));
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
