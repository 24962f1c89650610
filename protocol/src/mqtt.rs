//! MQTT 3.1.1 and 5 at the byte level, without I/O: packet types, reason
//! codes, the Variable Byte Integer, splitting a byte stream into packets,
//! and ([`inspect`]) the parts of packets the hub reads and the packets it
//! builds itself. The edge, the benchmark's client and the test harnesses
//! all use this one codec, so a fix to it reaches every one of them.
//!
//! Only what the hub must read by hand lives here: rumqttd's own codec
//! decodes the CONNECT the edge rewrites (`daemon/src/edge/codec.rs`).

pub mod inspect;

/// MQTT control packet types (the high nibble of the first byte).
///
/// Plain `u8` constants rather than an enum: the relay matches on the
/// nibble it already has, and an unknown type (0) must reach its "refuse"
/// arm rather than fail a conversion first.
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

/// MQTT 5 reason codes the hub sends or reads (5 §2.4). A code of 0x80 or
/// more is a failure.
pub mod reason {
    /// Success (also "granted QoS 0" in a SUBACK, "normal disconnection").
    pub const SUCCESS: u8 = 0x00;
    /// UNSUBACK: the client had no such subscription.
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    /// Unspecified error; in a 3.1.1 SUBACK, the one failure code.
    pub const UNSPECIFIED: u8 = 0x80;
    /// The packet does not follow the specification.
    pub const MALFORMED_PACKET: u8 = 0x81;
    /// A well-formed packet the protocol does not allow here.
    pub const PROTOCOL_ERROR: u8 = 0x82;
    /// The policy refuses it.
    pub const NOT_AUTHORIZED: u8 = 0x87;
    /// The server cannot take it now (the edge's large-packet budget).
    pub const SERVER_BUSY: u8 = 0x89;
    /// More unacknowledged QoS 1/2 PUBLISHes than the Receive Maximum.
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    /// A topic alias of 0 or above the Topic Alias Maximum.
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    /// The packet is larger than the Maximum Packet Size.
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    /// A bound of the hub's (a quota) refuses it.
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    /// The payload does not match its format (a device description that
    /// breaks docs/schema/meta-v1.json).
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;

    /// Whether a reason code (or a 3.1.1 SUBACK return code) reports a
    /// failure.
    pub const fn is_failure(code: u8) -> bool {
        code >= UNSPECIFIED
    }
}

/// MQTT 3.1.1 CONNACK return codes (3.1.1 §3.2.2.3).
pub mod return_code {
    /// Connection accepted.
    pub const ACCEPTED: u8 = 0;
    /// The server does not support the protocol level asked for.
    pub const UNACCEPTABLE_PROTOCOL_VERSION: u8 = 1;
    /// The client identifier is not allowed.
    pub const IDENTIFIER_REJECTED: u8 = 2;
    /// The client is not authorized to connect.
    pub const NOT_AUTHORIZED: u8 = 5;
}

