//! Family messaging: takes sends from every device's outbox on a trusted
//! in-process broker link, checks contact rules and limits, stores the
//! content sealed under the mailbox key (committed with full sync before
//! the "stored" receipt), delivers to each recipient device's inbox — at
//! once and again when it subscribes — and deletes a message once every
//! recipient device has acknowledged it, or when it expires.

mod quota;
pub mod seal;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use hearth_protocol::mailbox::{
    self, BadEnvelope, Delivery, Inbox, Kind, Outbox, Receipt, ReceiptStatus, Send,
};
use hearth_protocol::{filter, topic, DeviceId, MemberName, Role};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::Notification;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::audit::{Audit, Event};
use crate::config::MailboxSection;
use crate::hub::sessions::Sessions;
use crate::store::{NewMessage, Store, StoreError, StoreHandle};
use seal::MailboxKey;

/// The mailbox key file in the data dir.
pub const KEY_FILE: &str = seal::KEY_FILE;
/// The filter the mailbox's link subscribes to (the broker makes the link).
pub use crate::broker::OUTBOX_FILTER;
/// How long after a device subscribes to its inbox the mailbox delivers
/// (the broker applies the subscription first).
const SUBSCRIBE_SETTLE: Duration = Duration::from_millis(150);
/// How long an unacknowledged delivery waits before it is sent again to a
/// connected device.
const RESEND_AFTER: Duration = Duration::from_secs(3);
/// How often expiry and resends run.
const TICK: Duration = Duration::from_millis(500);
/// Content bytes published to one device per round, so a backlog of
/// pictures neither floods the broker's log nor holds the store.
const ROUND_BYTES: usize = 16 * 1024 * 1024;
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

/// The mailbox could not start.
#[derive(Debug, thiserror::Error)]
#[error("mailbox: {0}")]
pub struct MailboxError(String);

/// Tells the mailbox that a device subscribed to its inbox.
#[derive(Debug, Clone)]
pub struct InboxWatch(mpsc::UnboundedSender<DeviceId>);

impl InboxWatch {
    /// A device's allowed subscription filters were just forwarded; if one
    /// covers its inbox, pending mail goes out.
    pub fn subscribed<'a>(&self, device: &DeviceId, filters: impl IntoIterator<Item = &'a str>) {
        let inbox = topic::inbox(device);
        let covers = filters.into_iter().any(|f| {
            let plain = match filter::split_shared(f) {
                Some(Ok((_, inner))) => inner,
                Some(Err(_)) => return false,
                None => f,
            };
            filter::matches(filter::levels(plain), &inbox)
        });
        if covers {
            let _ = self.0.send(*device);
        }
    }
}

/// What is sealed: the content of a message.
#[derive(Debug, Serialize, Deserialize)]
struct Content {
    kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
}

impl Content {
    /// The inbox envelope that carries this content.
    fn into_delivery(
        self,
        id: String,
        from: mailbox::From,
        sent_at: i64,
        expires_at: i64,
    ) -> Delivery {
        Delivery {
            v: mailbox::VERSION,
            id,
            from,
            kind: self.kind,
            body: self.body,
            data: self.data,
            content_type: self.content_type,
            sent_at,
            expires_at,
        }
    }
}

