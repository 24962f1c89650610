//! The connections the edge serves now, so an administrator can see them
//! and so a device's sessions can be closed at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hearth_protocol::DeviceId;
use tokio_util::sync::CancellationToken;

/// Live sessions, keyed by a per-connection number, and the broker
/// "turn" of each client id.
#[derive(Debug, Default)]
pub struct Sessions {
    next: AtomicU64,
    live: Mutex<Live>,
    /// Connections whose certificate was accepted and that have not ended,
    /// from the end of the TLS handshake on: revocation must reach them
    /// before they send CONNECT too.
    admitted: Mutex<HashMap<u64, (DeviceId, CancellationToken)>>,
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Per client id, the packet ids of QoS 1/2 PUBLISHes sent to the
    /// client and not yet acknowledged, across its connections: rumqttd
    /// resends them on reconnect without the DUP flag the specification
    /// requires, so the edge sets it.
    unacked: Mutex<HashMap<String, std::collections::HashSet<u16>>>,
    /// Client ids whose session outlives its last connection, each with the
    /// number of the connection that left it; a new connection of the
    /// client id takes it out (the session is resumed, not expired).
    expiring: Mutex<HashMap<String, u64>>,
    /// Per client id, the filters its session holds (as digests), across
    /// its connections: the subscription quota is the session's, or a
    /// client could reconnect and subscribe another quota's worth each time.
    subscribed: Mutex<HashMap<String, std::collections::HashSet<u64>>>,
}

/// Packet ids remembered per client id; rumqttd's inflight window is 100.
const UNACKED_MAX: usize = 1024;

/// The live sessions, and which of them use each client id (so a takeover
/// does not scan every connection).
#[derive(Debug, Default)]
struct Live {
    by_id: HashMap<u64, Session>,
    by_client: HashMap<String, Vec<u64>>,
}

#[derive(Debug)]
struct Session {
    device: Option<DeviceId>,
    client_id: String,
    stop: CancellationToken,
}

/// Held while a client id has a connection to the broker. rumqttd reuses
/// connection ids, so a new connection for a client id that arrives while
/// the broker still processes the old one's disconnect can be closed by
/// that late disconnect. One broker connection per client id at a time,
/// each closed and confirmed before the next opens, avoids it.
#[derive(Debug)]
pub struct BrokerTurn {
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

/// Keeps an admitted connection reachable by [`Sessions::disconnect`]
/// until the connection ends.
#[derive(Debug)]
pub struct AdmittedGuard {
    sessions: Arc<Sessions>,
    id: u64,
}

impl Drop for AdmittedGuard {
    fn drop(&mut self) {
        crate::sync::lock(&self.sessions.admitted).remove(&self.id);
    }
}

/// Removes its session from the table when the connection ends.
#[derive(Debug)]
pub struct SessionGuard {
    sessions: Arc<Sessions>,
    id: u64,
}

impl Sessions {
    /// A session starts clean, or ends: nothing it was sent or subscribed
    /// to before counts.
    pub fn reset_session(&self, client_id: &str) {
        crate::sync::lock(&self.unacked).remove(client_id);
        crate::sync::lock(&self.subscribed).remove(client_id);
    }

    /// The session of `client_id` subscribes to the filter `key`: whether it
    /// may (it holds it already, or holds fewer than `max`).
    pub fn subscribe_within(&self, client_id: &str, key: u64, max: usize) -> bool {
        let mut subscribed = crate::sync::lock(&self.subscribed);
        let filters = subscribed.entry(client_id.to_owned()).or_default();
        if filters.contains(&key) || filters.len() < max {
            filters.insert(key);
            return true;
        }
        false
    }

    /// The session of `client_id` unsubscribed from the filter `key`.
    pub fn unsubscribed(&self, client_id: &str, key: u64) {
        let mut subscribed = crate::sync::lock(&self.subscribed);
        if let Some(filters) = subscribed.get_mut(client_id) {
            filters.remove(&key);
            if filters.is_empty() {
                subscribed.remove(client_id);
            }
        }
    }

    /// A QoS 1/2 PUBLISH with `pkid` goes to the client; returns whether
    /// it was sent before and not acknowledged (so it is a redelivery).
    pub fn outbound_sent(&self, client_id: &str, pkid: u16) -> bool {
        let mut unacked = crate::sync::lock(&self.unacked);
        let ids = unacked.entry(client_id.to_owned()).or_default();
        if ids.len() >= UNACKED_MAX && !ids.contains(&pkid) {
            ids.clear();
        }
        !ids.insert(pkid)
    }

    /// Whether QoS 1/2 PUBLISHes sent to the client await its
    /// acknowledgement.
    pub fn owes_acks(&self, client_id: &str) -> bool {
        crate::sync::lock(&self.unacked)
            .get(client_id)
            .is_some_and(|ids| !ids.is_empty())
    }

    /// The client acknowledged `pkid` (PUBACK or PUBREC).
    pub fn outbound_acked(&self, client_id: &str, pkid: u16) {
        let mut unacked = crate::sync::lock(&self.unacked);
        if let Some(ids) = unacked.get_mut(client_id) {
            ids.remove(&pkid);
            if ids.is_empty() {
                unacked.remove(client_id);
            }
        }
    }

