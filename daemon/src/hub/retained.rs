//! Retained messages the edge let through: who holds each one and how much
//! it weighs, so that a device's retained messages are bounded (count and
//! bytes, per device and for the whole hub) and revoking a device can clear
//! them. In memory only: rumqttd keeps retained messages in memory too, so
//! both start empty after a restart.

use std::collections::HashMap;
use std::sync::Mutex;

use hearth_protocol::DeviceId;

/// The bounds, from `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainLimits {
    /// Retained messages one device may hold.
    pub per_device: usize,
    /// Bytes (topic and payload) of one device's retained messages.
    pub per_device_bytes: usize,
    /// Retained messages in the whole hub.
    pub total: usize,
    /// Bytes of every retained message in the hub.
    pub total_bytes: usize,
}

impl Default for RetainLimits {
    fn default() -> Self {
        RetainLimits {
            per_device: 100,
            per_device_bytes: 1024 * 1024,
            total: 10_000,
            total_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Which bound a retained publish would break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RetainRefusal {
    /// The device holds as many retained messages as it may.
    #[error("retained message quota of the device exceeded (count)")]
    DeviceCount,
    /// The device's retained messages weigh as much as they may.
    #[error("retained message quota of the device exceeded (bytes)")]
    DeviceBytes,
    /// The hub holds as many retained messages as it may.
    #[error("retained message quota of the hub exceeded (count)")]
    TotalCount,
    /// The hub's retained messages weigh as much as they may.
    #[error("retained message quota of the hub exceeded (bytes)")]
    TotalBytes,
}

/// Who holds a retained message: a device, or (`None`) a client of the
/// development listener, which only the hub-wide bounds apply to.
type Holder = Option<DeviceId>;

#[derive(Debug, Default)]
struct Ledger {
    topics: HashMap<String, (Holder, usize)>,
    per_holder: HashMap<Holder, (usize, usize)>,
    total_bytes: usize,
}

impl Ledger {
    fn admit(
        &mut self,
        limits: &RetainLimits,
        holder: Holder,
        topic: &str,
        payload: usize,
    ) -> Result<(), RetainRefusal> {
        let old = self.topics.get(topic).copied();
        if payload == 0 {
            // A clear: always allowed, it only frees.
            if let Some((old_holder, old_bytes)) = old {
                self.forget(topic, old_holder, old_bytes);
            }
            return Ok(());
        }
        let bytes = topic.len() + payload;
        let (count, held) = self.per_holder.get(&holder).copied().unwrap_or((0, 0));
        let (count_after, held_after) = match old {
            Some((h, old_bytes)) if h == holder => (count, held - old_bytes + bytes),
            _ => (count + 1, held + bytes),
        };
        if holder.is_some() {
            if count_after > limits.per_device {
                return Err(RetainRefusal::DeviceCount);
            }
            if held_after > limits.per_device_bytes {
                return Err(RetainRefusal::DeviceBytes);
            }
        }
        let old_bytes = old.map_or(0, |(_, b)| b);
        let total_count = self.topics.len() + usize::from(old.is_none());
        if total_count > limits.total {
            return Err(RetainRefusal::TotalCount);
        }
        if self.total_bytes - old_bytes + bytes > limits.total_bytes {
            return Err(RetainRefusal::TotalBytes);
        }
        if let Some((old_holder, old_bytes)) = old {
            self.forget(topic, old_holder, old_bytes);
        }
        let entry = self.per_holder.entry(holder).or_default();
        entry.0 += 1;
        entry.1 += bytes;
        self.total_bytes += bytes;
        self.topics.insert(topic.to_owned(), (holder, bytes));
        Ok(())
    }

    fn forget(&mut self, topic: &str, holder: Holder, bytes: usize) {
        self.topics.remove(topic);
        self.total_bytes -= bytes;
        if let Some(entry) = self.per_holder.get_mut(&holder) {
            entry.0 -= 1;
            entry.1 -= bytes;
            if entry.0 == 0 {
                self.per_holder.remove(&holder);
            }
        }
    }

    fn take(&mut self, device: &DeviceId) -> Vec<String> {
        let holder = Some(*device);
        let topics: Vec<String> = self
            .topics
            .iter()
            .filter(|(_, (h, _))| *h == holder)
            .map(|(t, _)| t.clone())
            .collect();
        for topic in &topics {
            if let Some((h, bytes)) = self.topics.get(topic).copied() {
                self.forget(topic, h, bytes);
            }
        }
        topics
    }
}

/// The hub's retained messages as the edge accounts for them.
#[derive(Debug, Default)]
pub struct RetainedTopics {
    limits: RetainLimits,
    ledger: Mutex<Ledger>,
}

impl RetainedTopics {
    /// An empty account with these bounds.
    pub fn new(limits: RetainLimits) -> RetainedTopics {
        RetainedTopics {
            limits,
            ledger: Mutex::default(),
        }
    }

    /// Admits a retained publish of `payload` bytes on `topic` by `holder`
    /// (an empty payload clears the topic and is always admitted), or says
    /// which bound it would break; nothing changes then.
    pub fn admit(
        &self,
        holder: Option<&DeviceId>,
        topic: &str,
        payload: usize,
    ) -> Result<(), RetainRefusal> {
        self.lock()
            .admit(&self.limits, holder.copied(), topic, payload)
    }

    /// Forgets and returns a device's retained topics.
    pub fn take(&self, device: &DeviceId) -> Vec<String> {
        self.lock().take(device)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // The ledger stays consistent at every step: a panic elsewhere
        // while holding the lock leaves nothing half-done.
        crate::sync::lock(&self.ledger)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RetainLimits {
        RetainLimits {
            per_device: 2,
            per_device_bytes: 100,
            total: 3,
            total_bytes: 150,
        }
    }

    fn device(n: u8) -> DeviceId {
        DeviceId::from_entropy([n; 16])
    }

    #[test]
    fn a_device_is_bounded_by_count_and_bytes_and_a_clear_frees() {
        let r = RetainedTopics::new(limits());
        let a = device(1);
        r.admit(Some(&a), "t/1", 10).unwrap();
        r.admit(Some(&a), "t/2", 10).unwrap();
        assert_eq!(
            r.admit(Some(&a), "t/3", 10),
            Err(RetainRefusal::DeviceCount)
        );
        // Replacing a topic it holds is not a new message.
        r.admit(Some(&a), "t/2", 20).unwrap();
        assert_eq!(
            r.admit(Some(&a), "t/2", 97),
            Err(RetainRefusal::DeviceBytes)
        );
        r.admit(Some(&a), "t/1", 0).unwrap();
        r.admit(Some(&a), "t/3", 10).unwrap();
        let mut taken = r.take(&a);
        taken.sort();
        assert_eq!(taken, ["t/2", "t/3"]);
        assert!(r.take(&a).is_empty());
    }

    #[test]
    fn the_hub_is_bounded_and_another_device_keeps_its_own_room() {
        let r = RetainedTopics::new(limits());
        let (a, b) = (device(1), device(2));
        r.admit(Some(&a), "a/1", 60).unwrap();
        r.admit(Some(&b), "b/1", 40).unwrap();
        assert_eq!(r.admit(Some(&b), "b/2", 45), Err(RetainRefusal::TotalBytes));
        r.admit(None, "dev/1", 1).unwrap();
        assert_eq!(r.admit(None, "dev/2", 1), Err(RetainRefusal::TotalCount));
        // Refusals changed nothing: a's clear frees exactly its share.
        r.admit(Some(&a), "a/1", 0).unwrap();
        r.admit(Some(&b), "b/2", 45).unwrap();
        assert_eq!(r.take(&b).len(), 2);
    }

    #[test]
    fn a_topic_taken_over_by_another_holder_moves_with_its_bytes() {
        let r = RetainedTopics::new(limits());
        let (a, b) = (device(1), device(2));
        r.admit(Some(&a), "shared", 50).unwrap();
        r.admit(Some(&b), "shared", 50).unwrap();
        assert!(r.take(&a).is_empty());
        r.admit(Some(&a), "a/1", 40).unwrap();
        r.admit(Some(&a), "a/2", 40).unwrap();
        assert_eq!(r.take(&b), ["shared"]);
    }
}