/// A running mailbox.
pub struct Mailbox {
    store: StoreHandle,
    sessions: Arc<Sessions>,
    audit: Audit,
    seal: MailboxKey,
    limits: MailboxSection,
    link: LinkTx,
    /// When each (message, device) delivery was last published.
    sent: HashMap<(String, DeviceId), Instant>,
    /// Devices whose inbox subscription is settling, and when to deliver.
    due: HashMap<DeviceId, Instant>,
    /// Connected devices that subscribed to their inbox: the only ones
    /// resends and receipts go to.
    listening: std::collections::HashSet<DeviceId>,
    /// When deliveries to inactive devices were last swept.
    last_sweep: Instant,
    /// While a batch runs: what it will publish once it is committed.
    held: Option<Vec<(String, Vec<u8>)>>,
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
    /// subscribed to [`OUTBOX_FILTER`].
    pub fn new(
        data_dir: &Path,
        store: StoreHandle,
        sessions: Arc<Sessions>,
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
            audit,
            seal,
            quotas: quota::Quotas::new(limits.clone(), data_dir.to_owned()),
            limits,
            link,
            sent: HashMap::new(),
            due: HashMap::new(),
            listening: std::collections::HashSet::new(),
            last_sweep: Instant::now(),
            held: None,
            pending: HashMap::new(),
        };
        Ok((mailbox, InboxWatch(tx), rx))
    }

    /// Serves until `stop`.
    pub async fn run(
        mut self,
        mut outbox: LinkRx,
        mut subscribed: mpsc::UnboundedReceiver<DeviceId>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                note = outbox.next() => {
                    // Take what else the router has already handed over,
                    // and handle it all in one transaction.
                    let mut batch = Batch::default();
                    let mut note = Some(note);
                    while let Some(next) = note.take().or_else(|| ready_now(outbox.next())) {
                        match next {
                            Ok(Some(Notification::Forward(forward))) => {
                                if batch.add(forward.publish) {
                                    break;
                                }
                            }
                            // The router paused the link (its buffer was
                            // full) until it is woken.
                            Ok(Some(Notification::Unschedule)) => batch.wake = true,
                            Ok(_) => {}
                            Err(e) => {
                                tracing::error!(error = %e, "the mailbox lost its broker link");
                                return;
                            }
                        }
                    }
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

    fn on_tick(&mut self) {
        let now = Instant::now();
        let ready: Vec<DeviceId> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(d, _)| *d)
            .collect();
        for device in ready {
            self.due.remove(&device);
            self.listening.insert(device);
            self.deliver_pending(&device, Resend::All);
        }
        let connected: std::collections::HashSet<DeviceId> =
            self.sessions.connected_devices().into_iter().collect();
        self.listening.retain(|d| connected.contains(d));
        self.expire();
        // Resend what a listening device has not acknowledged (a delivery
        // can race its subscription, or be dropped by a full queue).
        let listening: Vec<DeviceId> = self.listening.iter().copied().collect();
        for device in listening {
            self.deliver_pending(&device, Resend::Stale);
        }
        self.sent
            .retain(|_, at| now.duration_since(*at) < Duration::from_secs(3600));
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
                    let Some(sender) = outbox_sender(&topic) else {
                        continue;
                    };
                    if let Ok(Outbox::Send(send)) = mailbox::parse_outbox(&publish.payload) {
                        self.refuse(&sender, send.reference, TRY_AGAIN);
                    }
                }
            }
        }
    }

    fn on_outbox(&mut self, db: &mut Store, topic: &str, payload: &[u8]) {
        let Some(sender) = outbox_sender(topic) else {
            return;
        };
        match mailbox::parse_outbox(payload) {
            Ok(Outbox::Send(send)) => self.on_send(db, &sender, send),
            Ok(Outbox::Ack(ack)) => self.on_ack(db, &sender, &ack.id),
            Err(BadEnvelope { reference, reason }) => {
                self.refuse(&sender, reference.unwrap_or_default(), &reason)
            }
        }
    }

    fn on_send(&mut self, db: &mut Store, sender: &DeviceId, send: Send) {
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
                let envelope = Inbox::Delivery(*delivery);
                let now = Instant::now();
                for device in devices {
                    self.publish_inbox(&device, &envelope);
                    self.sent.insert((id.clone(), device), now);
                }
            }
            Err(Refusal(reason)) => self.refuse(sender, send.reference, &reason),
        }
    }

    fn accept(
        &mut self,
        store: &mut Store,
        sender: &DeviceId,
        send: &Send,
    ) -> Result<Accepted, Refusal> {
        let db = |e: StoreError| {
            tracing::error!(error = %e, "mailbox database error");
            Refusal(TRY_AGAIN.into())
        };
        if let Some(id) = store.sent_reference(sender, &send.reference).map_err(db)? {
            return Ok(Accepted::Duplicate(id));
        }
        let Some(from_member) = store.device_member(sender).map_err(db)? else {
            // A message in flight when its sender was revoked (or removed)
            // is refused for that, not mistaken for a service's.
            let revoked = store.device_revoked(sender).map_err(db)?;
            return Err(Refusal(
                if revoked {
                    "the sending device is revoked"
                } else {
                    "service devices do not send messages"
                }
                .into(),
            ));
        };
        let content = check_content(&self.limits, send)?;
        // `to`: a device id, else a member nickname.
        let (to_member, devices) = match send.to.parse::<DeviceId>() {
            Ok(device) => match store.device_member(&device).map_err(db)? {
                Some(member) => (member, vec![device]),
                None => return Err(Refusal(format!("no member or device named {:?}", send.to))),
            },
            Err(_) => {
                let Ok(member) = send.to.parse::<MemberName>() else {
                    return Err(Refusal(format!("no member or device named {:?}", send.to)));
                };
                if store.member_role(&member).map_err(db)?.is_none() {
                    return Err(Refusal(format!("no member or device named {:?}", send.to)));
                }
                let devices = store.member_devices(&member).map_err(db)?;
                (member, devices)
            }
        };
        let devices: Vec<DeviceId> = devices.into_iter().filter(|d| d != sender).collect();
        if devices.is_empty() {
            return Err(Refusal(format!("{} has no device to deliver to", send.to)));
        }
        // Contact rules: an administrator's rule wins; by default parents
        // may message anyone, children their parents (and themselves).
        let allowed = match store.contact_rule(&from_member, &to_member).map_err(db)? {
            Some(rule) => rule,
            None => {
                let from_role = store.member_role(&from_member).map_err(db)?;
                let to_role = store.member_role(&to_member).map_err(db)?;
                from_member == to_member
                    || from_role == Some(Role::Parent)
                    || to_role == Some(Role::Parent)
            }
        };
        if !allowed {
            return Err(Refusal(format!(
                "{from_member} may not message {to_member} (hearth contacts allow)"
            )));
        }
        for device in &devices {
            let pending = match self.pending.get(device) {
                Some((n, at)) if at.elapsed() < PENDING_RECOUNT => *n,
                _ => {
                    let n = store.pending_count(device).map_err(db)?;
                    self.pending.insert(*device, (n, Instant::now()));
                    n
                }
            };
            if pending >= self.limits.max_pending_per_device {
                return Err(Refusal(format!(
                    "the mailbox of {} is full ({} messages waiting)",
                    send.to, self.limits.max_pending_per_device
                )));
            }
        }
        let id = hex::encode(crate::random_bytes::<16>());
        let plain = serde_json::to_vec(&content).map_err(|e| Refusal(e.to_string()))?;
        // Sized as sealed: the content, the nonce and the tag.
        let size = plain.len() as u64 + 40;
        if let Err(quota::OverQuota(reason)) = self
            .quotas
            .check(store, sender, &devices, size)
            .map_err(db)?
        {
            return Err(Refusal(reason));
        }
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
            devices: &devices,
        };
        store.store_message(&message).map_err(db)?;
        self.quotas.stored(sender, &devices, size);
        for device in &devices {
            if let Some((n, _)) = self.pending.get_mut(device) {
                *n += 1;
            }
        }
        // What goes out now is built from what is in hand, not read back
        // and unsealed once per device.
        let from = mailbox::From {
            member: from_member,
            device: *sender,
        };
        let delivery = content.into_delivery(id.clone(), from, message.sent_at, message.expires_at);
        Ok(Accepted::Stored {
            devices,
            delivery: Box::new(delivery),
        })
    }

    fn on_ack(&mut self, db: &mut Store, device: &DeviceId, id: &str) {
        match db.acknowledge(device, id) {
            Ok(Some((sender, reference, _gone))) => {
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

    fn refuse(&mut self, sender: &DeviceId, reference: String, reason: &str) {
        self.audit.record(Event {
            device: Some(*sender),
            event: "message-refused",
            action: Some("send".into()),
            reason: Some(refusal_class(reason).to_owned()),
            ..Event::default()
        });
        let receipt = Receipt {
            v: mailbox::VERSION,
            reference,
            id: None,
            status: ReceiptStatus::Refused,
            device: None,
            reason: Some(reason.to_owned()),
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
                    self.publish_raw(topic::inbox(device), text.into_bytes());
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read queued receipts"),
        }
    }

    /// Publishes a device's pending deliveries, oldest first, as `which`
    /// says; with [`Resend::All`] its queued receipts too.
    fn deliver_pending(&mut self, device: &DeviceId, which: Resend) {
        let now = Instant::now();
        let pending = match self.store.with(|db| db.pending_ids(device)) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read pending deliveries");
                return;
            }
        };
        let mut sent_bytes = 0usize;
        for id in pending {
            let recent = self
                .sent
                .get(&(id.clone(), *device))
                .is_some_and(|at| now.duration_since(*at) < RESEND_AFTER);
            if matches!(which, Resend::Stale) && recent {
                continue;
            }
            // Oldest first and at least one per round, so order per sender
            // holds and a large message is never stuck.
            if sent_bytes >= ROUND_BYTES {
                break;
            }
            match self.send_one(device, &id, now) {
                Some(bytes) => sent_bytes += bytes,
                None => continue,
            }
        }
        if matches!(which, Resend::All) {
            let store = self.store.clone();
            store.with(|db| self.flush_receipts(db, device));
        }
    }

    /// Publishes one stored message to a device's inbox; returns its
    /// sealed size, or `None` if it is gone or cannot be opened.
    fn send_one(&mut self, device: &DeviceId, id: &str, now: Instant) -> Option<usize> {
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
        let size = message.sealed.len();
        let from = mailbox::From {
            member,
            device: message.sender,
        };
        let delivery = content.into_delivery(
            message.id.clone(),
            from,
            message.sent_at,
            message.expires_at,
        );
        self.publish_inbox(device, &Inbox::Delivery(delivery));
        self.sent.insert((message.id, *device), now);
        Some(size)
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
        let Ok(text) = serde_json::to_vec(envelope) else {
            return;
        };
        self.publish_raw(topic::inbox(device), text);
    }

    /// Publishes now, or once the running batch is committed.
    fn publish_raw(&mut self, topic: String, bytes: Vec<u8>) {
        if let Some(held) = &mut self.held {
            held.push((topic, bytes));
        } else if let Err(e) = self.link.publish(topic, bytes) {
            tracing::warn!(error = %e, "cannot publish to an inbox");
        }
    }
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

/// A refusal's reason for the audit, from a fixed list: the words the
/// sender is told may echo what it typed (a recipient's name, an address),
/// and the audit keeps none of that.
fn refusal_class(reason: &str) -> &'static str {
    const CLASSES: &[(&str, &str)] = &[
        ("is revoked", "the sending device is revoked"),
        (
            "max_sender_bytes_per_day",
            "quota mailbox.max_sender_bytes_per_day",
        ),
        (
            "max_pending_bytes_per_device",
            "quota mailbox.max_pending_bytes_per_device",
        ),
        ("max_total_bytes", "quota mailbox.max_total_bytes"),
        ("min_free_bytes", "quota mailbox.min_free_bytes"),
        ("may not message", "contact not allowed"),
        ("no member", "unknown recipient"),
        ("no device to deliver", "recipient has no device"),
        ("no device", "unknown recipient"),
        ("is full", "recipient mailbox full"),
        ("try again", "store failed"),
        ("base64", "data not base64"),
        ("content_type", "bad content_type"),
        ("bytes", "too large"),
        ("JSON", "not JSON"),
        ("version", "unsupported version"),
    ];
    CLASSES
        .iter()
        .find(|(needle, _)| reason.contains(needle))
        .map_or("invalid message", |(_, class)| class)
}