    /// Records a session; `stop` ends it.
    pub fn register(
        self: &Arc<Self>,
        device: Option<DeviceId>,
        client_id: &str,
        stop: CancellationToken,
    ) -> SessionGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        crate::sync::lock(&self.expiring).remove(client_id);
        let mut live = self.lock();
        live.by_client
            .entry(client_id.to_owned())
            .or_default()
            .push(id);
        live.by_id.insert(
            id,
            Session {
                device,
                client_id: client_id.to_owned(),
                stop,
            },
        );
        SessionGuard {
            sessions: Arc::clone(self),
            id,
        }
    }

    /// Notes a connection of `device` whose handshake just finished, before
    /// the registry is consulted for it: whichever comes second, the
    /// revocation or the lookup, sees the other.
    pub fn admit(self: &Arc<Self>, device: DeviceId, stop: CancellationToken) -> AdmittedGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        crate::sync::lock(&self.admitted).insert(id, (device, stop));
        AdmittedGuard {
            sessions: Arc::clone(self),
            id,
        }
    }

    /// The devices connected now, sorted, each once.
    pub fn connected_devices(&self) -> Vec<DeviceId> {
        let mut devices: Vec<DeviceId> = self
            .lock()
            .by_id
            .values()
            .filter_map(|s| s.device)
            .collect();
        devices.sort();
        devices.dedup();
        devices
    }

    /// Ends every connection of a device, whatever its state (waiting for
    /// CONNECT or connected); returns how many were told to stop. Every
    /// connection of a device stays admitted for its whole life, so the
    /// admitted ones are the count; the live ones share their tokens.
    pub fn disconnect(&self, device: &DeviceId) -> usize {
        let stopped = crate::sync::lock(&self.admitted)
            .values()
            .filter(|(admitted, _)| admitted == device)
            .map(|(_, stop)| stop.cancel())
            .count();
        for session in self.lock().by_id.values() {
            if session.device.as_ref() == Some(device) {
                session.stop.cancel();
            }
        }
        stopped
    }

    /// Ends the live sessions using `client_id` (MQTT's session takeover:
    /// a new connection with the same client id replaces the old one).
    pub fn take_over(&self, client_id: &str) -> usize {
        let live = self.lock();
        let ids = live.by_client.get(client_id).map(Vec::as_slice);
        ids.unwrap_or_default()
            .iter()
            .filter_map(|id| live.by_id.get(id))
            .map(|s| s.stop.cancel())
            .count()
    }

    /// Connection `generation` of `client_id` ended and its session lives
    /// on until it expires or a new connection resumes it.
    pub fn session_left(&self, client_id: &str, generation: u64) {
        crate::sync::lock(&self.expiring).insert(client_id.to_owned(), generation);
    }

    /// Whether the session connection `generation` left is still unclaimed
    /// (no connection of the client id since): then it expires now, and is
    /// forgotten here.
    pub fn session_expired(&self, client_id: &str, generation: u64) -> bool {
        let mut expiring = crate::sync::lock(&self.expiring);
        if expiring.get(client_id) == Some(&generation) {
            expiring.remove(client_id);
            return true;
        }
        false
    }

    /// Waits until no other connection of `client_id` is open to the broker.
    pub async fn broker_turn(&self, client_id: &str) -> BrokerTurn {
        let lock = {
            let mut turns = crate::sync::lock(&self.turns);
            // Forget the turns nobody holds or waits for.
            turns.retain(|_, m| Arc::strong_count(m) > 1);
            Arc::clone(turns.entry(client_id.to_owned()).or_default())
        };
        BrokerTurn {
            _guard: lock.lock_owned().await,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        crate::sync::lock(&self.live)
    }
}

impl SessionGuard {
    /// The connection's number: later connections have larger ones.
    pub fn generation(&self) -> u64 {
        self.id
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut live = self.sessions.lock();
        let Some(session) = live.by_id.remove(&self.id) else {
            return;
        };
        if let Some(ids) = live.by_client.get_mut(&session.client_id) {
            ids.retain(|id| *id != self.id);
            if ids.is_empty() {
                live.by_client.remove(&session.client_id);
            }
        }
    }
}

pub use super::retained::RetainedTopics;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_left_session_expires_unless_a_connection_claimed_it() {
        let sessions = Arc::new(Sessions::default());
        let first = sessions.register(None, "a", CancellationToken::new());
        let left = first.generation();
        drop(first);
        sessions.session_left("a", left);
        assert!(!sessions.session_expired("b", left));
        assert!(sessions.session_expired("a", left));
        assert!(!sessions.session_expired("a", left), "only once");
        // Resumed before the deadline: not expired.
        sessions.session_left("a", left);
        let resumed = sessions.register(None, "a", CancellationToken::new());
        assert!(!sessions.session_expired("a", left));
        // The resumed connection's own departure counts, not the old one.
        sessions.session_left("a", resumed.generation());
        assert!(!sessions.session_expired("a", left));
        assert!(sessions.session_expired("a", resumed.generation()));
    }

    #[test]
    fn a_takeover_ends_exactly_the_sessions_of_its_client_id() {
        let sessions = Arc::new(Sessions::default());
        let (a1, a2, b) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let g1 = sessions.register(None, "a", a1.clone());
        let g2 = sessions.register(None, "a", a2.clone());
        let gb = sessions.register(None, "b", b.clone());
        assert_eq!(sessions.take_over("a"), 2);
        assert!(a1.is_cancelled() && a2.is_cancelled() && !b.is_cancelled());
        drop((g1, g2));
        assert_eq!(sessions.take_over("a"), 0);
        drop(gb);
        let live = sessions.lock();
        assert!(live.by_id.is_empty() && live.by_client.is_empty());
    }
}
