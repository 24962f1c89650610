//! The queues between a relayed connection's two halves: nothing is allocated until a message waits, and waiting allocates nothing.
//!
//! tokio's mpsc takes a 32-slot block per channel when it is made (2.4 KiB
//! per idle connection for the relay's three), flume's receive future
//! allocates and locks each time a `select!` drops it unfired, and a
//! `Notify` waiter locks to register and to leave. Here a queue is a
//! `VecDeque` behind a mutex, given back when drained, and a wait is an
//! `AtomicWaker`. One receiver, and one sender that waits for room; the
//! queue closes when every sender is gone.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use futures_util::task::AtomicWaker;

struct Shared<T> {
    items: Mutex<VecDeque<T>>,
    /// The receiver, woken when an item arrives or the last sender leaves.
    receiver: AtomicWaker,
    /// A sender waiting for room in a full bounded queue (each queue has
    /// one sender that waits).
    sender: AtomicWaker,
    senders: AtomicUsize,
    bound: usize,
}

/// Sends into a queue; a bounded queue's `send` waits for room.
pub(super) struct Sender<T>(Arc<Shared<T>>);

/// Takes from a queue.
pub(super) struct Receiver<T>(Arc<Shared<T>>);

/// A queue that holds at most `bound` items.
pub(super) fn bounded<T>(bound: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        items: Mutex::new(VecDeque::new()),
        receiver: AtomicWaker::new(),
        sender: AtomicWaker::new(),
        senders: AtomicUsize::new(1),
        bound,
    });
    (Sender(Arc::clone(&shared)), Receiver(shared))
}

/// A queue whose senders never wait: what it holds is bounded by its
/// users (acknowledgements, each answering a packet already bounded).
pub(super) fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    bounded(usize::MAX)
}

impl<T> Shared<T> {
    fn try_push(&self, item: T) -> Result<(), T> {
        let mut items = crate::sync::lock(&self.items);
        if items.len() >= self.bound {
            return Err(item);
        }
        items.push_back(item);
        drop(items);
        self.receiver.wake();
        Ok(())
    }
}

impl<T> Sender<T> {
    /// Queues `item`, waiting for room in a full bounded queue.
    pub(super) async fn send(&self, item: T) {
        let mut item = Some(item);
        poll_fn(|cx| {
            // Registered before the attempt, so a take in between wakes it.
            self.0.sender.register(cx.waker());
            match item.take().map(|item| self.0.try_push(item)) {
                Some(Err(back)) => {
                    item = Some(back);
                    Poll::Pending
                }
                _ => Poll::Ready(()),
            }
        })
        .await
    }

    /// Queues `item` at once (unbounded queues), or hands it back when
    /// the queue is full.
    pub(super) fn push(&self, item: T) -> Result<(), T> {
        self.0.try_push(item)
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.receiver.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// The next item, or `None` once the queue is empty and every sender
    /// has gone.
    pub(super) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| {
            // Registered before looking, so an arrival in between wakes it.
            self.0.receiver.register(cx.waker());
            let mut items = crate::sync::lock(&self.0.items);
            if let Some(item) = items.pop_front() {
                if items.is_empty() {
                    // An idle connection keeps no queue.
                    *items = VecDeque::new();
                }
                drop(items);
                self.0.sender.wake();
                return Poll::Ready(Some(item));
            }
            drop(items);
            if self.0.senders.load(Ordering::Acquire) == 0 {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn items_arrive_in_order_and_the_end_is_seen_after_them() {
        let (tx, mut rx) = unbounded();
        for i in 0..100 {
            tx.push(i).unwrap();
        }
        drop(tx);
        for i in 0..100 {
            assert_eq!(rx.recv().await, Some(i));
        }
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send_and_by_the_last_sender_leaving() {
        let (tx, mut rx) = unbounded::<u16>();
        let waiting = tokio::spawn(async move { (rx.recv().await, rx.recv().await) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.push(7).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(tx);
        let got = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(got.expect("woken").unwrap(), (Some(7), None));
    }

    #[tokio::test]
    async fn a_full_bounded_queue_makes_its_sender_wait_for_room() {
        let (tx, mut rx) = bounded(2);
        tx.send(1).await;
        tx.send(2).await;
        assert_eq!(tx.push(3), Err(3), "full");
        let sender = tokio::spawn(async move {
            tx.send(3).await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sender.is_finished(), "sent into a full queue");
        assert_eq!(rx.recv().await, Some(1));
        tokio::time::timeout(Duration::from_secs(5), sender)
            .await
            .expect("room made")
            .unwrap();
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(3));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_drained_queue_holds_no_memory() {
        let (tx, mut rx) = unbounded();
        for i in 0..1000 {
            tx.push(i).unwrap();
        }
        for i in 0..1000 {
            assert_eq!(rx.recv().await, Some(i));
        }
        assert_eq!(crate::sync::lock(&rx.0.items).capacity(), 0);
    }
}