/// What a refused send is told when the store failed.
const TRY_AGAIN: &str = "the hub could not store the message; try again";

/// Whether a send's content passes the mailbox's checks (kind, body or
/// data, content type, base64, size), and why not. Pure: the messaging
/// fuzz target (fuzz/fuzz_targets/envelope.rs) drives the same checks an
/// outbox payload meets before anything is stored.
pub fn check_send(limits: &MailboxSection, send: &Send) -> Result<(), String> {
    check_content(limits, send)
        .map(|_| ())
        .map_err(|Refusal(reason)| reason)
}

/// The checks of [`check_send`], keeping the content to seal.
fn check_content(limits: &MailboxSection, send: &Send) -> Result<Content, Refusal> {
    let refuse = |reason: String| Err(Refusal(reason));
    match send.kind {
        Kind::Text => {
            let Some(body) = send.body.as_ref().filter(|b| !b.is_empty()) else {
                return refuse("a text message needs a body".into());
            };
            if send.data.is_some() {
                return refuse("a text message has a body, not data".into());
            }
            if body.len() > limits.max_text_bytes {
                return refuse(format!(
                    "text is {} bytes; at most {} are allowed",
                    body.len(),
                    limits.max_text_bytes
                ));
            }
            Ok(Content {
                kind: Kind::Text,
                body: Some(body.clone()),
                data: None,
                content_type: None,
            })
        }
        Kind::Image | Kind::Audio => {
            let (limit, prefix) = if send.kind == Kind::Image {
                (limits.max_image_bytes, "image/")
            } else {
                (limits.max_audio_bytes, "audio/")
            };
            let Some(data) = &send.data else {
                return refuse(format!("an {} message needs data", send.kind.as_str()));
            };
            let content_type = match &send.content_type {
                Some(t) if t.starts_with(prefix) && t.len() <= 100 => t.clone(),
                _ => return refuse(format!("content_type must be {prefix}...")),
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| Refusal("data is not valid base64".into()))?;
            if decoded.is_empty() || decoded.len() > limit {
                return refuse(format!(
                    "{} is {} bytes; 1 to {limit} are allowed",
                    send.kind.as_str(),
                    decoded.len()
                ));
            }
            Ok(Content {
                kind: send.kind,
                body: None,
                data: Some(data.clone()),
                content_type: Some(content_type),
            })
        }
    }
}

