use crate::ConnectionId;
use std::collections::VecDeque;

/// Waiters are connections which are waiting to be notified. They have
/// made a data request but router didn't respond because of the connection
/// being caughtup. Waiters stores connection id and pending request
#[derive(Debug)]
pub struct Waiters<T> {
    /// Waiters on new topics
    current: VecDeque<(ConnectionId, T)>,
}

impl<T> Waiters<T> {
    pub fn with_capacity(max_connections: usize) -> Waiters<T> {
        Waiters {
            current: VecDeque::with_capacity(max_connections),
        }
    }

    /// Current parked connection requests waiting for new data
    pub fn waiters(&self) -> &VecDeque<(ConnectionId, T)> {
        &self.current
    }

    /// Pushes a request to current wait queue
    pub fn register(&mut self, id: ConnectionId, request: T) {
        let request = (id, request);
        // Hearth: room for one to start with: most filters (a device's
        // own topics) have a single reader, and a first push reserves room
        // for 4 (~400 bytes) on every subscribed filter.
        if self.current.capacity() == 0 {
            self.current.reserve_exact(1);
        }
        self.current.push_back(request);
    }

    /// Hearth: moves every waiter to `woken`, keeping the room they took
    /// (upstream swapped in a new queue, so a reader waiting on every
    /// message freed and allocated its queue each time).
    pub fn wake_into(&mut self, woken: &mut VecDeque<(ConnectionId, T)>) {
        woken.extend(self.current.drain(..));
    }

    /// Remove a connection from waiters
    pub fn remove(&mut self, id: ConnectionId) -> Vec<T> {
        let mut requests = Vec::new();

        while let Some(index) = self.current.iter().position(|x| x.0 == id) {
            let request = self.current.swap_remove_back(index).map(|v| v.1).unwrap();
            requests.push(request)
        }

        requests
    }

    pub fn get_mut(&mut self) -> &mut VecDeque<(ConnectionId, T)> {
        &mut self.current
    }
}

#[cfg(test)]
mod tests {
    use super::Waiters;
    use std::collections::VecDeque;

    #[test]
    fn a_single_waiter_holds_room_for_one_and_waking_keeps_the_room() {
        let mut waiters: Waiters<[u64; 12]> = Waiters::with_capacity(0);
        waiters.register(1, [0; 12]);
        assert_eq!(waiters.get_mut().capacity(), 1);
        waiters.register(2, [0; 12]);
        waiters.register(3, [0; 12]);
        let mut woken = VecDeque::new();
        waiters.wake_into(&mut woken);
        assert_eq!(woken.iter().map(|w| w.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(waiters.waiters().is_empty());
        let room = waiters.get_mut().capacity();
        assert!(room >= 3, "the room stays for the next wait");
        waiters.register(4, [0; 12]);
        assert_eq!(waiters.get_mut().capacity(), room);
    }
}
