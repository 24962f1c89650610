//! Fuzz target: bytes a client (or the broker) sends through the edge,
//! framed and inspected the way edge/mod.rs and edge/relay.rs do it —
//! CONNECT decoded and rewritten with rumqttd's codec, PUBLISH and
//! SUBSCRIBE headers read for the policy, acknowledgements' packet ids —
//! in MQTT 3.1.1 and 5.
//!
//! Input: one selector byte, then the stream. Selector bit 0: MQTT 5 (else
//! 3.1.1) for packets after a CONNECT-less start; bit 1: read the stream as
//! the broker's side (downstream: CONNACK, SUBACK, PUBLISH to the client)
//! instead of the client's. A CONNECT in the stream sets the version, as
//! it does at the edge.
#![no_main]

use bytes::BytesMut;
use hearth_daemon::edge::codec;
use hearth_protocol::filter;
use hearth_protocol::mqtt::{self, inspect, kind, Frame, MqttVersion};
use hearth_protocol::policy::{self, Action, DeviceRole, Subject};
use hearth_protocol::DeviceId;
use libfuzzer_sys::fuzz_target;
use rumqttd::protocol::Packet;

/// The edge's default `limits.max_payload` is far above what a fuzz input
/// holds; a small limit also exercises the refusal from the header.
const MAX_PACKET: usize = 2048;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut stream)) = data.split_first() else {
        return;
    };
    let mut version = if selector & 1 == 1 {
        MqttVersion::V5
    } else {
        MqttVersion::V311
    };
    let downstream = selector & 2 == 2;
    let device = DeviceId::from_entropy([7; 16]);
    let role = match selector >> 2 & 3 {
        0 => DeviceRole::Parent,
        1 => DeviceRole::Child,
        _ => DeviceRole::Service,
    };
    let subject = Subject {
        device: &device,
        role,
        grants: &[],
    };
    // As the relay does: take complete frames off the front until one is
    // missing bytes or the stream is refused.
    while let Ok(Some(f)) = mqtt::next_frame(stream, MAX_PACKET) {
        assert!(f.header_len <= f.len && f.len <= stream.len());
        let packet = &stream[..f.len];
        let v5 = version == MqttVersion::V5;
        if downstream {
            broker_packet(&f, packet, v5);
        } else if f.kind() == kind::CONNECT {
            match connect(&f, stream) {
                Some(v) => version = v,
                None => return,
            }
        } else if !client_packet(&subject, &f, packet, v5) {
            // The relay closes the connection on a malformed packet.
            return;
        }
        stream = &stream[f.len..];
    }
});

/// edge/mod.rs `read_connect` and `run_session`: version, decode, rewrite
/// with the edge's credential, encode for the broker.
fn connect(f: &Frame, inbound: &[u8]) -> Option<MqttVersion> {
    let version = mqtt::connect_version(inbound, f).ok()?;
    let packet = codec::decode(version, &inbound[..f.len], MAX_PACKET).ok()?;
    if let Packet::Connect(c, properties, will, ..) = &packet {
        // What run_session reads from a v5 CONNECT.
        let _ = (c.keep_alive, c.clean_session, c.client_id.is_empty());
        let _ = properties.as_ref().map(|p| {
            (
                p.session_expiry_interval,
                p.max_packet_size,
                p.receive_maximum,
            )
        });
        if let Some(will) = will {
            // check_will: the will's topic goes through the policy.
            let _ = filter::topic_from_bytes(&will.topic);
        }
    }
    let rewritten = codec::rewrite_connect(packet, "0jqs8adyj6jyjnsqmar523qbbd".into());
    let mut out = BytesMut::new();
    if codec::encode(version, rewritten, &mut out).is_ok() {
        // What the edge sends the broker must be one whole packet the
        // broker's codec reads back.
        let f2 = mqtt::next_frame(&out, usize::MAX)
            .expect("the edge's CONNECT frames")
            .expect("the edge's CONNECT is complete");
        assert_eq!(f2.len, out.len(), "one packet");
        assert!(
            codec::decode(version, &out, usize::MAX).is_ok(),
            "the edge's CONNECT decodes"
        );
    }
    Some(version)
}