/// The device an outbox topic belongs to.
pub fn outbox_sender(topic: &str) -> Option<DeviceId> {
    topic
        .strip_prefix("hearth/v1/dev/")?
        .strip_suffix("/outbox")?
        .parse()
        .ok()
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

/// Which pending deliveries to publish.
#[derive(Clone, Copy)]
enum Resend {
    /// Every one: the device just subscribed to its inbox.
    All,
    /// Those not published in the last [`RESEND_AFTER`].
    Stale,
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

struct Refusal(String);

#[cfg(test)]
mod tests {
    use super::*;

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
        let old = seal::seal_without_data_key(&key, "m1", "Ada", b"old words");
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

    #[test]
    fn inbox_watch_notices_filters_that_cover_the_inbox() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let watch = InboxWatch(tx);
        let d: DeviceId = "0jqs8adyj6jyjnsqmar523qbbd".parse().unwrap();
        watch.subscribed(&d, ["hearth/v1/dev/0jqs8adyj6jyjnsqmar523qbbd/cmd/#"]);
        assert!(rx.try_recv().is_err());
        for f in [
            "hearth/v1/dev/0jqs8adyj6jyjnsqmar523qbbd/inbox",
            "hearth/v1/dev/0jqs8adyj6jyjnsqmar523qbbd/#",
            "$share/g/hearth/v1/dev/0jqs8adyj6jyjnsqmar523qbbd/+",
        ] {
            watch.subscribed(&d, [f]);
            assert_eq!(rx.try_recv().unwrap(), d, "{f}");
        }
    }
}
