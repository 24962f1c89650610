//! The order acknowledgements go back to the broker in, when the edge answers for the client.
//!
//! rumqttd takes acknowledgements only in the order it sent what they
//! answer: PUBACK/PUBREC in PUBLISH order, PUBCOMP in PUBREL order. The
//! edge answers for a client itself when it discards a packet too large for
//! the client's Maximum Packet Size (5 §3.1.2.11.4); its answers and the
//! client's are then released to the broker in the order the flows began.
//! Pure: the downstream half records what the broker sent, the upstream
//! half records the client's answers and writes what [`AckOrder::drain`]
//! gives it.

use std::collections::VecDeque;

/// Flows one queue keeps at most. Bounded by the broker's inflight window
/// in practice; a runaway queue means the client stopped answering, and
/// the session ends anyway.
const QUEUE_MAX: usize = 4096;

/// Acknowledgements owed to the broker, in the order its flows began.
#[derive(Debug, Default)]
pub(super) struct AckOrder {
    /// PUBACK/PUBREC owed, in PUBLISH order; `None` until answered.
    acks: VecDeque<(u16, Option<Vec<u8>>)>,
    /// PUBCOMP owed, in PUBREL order.
    completions: VecDeque<(u16, Option<Vec<u8>>)>,
}

impl AckOrder {
    /// The broker sent a PUBLISH (or, `completion`, a PUBREL) for `pkid`;
    /// `answer` is the edge's own, or `None` if the client will answer.
    pub(super) fn expect(&mut self, completion: bool, pkid: u16, answer: Option<Vec<u8>>) {
        let queue = self.queue(completion);
        if queue.len() < QUEUE_MAX {
            queue.push_back((pkid, answer));
        }
    }

    /// The client answered `pkid` with `packet`; false if nothing waits for
    /// it (the packet then passes unchanged).
    pub(super) fn answered(&mut self, completion: bool, pkid: u16, packet: &[u8]) -> bool {
        match self
            .queue(completion)
            .iter_mut()
            .find(|(id, answer)| *id == pkid && answer.is_none())
        {
            Some(slot) => {
                slot.1 = Some(packet.to_vec());
                true
            }
            None => false,
        }
    }

    /// Every answer now in order, ready for the broker.
    pub(super) fn drain(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for queue in [&mut self.acks, &mut self.completions] {
            while queue.front().is_some_and(|(_, answer)| answer.is_some()) {
                if let Some((_, Some(bytes))) = queue.pop_front() {
                    out.extend_from_slice(&bytes);
                }
            }
        }
        out
    }

    fn queue(&mut self, completion: bool) -> &mut VecDeque<(u16, Option<Vec<u8>>)> {
        if completion {
            &mut self.completions
        } else {
            &mut self.acks
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::mqtt::{inspect, kind};

    fn puback(pkid: u16) -> Vec<u8> {
        inspect::ack(kind::PUBACK, pkid, None)
    }

    fn pubcomp(pkid: u16) -> Vec<u8> {
        inspect::ack(kind::PUBCOMP, pkid, None)
    }

    #[test]
    fn the_edges_answer_waits_for_the_clients_answer_to_an_earlier_publish() {
        let mut order = AckOrder::default();
        order.expect(false, 1, None);
        // Publish 2 was too large for the client: the edge answers it.
        order.expect(false, 2, Some(puback(2)));
        assert!(order.drain().is_empty(), "publish 1 is still unanswered");
        assert!(order.answered(false, 1, &puback(1)));
        assert_eq!(order.drain(), [puback(1), puback(2)].concat());
        assert!(order.drain().is_empty(), "each answer goes once");
    }

    #[test]
    fn the_clients_answers_go_in_publish_order_whatever_order_they_came_in() {
        let mut order = AckOrder::default();
        order.expect(false, 1, None);
        order.expect(false, 2, None);
        order.expect(false, 3, Some(puback(3)));
        assert!(order.answered(false, 2, &puback(2)));
        assert!(order.drain().is_empty());
        assert!(order.answered(false, 1, &puback(1)));
        assert_eq!(order.drain(), [puback(1), puback(2), puback(3)].concat());
    }

    #[test]
    fn an_answer_nothing_waits_for_passes_unchanged() {
        let mut order = AckOrder::default();
        assert!(!order.answered(false, 9, &puback(9)));
        order.expect(false, 9, Some(puback(9)));
        assert!(
            !order.answered(false, 9, &puback(9)),
            "the edge already answered 9"
        );
    }

    #[test]
    fn completions_keep_their_own_order_beside_the_acknowledgements() {
        let mut order = AckOrder::default();
        order.expect(false, 1, None);
        order.expect(true, 5, None);
        order.expect(true, 6, Some(pubcomp(6)));
        // A PUBCOMP is not an answer to a PUBLISH.
        assert!(!order.answered(false, 5, &pubcomp(5)));
        assert!(order.answered(true, 5, &pubcomp(5)));
        assert_eq!(
            order.drain(),
            [pubcomp(5), pubcomp(6)].concat(),
            "an unanswered PUBLISH does not hold back PUBCOMPs"
        );
    }

    #[test]
    fn a_packet_id_reused_after_its_flow_ended_is_a_new_flow() {
        let mut order = AckOrder::default();
        order.expect(false, 4, None);
        assert!(order.answered(false, 4, &puback(4)));
        order.expect(false, 4, None);
        assert!(order.answered(false, 4, &puback(4)), "the second flow of 4");
        assert_eq!(order.drain(), [puback(4), puback(4)].concat());
    }

    #[test]
    fn a_client_that_never_answers_cannot_grow_the_queue_without_bound() {
        let mut order = AckOrder::default();
        for pkid in 0..=u16::MAX {
            order.expect(false, pkid, None);
        }
        assert_eq!(order.acks.len(), QUEUE_MAX);
    }
}
