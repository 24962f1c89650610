//! The mailbox service, its I/O: the broker link it reads outboxes from
//! and publishes inboxes to, one transaction per batch of sends, sealing
//! and storing what the rules (rules.rs) accept, receipts, deliveries and
//! their resends, and expiry.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hearth_protocol::mailbox::{
    self, BadEnvelope, Delivery, Inbox, Message, Outbox, Receipt, ReceiptStatus, Sender,
};
use hearth_protocol::{topic, DeviceId};
use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::Notification;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::quota;
use super::rules::{self, Content, Recipient, Refusal};
use super::seal::MailboxKey;
use super::{InboxWatch, MailboxError};
use crate::audit::{Audit, Event};
use crate::config::MailboxSection;
use crate::hub::device_check::Observations;
use crate::hub::sessions::Sessions;
use crate::store::{NewMessage, Store, StoreError, StoreHandle};

/// How long after a device subscribes to its inbox the mailbox delivers
/// (the broker applies the subscription first).
const SUBSCRIBE_SETTLE: Duration = Duration::from_millis(150);
/// How long an unacknowledged delivery waits before it is sent again to a
/// connected device.
const RESEND_AFTER: Duration = Duration::from_secs(3);
/// How often expiry and resends run.
const TICK: Duration = Duration::from_millis(500);
/// Delivery bytes in flight across the whole hub: handed to the broker
/// and neither acknowledged nor given up on (older than [`RESEND_AFTER`],
/// taken as dropped). A picture to a member goes once per device, so a
/// bound per device would let 200 devices hold 200 × this; deliveries
/// past it wait in the store for a later round.
const FLIGHT_BYTES: usize = 16 * 1024 * 1024;
/// What a delivery envelope adds to its sealed content, at most (ids,
/// sender, times): a round is planned from sealed sizes, before any
/// content is read, and must not pass [`FLIGHT_BYTES`] once built.
const ENVELOPE_SLACK: usize = 1024;
/// How often deliveries to devices no longer active are swept.
const ORPHAN_SWEEP: Duration = Duration::from_secs(60);
/// At most this many outbox messages, or [`BATCH_BYTES`] of them, are
/// handled in one transaction: one sync makes the whole batch durable.
const BATCH_MAX: usize = 256;
/// Outbox payload bytes per batch (the store is held while a batch runs).
const BATCH_BYTES: usize = 16 * 1024 * 1024;
/// How old a device's pending count may be before it is counted again
/// (deliveries removed by an administrator are seen after this).
const PENDING_RECOUNT: Duration = Duration::from_secs(1);

/// A running mailbox.
pub struct Mailbox {
    store: StoreHandle,
    sessions: Arc<Sessions>,
    /// Deliveries and acknowledgements, for `hearth device check`.
    observations: Arc<Observations>,
    audit: Audit,
    seal: MailboxKey,
    limits: MailboxSection,
    link: LinkTx,
    /// When each (message, device) delivery was last published, and its
    /// size: what is in flight (see [`FLIGHT_BYTES`]).
    sent: HashMap<(String, DeviceId), Sent>,
    /// Devices a delivery was held back from by [`FLIGHT_BYTES`]: the next
    /// round goes to them too if they are connected (they may not have
    /// subscribed since the mailbox started, so not be `listening`).
    waiting: HashSet<DeviceId>,
    /// Turns the order devices are served in each round, so a device with
    /// a backlog cannot keep the others waiting.
    round: usize,
    /// Devices whose inbox subscription is settling, and when to deliver.
    due: HashMap<DeviceId, Instant>,
    /// Connected devices that subscribed to their inbox: the only ones
    /// resends and receipts go to.
    listening: HashSet<DeviceId>,
    /// When deliveries to inactive devices were last swept.
    last_sweep: Instant,
    /// While a batch runs: what it will publish once it is committed.
    held: Option<Vec<(String, Bytes)>>,
    /// Pending deliveries per recipient device and when they were counted:
    /// the per-device cap is checked against a count at most
    /// [`PENDING_RECOUNT`] old plus what was stored since, not by counting
    /// rows on every send.
    pending: HashMap<DeviceId, (u64, Instant)>,
    /// Byte quotas and the free-space floor.
    quotas: quota::Quotas,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox").finish_non_exhaustive()
    }
}

