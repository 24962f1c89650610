//! Fuzz target: what reaches the broker core through the edge. Frames a
//! client sends that the edge passes on (PUBLISH, SUBSCRIBE, UNSUBSCRIBE,
//! acknowledgements, PINGREQ, DISCONNECT, after its own checks) are decoded
//! by rumqttd's 3.1.1 or 5 codec, as the broker does on the loopback
//! connection, and what decodes is encoded again in the same version, as
//! the broker does when it sends it on.
//!
//! Input: one selector byte (bit 0: MQTT 5), then the stream.
#![no_main]

use bytes::BytesMut;
use hearth_daemon::edge::codec;
use hearth_protocol::mqtt::{self, inspect, kind, MqttVersion};
use libfuzzer_sys::fuzz_target;

const MAX_PACKET: usize = 2048;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut stream)) = data.split_first() else {
        return;
    };
    let version = if selector & 1 == 1 {
        MqttVersion::V5
    } else {
        MqttVersion::V311
    };
    let v5 = version == MqttVersion::V5;
    while let Ok(Some(f)) = mqtt::next_frame(stream, MAX_PACKET) {
        let packet = &stream[..f.len];
        // The edge's own checks, as in relay.rs: what fails them never
        // reaches the broker.
        let forwarded = match f.kind() {
            kind::CONNECT => mqtt::connect_version(stream, &f).is_ok_and(|v| v == version),
            kind::PUBLISH => inspect::publish(packet, f.header_len, v5).is_ok(),
            kind::SUBSCRIBE => inspect::subscribe(packet, f.header_len, v5).is_ok(),
            kind::PUBREL | kind::UNSUBSCRIBE => f.flags() == 0b0010,
            kind::PUBACK | kind::PUBREC | kind::PUBCOMP | kind::PINGREQ | kind::DISCONNECT => true,
            _ => false,
        };
        if !forwarded {
            return;
        }
        if let Ok(decoded) = codec::decode(version, packet, MAX_PACKET) {
            let mut out = BytesMut::new();
            let _ = codec::encode(version, decoded, &mut out);
        }
        stream = &stream[f.len..];
    }
});