/// relay.rs `Upstream::inspect`: false where the relay ends the session.
fn client_packet(who: &Subject<'_>, f: &Frame, packet: &[u8], v5: bool) -> bool {
    match f.kind() {
        kind::PUBLISH => {
            let Ok(header) = inspect::publish(packet, f.header_len, v5) else {
                return false;
            };
            assert!(header.qos < 3);
            assert_eq!(header.pkid.is_some(), header.qos > 0);
            if let Ok(topic) = filter::topic_from_bytes(header.topic) {
                let _ = policy::decide(
                    who,
                    Action::Publish {
                        retain: header.retain,
                    },
                    topic,
                );
            }
            if let Some(pkid) = header.pkid {
                let _ = inspect::ack(kind::PUBACK, pkid, v5.then_some(0x87));
            }
            true
        }
        kind::SUBSCRIBE => {
            let Ok(sub) = inspect::subscribe(packet, f.header_len, v5) else {
                return false;
            };
            let allowed: Vec<(&[u8], u8)> = sub
                .filters
                .iter()
                .filter(|(bytes, _)| match filter::filter_from_bytes(bytes) {
                    Ok(filter) => {
                        policy::decide(who, Action::Subscribe, filter) == policy::Decision::Allow
                    }
                    Err(_) => false,
                })
                .copied()
                .collect();
            // The rewritten SUBSCRIBE (allowed filters only) must read back
            // the same, or the broker sees something the policy did not.
            if !allowed.is_empty() {
                let mut rewritten = Vec::new();
                inspect::encode_subscribe(sub.pkid, sub.properties, &allowed, &mut rewritten);
                let f2 = mqtt::next_frame(&rewritten, usize::MAX)
                    .expect("rewritten SUBSCRIBE frames")
                    .expect("rewritten SUBSCRIBE is complete");
                let again = inspect::subscribe(&rewritten, f2.header_len, v5)
                    .expect("rewritten SUBSCRIBE parses");
                assert_eq!(again.pkid, sub.pkid);
                assert_eq!(again.filters, allowed);
            }
            let mut suback = Vec::new();
            let codes = vec![0x80; sub.filters.len() - allowed.len()];
            inspect::encode_suback(sub.pkid, v5, &[], &codes, &mut suback);
            true
        }
        kind::PUBREL | kind::UNSUBSCRIBE if f.flags() != 0b0010 => false,
        kind::PUBREL => inspect::packet_id(packet, f.header_len).is_ok(),
        // relay.rs: a v5 DISCONNECT's Session Expiry Interval.
        kind::DISCONNECT if v5 => inspect::disconnect_session_expiry(packet, f.header_len).is_ok(),
        kind::UNSUBSCRIBE | kind::PINGREQ | kind::DISCONNECT => true,
        kind::PUBACK | kind::PUBREC | kind::PUBCOMP => {
            if inspect::packet_id(packet, f.header_len).is_ok() {
                let _ = v5 && packet.get(f.header_len + 2).is_some_and(|r| *r >= 0x80);
            }
            true
        }
        // A server-only packet from a client ends the session.
        _ => false,
    }
}

/// relay.rs `downstream`: what the edge reads of the broker's packets on
/// their way to the client.
fn broker_packet(f: &Frame, packet: &[u8], v5: bool) {
    match f.kind() {
        kind::CONNACK if v5 => {
            let extras = inspect::ConnAckExtras {
                assigned_id: Some("dev-1".into()),
                session_expiry: Some(604_800),
                receive_max: Some(100),
            };
            if let Some(out) = inspect::connack_with(packet, f.header_len, &extras) {
                let f2 = mqtt::next_frame(&out, usize::MAX)
                    .expect("rewritten CONNACK frames")
                    .expect("rewritten CONNACK is complete");
                assert_eq!(f2.len, out.len());
            }
        }
        kind::PUBLISH => {
            // redelivery_marked: DUP set on a copy of the packet.
            if let Ok(header) = inspect::publish(packet, f.header_len, v5) {
                if header.pkid.is_some() {
                    let mut marked = packet.to_vec();
                    marked[0] |= 0x08;
                }
            }
        }
        kind::SUBACK => {
            // merge_suback: the broker's codes merged with the edge's.
            if let Ok((pkid, properties, codes)) = inspect::suback(packet, f.header_len, v5) {
                let merged: Vec<u8> = codes.iter().copied().chain([0x87]).collect();
                let mut out = Vec::new();
                inspect::encode_suback(pkid, v5, properties, &merged, &mut out);
                let f2 = mqtt::next_frame(&out, usize::MAX)
                    .expect("rebuilt SUBACK frames")
                    .expect("rebuilt SUBACK is complete");
                let (p2, props2, codes2) =
                    inspect::suback(&out, f2.header_len, v5).expect("rebuilt SUBACK parses");
                assert_eq!((p2, codes2), (pkid, &merged[..]));
                if !properties.is_empty() {
                    assert_eq!(props2, properties);
                }
            }
        }
        kind::PUBACK | kind::PUBREC | kind::PUBREL | kind::PUBCOMP => {
            let _ = inspect::packet_id(packet, f.header_len);
        }
        _ => {}
    }
}