impl Mailbox {
    /// Loads (or makes) the mailbox key. `link` is a broker link already
    /// subscribed to [`OUTBOX_FILTER`](super::OUTBOX_FILTER).
    pub fn new(
        data_dir: &Path,
        store: StoreHandle,
        (sessions, observations): (Arc<Sessions>, Arc<Observations>),
        audit: Audit,
        limits: MailboxSection,
        link: LinkTx,
    ) -> Result<(Mailbox, InboxWatch, mpsc::UnboundedReceiver<DeviceId>), MailboxError> {
        let seal = store.with(|db| {
            let pending = db
                .message_count()
                .map_err(|e| MailboxError(e.to_string()))?;
            let seal =
                MailboxKey::load(data_dir, pending).map_err(|e| MailboxError(e.to_string()))?;
            reseal_old_rows(db, &seal).map_err(|e| MailboxError(e.to_string()))?;
            // A shorter `expiry_secs` applies to what is already stored.
            db.apply_retention(crate::unix_now(), limits.expiry_secs as i64)
                .map_err(|e| MailboxError(e.to_string()))?;
            Ok::<_, MailboxError>(seal)
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mailbox = Mailbox {
            store,
            sessions,
            observations,
            audit,
            seal,
            quotas: quota::Quotas::new(limits.clone(), data_dir.to_owned()),
            limits,
            link,
            sent: HashMap::new(),
            waiting: HashSet::new(),
            round: 0,
            due: HashMap::new(),
            listening: HashSet::new(),
            last_sweep: Instant::now(),
            held: None,
            pending: HashMap::new(),
        };
        Ok((mailbox, InboxWatch(tx), rx))
    }

    /// Serves until `stop`, following reloads of `config`.
    pub async fn run(
        mut self,
        mut outbox: LinkRx,
        mut subscribed: mpsc::UnboundedReceiver<DeviceId>,
        mut config: crate::reload::ConfigWatch,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                Ok(()) = config.changed() => {
                    let config = config.borrow_and_update().clone();
                    self.set_limits(config.mailbox.within(config.limits.max_payload));
                }
                note = outbox.next() => {
                    let Some(batch) = Batch::collect(note, &mut outbox) else {
                        return;
                    };
                    let wake = batch.wake;
                    self.on_batch(batch.outbox);
                    if wake && outbox.wake().await.is_err() {
                        tracing::error!("the mailbox lost its broker link");
                        return;
                    }
                }
                Some(device) = subscribed.recv() => {
                    self.due.insert(device, Instant::now() + SUBSCRIBE_SETTLE);
                }
                _ = tick.tick() => self.on_tick(),
            }
        }
    }

