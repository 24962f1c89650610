//! The bridge's bounded local queue: what waits for the other broker,
//! what was handed to the MQTT client, and what awaits its PUBACK. A
//! message leaves only once acknowledged (QoS 1) or written (QoS 0); on a
//! disconnection everything unacknowledged goes back to the front, in
//! order, so a broker restart loses no QoS 1 message while the queue holds.

use std::collections::VecDeque;

use hearth_protocol::DeviceId;

/// One message for the other broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The topic there.
    pub topic: String,
    /// The payload, as it came (or a discovery document).
    pub payload: Vec<u8>,
    /// 0 or 1.
    pub qos: u8,
    /// Retained there.
    pub retain: bool,
    /// The device it is about, for the audit of a drop (by id only).
    pub device: Option<DeviceId>,
}

/// Messages not yet acknowledged by the other broker, at most `max`.
#[derive(Debug)]
pub struct Queue {
    waiting: VecDeque<Outgoing>,
    /// Handed to the client, in order, before it gave them a packet id.
    handed: VecDeque<Outgoing>,
    /// Written with a packet id, awaiting PUBACK, oldest first.
    unacked: VecDeque<(u16, Outgoing)>,
    max: usize,
    /// Payload and topic bytes held, and their bound: a device may send
    /// up to `limits.max_payload` per message, so a count alone would
    /// let a long outage hold gigabytes.
    bytes: usize,
    max_bytes: usize,
}

fn size(m: &Outgoing) -> usize {
    m.topic.len() + m.payload.len()
}

/// At most this many messages are with the client at once (its own
/// in-flight window is 100; staying under it means a handed message is
/// never stuck behind the client's flow control).
pub const WINDOW: usize = 32;

impl Queue {
    /// An empty queue holding at most `max` messages (at least 1) and
    /// `max_bytes` bytes of topics and payloads.
    pub fn new(max: usize, max_bytes: usize) -> Queue {
        Queue {
            waiting: VecDeque::new(),
            handed: VecDeque::new(),
            unacked: VecDeque::new(),
            max: max.max(1),
            bytes: 0,
            max_bytes,
        }
    }

    /// Changes the bounds (a reload); what is over them is dropped, oldest
    /// first, and returned.
    pub fn set_max(&mut self, max: usize, max_bytes: usize) -> Vec<Outgoing> {
        self.max = max.max(1);
        self.max_bytes = max_bytes;
        let mut dropped = Vec::new();
        self.shed_oldest(&mut dropped);
        dropped
    }

    /// Drops the oldest waiting messages into `dropped` until the bounds
    /// hold (or nothing waits: what is with the client stays).
    fn shed_oldest(&mut self, dropped: &mut Vec<Outgoing>) {
        while self.over() {
            let Some(m) = self.waiting.pop_front() else {
                break;
            };
            self.bytes -= size(&m);
            dropped.push(m);
        }
    }

