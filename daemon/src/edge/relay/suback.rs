//! The SUBACK a client gets when the edge refused some of its filters: the edge's refusals merged with the broker's answer, per filter.
//!
//! The edge passes the broker only the filters it allowed; the broker's
//! SUBACK then answers those alone, and the edge puts its own refusal codes
//! back at the refused filters' positions, so the client sees one code per
//! filter it asked for, in its order (3.1.1 §3.9.3, 5 §3.9.3). Pure: the
//! downstream half feeds it the broker's SUBACKs.

use std::collections::HashMap;

use hearth_protocol::mqtt::{inspect, reason, Frame};

/// Why the edge refused a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The household's policy does not allow it.
    Policy,
    /// The client holds as many subscriptions as it may.
    Quota,
}

impl Refusal {
    /// The code the client gets for it: 3.1.1 has only "failure" (0x80);
    /// 5 names the reason.
    pub(super) fn code(self, v5: bool) -> u8 {
        match (self, v5) {
            (_, false) => reason::UNSPECIFIED,
            (Refusal::Policy, true) => reason::NOT_AUTHORIZED,
            (Refusal::Quota, true) => reason::QUOTA_EXCEEDED,
        }
    }
}

/// The refused filters' positions and codes, and how many filters the
/// client asked for.
#[derive(Debug)]
struct Refused {
    codes: Vec<(usize, u8)>,
    total: usize,
}

/// SUBACKs still to come from the broker that need the edge's refusals put
/// back, by packet id.
#[derive(Debug, Default)]
pub(super) struct PendingSubAcks {
    by_pkid: HashMap<u16, Refused>,
}

impl PendingSubAcks {
    /// The broker's SUBACK for `pkid` will lack the `refused` filters
    /// (position, code) of the `total` the client asked for.
    pub(super) fn expect(&mut self, pkid: u16, refused: Vec<(usize, u8)>, total: usize) {
        self.by_pkid.insert(
            pkid,
            Refused {
                codes: refused,
                total,
            },
        );
    }

    /// Whether any SUBACK waits to be merged (most of the time none does:
    /// the caller then passes SUBACKs on without looking).
    pub(super) fn is_empty(&self) -> bool {
        self.by_pkid.is_empty()
    }

    /// The broker's SUBACK with the refusals merged in; `None` if it is not
    /// one the edge must change (it then passes unchanged).
    pub(super) fn merge(&mut self, v5: bool, frame: &Frame, packet: &[u8]) -> Option<Vec<u8>> {
        let (pkid, properties, broker_codes) =
            inspect::suback(packet, frame.header_len, v5).ok()?;
        let refused = self.by_pkid.remove(&pkid)?;
        let codes = merged_codes(&refused.codes, refused.total, broker_codes);
        let mut out = Vec::new();
        inspect::encode_suback(pkid, v5, properties, &codes, &mut out);
        Some(out)
    }
}

/// One code per filter asked for: the edge's refusal where it refused, the
/// broker's codes in order for the rest. A code the broker did not give
/// (it answered fewer filters than it was sent) is a failure.
fn merged_codes(refused: &[(usize, u8)], total: usize, broker: &[u8]) -> Vec<u8> {
    let mut broker = broker.iter();
    (0..total)
        .map(|i| match refused.iter().find(|(at, _)| *at == i) {
            Some((_, code)) => *code,
            // "Failure" in 3.1.1, "unspecified error" in 5.
            None => broker.next().copied().unwrap_or(reason::UNSPECIFIED),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::mqtt;

    /// Granted QoS 1 (3.1.1 and 5 alike).
    const GRANTED_QOS1: u8 = 1;

    fn suback(pkid: u16, v5: bool, properties: &[u8], codes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        inspect::encode_suback(pkid, v5, properties, codes, &mut out);
        out
    }

    fn merge(pending: &mut PendingSubAcks, v5: bool, packet: &[u8]) -> Option<Vec<u8>> {
        let frame = mqtt::next_frame(packet, 1024).unwrap().unwrap();
        pending.merge(v5, &frame, packet)
    }

    #[test]
    fn refused_filters_get_their_codes_back_at_their_positions() {
        let mut pending = PendingSubAcks::default();
        let not_authorized = Refusal::Policy.code(true);
        let quota = Refusal::Quota.code(true);
        // Filters 0 and 3 refused, 1, 2 and 4 passed to the broker.
        pending.expect(7, vec![(0, not_authorized), (3, quota)], 5);
        let broker = suback(
            7,
            true,
            &[],
            &[reason::SUCCESS, GRANTED_QOS1, reason::SUCCESS],
        );
        let merged = merge(&mut pending, true, &broker).expect("merged");
        let (pkid, _, codes) = inspect::suback(&merged, 2, true).unwrap();
        assert_eq!(pkid, 7);
        assert_eq!(
            codes,
            [
                not_authorized,
                reason::SUCCESS,
                GRANTED_QOS1,
                quota,
                reason::SUCCESS
            ]
        );
        assert!(pending.is_empty(), "each SUBACK is merged once");
    }

    #[test]
    fn a_suback_the_edge_changed_nothing_in_passes_unchanged() {
        let mut pending = PendingSubAcks::default();
        pending.expect(7, vec![(0, Refusal::Policy.code(false))], 2);
        let other = suback(8, false, &[], &[reason::SUCCESS]);
        assert_eq!(merge(&mut pending, false, &other), None);
        assert!(!pending.is_empty(), "7 still waits for its SUBACK");
    }

    #[test]
    fn a_v311_client_gets_the_only_failure_code_it_knows() {
        assert_eq!(Refusal::Policy.code(false), reason::UNSPECIFIED);
        assert_eq!(Refusal::Quota.code(false), reason::UNSPECIFIED);
        assert_eq!(Refusal::Policy.code(true), reason::NOT_AUTHORIZED);
        assert_eq!(Refusal::Quota.code(true), reason::QUOTA_EXCEEDED);
        let mut pending = PendingSubAcks::default();
        pending.expect(3, vec![(1, Refusal::Policy.code(false))], 2);
        let broker = suback(3, false, &[], &[GRANTED_QOS1]);
        let merged = merge(&mut pending, false, &broker).expect("merged");
        assert_eq!(
            merged,
            suback(3, false, &[], &[GRANTED_QOS1, reason::UNSPECIFIED])
        );
    }

    #[test]
    fn the_brokers_properties_stay_in_a_v5_suback() {
        // A Reason String property (0x1f) "ok".
        let properties = [0x05, 0x1f, 0x00, 0x02, b'o', b'k'];
        let mut pending = PendingSubAcks::default();
        pending.expect(4, vec![(0, Refusal::Policy.code(true))], 2);
        let broker = suback(4, true, &properties, &[reason::SUCCESS]);
        let merged = merge(&mut pending, true, &broker).expect("merged");
        let (_, kept, codes) = inspect::suback(&merged, 2, true).unwrap();
        assert_eq!(kept, properties);
        assert_eq!(codes, [reason::NOT_AUTHORIZED, reason::SUCCESS]);
    }

    #[test]
    fn a_filter_the_broker_left_unanswered_is_a_failure() {
        assert_eq!(
            merged_codes(&[(0, reason::NOT_AUTHORIZED)], 3, &[reason::SUCCESS]),
            [reason::NOT_AUTHORIZED, reason::SUCCESS, reason::UNSPECIFIED]
        );
    }
}
