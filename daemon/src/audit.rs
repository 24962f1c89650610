//! The audit log: connects, disconnects, refused handshakes, denials and
//! administrative changes, written to SQLite in batches by one task, rate
//! limited per device (or peer) and in total so neither a noisy client nor
//! many of them can fill the disk, and pruned after the retention period.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hearth_protocol::admin::AuditEntry;
use hearth_protocol::DeviceId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::StoreHandle;

/// Entries one device (or peer address) may add per window.
const BUDGET: u32 = 60;
/// The rate-limit window.
const WINDOW: Duration = Duration::from_secs(60);
/// Entries waiting to be written before new ones are dropped (and counted).
const QUEUE: usize = 4096;
/// How often old entries are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// How long the writer lets a burst of entries gather after the first, so
/// a storm of connections or denials costs one sync per batch.
const LINGER: Duration = Duration::from_millis(50);
/// Most entries written in one transaction.
const BATCH: usize = 256;

/// What happened, for [`Audit::record`].
#[derive(Debug, Clone, Default)]
pub struct Event {
    /// The device, if known.
    pub device: Option<DeviceId>,
    /// The event name.
    pub event: &'static str,
    /// What was attempted.
    pub action: Option<String>,
    /// Topic or filter.
    pub topic: Option<String>,
    /// Why, or details.
    pub reason: Option<String>,
    /// Peer address.
    pub peer: Option<String>,
}

#[derive(Debug)]
struct Bucket {
    window_start: Instant,
    used: u32,
    suppressed: u32,
}

/// What the writer is sent.
#[derive(Debug)]
enum ToWriter {
    Entry(AuditEntry),
    /// Write what came before now, then answer: a reader of the log sees
    /// everything recorded before it asked.
    Flush(tokio::sync::oneshot::Sender<()>),
    /// The retention changed (a reload): prune now rather than within the
    /// hour.
    Prune,
}

/// A handle to the audit log, cheap to clone.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: mpsc::Sender<ToWriter>,
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
    /// Entries of unidentified peers together in the current window: many
    /// addresses, each within its own budget, still add up. Entries of a
    /// device are bounded per device, and devices only an administrator
    /// adds; counting them here would let a LAN flood drop them.
    total: Arc<Mutex<Bucket>>,
    /// What `total` may reach per window; a reload may change it.
    total_budget: Arc<AtomicU32>,
    /// How long entries are kept, in seconds; a reload may change it.
    retention_secs: Arc<AtomicU64>,
}

