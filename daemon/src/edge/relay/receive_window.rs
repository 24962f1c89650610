//! Receive Maximum both ways: what a client may have in flight towards the hub, and the hub towards it.
//!
//! 5 §3.1.2.11.3, §3.2.2.3.3 and §4.9. Pure: the relay's halves feed these the packet ids they see and act on
//! the answers.

use std::collections::{HashSet, VecDeque};

use hearth_protocol::mqtt::{inspect, kind, reason, Frame};

/// rumqttd's own window of unacknowledged QoS 1/2 PUBLISHes per connection.
const BROKER_WINDOW: u16 = 100;

/// Bytes a client's receive window holds before the edge stops reading
/// from the broker until the client acknowledges.
const WINDOW_HOLD_MAX: usize = 1024 * 1024;

/// QoS 1/2 PUBLISHes a v5 client sent and the hub has not yet answered
/// with PUBACK, PUBCOMP or a failing PUBREC (5 §3.3.4, §4.9): at most the
/// Receive Maximum the CONNACK gave it.
#[derive(Debug)]
pub(super) struct InboundWindow {
    max: usize,
    open: HashSet<u16>,
}

impl InboundWindow {
    pub(super) fn new(max: u16) -> InboundWindow {
        InboundWindow {
            max: usize::from(max),
            open: HashSet::new(),
        }
    }

    /// A PUBLISH with `pkid` arrived: false if it is one too many (a resent
    /// one, DUP or not, takes no second place).
    pub(super) fn received(&mut self, pkid: u16) -> bool {
        if self.open.contains(&pkid) {
            return true;
        }
        if self.open.len() >= self.max {
            return false;
        }
        self.open.insert(pkid);
        true
    }

    /// The flow of `pkid` ended.
    pub(super) fn answered(&mut self, pkid: u16) {
        self.open.remove(&pkid);
    }
}

/// The packet id whose inbound flow this broker packet ends: PUBACK,
/// PUBCOMP, or a PUBREC with a failure reason code.
pub(super) fn ends_inbound_flow(f: &Frame, packet: &[u8]) -> Option<u16> {
    let ends = match f.kind() {
        kind::PUBACK | kind::PUBCOMP => true,
        kind::PUBREC => packet
            .get(f.header_len + 2)
            .is_some_and(|code| reason::is_failure(*code)),
        _ => false,
    };
    if !ends {
        return None;
    }
    inspect::packet_id(packet, f.header_len).ok()
}

/// The window the edge applies to what it sends a client: its Receive
/// Maximum or the hub's `max_inflight`, whichever is lower; none when
/// rumqttd's own window is as small (nothing to hold back).
pub(super) fn send_window(client: Option<u16>, hub: u16) -> Option<ReceiveWindow> {
    holds_back(client, hub).then(|| ReceiveWindow::new(client.unwrap_or(u16::MAX).min(hub)))
}

/// Whether the edge may hold back QoS 1/2 PUBLISHes for a client (while
/// QoS 0 ones and other packets go on).
pub(in crate::edge) fn holds_back(client: Option<u16>, hub: u16) -> bool {
    client.unwrap_or(u16::MAX).min(hub) < BROKER_WINDOW
}

/// 5 §3.1.2.11.3 and §4.9 [MQTT-3.3.4-9]: at most `max` QoS 1/2 PUBLISHes
/// unacknowledged at the client; later ones wait here, in order. The wait
/// is bounded by the broker's own inflight window (it sends no more until
/// the edge passes acknowledgements back).
#[derive(Debug)]
pub(super) struct ReceiveWindow {
    max: usize,
    inflight: HashSet<u16>,
    held: VecDeque<(u16, Vec<u8>)>,
    /// Bytes of the packets held.
    held_bytes: usize,
}

impl ReceiveWindow {
    fn new(max: u16) -> ReceiveWindow {
        ReceiveWindow {
            max: usize::from(max.max(1)),
            inflight: HashSet::new(),
            held: VecDeque::new(),
            held_bytes: 0,
        }
    }

    /// Whether it holds so much that the broker should wait (the broker may
    /// send up to its own window of large packets).
    pub(super) fn full(&self) -> bool {
        self.held_bytes > WINDOW_HOLD_MAX
    }

    /// A QoS 1/2 PUBLISH for the client: the bytes to send now, or `None`
    /// if it must wait.
    pub(super) fn offer(&mut self, pkid: u16, bytes: Vec<u8>) -> Option<Vec<u8>> {
        // A resend of one already in flight does not take another slot.
        if self.inflight.contains(&pkid) || (self.held.is_empty() && self.inflight.len() < self.max)
        {
            self.inflight.insert(pkid);
            return Some(bytes);
        }
        self.held_bytes += bytes.len();
        self.held.push_back((pkid, bytes));
        None
    }