/// The protocol a client speaks, from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// A packet is malformed: MQTT says close the connection. The text names
/// the part that failed, never the packet's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed {0}")]
pub struct Malformed(pub &'static str);

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

/// The most bytes a Variable Byte Integer takes (3.1.1 §2.2.3, 5 §1.5.5).
pub const VARINT_MAX_BYTES: usize = 4;

/// The largest value a Variable Byte Integer holds: 268,435,455, so the
/// largest MQTT packet is 256 MiB plus its fixed header.
pub const VARINT_MAX: usize = (1 << (7 * VARINT_MAX_BYTES)) - 1;

/// Reads the Variable Byte Integer at the front of `bytes`: its value and
/// how many bytes it took. `Ok(None)` means `bytes` ends before the integer
/// does (read more); a fourth byte that still announces a fifth is
/// malformed. Non-minimal encodings (0x80 0x00) are accepted, as the
/// broker's codec accepts them.
#[inline]
pub fn read_varint(bytes: &[u8]) -> Result<Option<(usize, usize)>, Malformed> {
    let mut value: usize = 0;
    for i in 0..VARINT_MAX_BYTES {
        let Some(&byte) = bytes.get(i) else {
            return Ok(None);
        };
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Err(Malformed("variable byte integer"))
}

/// Appends `n` as a Variable Byte Integer, in the fewest bytes.
///
/// Callers encode lengths of packets they built, all far below
/// [`VARINT_MAX`]; a larger `n` would take more than four bytes, which no
/// reader accepts.
#[inline]
pub fn write_varint(mut n: usize, out: &mut Vec<u8>) {
    debug_assert!(n <= VARINT_MAX, "{n} does not fit a variable byte integer");
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
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
    /// The control packet type (see [`kind`]).
    #[inline]
    pub fn kind(&self) -> u8 {
        self.first_byte >> 4
    }

    /// The fixed header flags.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.first_byte & 0x0f
    }
}

/// Finds the first complete packet in `buf`. `Ok(None)` means more bytes
/// are needed. Packets longer than `max_len` are refused as soon as their
/// header is seen, before their body is buffered.
#[inline]
pub fn next_frame(buf: &[u8], max_len: usize) -> Result<Option<Frame>, FrameError> {
    let Some((&first_byte, rest)) = buf.split_first() else {
        return Ok(None);
    };
    let Some((remaining, len_bytes)) =
        read_varint(rest).map_err(|_| FrameError::MalformedLength)?
    else {
        return Ok(None);
    };
    let header_len = 1 + len_bytes;
    let len = header_len + remaining;
    if len > max_len {
        return Err(FrameError::TooLarge(len));
    }
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(Frame {
        first_byte,
        header_len,
        len,
    }))
}

