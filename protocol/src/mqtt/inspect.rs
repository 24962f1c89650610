//! Reading the parts of client packets the policy needs — a PUBLISH's
//! topic, flags, packet id and topic alias; a SUBSCRIBE's filters — and
//! building the packets the edge answers with itself. Hand-written because
//! rumqttd's decoder copies payloads and panics on some packet types; these
//! only look at headers, and borrow from the packet rather than copy it.

use super::{read_varint, reason, return_code, write_varint, Malformed, MqttVersion};

/// What the policy needs from a PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishHeader<'a> {
    /// 0, 1 or 2.
    pub qos: u8,
    /// The retain flag.
    pub retain: bool,
    /// The topic as sent (empty when a v5 alias stands for it).
    pub topic: &'a [u8],
    /// The packet id (QoS 1 and 2).
    pub pkid: Option<u16>,
    /// The v5 topic alias property.
    pub topic_alias: Option<u16>,
    /// The payload's length in bytes.
    pub payload_len: usize,
}

/// Parses a PUBLISH (`packet` is the whole frame).
pub fn publish(packet: &[u8], header_len: usize, v5: bool) -> Result<PublishHeader<'_>, Malformed> {
    let (flags, body) = split(packet, header_len).ok_or(Malformed("PUBLISH header"))?;
    let flags = flags & 0x0f;
    let qos = (flags >> 1) & 0b11;
    if qos == 3 {
        return Err(Malformed("PUBLISH: QoS 3"));
    }
    let mut r = Reader::new(body);
    let topic = r.string().ok_or(Malformed("PUBLISH topic"))?;
    let pkid = if qos > 0 {
        let id = r.u16().ok_or(Malformed("PUBLISH packet id"))?;
        if id == 0 {
            return Err(Malformed("PUBLISH packet id 0"));
        }
        Some(id)
    } else {
        None
    };
    let topic_alias = if v5 {
        let props = r.properties().ok_or(Malformed("PUBLISH properties"))?;
        find_u16(props, 0x23)?
    } else {
        None
    };
    Ok(PublishHeader {
        qos,
        retain: flags & 1 == 1,
        topic,
        pkid,
        topic_alias,
        payload_len: r.rest().len(),
    })
}

/// A SUBSCRIBE's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribePacket<'a> {
    /// The packet id.
    pub pkid: u16,
    /// v5 properties, with their length prefix, as sent.
    pub properties: &'a [u8],
    /// Each filter with its options byte.
    pub filters: Vec<(&'a [u8], u8)>,
}

/// Parses a SUBSCRIBE.
pub fn subscribe(
    packet: &[u8],
    header_len: usize,
    v5: bool,
) -> Result<SubscribePacket<'_>, Malformed> {
    let (first, body) = split(packet, header_len).ok_or(Malformed("SUBSCRIBE header"))?;
    if first & 0x0f != 0b0010 {
        return Err(Malformed("SUBSCRIBE flags"));
    }
    let mut r = Reader::new(body);
    let pkid = r.u16().ok_or(Malformed("SUBSCRIBE packet id"))?;
    let properties = if v5 {
        let start = r.pos;
        r.properties().ok_or(Malformed("SUBSCRIBE properties"))?;
        &r.buf[start..r.pos]
    } else {
        &[]
    };
    let mut filters = Vec::new();
    while !r.rest().is_empty() {
        let filter = r.string().ok_or(Malformed("SUBSCRIBE filter"))?;
        if !fits_when_scoped(filter) {
            return Err(Malformed("SUBSCRIBE: shared filter too long"));
        }
        let options = r.u8().ok_or(Malformed("SUBSCRIBE options"))?;
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(Malformed("SUBSCRIBE without filters"));
    }
    Ok(SubscribePacket {
        pkid,
        properties,
        filters,
    })
}

/// Encodes a SUBSCRIBE carrying only some of the filters.
///
/// Each filter is one [`subscribe`] read, perhaps through [`scoped_share`]:
/// its length fits the two-byte prefix (see [`fits_when_scoped`]).
pub fn encode_subscribe(pkid: u16, properties: &[u8], filters: &[(&[u8], u8)], out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(&pkid.to_be_bytes());
    body.extend_from_slice(properties);
    for (filter, options) in filters {
        body.extend_from_slice(&prefix_len(filter));
        body.extend_from_slice(filter);
        body.push(*options);
    }
    out.push(0x82);
    write_varint(body.len(), out);
    out.extend_from_slice(&body);
}

