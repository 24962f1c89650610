//! Family messaging: takes sends from every device's outbox on a trusted
//! in-process broker link, checks contact rules and limits, stores the
//! content sealed under the mailbox key (committed with full sync before
//! the "stored" receipt), delivers to each recipient device's inbox — at
//! once and again when it subscribes, within one byte bound for the whole
//! hub — and deletes a message once every
//! recipient device has acknowledged it, or when it expires.
//!
//! This file is the face the daemon wires up; the work is in service.rs
//! (the link, batches, delivery, receipts, expiry), rules.rs (pure checks:
//! content, recipient, contacts, refusal classes), quota.rs (byte quotas)
//! and seal.rs (the mailbox key and content sealed at rest).

mod quota;
mod rules;
pub mod seal;
mod service;

use hearth_protocol::{filter, topic, DeviceId};
use tokio::sync::mpsc;

pub use rules::{check_send, outbox_sender};
pub use service::Mailbox;

/// The mailbox key file in the data dir.
pub const KEY_FILE: &str = seal::KEY_FILE;
/// The filter the mailbox's link subscribes to (the broker makes the link).
pub use crate::broker::OUTBOX_FILTER;

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

#[cfg(test)]
mod tests {
    use super::*;

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