/// The whole length the first packet in `buf` announces, once its fixed
/// header is complete (the packet itself may not be); `None` before that
/// or when the header is malformed.
#[inline]
pub fn announced_len(buf: &[u8]) -> Option<usize> {
    let (remaining, len_bytes) = read_varint(buf.get(1..)?).ok().flatten()?;
    Some(1 + len_bytes + remaining)
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        write_varint(n, &mut out);
        out
    }

    #[test]
    fn varints_take_the_fewest_bytes_at_each_boundary() {
        // 3.1.1 §2.2.3 table 2.4 / 5 §1.5.5: the edges of each size.
        let table: [(usize, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xff, 0xff, 0x7f]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (VARINT_MAX, &[0xff, 0xff, 0xff, 0x7f]),
        ];
        for (n, bytes) in table {
            assert_eq!(encoded(n), bytes, "{n}");
            assert_eq!(read_varint(bytes), Ok(Some((n, bytes.len()))), "{n}");
        }
        assert_eq!(VARINT_MAX, 268_435_455);
    }

    #[test]
    fn a_varint_is_read_only_when_complete_and_at_most_four_bytes_long() {
        assert_eq!(read_varint(&[]), Ok(None));
        assert_eq!(read_varint(&[0x80]), Ok(None));
        assert_eq!(read_varint(&[0xff, 0xff, 0xff]), Ok(None));
        assert!(read_varint(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(read_varint(&[0x80, 0x80, 0x80, 0x80, 0x01]).is_err());
        // What follows the integer is not its business.
        assert_eq!(read_varint(&[0x05, 0xff]), Ok(Some((5, 1))));
        // Non-minimal, but within four bytes: accepted as rumqttd does.
        assert_eq!(read_varint(&[0x80, 0x00]), Ok(Some((0, 2))));
    }

    #[test]
    fn the_announced_length_is_known_once_the_header_is() {
        assert_eq!(announced_len(&[]), None);
        assert_eq!(announced_len(&[0x30]), None);
        assert_eq!(announced_len(&[0x30, 0x80]), None);
        assert_eq!(announced_len(&[0x30, 0x80, 0x01]), Some(3 + 128));
        assert_eq!(announced_len(&[0x30, 0x05, 0, 1]), Some(7));
        assert_eq!(announced_len(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]), None);
    }

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
        // Three continuation bytes: the fourth may still end it.
        assert_eq!(next_frame(&[0x30, 0xff, 0xff, 0xff], usize::MAX), Ok(None));
        // The largest legal packet fits a usize limit without overflow.
        assert_eq!(
            next_frame(&[0x30, 0xff, 0xff, 0xff, 0x7f], 1000),
            Err(FrameError::TooLarge(5 + VARINT_MAX))
        );
    }

    #[test]
    fn a_frame_longer_than_its_packet_is_no_connect() {
        let packet = [0x10, 10, 0, 4, b'M', b'Q', b'T', b'T', 4];
        let frame = Frame {
            first_byte: 0x10,
            header_len: 2,
            len: 12,
        };
        assert_eq!(
            connect_version(&packet, &frame),
            Err(FrameError::UnsupportedProtocol)
        );
    }

    #[test]
    fn connect_names_its_version() {
        for (level, version) in [(4, MqttVersion::V311), (5, MqttVersion::V5)] {
            let packet = [0x10, 10, 0, 4, b'M', b'Q', b'T', b'T', level, 2, 0, 30];
            let frame = next_frame(&packet, 100).unwrap().unwrap();
            assert_eq!(connect_version(&packet, &frame), Ok(version));
        }
        let mqisdp = [0x10, 9, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3];
        let frame = next_frame(&mqisdp, 100).unwrap().unwrap();
        assert_eq!(
            connect_version(&mqisdp, &frame),
            Err(FrameError::UnsupportedProtocol)
        );
    }

    #[test]
    fn reason_codes_of_0x80_and_above_are_failures() {
        assert!(!reason::is_failure(reason::SUCCESS));
        assert!(!reason::is_failure(reason::NO_SUBSCRIPTION_EXISTED));
        assert!(reason::is_failure(reason::UNSPECIFIED));
        assert!(reason::is_failure(reason::QUOTA_EXCEEDED));
    }

    /// A packet of `body_len` bytes after its fixed header.
    fn packet(first_byte: u8, body_len: usize) -> Vec<u8> {
        let mut out = vec![first_byte];
        write_varint(body_len, &mut out);
        out.resize(out.len() + body_len, 0xa5);
        out
    }

    proptest! {
        /// Every value a Variable Byte Integer holds reads back from its
        /// encoding, in one to four bytes, and no shorter prefix of the
        /// encoding reads as anything.
        #[test]
        fn every_varint_round_trips_and_no_prefix_reads(n in 0..=VARINT_MAX) {
            let bytes = encoded(n);
            prop_assert!((1..=VARINT_MAX_BYTES).contains(&bytes.len()));
            prop_assert_eq!(read_varint(&bytes), Ok(Some((n, bytes.len()))));
            for cut in 0..bytes.len() {
                prop_assert_eq!(read_varint(&bytes[..cut]), Ok(None));
            }
        }

        /// Whatever bytes arrive, reading a varint never panics, and what
        /// it reads encodes back to at most the bytes it took.
        #[test]
        fn any_bytes_read_as_a_varint_or_not_without_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..8)
        ) {
            if let Ok(Some((n, used))) = read_varint(&bytes) {
                prop_assert!(n <= VARINT_MAX);
                prop_assert!(encoded(n).len() <= used);
            }
        }

        /// Packets sent back to back come apart where they were joined,
        /// however the stream is cut: a prefix gives the packets wholly in
        /// it and then asks for more.
        #[test]
        fn a_stream_splits_into_the_packets_it_was_made_of(
            lens in prop::collection::vec(0usize..300, 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let packets: Vec<Vec<u8>> =
                lens.iter().map(|&len| packet(0x30, len)).collect();
            let stream = packets.concat();
            let cut = cut.index(stream.len() + 1);
            let mut at = 0;
            let mut whole = 0;
            while let Some(f) = next_frame(&stream[at..cut], usize::MAX).unwrap() {
                prop_assert_eq!(&stream[at..at + f.len], &packets[whole][..]);
                prop_assert_eq!(Some(f.len), announced_len(&stream[at..cut]));
                at += f.len;
                whole += 1;
            }
            prop_assert_eq!(at, packets[..whole].iter().map(Vec::len).sum::<usize>());
            prop_assert!(whole == packets.len() || at + packets[whole].len() > cut);
        }
    }
}