    /// Applies reloaded limits to messages sent from now on; a shorter
    /// `expiry_secs` also applies to what is stored, as at start.
    fn set_limits(&mut self, limits: MailboxSection) {
        if limits == self.limits {
            return;
        }
        if limits.expiry_secs < self.limits.expiry_secs {
            let expiry = limits.expiry_secs as i64;
            if let Err(e) = self
                .store
                .with(|db| db.apply_retention(crate::unix_now(), expiry))
            {
                tracing::warn!(error = %e, "cannot apply the shorter message expiry to stored messages");
            }
        }
        self.quotas.set_limits(limits.clone());
        self.limits = limits;
        tracing::info!("mailbox limits reloaded");
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        let ready: Vec<DeviceId> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(d, _)| *d)
            .collect();
        for device in &ready {
            self.due.remove(device);
            self.listening.insert(*device);
        }
        let connected: HashSet<DeviceId> = self.sessions.connected_devices().into_iter().collect();
        self.listening.retain(|d| connected.contains(d));
        self.waiting.retain(|d| connected.contains(d));
        self.expire();
        // Deliver to devices that just subscribed, and resend what a
        // listening device has not acknowledged (a delivery can race its
        // subscription, or be dropped by a full queue), within the bound.
        let mut devices: Vec<DeviceId> = self.listening.union(&self.waiting).copied().collect();
        devices.sort_unstable();
        if !devices.is_empty() {
            let turn = self.round % devices.len();
            devices.rotate_left(turn);
        }
        self.round = self.round.wrapping_add(1);
        self.waiting.clear();
        let fresh: HashSet<DeviceId> = ready.iter().copied().collect();
        self.deliver_round(&devices, &fresh, now);
        let store = self.store.clone();
        for device in &ready {
            store.with(|db| self.flush_receipts(db, device));
        }
        self.sent
            .retain(|_, s| now.duration_since(s.at) < Duration::from_secs(3600));
        self.pending
            .retain(|_, (_, at)| now.duration_since(*at) < PENDING_RECOUNT);
    }

    /// Handles outbox messages in one transaction; receipts and deliveries
    /// go out only once it is committed.
    fn on_batch(&mut self, outbox: Vec<rumqttd::protocol::Publish>) {
        if outbox.is_empty() {
            return;
        }
        let store = self.store.clone();
        self.held = Some(Vec::new());
        let committed = store.with(|db| {
            db.batch(|db| {
                for publish in &outbox {
                    if db.batch_lost() {
                        break;
                    }
                    let topic = String::from_utf8_lossy(&publish.topic);
                    self.on_outbox(db, &topic, &publish.payload);
                }
            })
        });
        let held = self.held.take().unwrap_or_default();
        match committed {
            Ok(()) => {
                for (topic, bytes) in held {
                    self.publish_raw(topic, bytes);
                }
            }
            Err(e) => {
                // Nothing of the batch was kept: every sender is told to
                // try again; unacknowledged deliveries are sent again.
                tracing::error!(error = %e, "mailbox database error");
                self.pending.clear();
                self.quotas.forget_counts();
                for publish in &outbox {
                    let topic = String::from_utf8_lossy(&publish.topic);
                    let Some(sender) = rules::outbox_sender(&topic) else {
                        continue;
                    };
                    if let Ok(Outbox::Send(send)) = mailbox::parse_outbox(&publish.payload) {
                        self.refuse(&sender, send.reference, Refusal::try_again());
                    }
                }
            }
        }
    }

    fn on_outbox(&mut self, db: &mut Store, topic: &str, payload: &[u8]) {
        let Some(sender) = rules::outbox_sender(topic) else {
            return;
        };
        match mailbox::parse_outbox(payload) {
            Ok(Outbox::Send(send)) => self.on_send(db, &sender, send),
            Ok(Outbox::Ack(ack)) => self.on_ack(db, &sender, &ack.id),
            Err(BadEnvelope { reference, reason }) => self.refuse(
                &sender,
                reference.unwrap_or_default(),
                Refusal::bad_envelope(reason),
            ),
        }
    }

    fn on_send(&mut self, db: &mut Store, sender: &DeviceId, send: Message) {
        match self.accept(db, sender, &send) {
            Ok(Accepted::Duplicate(id)) => {
                // Already stored (and delivered or pending): the sender
                // lost the receipt; tell it again.
                self.receipt_now(sender, &send.reference, Some(id), ReceiptStatus::Stored);
            }
            Ok(Accepted::Stored { devices, delivery }) => {
                let id = delivery.id.clone();
                self.receipt_now(
                    sender,
                    &send.reference,
                    Some(id.clone()),
                    ReceiptStatus::Stored,
                );
                // One envelope for every device: the router's entries share
                // its bytes.
                let Some(envelope) = encode(&Inbox::Delivery(*delivery)) else {
                    return;
                };
                let now = Instant::now();
                let mut flight = Flight::measure(FLIGHT_BYTES, &self.sent, now);
                for device in devices {
                    // A device with older deliveries held back gets this
                    // one after them, so order per sender holds.
                    if self.waiting.contains(&device) || !flight.take(envelope.len()) {
                        // Stored; it goes in a later round.
                        self.waiting.insert(device);
                        continue;
                    }
                    self.publish_raw(topic::inbox(&device), envelope.clone());
                    let sent = Sent {
                        at: now,
                        bytes: envelope.len(),
                    };
                    self.sent.insert((id.clone(), device), sent);
                }
            }
            Err(refusal) => self.refuse(sender, send.reference, refusal),
        }
    }

    /// Takes one send through the rules and into the store (inside the
    /// batch's transaction): who sent it, who it is for, whether they may,
    /// whether there is room, then sealed and stored.
    fn accept(
        &mut self,
        store: &mut Store,
        sender: &DeviceId,
        send: &Message,
    ) -> Result<Accepted, Refusal> {
        if let Some(id) = store
            .sent_reference(sender, &send.reference)
            .map_err(store_failed)?
        {
            return Ok(Accepted::Duplicate(id));
        }
        let from_member = sending_member(store, sender)?;
        let content = rules::check_content(&self.limits, send)?;
        let (to_member, devices) = recipient_devices(store, sender, &send.to)?;
        let rule = store
            .contact_rule(&from_member, &to_member)
            .map_err(store_failed)?;
        let from_role = store.member_role(&from_member).map_err(store_failed)?;
        let to_role = store.member_role(&to_member).map_err(store_failed)?;
        rules::contact(rule, &from_member, from_role, &to_member, to_role)?;
        self.check_room(store, &send.to, &devices)?;
        let stored = self.store_sealed(store, sender, send, &content, &devices)?;
        // What goes out now is built from what is in hand, not read back
        // and unsealed once per device.
        let from = Sender {
            member: from_member,
            device: *sender,
        };
        let delivery = content.into_delivery(stored.id, from, stored.sent_at, stored.expires_at);
        Ok(Accepted::Stored {
            devices,
            delivery: Box::new(delivery),
        })
    }

    /// Whether every recipient device has room for one more message, by a
    /// count at most [`PENDING_RECOUNT`] old.
    fn check_room(
        &mut self,
        store: &mut Store,
        to: &str,
        devices: &[DeviceId],
    ) -> Result<(), Refusal> {
        for device in devices {
            let pending = match self.pending.get(device) {
                Some((n, at)) if at.elapsed() < PENDING_RECOUNT => *n,
                _ => {
                    let n = store.pending_count(device).map_err(store_failed)?;
                    self.pending.insert(*device, (n, Instant::now()));
                    n
                }
            };
            rules::room_for_one(&self.limits, to, pending)?;
        }
        Ok(())
    }

    /// Seals the content under a new message id and stores it with one
    /// delivery row per device, within the quotas.
    fn store_sealed(
        &mut self,
        store: &mut Store,
        sender: &DeviceId,
        send: &Message,
        content: &Content,
        devices: &[DeviceId],
    ) -> Result<StoredMessage, Refusal> {
        let id = hex::encode(crate::random_bytes::<16>());
        let plain = serde_json::to_vec(content).map_err(|e| Refusal::unencodable(&e))?;
        // Sized as sealed: the content, the nonce and the tag.
        let size = plain.len() as u64 + 40;
        self.quotas
            .check(store, sender, devices, size)
            .map_err(store_failed)??;
        let sealed = self.seal.seal(&id, &send.to, &plain);
        drop(plain);
        let now = crate::unix_now();
        let message = NewMessage {
            id: &id,
            sender,
            reference: &send.reference,
            recipient: &send.to,
            sealed: &sealed.sealed,
            wrapped_key: &sealed.wrapped_key,
            sent_at: now,
            expires_at: now + self.limits.expiry_secs as i64,
            devices,
        };
        store.store_message(&message).map_err(store_failed)?;
        let stored = StoredMessage {
            id: id.clone(),
            sent_at: message.sent_at,
            expires_at: message.expires_at,
        };
        self.quotas.stored(sender, devices, size);
        for device in devices {
            if let Some((n, _)) = self.pending.get_mut(device) {
                *n += 1;
            }
        }
        Ok(stored)
    }

    fn on_ack(&mut self, db: &mut Store, device: &DeviceId, id: &str) {
        match db.acknowledge(device, id) {
            Ok(Some((sender, reference, _gone))) => {
                self.observations.update(device, |s| s.acks += 1);
                self.sent.remove(&(id.to_owned(), *device));
                if let Some((n, _)) = self.pending.get_mut(device) {
                    *n = n.saturating_sub(1);
                }
                let receipt = Receipt {
                    v: mailbox::VERSION,
                    reference,
                    id: Some(id.to_owned()),
                    status: ReceiptStatus::Delivered,
                    device: Some(*device),
                    reason: None,
                };
                self.queue_receipt(db, &sender, receipt);
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "cannot record an acknowledgement"),
        }
    }

    fn refuse(&mut self, sender: &DeviceId, reference: String, refusal: Refusal) {
        self.audit.record(Event {
            device: Some(*sender),
            event: "message-refused",
            action: Some("send".into()),
            reason: Some(refusal.class.as_str().to_owned()),
            ..Event::default()
        });
        let receipt = Receipt {
            v: mailbox::VERSION,
            reference,
            id: None,
            status: ReceiptStatus::Refused,
            device: None,
            reason: Some(refusal.reason),
        };
        self.publish_inbox(sender, &Inbox::Receipt(receipt));
    }

    fn receipt_now(
        &mut self,
        sender: &DeviceId,
        reference: &str,
        id: Option<String>,
        status: ReceiptStatus,
    ) {
        let receipt = Receipt {
            v: mailbox::VERSION,
            reference: reference.to_owned(),
            id,
            status,
            device: None,
            reason: None,
        };
        self.publish_inbox(sender, &Inbox::Receipt(receipt));
    }

    /// Receipts that may find their sender offline wait in the database.
    fn queue_receipt(&mut self, db: &mut Store, sender: &DeviceId, receipt: Receipt) {
        let Ok(text) = serde_json::to_string(&Inbox::Receipt(receipt)) else {
            return;
        };
        // A receipt nobody collects goes when a message would have.
        let expires_at = crate::unix_now() + self.limits.expiry_secs as i64;
        if let Err(e) = db.queue_receipt(sender, &text, expires_at) {
            tracing::error!(error = %e, "cannot queue a receipt");
            return;
        }
        if self.listening.contains(sender) {
            self.flush_receipts(db, sender);
        }
    }

    fn flush_receipts(&mut self, db: &mut Store, device: &DeviceId) {
        match db.take_receipts(device) {
            Ok(receipts) => {
                for text in receipts {
                    self.publish_raw(topic::inbox(device), Bytes::from(text));
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read queued receipts"),
        }
    }

    /// One round of deliveries to `devices`, in that order: for each, its
    /// pending deliveries oldest first, but those published in the last
    /// [`RESEND_AFTER`] (unless it is `fresh`: it just subscribed, so they
    /// found no subscriber), as far as [`FLIGHT_BYTES`] allows hub-wide.
    fn deliver_round(&mut self, devices: &[DeviceId], fresh: &HashSet<DeviceId>, now: Instant) {
        let mut queues = Vec::with_capacity(devices.len());
        for device in devices {
            let pending = match self.store.with(|db| db.pending_sizes(device)) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read pending deliveries");
                    continue;
                }
            };
            let stale: Vec<(String, usize)> = pending
                .into_iter()
                .filter(|(id, _)| {
                    fresh.contains(device)
                        || self
                            .sent
                            .get(&(id.clone(), *device))
                            .is_none_or(|s| now.duration_since(s.at) >= RESEND_AFTER)
                })
                .map(|(id, sealed)| (id, sealed.saturating_add(ENVELOPE_SLACK)))
                .collect();
            if !stale.is_empty() {
                queues.push((*device, stale));
            }
        }
        let mut flight = Flight::measure(FLIGHT_BYTES, &self.sent, now);
        for device in fresh {
            // Its earlier deliveries found no subscriber: not in flight.
            flight.bytes = flight.bytes.saturating_sub(
                self.sent
                    .iter()
                    .filter(|((_, d), s)| d == device && now.duration_since(s.at) < RESEND_AFTER)
                    .map(|(_, s)| s.bytes)
                    .sum(),
            );
        }
        let plan = plan_round(&queues, &mut flight);
        // Devices left with deliveries the bound held back are served in
        // the next round even if they never subscribed since the start.
        let mut planned: HashMap<DeviceId, usize> = HashMap::new();
        for (device, _) in &plan {
            *planned.entry(*device).or_default() += 1;
        }
        for (device, queue) in &queues {
            if planned.get(device).copied().unwrap_or(0) < queue.len() {
                self.waiting.insert(*device);
            }
        }
        // Each message is read, opened and encoded once a round, however
        // many devices it goes to; the round's envelopes are within the
        // bound.
        let mut envelopes: HashMap<String, Option<Bytes>> = HashMap::new();
        for (device, id) in plan {
            let envelope = match envelopes.get(&id) {
                Some(e) => e.clone(),
                None => {
                    let e = self.envelope(&id);
                    envelopes.insert(id.clone(), e.clone());
                    e
                }
            };
            let Some(envelope) = envelope else {
                continue;
            };
            // Counted before it leaves, so whoever receives it finds it
            // counted.
            self.observations.update(&device, |s| s.deliveries += 1);
            let sent = Sent {
                at: now,
                bytes: envelope.len(),
            };
            self.publish_raw(topic::inbox(&device), envelope);
            self.sent.insert((id, device), sent);
        }
    }

    /// A stored message's delivery envelope, or `None` if it is gone or
    /// cannot be opened.
    fn envelope(&mut self, id: &str) -> Option<Bytes> {
        let message = match self.store.with(|db| db.message(id)) {
            Ok(Some(m)) => m,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(error = %e, "cannot read a stored message");
                return None;
            }
        };
        let Some(plain) = self.seal.open(
            &message.id,
            &message.recipient,
            message.wrapped_key.as_deref(),
            &message.sealed,
        ) else {
            tracing::error!(message = %message.id, "a stored message does not open; skipping it");
            return None;
        };
        let content = serde_json::from_slice::<Content>(&plain).ok()?;
        let from_member = self
            .store
            .with(|db| db.device_member(&message.sender))
            .ok()
            .flatten();
        let member = from_member.or_else(|| "former-member".parse().ok())?;
        let from = Sender {
            member,
            device: message.sender,
        };
        let delivery = content.into_delivery(
            message.id.clone(),
            from,
            message.sent_at,
            message.expires_at,
        );
        encode(&Inbox::Delivery(delivery))
    }

    fn expire(&mut self) {
        // Deliveries to devices revoked or removed are swept once a minute
        // (a scan); expiry itself is an index lookup every tick.
        let sweep = self.last_sweep.elapsed() >= ORPHAN_SWEEP;
        if sweep {
            self.last_sweep = Instant::now();
        }
        let store = self.store.clone();
        store.with(|db| self.expire_with(db, sweep));
    }

    fn expire_with(&mut self, db: &mut Store, sweep: bool) {
        match db.expire_messages(crate::unix_now(), sweep) {
            Ok(expired) => {
                if !expired.is_empty() {
                    self.pending.clear();
                }
                for message in expired {
                    self.sent.retain(|(id, _), _| id != &message.id);
                    let receipt = Receipt {
                        v: mailbox::VERSION,
                        reference: message.reference,
                        id: Some(message.id),
                        status: ReceiptStatus::Expired,
                        device: None,
                        reason: None,
                    };
                    self.queue_receipt(db, &message.sender, receipt);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot expire messages"),
        }
        if let Err(e) = db.expire_receipts(crate::unix_now()) {
            tracing::error!(error = %e, "cannot expire receipts");
        }
    }

    fn publish_inbox(&mut self, device: &DeviceId, envelope: &Inbox) {
        let Some(text) = encode(envelope) else {
            return;
        };
        self.publish_raw(topic::inbox(device), text);
    }

    /// Publishes now, or once the running batch is committed.
    fn publish_raw(&mut self, topic: String, bytes: Bytes) {
        if let Some(held) = &mut self.held {
            held.push((topic, bytes));
        } else if let Err(e) = self.link.publish(topic, bytes) {
            tracing::warn!(error = %e, "cannot publish to an inbox");
        }
    }
}

/// An inbox envelope's bytes, exactly as long as they are: the broker's
/// logs keep them after delivery, and an encoder's spare capacity (up to
/// half again, for a picture) would stay with them.
fn encode(envelope: &Inbox) -> Option<Bytes> {
    let mut bytes = serde_json::to_vec(envelope).ok()?;
    bytes.shrink_to_fit();
    Some(Bytes::from(bytes))
}

/// A store failure while taking a send: logged, and the sender told to
/// try again (the batch's transaction keeps nothing).
fn store_failed(e: StoreError) -> Refusal {
    tracing::error!(error = %e, "mailbox database error");
    Refusal::try_again()
}

/// The member whose device sent a message; a device of no member is
/// refused (revoked in flight, or a service's).
fn sending_member(
    store: &mut Store,
    sender: &DeviceId,
) -> Result<hearth_protocol::MemberName, Refusal> {
    match store.device_member(sender).map_err(store_failed)? {
        Some(member) => Ok(member),
        None => {
            let revoked = store.device_revoked(sender).map_err(store_failed)?;
            Err(Refusal::not_a_members_device(revoked))
        }
    }
}

/// The member `to` names and the devices a message to them goes to: the
/// one device, or every device of the member, never the sender's own.
fn recipient_devices(
    store: &mut Store,
    sender: &DeviceId,
    to: &str,
) -> Result<(hearth_protocol::MemberName, Vec<DeviceId>), Refusal> {
    let (member, devices) = match Recipient::parse(to)? {
        Recipient::Device(device) => match store.device_member(&device).map_err(store_failed)? {
            Some(member) => (member, vec![device]),
            None => return Err(Refusal::unknown_recipient(to)),
        },
        Recipient::Member(member) => {
            if store.member_role(&member).map_err(store_failed)?.is_none() {
                return Err(Refusal::unknown_recipient(to));
            }
            let devices = store.member_devices(&member).map_err(store_failed)?;
            (member, devices)
        }
    };
    let devices: Vec<DeviceId> = devices.into_iter().filter(|d| d != sender).collect();
    if devices.is_empty() {
        return Err(Refusal::no_device(to));
    }
    Ok((member, devices))
}

/// Re-seals messages stored before crypto-erase (sealed directly under the
/// mailbox key) under a data key of their own, in one transaction, so
/// every message from now on is erased by deleting its row.
fn reseal_old_rows(db: &mut Store, key: &MailboxKey) -> Result<(), StoreError> {
    let old = db.messages_without_data_key()?;
    if old.is_empty() {
        return Ok(());
    }
    let count = old.len();
    db.batch(|db| {
        for id in old {
            let Some(message) = db.message(&id)? else {
                continue;
            };
            let Some(plain) = key.open(&message.id, &message.recipient, None, &message.sealed)
            else {
                // Left as it is: it expires like any other.
                tracing::warn!(message = %message.id, "an old message does not open; not re-sealed");
                continue;
            };
            let sealed = key.seal(&message.id, &message.recipient, &plain);
            db.reseal_message(&message.id, &sealed.sealed, &sealed.wrapped_key)?;
        }
        Ok::<_, StoreError>(())
    })??;
    tracing::info!(count, "re-sealed stored messages under their own data keys");
    Ok(())
}

/// Outbox messages taken from the link for one transaction.
#[derive(Default)]
struct Batch {
    outbox: Vec<rumqttd::protocol::Publish>,
    bytes: usize,
    /// The router paused the link; it must be woken once this is handled.
    wake: bool,
}

impl Batch {
    /// The batch that starts with `first`: it takes what else the router
    /// has already handed over, without waiting, so all of it is handled
    /// in one transaction. `None` once the link is lost (what was taken
    /// then is dropped, as the link is).
    fn collect(
        first: Result<Option<Notification>, LinkError>,
        outbox: &mut LinkRx,
    ) -> Option<Batch> {
        let mut batch = Batch::default();
        let mut note = Some(first);
        while let Some(next) = note.take().or_else(|| ready_now(outbox.next())) {
            match next {
                Ok(Some(Notification::Forward(forward))) => {
                    if batch.add(forward.publish) {
                        break;
                    }
                }
                // The router paused the link (its buffer was full) until
                // it is woken.
                Ok(Some(Notification::Unschedule)) => batch.wake = true,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "the mailbox lost its broker link");
                    return None;
                }
            }
        }
        Some(batch)
    }

    /// Adds one; true once the batch is full.
    fn add(&mut self, publish: rumqttd::protocol::Publish) -> bool {
        self.bytes += publish.payload.len();
        self.outbox.push(publish);
        self.outbox.len() >= BATCH_MAX || self.bytes >= BATCH_BYTES
    }
}