/// An UNSUBSCRIBE's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubscribePacket<'a> {
    /// The packet id.
    pub pkid: u16,
    /// v5 properties, with their length prefix, as sent.
    pub properties: &'a [u8],
    /// The filters.
    pub filters: Vec<&'a [u8]>,
}

/// Parses an UNSUBSCRIBE.
pub fn unsubscribe(
    packet: &[u8],
    header_len: usize,
    v5: bool,
) -> Result<UnsubscribePacket<'_>, Malformed> {
    let mut r = Reader::new(packet.get(header_len..).unwrap_or_default());
    let pkid = r.u16().ok_or(Malformed("UNSUBSCRIBE packet id"))?;
    let properties = if v5 {
        let start = r.pos;
        r.properties().ok_or(Malformed("UNSUBSCRIBE properties"))?;
        &r.buf[start..r.pos]
    } else {
        &[]
    };
    let mut filters = Vec::new();
    while !r.rest().is_empty() {
        let filter = r.string().ok_or(Malformed("UNSUBSCRIBE filter"))?;
        if !fits_when_scoped(filter) {
            return Err(Malformed("UNSUBSCRIBE: shared filter too long"));
        }
        filters.push(filter);
    }
    if filters.is_empty() {
        return Err(Malformed("UNSUBSCRIBE without filters"));
    }
    Ok(UnsubscribePacket {
        pkid,
        properties,
        filters,
    })
}

/// Encodes an UNSUBSCRIBE.
///
/// Each filter is one [`unsubscribe`] read, perhaps through
/// [`scoped_share`]: its length fits the two-byte prefix.
pub fn encode_unsubscribe(pkid: u16, properties: &[u8], filters: &[&[u8]], out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(&pkid.to_be_bytes());
    body.extend_from_slice(properties);
    for filter in filters {
        body.extend_from_slice(&prefix_len(filter));
        body.extend_from_slice(filter);
    }
    out.push(0xa2);
    write_varint(body.len(), out);
    out.extend_from_slice(&body);
}

/// A shared subscription's filter with its group name made the scope's own
/// (`$share/g/f` → `$share/<scope>~g/f`), so that clients of different
/// scopes that pick the same group name never share its messages; `None`
/// for a filter that is not shared.
pub fn scoped_share(filter: &[u8], scope: &str) -> Option<Vec<u8>> {
    debug_assert!(
        scope.len() <= MAX_SHARE_SCOPE,
        "a longer scope breaks fits_when_scoped"
    );
    let rest = filter.strip_prefix(b"$share/")?;
    let mut out = Vec::with_capacity(filter.len() + scope.len() + 1);
    out.extend_from_slice(b"$share/");
    out.extend_from_slice(scope.as_bytes());
    out.push(b'~');
    out.extend_from_slice(rest);
    Some(out)
}

/// The packet id of a PUBREL (or any packet that starts with one).
pub fn packet_id(packet: &[u8], header_len: usize) -> Result<u16, Malformed> {
    Reader::new(packet.get(header_len..).unwrap_or_default())
        .u16()
        .ok_or(Malformed("packet id"))
}

/// A SUBACK from the broker: packet id, v5 properties, reason codes.
pub fn suback(
    packet: &[u8],
    header_len: usize,
    v5: bool,
) -> Result<(u16, &[u8], &[u8]), Malformed> {
    let mut r = Reader::new(packet.get(header_len..).unwrap_or_default());
    let pkid = r.u16().ok_or(Malformed("SUBACK packet id"))?;
    let start = r.pos;
    if v5 {
        r.properties().ok_or(Malformed("SUBACK properties"))?;
    }
    let properties = &r.buf[start..r.pos];
    Ok((pkid, properties, r.rest()))
}

/// Encodes a SUBACK.
pub fn encode_suback(pkid: u16, v5: bool, properties: &[u8], codes: &[u8], out: &mut Vec<u8>) {
    let props: &[u8] = if v5 && properties.is_empty() {
        &[0]
    } else {
        properties
    };
    out.push(0x90);
    write_varint(2 + props.len() + codes.len(), out);
    out.extend_from_slice(&pkid.to_be_bytes());
    out.extend_from_slice(props);
    out.extend_from_slice(codes);
}

/// An acknowledgement the edge sends itself (PUBACK, PUBREC, PUBCOMP),
/// with a v5 reason code when given.
pub fn ack(kind: u8, pkid: u16, reason: Option<u8>) -> Vec<u8> {
    let [hi, lo] = pkid.to_be_bytes();
    match reason {
        Some(code) => vec![kind << 4, 3, hi, lo, code],
        None => vec![kind << 4, 2, hi, lo],
    }
}

