//! The pre-authentication budget: how many connections that have not yet
//! proved who they are a listener holds, per source (an IPv4 address or an
//! IPv6 /64) and in total. It is separate from `limits.max_connections`, so
//! idle sockets from the LAN cannot take the slots authenticated devices
//! use; when it is full, the greediest source's oldest socket is closed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Where a connection comes from, as far as the budget is concerned: one
/// IPv4 address, or one IPv6 /64 (what one household or one attacker
/// usually gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4([u8; 4]),
    V6([u8; 8]),
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    Source::V6(prefix)
                }
            },
        }
    }
}

/// One listener's budget of unauthenticated connections.
#[derive(Debug)]
pub struct Admission {
    per_source: usize,
    total: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    held: usize,
    /// Per source, its connections oldest first: (ticket id, closer).
    by_source: HashMap<Source, Vec<(u64, CancellationToken)>>,
}

/// A connection's place in the budget, given back when dropped (when the
/// connection ends or proves who it is).
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    source: Source,
    id: u64,
    evicted: CancellationToken,
}

impl Ticket {
    /// Fires when the budget closes this connection to make room.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.admission.lock();
        if let Some(held) = state.by_source.get_mut(&self.source) {
            let before = held.len();
            held.retain(|(id, _)| *id != self.id);
            let removed = before - held.len();
            if held.is_empty() {
                state.by_source.remove(&self.source);
            }
            state.held -= removed;
        }
    }
}

impl Admission {
    /// A budget of `total` connections, at most `per_source` from one source.
    pub fn new(per_source: usize, total: usize) -> Arc<Admission> {
        Arc::new(Admission {
            per_source: per_source.max(1),
            total: total.max(1),
            state: Mutex::default(),
        })
    }

    /// The next connection on `listener` this budget admits, with its
    /// ticket; `None` once `stop`. A failed accept (out of descriptors)
    /// is logged as `what` and retried after a pause; a connection from a
    /// source over its share is closed unread.
    pub async fn accept(
        self: &Arc<Self>,
        listener: &tokio::net::TcpListener,
        what: &str,
        stop: &CancellationToken,
    ) -> Option<(tokio::net::TcpStream, std::net::SocketAddr, Ticket)> {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = stop.cancelled() => return None,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "{what} accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            match self.admit(peer.ip()) {
                Some(ticket) => return Some((tcp, peer, ticket)),
                None => {
                    tracing::debug!(peer = %peer, "too many {what} connections from this source")
                }
            }
        }
    }

    /// Takes a place for a new connection from `ip`, closing the oldest
    /// connection of the source holding the most if the budget is full
    /// and that source holds at least as many as `ip`'s would; `None`:
    /// refuse the newcomer (its own source is the greediest, or at its cap).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Ticket> {
        let source = Source::of(ip);
        let mut state = self.lock();
        let mine = state.by_source.get(&source).map_or(0, Vec::len);
        if mine >= self.per_source {
            return None;
        }
        if state.held >= self.total {
            let victim = state
                .by_source
                .iter()
                .filter(|(s, _)| **s != source)
                .max_by_key(|(_, held)| (held.len(), std::cmp::Reverse(held[0].0)))
                .map(|(s, held)| (*s, held.len()));
            match victim {
                Some((victim, n)) if n > mine => {
                    let held = state.by_source.get_mut(&victim)?;
                    let (_, closer) = held.remove(0);
                    if held.is_empty() {
                        state.by_source.remove(&victim);
                    }
                    state.held -= 1;
                    closer.cancel();
                }
                _ => return None,
            }
        }
        let id = state.next;
        state.next += 1;
        let evicted = CancellationToken::new();
        state
            .by_source
            .entry(source)
            .or_default()
            .push((id, evicted.clone()));
        state.held += 1;
        Some(Ticket {
            admission: Arc::clone(self),
            source,
            id,
            evicted,
        })
    }

    /// Connections held now (for tests and status).
    pub fn held(&self) -> usize {
        self.lock().held
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn one_source_gets_at_most_its_share() {
        let admission = Admission::new(2, 10);
        let a = admission.admit(v4(1)).unwrap();
        let _b = admission.admit(v4(1)).unwrap();
        assert!(admission.admit(v4(1)).is_none());
        assert!(admission.admit(v4(2)).is_some());
        drop(a);
        assert!(admission.admit(v4(1)).is_some());
    }

    #[test]
    fn an_ipv6_64_is_one_source() {
        let admission = Admission::new(1, 10);
        let one = Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 1);
        let same_64 = Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 9, 9, 9, 9);
        let other_64 = Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1);
        let _t = admission.admit(IpAddr::V6(one)).unwrap();
        assert!(admission.admit(IpAddr::V6(same_64)).is_none());
        assert!(admission.admit(IpAddr::V6(other_64)).is_some());
    }

    #[test]
    fn a_full_budget_closes_the_greediest_sources_oldest() {
        let admission = Admission::new(3, 4);
        let greedy: Vec<Ticket> = (0..3).map(|_| admission.admit(v4(1)).unwrap()).collect();
        let _other = admission.admit(v4(2)).unwrap();
        assert_eq!(admission.held(), 4);
        let newcomer = admission.admit(v4(3)).expect("room made");
        assert!(greedy[0].evicted.is_cancelled());
        assert!(!greedy[1].evicted.is_cancelled() && !greedy[2].evicted.is_cancelled());
        assert_eq!(admission.held(), 4);
        // The greediest source itself gets nothing more by asking.
        assert!(admission.admit(v4(1)).is_none());
        drop(newcomer);
        drop(greedy);
        assert_eq!(admission.held(), 1);
    }

    #[test]
    fn many_single_sockets_still_leave_room_for_a_newcomer() {
        let admission = Admission::new(2, 3);
        let held: Vec<Ticket> = (1..=3).map(|i| admission.admit(v4(i)).unwrap()).collect();
        let _newcomer = admission.admit(v4(9)).expect("room made");
        assert!(held[0].evicted.is_cancelled(), "the oldest goes first");
    }
}