impl Audit {
    /// Starts the writer task; returns the handle.
    /// `per_minute` bounds the entries of all unidentified peers together.
    pub fn start(
        store: StoreHandle,
        retention: Duration,
        per_minute: u32,
        stop: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Audit {
        let (tx, rx) = mpsc::channel(QUEUE);
        let retention_secs = Arc::new(AtomicU64::new(retention.as_secs()));
        tracker.spawn(write_loop(store, rx, Arc::clone(&retention_secs), stop));
        Audit {
            tx,
            buckets: Arc::default(),
            total: Arc::new(Mutex::new(Bucket {
                window_start: Instant::now(),
                used: 0,
                suppressed: 0,
            })),
            total_budget: Arc::new(AtomicU32::new(per_minute)),
            retention_secs,
        }
    }

    /// Applies reloaded settings: entries older than `retention` go at
    /// once, and unidentified peers share `per_minute` from now on.
    pub fn set_limits(&self, retention: Duration, per_minute: u32) {
        self.total_budget.store(per_minute, Ordering::Relaxed);
        let before = self
            .retention_secs
            .swap(retention.as_secs(), Ordering::Relaxed);
        if before != retention.as_secs() && self.tx.try_send(ToWriter::Prune).is_err() {
            // The queue is full: the hourly prune applies it instead.
            tracing::debug!("audit queue full; the new retention applies at the next prune");
        }
    }

    /// Takes one entry from the budget all devices and peers share; `None`
    /// when it is spent (the entry is dropped and counted). `Some(n)`: the
    /// entry may be written, and `n` entries were dropped before it.
    fn take_total(&self) -> Option<u32> {
        let mut total = crate::sync::lock(&self.total);
        let now = Instant::now();
        if now.duration_since(total.window_start) >= WINDOW {
            total.window_start = now;
            total.used = 0;
        }
        let budget = self.total_budget.load(Ordering::Relaxed);
        if total.used >= budget {
            total.suppressed = total.suppressed.saturating_add(1);
            if total.suppressed == 1 {
                // Say so once, at the moment entries start to drop.
                drop(total);
                self.push(Event {
                    event: "suppressed",
                    reason: Some(format!(
                        "more than {} entries of unidentified peers in {}s: further ones dropped until the minute is over",
                        budget,
                        WINDOW.as_secs()
                    )),
                    ..Event::default()
                });
            }
            return None;
        }
        total.used += 1;
        Some(std::mem::take(&mut total.suppressed))
    }

    /// Records an event, unless its device or peer spent its budget; the
    /// first entry after a suppressed stretch says how many were dropped.
    pub fn record(&self, event: Event) {
        let key = match (&event.device, &event.peer) {
            (Some(d), _) => d.to_string(),
            (None, Some(peer)) => peer_host(peer).to_owned(),
            (None, None) => String::new(),
        };
        // Administrative entries are never dropped.
        let dropped_in_total = if event.event == "admin" || event.device.is_some() {
            0
        } else {
            match self.take_total() {
                Some(n) => n,
                None => return,
            }
        };
        if dropped_in_total > 0 {
            // Ids and counts only: nothing an attacker chose.
            self.push(Event {
                event: "suppressed",
                reason: Some(format!(
                    "{dropped_in_total} similar events suppressed (total rate limit)"
                )),
                ..Event::default()
            });
        }
        let suppressed_before = {
            let mut buckets = crate::sync::lock(&self.buckets);
            let now = Instant::now();
            if buckets.len() > 10_000 {
                buckets.retain(|_, b| now.duration_since(b.window_start) < WINDOW);
            }
            let bucket = buckets.entry(key).or_insert(Bucket {
                window_start: now,
                used: 0,
                suppressed: 0,
            });
            if now.duration_since(bucket.window_start) >= WINDOW {
                bucket.window_start = now;
                bucket.used = 0;
            }
            // Administrative entries are never dropped.
            if bucket.used >= BUDGET && event.event != "admin" {
                bucket.suppressed += 1;
                if bucket.suppressed == 1 {
                    // Say so once, at the moment entries start to drop.
                    drop(buckets);
                    self.push(Event {
                        device: event.device,
                        event: "suppressed",
                        reason: Some(format!(
                            "more than {BUDGET} entries in {}s: further ones dropped until the minute is over",
                            WINDOW.as_secs()
                        )),
                        peer: event.peer,
                        ..Event::default()
                    });
                }
                return;
            }
            bucket.used += 1;
            std::mem::take(&mut bucket.suppressed)
        };
        if suppressed_before > 0 {
            self.push(Event {
                device: event.device,
                event: "suppressed",
                reason: Some(format!(
                    "{suppressed_before} entries not recorded (rate limit)"
                )),
                peer: event.peer.clone(),
                ..Event::default()
            });
        }
        self.push(event);
    }

    fn push(&self, event: Event) {
        let entry = AuditEntry {
            id: 0,
            at: crate::unix_now(),
            device: event.device,
            event: event.event.to_owned(),
            action: event.action,
            topic: event.topic,
            reason: event.reason,
            peer: event.peer,
        };
        if self.tx.try_send(ToWriter::Entry(entry)).is_err() {
            tracing::warn!("audit queue full; entry dropped");
        }
    }

    /// Returns once every entry recorded before the call is written.
    pub async fn flush(&self) {
        let (done, written) = tokio::sync::oneshot::channel();
        if self.tx.send(ToWriter::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }
}

fn peer_host(peer: &str) -> &str {
    peer.rsplit_once(':').map(|(host, _)| host).unwrap_or(peer)
}

async fn write_loop(
    store: StoreHandle,
    mut rx: mpsc::Receiver<ToWriter>,
    retention_secs: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut next_prune = Instant::now();
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            biased;
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return;
                }
                let flushing = |new: &[ToWriter]| new.iter().any(|m| matches!(m, ToWriter::Flush(_)));
                let linger = tokio::time::sleep(LINGER);
                tokio::pin!(linger);
                let mut seen = 0;
                while batch.len() < BATCH && !flushing(&batch[seen..]) {
                    seen = batch.len();
                    let room = BATCH - batch.len();
                    tokio::select! {
                        n = rx.recv_many(&mut batch, room) => if n == 0 { break },
                        _ = &mut linger => break,
                    }
                }
            },
            _ = stop.cancelled() => {
                // Drain what is queued, then stop.
                rx.close();
                while rx.recv_many(&mut batch, BATCH).await > 0 {}
                if !batch.is_empty() {
                    write(&store, batch).await;
                }
                return;
            }
        }
        if batch.iter().any(|m| matches!(m, ToWriter::Prune)) {
            next_prune = Instant::now();
        }
        write(&store, batch).await;
        if Instant::now() >= next_prune {
            next_prune = Instant::now() + PRUNE_INTERVAL;
            let retention = retention_secs.load(Ordering::Relaxed);
            let before = crate::unix_now() - i64::try_from(retention).unwrap_or(i64::MAX);
            let store = store.clone();
            let pruned =
                tokio::task::spawn_blocking(move || store.with(|s| s.prune_audit(before))).await;
            match pruned {
                Ok(Ok(n)) if n > 0 => tracing::info!(entries = n, "pruned the audit log"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot prune the audit log"),
                Err(e) => tracing::warn!(error = %e, "audit prune task failed"),
            }
        }
    }
}

async fn write(store: &StoreHandle, batch: Vec<ToWriter>) {
    let mut flushes = Vec::new();
    let batch: Vec<AuditEntry> = batch
        .into_iter()
        .filter_map(|m| match m {
            ToWriter::Entry(entry) => Some(entry),
            ToWriter::Flush(done) => {
                flushes.push(done);
                None
            }
            ToWriter::Prune => None,
        })
        .collect();
    write_entries(store, batch).await;
    for done in flushes {
        let _ = done.send(());
    }
}

async fn write_entries(store: &StoreHandle, batch: Vec<AuditEntry>) {
    if batch.is_empty() {
        return;
    }
    let store = store.clone();
    let result = tokio::task::spawn_blocking(move || store.with(|s| s.append_audit(&batch))).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot write the audit log"),
        Err(e) => tracing::error!(error = %e, "audit write task failed"),
    }
}