/// A v5 DISCONNECT with a reason code.
pub fn disconnect_v5(reason: u8) -> Vec<u8> {
    vec![0xe0, 1, reason]
}

/// CONNACK rejecting a zero-byte client id without a clean session
/// (3.1.1 §3.1.3.1 [MQTT-3.1.3-8]: return code 2).
pub const CONNACK_IDENTIFIER_REJECTED: &[u8] =
    &[0x20, 0x02, 0x00, return_code::IDENTIFIER_REJECTED];

/// CONNACK refusing a client as not authorized (3.1.1: return code 5;
/// 5: reason 0x87), sent before closing.
pub fn connack_not_authorized(version: MqttVersion) -> &'static [u8] {
    match version {
        MqttVersion::V311 => &[0x20, 0x02, 0x00, return_code::NOT_AUTHORIZED],
        MqttVersion::V5 => &[0x20, 0x03, 0x00, reason::NOT_AUTHORIZED, 0x00],
    }
}

/// CONNACK refusing an unsupported protocol level (3.1.1 return code 1).
pub const CONNACK_UNACCEPTABLE_PROTOCOL: &[u8] =
    &[0x20, 0x02, 0x00, return_code::UNACCEPTABLE_PROTOCOL_VERSION];

/// The longest scope [`scoped_share`] is given: `m` and 16 hex digits for
/// a member's devices, `s` and a 26-character device id for a service.
pub const MAX_SHARE_SCOPE: usize = 32;

/// Whether a filter still fits MQTT's two-byte length once
/// [`scoped_share`] has added its scope and `~`. A client may send a
/// `$share/` filter of up to 65,535 bytes; scoped, its length wrapped
/// around in the re-encoded packet, and the broker read the filter's tail
/// as further filters the policy never saw.
fn fits_when_scoped(filter: &[u8]) -> bool {
    !filter.starts_with(b"$share/") || filter.len() + MAX_SHARE_SCOPE < usize::from(u16::MAX)
}

/// The two-byte length prefix of a string the edge re-encodes.
fn prefix_len(bytes: &[u8]) -> [u8; 2] {
    // Cannot truncate: every filter was read with a two-byte length, and
    // a scoped one was refused on reading unless it fits (fits_when_scoped).
    debug_assert!(bytes.len() <= usize::from(u16::MAX));
    (bytes.len() as u16).to_be_bytes()
}

/// The first byte and the body after a fixed header of `header_len` bytes.
fn split(packet: &[u8], header_len: usize) -> Option<(u8, &[u8])> {
    Some((*packet.first()?, packet.get(header_len..)?))
}

/// Finds a two-byte-integer property in a property list.
fn find_u16(mut props: &[u8], wanted: u8) -> Result<Option<u16>, Malformed> {
    let bad = Malformed("properties");
    let mut found = None;
    while let Some((&id, rest)) = props.split_first() {
        let mut r = Reader::new(rest);
        match id {
            // byte
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => {
                r.u8().ok_or(bad)?;
            }
            // two-byte integer
            0x13 | 0x21 | 0x22 | 0x23 => {
                let v = r.u16().ok_or(bad)?;
                if id == wanted {
                    if found.is_some() {
                        return Err(Malformed("duplicate property"));
                    }
                    found = Some(v);
                }
            }
            // four-byte integer
            0x02 | 0x11 | 0x18 | 0x27 => {
                r.take(4).ok_or(bad)?;
            }
            // variable byte integer
            0x0b => {
                r.varint().ok_or(bad)?;
            }
            // UTF-8 string or binary data
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1a | 0x1c | 0x1f => {
                r.string().ok_or(bad)?;
            }
            // string pair
            0x26 => {
                r.string().ok_or(bad)?;
                r.string().ok_or(bad)?;
            }
            _ => return Err(Malformed("unknown property")),
        }
        props = r.rest();
    }
    Ok(found)
}