    fn over(&self) -> bool {
        self.len() > self.max || self.bytes > self.max_bytes
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Every message held.
    pub fn len(&self) -> usize {
        self.waiting.len() + self.handed.len() + self.unacked.len()
    }

    /// Messages with the client now (handed, or written and awaiting
    /// their PUBACK).
    pub fn in_flight(&self) -> usize {
        self.handed.len() + self.unacked.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a message; when full, the oldest waiting one is dropped and
    /// returned (or this one, if all are with the client).
    pub fn push(&mut self, message: Outgoing) -> Vec<Outgoing> {
        let mut dropped = Vec::new();
        if size(&message) > self.max_bytes {
            dropped.push(message);
            return dropped;
        }
        self.bytes += size(&message);
        self.waiting.push_back(message);
        // The new message is last: anything older goes first, and the new
        // one only when all else is with the client.
        self.shed_oldest(&mut dropped);
        dropped
    }

    /// Puts messages before everything waiting (what a reconnection must
    /// say first: discovery and availability). Over the bound, the oldest
    /// waiting ones are dropped and returned.
    pub fn push_front(&mut self, messages: Vec<Outgoing>) -> Vec<Outgoing> {
        let block = messages.len();
        for m in messages.into_iter().rev() {
            self.bytes += size(&m);
            self.waiting.push_front(m);
        }
        let mut dropped = Vec::new();
        while self.over() && !self.waiting.is_empty() {
            // The oldest of the backlog sits right after the new block;
            // only when no backlog is left does the block itself shrink.
            let at = block.min(self.waiting.len() - 1);
            if let Some(m) = self.waiting.remove(at) {
                self.bytes -= size(&m);
                dropped.push(m);
            }
        }
        dropped
    }

    /// The next message to hand to the client, if the window allows.
    pub fn hand(&mut self) -> Option<Outgoing> {
        if self.handed.len() + self.unacked.len() >= WINDOW {
            return None;
        }
        let next = self.waiting.pop_front()?;
        self.handed.push_back(next.clone());
        Some(next)
    }

    /// The client could not take the last handed message: it waits again.
    pub fn unhand(&mut self) {
        if let Some(m) = self.handed.pop_back() {
            self.waiting.push_front(m);
        }
    }

    /// The client wrote the oldest handed message with packet id `pkid`
    /// (0 for QoS 0, which is then done).
    pub fn written(&mut self, pkid: u16) {
        if let Some(m) = self.handed.pop_front() {
            if m.qos > 0 && pkid != 0 {
                self.unacked.push_back((pkid, m));
            } else {
                self.bytes -= size(&m);
            }
        }
    }

    /// The other broker acknowledged `pkid`.
    pub fn acked(&mut self, pkid: u16) {
        if let Some(at) = self.unacked.iter().position(|(id, _)| *id == pkid) {
            if let Some((_, m)) = self.unacked.remove(at) {
                self.bytes -= size(&m);
            }
        }
    }

    /// The connection ended: everything not acknowledged waits again, in
    /// the order it was first queued.
    pub fn disconnected(&mut self) {
        let back: Vec<Outgoing> = self
            .unacked
            .drain(..)
            .map(|(_, m)| m)
            .chain(self.handed.drain(..))
            .collect();
        for m in back.into_iter().rev() {
            self.waiting.push_front(m);
        }
    }

    /// A device is no longer bridged: what still waits about it is
    /// forgotten, never sent (what the client already holds may still
    /// go). Returns how many were forgotten.
    pub fn forget_device(&mut self, device: &DeviceId) -> usize {
        let before = self.waiting.len();
        let mut freed = 0;
        self.waiting.retain(|m| {
            let keep = m.device.as_ref() != Some(device);
            if !keep {
                freed += size(m);
            }
            keep
        });
        self.bytes -= freed;
        before - self.waiting.len()
    }

    /// The bridge was turned off or points elsewhere now: nothing that
    /// waited for the old destination is sent. Returns how many were
    /// forgotten.
    pub fn clear(&mut self) -> usize {
        let n = self.len();
        self.waiting.clear();
        self.handed.clear();
        self.unacked.clear();
        self.bytes = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u32, qos: u8) -> Outgoing {
        Outgoing {
            topic: format!("t/{n}"),
            payload: n.to_string().into_bytes(),
            qos,
            retain: false,
            device: None,
        }
    }

    #[test]
    fn a_device_no_longer_bridged_leaves_nothing_waiting() {
        let a = DeviceId::from_entropy([1; 16]);
        let b = DeviceId::from_entropy([2; 16]);
        let mut q = Queue::new(10, 1 << 20);
        for (n, device) in [(1, a), (2, b), (3, a)] {
            q.push(Outgoing {
                device: Some(device),
                ..msg(n, 1)
            });
        }
        let bytes_of_b = q.bytes() - 2 * (3 + 1);
        assert_eq!(q.forget_device(&a), 2);
        assert_eq!((q.len(), q.bytes()), (1, bytes_of_b));
        assert_eq!(q.hand().unwrap().device, Some(b));
        assert_eq!(q.clear(), 1);
        assert_eq!((q.len(), q.bytes()), (0, 0));
    }

    #[test]
    fn unacknowledged_messages_survive_a_disconnection_in_order() {
        let mut q = Queue::new(10, 1 << 20);
        for n in 0..4 {
            assert!(q.push(msg(n, 1)).is_empty());
        }
        let a = q.hand().unwrap();
        let b = q.hand().unwrap();
        assert_eq!((a.topic.as_str(), b.topic.as_str()), ("t/0", "t/1"));
        q.written(7);
        q.written(8);
        q.acked(7);
        assert_eq!(q.len(), 3);
        q.disconnected();
        let order: Vec<String> = std::iter::from_fn(|| q.hand()).map(|m| m.topic).collect();
        assert_eq!(order, ["t/1", "t/2", "t/3"]);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_waiting_message() {
        let mut q = Queue::new(3, 1 << 20);
        for n in 0..3 {
            q.push(msg(n, 1));
        }
        assert_eq!(q.push(msg(3, 1))[0].topic, "t/0");
        assert_eq!(q.len(), 3);
        // With everything at the client, the new one is what is dropped.
        let mut q = Queue::new(1, 1 << 20);
        q.push(msg(0, 1));
        q.hand();
        assert_eq!(q.push(msg(1, 1))[0].topic, "t/1");
    }

    #[test]
    fn qos0_is_done_once_written_and_the_window_is_bounded() {
        let mut q = Queue::new(1000, 1 << 20);
        q.push(msg(0, 0));
        q.hand();
        q.written(0);
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
        for n in 0..100 {
            q.push(msg(n, 1));
        }
        let handed = std::iter::from_fn(|| q.hand()).count();
        assert_eq!(handed, WINDOW);
        q.unhand();
        assert_eq!(q.hand().unwrap().topic, format!("t/{}", WINDOW - 1));
    }

    #[test]
    fn the_byte_bound_holds_whatever_the_count() {
        let big = |n: u32| Outgoing {
            payload: vec![b'x'; 1000],
            ..msg(n, 1)
        };
        let mut q = Queue::new(1000, 2500);
        let dropped: usize = (0..10).map(|n| q.push(big(n)).len()).sum();
        assert_eq!(q.len(), 2);
        assert_eq!(dropped, 8);
        assert!(q.bytes() <= 2500);
        // One message larger than the whole bound is dropped at once.
        assert_eq!(
            q.push(Outgoing {
                payload: vec![0; 3000],
                ..msg(99, 1)
            })
            .len(),
            1
        );
        assert_eq!(q.len(), 2);
        // Acknowledged, the bytes are free again.
        q.hand();
        q.written(5);
        q.acked(5);
        assert_eq!(q.len(), 1);
        assert!(q.bytes() < 1100);
    }

    #[test]
    fn what_a_reconnection_says_first_goes_before_the_backlog() {
        let mut q = Queue::new(3, 1 << 20);
        q.push(msg(0, 1));
        q.push(msg(1, 1));
        let dropped = q.push_front(vec![msg(10, 1), msg(11, 1)]);
        assert_eq!(dropped.len(), 1);
        let order: Vec<String> = std::iter::from_fn(|| q.hand()).map(|m| m.topic).collect();
        assert_eq!(order[0], "t/10");
        assert_eq!(order.len(), 3);
    }
}
