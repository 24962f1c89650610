//! The connections the edge serves now, so an administrator can see them
//! and so a device's sessions can be closed at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hearth_protocol::DeviceId;
use tokio_util::sync::CancellationToken;

/// Live sessions, keyed by a per-connection number.
#[derive(Debug, Default)]
pub struct Sessions {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Session>>,
}

#[derive(Debug)]
struct Session {
    device: Option<DeviceId>,
    stop: CancellationToken,
}

/// Removes its session from the table when the connection ends.
#[derive(Debug)]
pub struct SessionGuard {
    sessions: Arc<Sessions>,
    id: u64,
}

impl Sessions {
    /// Records a session; `stop` ends it.
    pub fn register(
        self: &Arc<Self>,
        device: Option<DeviceId>,
        stop: CancellationToken,
    ) -> SessionGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, Session { device, stop });
        SessionGuard {
            sessions: Arc::clone(self),
            id,
        }
    }

    /// The devices connected now, sorted, each once.
    pub fn connected_devices(&self) -> Vec<DeviceId> {
        let mut devices: Vec<DeviceId> = self.lock().values().filter_map(|s| s.device).collect();
        devices.sort();
        devices.dedup();
        devices
    }

    /// Ends every session of a device; returns how many there were.
    pub fn disconnect(&self, device: &DeviceId) -> usize {
        let live = self.lock();
        live.values()
            .filter(|s| s.device.as_ref() == Some(device))
            .map(|s| s.stop.cancel())
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Session>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.id);
    }
}

/// Topics each device holds a retained message on, so revoking a device can
/// clear them. In memory only: rumqttd keeps retained messages in memory
/// too, so both start empty after a restart.
#[derive(Debug, Default)]
pub struct RetainedTopics {
    by_device: Mutex<HashMap<DeviceId, std::collections::HashSet<String>>>,
}

impl RetainedTopics {
    /// Notes a retained publish the edge let through (`set` false: a clear).
    pub fn record(&self, device: &DeviceId, topic: &str, set: bool) {
        let mut map = self.by_device.lock().unwrap_or_else(|p| p.into_inner());
        let topics = map.entry(*device).or_default();
        if set {
            // Bounded like everything a client can grow: beyond this many
            // distinct retained topics the oldest knowledge is not kept,
            // and the revoke clears what it knows.
            if topics.len() < 1024 {
                topics.insert(topic.to_owned());
            }
        } else {
            topics.remove(topic);
        }
    }

    /// Forgets and returns a device's retained topics.
    pub fn take(&self, device: &DeviceId) -> Vec<String> {
        let mut map = self.by_device.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(device)
            .map(|t| t.into_iter().collect())
            .unwrap_or_default()
    }
}