/// A v5 DISCONNECT's Session Expiry Interval (0x11), if it has one
/// (5 §3.14.2.2.2). Other DISCONNECT properties are skipped.
pub fn disconnect_session_expiry(
    packet: &[u8],
    header_len: usize,
) -> Result<Option<u32>, Malformed> {
    let mut r = Reader::new(packet.get(header_len..).unwrap_or_default());
    // No reason code (remaining length 0) or no properties (1): none.
    if r.u8().is_none() || r.rest().is_empty() {
        return Ok(None);
    }
    let props = r.properties().ok_or(Malformed("DISCONNECT properties"))?;
    let mut p = Reader::new(props);
    let mut expiry = None;
    while let Some(id) = p.u8() {
        match id {
            0x11 => {
                let b = p.take(4).ok_or(Malformed("session expiry"))?;
                expiry = Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            }
            // Reason String, Server Reference: a string.
            0x1f | 0x1c => {
                p.string().ok_or(Malformed("DISCONNECT string property"))?;
            }
            // User Property: a string pair.
            0x26 => {
                p.string().ok_or(Malformed("user property"))?;
                p.string().ok_or(Malformed("user property"))?;
            }
            _ => return Err(Malformed("DISCONNECT property")),
        }
    }
    Ok(expiry)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let slice = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(slice)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn string(&mut self) -> Option<&'a [u8]> {
        let len = self.u16()? as usize;
        self.take(len)
    }

    fn varint(&mut self) -> Option<usize> {
        let (value, len) = read_varint(self.rest()).ok().flatten()?;
        self.pos += len;
        Some(value)
    }

    /// Skips a v5 property section; returns the properties without the
    /// length prefix.
    fn properties(&mut self) -> Option<&'a [u8]> {
        let len = self.varint()?;
        self.take(len)
    }

    fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos.min(self.buf.len())..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_headers_are_read_without_the_payload() {
        // v5, QoS 1, retain, topic "a/b", pkid 7, alias 3, payload "x".
        let p = [0x33, 12, 0, 3, b'a', b'/', b'b', 0, 7, 3, 0x23, 0, 3, b'x'];
        let h = publish(&p, 2, true).unwrap();
        assert_eq!(
            (h.qos, h.retain, h.topic, h.pkid, h.topic_alias),
            (1, true, &b"a/b"[..], Some(7), Some(3))
        );
        assert!(h.payload_len > 0);
        // 3.1.1, QoS 0, empty payload.
        let p = [0x30, 3, 0, 1, b't'];
        let h = publish(&p, 2, false).unwrap();
        assert_eq!(
            (h.qos, h.pkid, h.topic_alias, h.payload_len == 0),
            (0, None, None, true)
        );
        assert!(publish(&[0x36, 3, 0, 1, b't'], 2, false).is_err(), "QoS 3");
        assert!(
            publish(&[0x30, 3, 0, 9, b't'], 2, false).is_err(),
            "short topic"
        );
    }

    #[test]
    fn subscribe_round_trips_with_a_subset_of_filters() {
        let mut full = Vec::new();
        encode_subscribe(9, &[0], &[(b"a/#", 1), (b"b", 0)], &mut full);
        let s = subscribe(&full, 2, true).unwrap();
        assert_eq!(s.pkid, 9);
        assert_eq!(s.filters, vec![(&b"a/#"[..], 1), (&b"b"[..], 0)]);
        let mut part = Vec::new();
        encode_subscribe(s.pkid, s.properties, &s.filters[1..], &mut part);
        assert_eq!(
            subscribe(&part, 2, true).unwrap().filters,
            vec![(&b"b"[..], 0)]
        );
        assert!(
            subscribe(&[0x80, 2, 0, 1], 2, false).is_err(),
            "wrong flags"
        );
    }

    #[test]
    fn unsubscribe_round_trips_and_shares_are_scoped() {
        for v5 in [false, true] {
            let props: &[u8] = if v5 { &[0] } else { &[] };
            let filters: [&[u8]; 2] = [b"a/b", b"$share/g/c/#"];
            let mut packet = Vec::new();
            encode_unsubscribe(7, props, &filters, &mut packet);
            let parsed = unsubscribe(&packet, 2, v5).unwrap();
            assert_eq!(parsed.pkid, 7);
            assert_eq!(parsed.properties, props);
            assert_eq!(parsed.filters, filters.to_vec());
        }
        assert_eq!(scoped_share(b"a/b", "s"), None);
        assert_eq!(
            scoped_share(b"$share/g/c/#", "m1").as_deref(),
            Some(&b"$share/m1~g/c/#"[..])
        );
        assert!(unsubscribe(&[0xa2, 0x02, 0x00, 0x01], 2, false).is_err());
    }

    /// A SUBSCRIBE (3.1.1) with one filter of `len` bytes, all `fill`
    /// after `prefix`, and QoS 0.
    fn subscribe_with(prefix: &[u8], fill: u8, len: usize) -> Vec<u8> {
        let mut filter = prefix.to_vec();
        filter.resize(len, fill);
        let mut out = Vec::new();
        encode_subscribe(1, &[], &[(&filter, 0)], &mut out);
        out
    }

    fn header_len(packet: &[u8]) -> usize {
        super::super::next_frame(packet, usize::MAX)
            .unwrap()
            .unwrap()
            .header_len
    }

    #[test]
    fn a_shared_filter_that_would_overflow_once_scoped_is_refused() {
        // 65,520 bytes: legal MQTT, but with "m", 16 hex digits and "~"
        // added it is over 65,535. Re-encoded scoped, its length prefix
        // wrapped to a few bytes and the broker took the rest of it for
        // filters of the client's choosing, which the policy never saw.
        let long = subscribe_with(b"$share/g/", b'a', 65_520);
        assert!(subscribe(&long, header_len(&long), false).is_err());
        let mut shared = b"$share/g/".to_vec();
        shared.resize(65_520, b'a');
        let mut unsub = Vec::new();
        encode_unsubscribe(1, &[], &[&shared], &mut unsub);
        assert!(unsubscribe(&unsub, header_len(&unsub), false).is_err());

        // Every shared filter that is accepted re-encodes, scoped with the
        // longest scope, to exactly that one filter.
        let scope = format!("s{}", "0".repeat(MAX_SHARE_SCOPE - 1));
        for len in [9, 1000, 65_535 - MAX_SHARE_SCOPE - 1] {
            let packet = subscribe_with(b"$share/g/", b'a', len);
            let parsed = subscribe(&packet, header_len(&packet), false).unwrap();
            let scoped = scoped_share(parsed.filters[0].0, &scope).unwrap();
            let mut out = Vec::new();
            encode_subscribe(parsed.pkid, &[], &[(&scoped, 0)], &mut out);
            // Read back as the broker does: one filter, nothing after it.
            let mut r = Reader::new(&out[header_len(&out)..]);
            assert_eq!(r.u16(), Some(parsed.pkid));
            assert_eq!(r.string(), Some(&scoped[..]), "len {len}");
            assert_eq!(r.u8(), Some(0));
            assert!(r.rest().is_empty(), "len {len}");
        }
        // A filter that is not shared keeps the whole MQTT range.
        let plain = subscribe_with(b"a/", b'b', 65_535);
        assert!(subscribe(&plain, header_len(&plain), false).is_ok());
    }

    #[test]
    fn a_header_length_past_the_packet_is_malformed_not_a_panic() {
        for header_len in [5, 100] {
            let p = [0x30, 3, 0, 1, b't'];
            assert!(publish(&p, header_len + 1, false).is_err());
            assert!(subscribe(&[0x82, 2, 0, 1], header_len, false).is_err());
            assert!(unsubscribe(&[0xa2, 2, 0, 1], header_len, false).is_err());
            assert!(packet_id(&[0x62, 2, 0, 1], header_len).is_err());
            assert!(suback(&[0x90, 3, 0, 1, 0], header_len, false).is_err());
        }
        assert!(publish(&[], 2, false).is_err());
        assert!(subscribe(&[], 2, false).is_err());
    }

    #[test]
    fn the_edges_own_connacks_are_the_bytes_the_spec_gives() {
        assert_eq!(CONNACK_IDENTIFIER_REJECTED, &[0x20, 0x02, 0x00, 0x02]);
        assert_eq!(CONNACK_UNACCEPTABLE_PROTOCOL, &[0x20, 0x02, 0x00, 0x01]);
        assert_eq!(
            connack_not_authorized(MqttVersion::V311),
            &[0x20, 0x02, 0x00, 0x05]
        );
        assert_eq!(
            connack_not_authorized(MqttVersion::V5),
            &[0x20, 0x03, 0x00, 0x87, 0x00]
        );
    }

    #[test]
    fn suback_is_rebuilt() {
        let mut out = Vec::new();
        encode_suback(5, true, &[], &[0x00, 0x87], &mut out);
        assert_eq!(out, vec![0x90, 5, 0, 5, 0, 0x00, 0x87]);
        let (pkid, props, codes) = suback(&out, 2, true).unwrap();
        assert_eq!((pkid, props, codes), (5, &[0u8][..], &[0x00, 0x87][..]));
    }
}