/// The output of a future that is ready without waiting, else `None` (the
/// future is dropped; the link's `next` loses nothing when dropped).
fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

/// A message just stored: its id, when it was sent and when it expires.
struct StoredMessage {
    id: String,
    sent_at: i64,
    expires_at: i64,
}

/// One delivery published: when, and its envelope's size.
#[derive(Clone, Copy, Debug)]
struct Sent {
    at: Instant,
    bytes: usize,
}

/// Delivery bytes in flight hub-wide, against their bound.
#[derive(Debug)]
struct Flight {
    limit: usize,
    bytes: usize,
}

impl Flight {
    /// What `sent` has in flight at `now`: published in the last
    /// [`RESEND_AFTER`] and not acknowledged (an acknowledged delivery
    /// leaves `sent`).
    fn measure(limit: usize, sent: &HashMap<(String, DeviceId), Sent>, now: Instant) -> Flight {
        let bytes = sent
            .values()
            .filter(|s| now.duration_since(s.at) < RESEND_AFTER)
            .map(|s| s.bytes)
            .sum();
        Flight { limit, bytes }
    }

    /// Takes `size` bytes if they fit. With nothing in flight one delivery
    /// always fits, so a message near the bound is never stuck.
    fn take(&mut self, size: usize) -> bool {
        if self.bytes > 0 && self.bytes.saturating_add(size) > self.limit {
            return false;
        }
        self.bytes = self.bytes.saturating_add(size);
        true
    }
}