    /// The client acknowledged `pkid`: what may go now.
    pub(super) fn acked(&mut self, pkid: u16) -> Vec<Vec<u8>> {
        self.inflight.remove(&pkid);
        let mut ready = Vec::new();
        while self.inflight.len() < self.max {
            let Some((next, bytes)) = self.held.pop_front() else {
                break;
            };
            self.held_bytes -= bytes.len();
            self.inflight.insert(next);
            ready.push(bytes);
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::mqtt;

    #[test]
    fn a_v5_client_may_have_as_many_publishes_in_flight_as_it_was_told() {
        let mut window = InboundWindow::new(2);
        assert!(window.received(1));
        assert!(window.received(2));
        assert!(window.received(2), "a resend takes no second place");
        assert!(!window.received(3), "one too many");
        window.answered(1);
        assert!(window.received(3));
    }

    #[test]
    fn puback_pubcomp_and_a_failing_pubrec_end_an_inbound_flow() {
        let frame = |packet: &[u8]| mqtt::next_frame(packet, 1024).unwrap().unwrap();
        let puback = inspect::ack(kind::PUBACK, 7, None);
        assert_eq!(ends_inbound_flow(&frame(&puback), &puback), Some(7));
        let pubcomp = inspect::ack(kind::PUBCOMP, 8, None);
        assert_eq!(ends_inbound_flow(&frame(&pubcomp), &pubcomp), Some(8));
        let pubrec_ok = inspect::ack(kind::PUBREC, 9, None);
        assert_eq!(ends_inbound_flow(&frame(&pubrec_ok), &pubrec_ok), None);
        let pubrec_success = inspect::ack(kind::PUBREC, 9, Some(reason::SUCCESS));
        assert_eq!(
            ends_inbound_flow(&frame(&pubrec_success), &pubrec_success),
            None,
            "a successful PUBREC leaves the flow open until PUBCOMP"
        );
        let pubrec_refused = inspect::ack(kind::PUBREC, 9, Some(reason::QUOTA_EXCEEDED));
        assert_eq!(
            ends_inbound_flow(&frame(&pubrec_refused), &pubrec_refused),
            Some(9)
        );
        let mut suback = Vec::new();
        inspect::encode_suback(1, false, &[], &[reason::SUCCESS], &mut suback);
        assert_eq!(ends_inbound_flow(&frame(&suback), &suback), None);
    }

    #[test]
    fn the_send_window_is_the_lower_of_the_clients_and_the_hubs() {
        assert!(send_window(None, 100).is_none(), "rumqttd's own window");
        assert!(send_window(Some(500), 100).is_none());
        assert_eq!(send_window(Some(10), 100).map(|w| w.max), Some(10));
        assert_eq!(send_window(None, 20).map(|w| w.max), Some(20));
        assert_eq!(
            send_window(Some(0), 20).map(|w| w.max),
            Some(1),
            "a window of none would hold every QoS 1/2 PUBLISH for ever"
        );
        assert!(holds_back(Some(99), 1000));
        assert!(!holds_back(Some(100), 1000));
    }

    #[test]
    fn publishes_beyond_the_clients_receive_maximum_wait_and_go_in_order() {
        let mut window = ReceiveWindow::new(2);
        assert_eq!(window.offer(1, vec![1]), Some(vec![1]));
        assert_eq!(window.offer(2, vec![2]), Some(vec![2]));
        assert_eq!(window.offer(3, vec![3]), None);
        assert_eq!(window.offer(4, vec![4]), None);
        assert_eq!(window.acked(2), vec![vec![3]], "one slot freed, one goes");
        assert_eq!(window.acked(9), Vec::<Vec<u8>>::new(), "not in flight");
        assert_eq!(window.acked(1), vec![vec![4]]);
        assert_eq!(window.acked(3), Vec::<Vec<u8>>::new(), "nothing held");
    }

    #[test]
    fn a_freed_slot_goes_to_the_oldest_held_publish_not_a_new_one() {
        let mut window = ReceiveWindow::new(1);
        assert!(window.offer(1, vec![1]).is_some());
        assert!(window.offer(2, vec![2]).is_none());
        // The slot is freed and given to 2 at once; a new one still waits.
        assert_eq!(window.acked(1), vec![vec![2]]);
        assert!(window.offer(3, vec![3]).is_none());
    }

    #[test]
    fn a_resend_of_a_publish_in_flight_goes_at_once() {
        let mut window = ReceiveWindow::new(1);
        assert!(window.offer(1, vec![1]).is_some());
        assert!(window.offer(2, vec![2]).is_none());
        assert_eq!(window.offer(1, vec![1, 1]), Some(vec![1, 1]));
    }

    #[test]
    fn a_window_holding_more_than_its_byte_budget_stops_the_broker() {
        let mut window = ReceiveWindow::new(1);
        assert!(window.offer(1, vec![0; 10]).is_some());
        assert!(!window.full(), "what is in flight is not held");
        assert!(window.offer(2, vec![0; WINDOW_HOLD_MAX]).is_none());
        assert!(!window.full());
        assert!(window.offer(3, vec![0; 1]).is_none());
        assert!(window.full());
        window.acked(1);
        assert!(!window.full(), "what was sent is no longer held");
    }
}