/// The v5 CONNACK properties the edge adds to the broker's (5 §3.2.2.3).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConnAckExtras {
    /// Assigned Client Identifier (0x12): the client sent an empty one.
    pub assigned_id: Option<String>,
    /// Session Expiry Interval (0x11): the hub keeps the session for less
    /// than the client asked.
    pub session_expiry: Option<u32>,
    /// Receive Maximum (0x21): QoS 1/2 PUBLISHes the hub takes unacknowledged.
    pub receive_max: Option<u16>,
}

impl ConnAckExtras {
    /// The properties' bytes, or `None` if an id does not fit a string.
    fn encode(&self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        if let Some(expiry) = self.session_expiry {
            out.push(0x11);
            out.extend_from_slice(&expiry.to_be_bytes());
        }
        if let Some(max) = self.receive_max {
            out.push(0x21);
            out.extend_from_slice(&max.to_be_bytes());
        }
        if let Some(id) = &self.assigned_id {
            let id_len = u16::try_from(id.len()).ok()?;
            out.push(0x12);
            out.extend_from_slice(&id_len.to_be_bytes());
            out.extend_from_slice(id.as_bytes());
        }
        Some(out)
    }
}

/// A v5 CONNACK with the edge's properties added, or `None` if the packet
/// is not a well-formed v5 CONNACK. rumqttd sends none of these.
pub fn connack_with(packet: &[u8], header_len: usize, extras: &ConnAckExtras) -> Option<Vec<u8>> {
    let body = packet.get(header_len..)?;
    let flags_and_reason = body.get(..2)?;
    let (props_len, props_len_size) = read_varint(body.get(2..)?).ok().flatten()?;
    let props = body.get(2 + props_len_size..2 + props_len_size + props_len)?;
    let mut new_props = props.to_vec();
    new_props.extend_from_slice(&extras.encode()?);
    let mut variable = flags_and_reason.to_vec();
    write_varint(new_props.len(), &mut variable);
    variable.extend_from_slice(&new_props);
    // Cannot panic: `body.get(..2)` succeeded, so the packet is not empty.
    let mut out = vec![packet[0]];
    write_varint(variable.len(), &mut out);
    out.extend_from_slice(&variable);
    Some(out)
}