/// Plans a round: which (device, message) deliveries go, from each
/// device's queue (oldest first, with sizes), as far as `flight` allows.
/// Devices are served in turn, one delivery each per pass, so one with a
/// backlog does not take the round; a device whose next delivery does not
/// fit gets nothing more this round, so its order per sender holds.
fn plan_round(
    queues: &[(DeviceId, Vec<(String, usize)>)],
    flight: &mut Flight,
) -> Vec<(DeviceId, String)> {
    let mut plan = Vec::new();
    let mut next = vec![0usize; queues.len()];
    let mut stopped = vec![false; queues.len()];
    loop {
        let mut moved = false;
        for (i, (device, queue)) in queues.iter().enumerate() {
            if stopped[i] {
                continue;
            }
            let Some((id, size)) = queue.get(next[i]) else {
                stopped[i] = true;
                continue;
            };
            if !flight.take(*size) {
                stopped[i] = true;
                continue;
            }
            plan.push((*device, id.clone()));
            next[i] += 1;
            moved = true;
        }
        if !moved {
            return plan;
        }
    }
}

enum Accepted {
    /// Stored for these devices; the delivery to send them now.
    Stored {
        devices: Vec<DeviceId>,
        delivery: Box<Delivery>,
    },
    /// The sender's retry of a message stored before, by its id.
    Duplicate(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices(n: usize) -> Vec<DeviceId> {
        let mut devices: Vec<DeviceId> = (0..n)
            .map(|k| DeviceId::from_entropy((k as u128).to_be_bytes()))
            .collect();
        devices.sort_unstable();
        devices
    }

    #[test]
    fn a_round_hands_over_at_most_the_bound_across_all_devices() {
        // A 5 MiB picture (6.7 MiB as base64) to a member with 200
        // devices, none acknowledging: one bound for the hub, not 200.
        let picture = 5 * 1024 * 1024 / 3 * 4 + ENVELOPE_SLACK;
        let queues: Vec<(DeviceId, Vec<(String, usize)>)> = devices(200)
            .into_iter()
            .map(|d| (d, (0..4).map(|k| (format!("m{k}"), picture)).collect()))
            .collect();
        let mut flight = Flight::measure(FLIGHT_BYTES, &HashMap::new(), Instant::now());
        let plan = plan_round(&queues, &mut flight);
        assert_eq!(plan.len(), FLIGHT_BYTES / picture);
        assert!(plan.len() * picture <= FLIGHT_BYTES);
        // One device each, oldest first: the round is shared.
        let first: HashSet<DeviceId> = plan.iter().map(|(d, _)| *d).collect();
        assert_eq!(first.len(), plan.len());
        assert!(plan.iter().all(|(_, id)| id == "m0"));
        // With the bound taken by deliveries not yet acknowledged, the
        // next round hands over nothing; the rest wait, still stored.
        let now = Instant::now();
        let sent: HashMap<(String, DeviceId), Sent> = plan
            .iter()
            .map(|(d, id)| {
                (
                    (id.clone(), *d),
                    Sent {
                        at: now,
                        bytes: picture,
                    },
                )
            })
            .collect();
        let mut flight = Flight::measure(FLIGHT_BYTES, &sent, now);
        assert!(plan_round(&queues, &mut flight).is_empty());
        // Given up on after RESEND_AFTER, they no longer count.
        let later = now + RESEND_AFTER;
        let mut flight = Flight::measure(FLIGHT_BYTES, &sent, later);
        assert_eq!(flight.bytes, 0);
        assert_eq!(plan_round(&queues, &mut flight).len(), plan.len());
    }

    #[test]
    fn a_round_keeps_order_per_device_and_never_sticks_a_large_message() {
        let [a, b] = devices(2).try_into().unwrap();
        let queues = vec![
            (
                a,
                vec![
                    ("big".to_owned(), FLIGHT_BYTES + 1),
                    ("small".to_owned(), 10),
                ],
            ),
            (b, vec![("other".to_owned(), 10)]),
        ];
        // Nothing in flight: the large one goes alone; what comes after it
        // for the same device waits, so order holds.
        let mut flight = Flight::measure(FLIGHT_BYTES, &HashMap::new(), Instant::now());
        assert_eq!(
            plan_round(&queues, &mut flight),
            vec![(a, "big".to_owned())]
        );
        // Small ones go together, many per device.
        let queues = vec![(a, (0..100).map(|k| (format!("t{k}"), 1024)).collect())];
        let mut flight = Flight::measure(FLIGHT_BYTES, &HashMap::new(), Instant::now());
        assert_eq!(plan_round(&queues, &mut flight).len(), 100);
    }

    #[test]
    fn messages_sealed_before_crypto_erase_are_resealed_under_their_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = MailboxKey::load(dir.path(), 0).unwrap();
        let sender: DeviceId = "0jqs8adyj6jyjnsqmar523qbbd".parse().unwrap();
        {
            let mut store = Store::open(dir.path()).unwrap();
            let sealed = key.seal("m1", "Ada", b"x");
            store
                .store_message(&NewMessage {
                    id: "m1",
                    sender: &sender,
                    reference: "r1",
                    recipient: "Ada",
                    sealed: &sealed.sealed,
                    wrapped_key: &sealed.wrapped_key,
                    sent_at: 1,
                    expires_at: i64::MAX,
                    devices: &[sender],
                })
                .unwrap();
        }
        // As an older hearthd left it: sealed directly under the key.
        let old = crate::mailbox::seal::seal_without_data_key(&key, "m1", "Ada", b"old words");
        let conn = rusqlite::Connection::open(dir.path().join(crate::store::DB_FILE)).unwrap();
        conn.execute(
            "UPDATE messages SET sealed = ?1, wrapped_key = NULL",
            rusqlite::params![old],
        )
        .unwrap();
        drop(conn);
        let mut store = Store::open(dir.path()).unwrap();
        reseal_old_rows(&mut store, &key).unwrap();
        assert!(store.messages_without_data_key().unwrap().is_empty());
        let row = store.message("m1").unwrap().unwrap();
        let wrapped = row.wrapped_key.as_deref().expect("a data key now");
        assert_ne!(row.sealed, old);
        assert_eq!(
            key.open("m1", "Ada", Some(wrapped), &row.sealed).unwrap(),
            b"old words"
        );
        assert!(key.open("m1", "Ada", None, &row.sealed).is_none());
    }
}