#[cfg(test)]
mod assigned_id_tests {
    use super::*;

    #[test]
    fn a_disconnects_session_expiry_is_read_among_its_properties() {
        assert_eq!(disconnect_session_expiry(&[0xe0, 0x00], 2), Ok(None));
        assert_eq!(disconnect_session_expiry(&[0xe0, 0x01, 0x00], 2), Ok(None));
        let with = [
            0xe0, 0x0d, 0x00, 0x0b, 0x26, 0x00, 0x01, b'k', 0x00, 0x00, 0x11, 0x00, 0x00, 0x01,
            0x2c,
        ];
        assert_eq!(disconnect_session_expiry(&with, 2), Ok(Some(300)));
        let cut = [0xe0, 0x04, 0x00, 0x02, 0x11, 0x00];
        assert!(disconnect_session_expiry(&cut, 2).is_err());
    }

    #[test]
    fn the_assigned_id_is_appended_to_the_connack_properties() {
        // CONNACK: flags 0, reason 0, properties: topic alias max 4096.
        let connack = [0x20, 0x06, 0x00, 0x00, 0x03, 0x22, 0x10, 0x00];
        let extras = ConnAckExtras {
            assigned_id: Some("abc".into()),
            ..ConnAckExtras::default()
        };
        let out = connack_with(&connack, 2, &extras).unwrap();
        assert_eq!(
            out,
            vec![
                0x20, 0x0c, 0x00, 0x00, 0x09, 0x22, 0x10, 0x00, 0x12, 0x00, 0x03, b'a', b'b', b'c'
            ]
        );
        assert!(connack_with(&[0x20, 0x01, 0x00], 2, &extras).is_none());
    }

    #[test]
    fn a_capped_expiry_and_the_receive_maximum_are_added_in_order() {
        let connack = [0x20, 0x03, 0x01, 0x00, 0x00];
        let extras = ConnAckExtras {
            assigned_id: None,
            session_expiry: Some(604_800),
            receive_max: Some(100),
        };
        let out = connack_with(&connack, 2, &extras).unwrap();
        assert_eq!(
            out,
            vec![0x20, 0x0b, 0x01, 0x00, 0x08, 0x11, 0x00, 0x09, 0x3a, 0x80, 0x21, 0x00, 0x64]
        );
    }
}
