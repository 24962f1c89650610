//! The web app's link to the broker: browsers publish their outbox
//! envelopes through it (so the mailbox treats a browser as any device),
//! their inboxes come back through it to their open pages, and while a
//! parent's page is open it follows the household's state, telemetry and
//! descriptions to show them live. Latest values are kept in memory only,
//! bounded, and forgotten with their device. What waits for pages is
//! bounded in bytes: a page that does not keep up misses envelopes, which
//! the mailbox resends until they are acknowledged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hearth_protocol::{topic, DeviceId};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::Notification;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::mailbox::InboxWatch;

/// What a parent's page follows.
const HOUSEHOLD_FILTERS: [&str; 3] = [
    "hearth/v1/dev/+/state",
    "hearth/v1/dev/+/tele/#",
    "hearth/v1/dev/+/meta",
];
/// Latest values kept per device (topics beyond are not shown).
const TOPICS_PER_DEVICE: usize = 16;
/// Bytes of one latest value kept (a longer one is shown cut).
const VALUE_BYTES: usize = 512;
/// Devices whose latest values are kept.
const DEVICES_KEPT: usize = 1024;
/// Inbox envelopes queued for one page before it misses some (the
/// mailbox resends what a page has not acknowledged, every few seconds).
const PAGE_QUEUE: usize = 8;
/// Inbox bytes queued for all pages together (a photo is up to
/// `limits.max_payload`); past it envelopes are dropped, to be resent.
pub const QUEUED_BYTES: usize = 32 * 1024 * 1024;

/// The latest value of each topic a device published, by the topic's part
/// after the device id (`state`, `tele/temp`, `meta`).
pub type Latest = BTreeMap<String, String>;

/// The link and what it has seen.
pub struct Live {
    link: Mutex<LinkTx>,
    inbox_watch: Option<InboxWatch>,
    inner: Mutex<Inner>,
    /// Inbox bytes queued for pages now ([`QUEUED_BYTES`] at most).
    queued: Arc<AtomicUsize>,
    next_page: AtomicU64,
}

/// An inbox envelope on its way to a page; its bytes count against
/// [`QUEUED_BYTES`] until it is dropped (written to the page, or not).
#[derive(Debug)]
pub struct Envelope {
    /// The JSON the mailbox published.
    pub text: String,
    queued: Arc<AtomicUsize>,
}

impl Drop for Envelope {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.text.len(), Ordering::Relaxed);
    }
}

/// One open page's inbox; closing it (drop) unhooks the page.
#[derive(Debug)]
pub struct PageInbox {
    /// What arrives for the page.
    pub rx: mpsc::Receiver<Envelope>,
    live: Arc<Live>,
    browser: DeviceId,
    id: u64,
}

impl Drop for PageInbox {
    fn drop(&mut self) {
        let mut inner = crate::sync::lock(&self.live.inner);
        if let Some(pages) = inner.pages.get_mut(&self.browser) {
            pages.retain(|(id, _)| *id != self.id);
            if pages.is_empty() {
                inner.pages.remove(&self.browser);
            }
        }
    }
}

#[derive(Default)]
struct Inner {
    /// Each browser's open pages.
    pages: HashMap<DeviceId, Vec<(u64, mpsc::Sender<Envelope>)>>,
    /// Browsers whose inbox the link subscribed to.
    inboxes: HashSet<DeviceId>,
    /// Parents' pages open now; household topics are followed while > 0.
    parents: usize,
    latest: HashMap<DeviceId, Latest>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

/// Keeps a parent's page counted while it is open.
#[derive(Debug)]
pub struct ParentPage(Arc<Live>);

impl Drop for ParentPage {
    fn drop(&mut self) {
        let mut inner = crate::sync::lock(&self.0.inner);
        inner.parents = inner.parents.saturating_sub(1);
        if inner.parents == 0 {
            let mut link = crate::sync::lock(&self.0.link);
            for filter in HOUSEHOLD_FILTERS {
                let _ = link.unsubscribe(filter);
            }
            inner.latest.clear();
        }
    }
}

impl Live {
    /// Wraps the web app's broker link.
    pub fn new(link: LinkTx, inbox_watch: Option<InboxWatch>) -> Arc<Live> {
        Arc::new(Live {
            link: Mutex::new(link),
            inbox_watch,
            inner: Mutex::default(),
            queued: Arc::default(),
            next_page: AtomicU64::new(0),
        })
    }

    /// Publishes in the router as the web app: a browser's outbox
    /// envelope (the mailbox takes it as from any device), or a command
    /// the caller checked against the policy.
    pub fn publish(&self, topic: String, payload: Vec<u8>) -> Result<(), String> {
        crate::sync::lock(&self.link)
            .publish(topic, payload)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// A page of `browser` opens: its inbox is followed and the mailbox
    /// told to deliver; the page gets its inbox envelopes (JSON).
    pub fn open_page(self: &Arc<Self>, browser: &DeviceId) -> PageInbox {
        let (tx, rx) = mpsc::channel(PAGE_QUEUE);
        let id = self.next_page.fetch_add(1, Ordering::Relaxed);
        let mut inner = crate::sync::lock(&self.inner);
        inner.pages.entry(*browser).or_default().push((id, tx));
        let inbox = topic::inbox(browser);
        if inner.inboxes.insert(*browser) {
            let _ = crate::sync::lock(&self.link).subscribe(inbox.clone());
        }
        drop(inner);
        if let Some(watch) = &self.inbox_watch {
            watch.subscribed(browser, [inbox.as_str()]);
        }
        PageInbox {
            rx,
            live: Arc::clone(self),
            browser: *browser,
            id,
        }
    }

    /// A parent's page opens: household topics are followed until the
    /// last one closes.
    pub fn open_parent_page(self: &Arc<Self>) -> ParentPage {
        let mut inner = crate::sync::lock(&self.inner);
        inner.parents += 1;
        if inner.parents == 1 {
            let mut link = crate::sync::lock(&self.link);
            for filter in HOUSEHOLD_FILTERS {
                let _ = link.subscribe(filter);
            }
        }
        ParentPage(Arc::clone(self))
    }

    /// A browser left for good (revoked, removed): its inbox is no longer
    /// followed.
    pub fn forget_browser(&self, browser: &DeviceId) {
        let mut inner = crate::sync::lock(&self.inner);
        inner.pages.remove(browser);
        if inner.inboxes.remove(browser) {
            let _ = crate::sync::lock(&self.link).unsubscribe(topic::inbox(browser));
        }
    }

    /// The latest values each of `devices` published, while a parent's
    /// page is open; the values of any other device (revoked, removed)
    /// are forgotten.
    pub fn latest(&self, devices: &HashSet<DeviceId>) -> HashMap<DeviceId, Latest> {
        let mut inner = crate::sync::lock(&self.inner);
        inner.latest.retain(|d, _| devices.contains(d));
        inner.latest.clone()
    }

    /// Reads the link until `stop`.
    pub async fn run(self: Arc<Self>, mut rx: LinkRx, stop: CancellationToken) {
        loop {
            let note = tokio::select! {
                _ = stop.cancelled() => return,
                note = rx.next() => note,
            };
            match note {
                Ok(Some(Notification::Forward(forward))) => self.on_publish(forward.publish),
                Ok(Some(Notification::Unschedule)) => {
                    if rx.wake().await.is_err() {
                        tracing::error!("the web app lost its broker link");
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "the web app lost its broker link");
                    return;
                }
            }
        }
    }

    fn on_publish(&self, publish: rumqttd::protocol::Publish) {
        let Ok(name) = std::str::from_utf8(&publish.topic) else {
            return;
        };
        let Some((device, rest)) = split_device_topic(name) else {
            return;
        };
        let mut inner = crate::sync::lock(&self.inner);
        if rest == "inbox" {
            let (Some(pages), Ok(text)) = (
                inner.pages.get(&device),
                std::str::from_utf8(&publish.payload),
            ) else {
                return;
            };
            for (_, page) in pages {
                // Past the budget, or a page that does not keep up: this
                // page misses it now and the mailbox sends it again.
                if self.queued.fetch_add(text.len(), Ordering::Relaxed) + text.len() > QUEUED_BYTES
                {
                    self.queued.fetch_sub(text.len(), Ordering::Relaxed);
                    continue;
                }
                let _ = page.try_send(Envelope {
                    text: text.to_owned(),
                    queued: Arc::clone(&self.queued),
                });
            }
            return;
        }
        if inner.parents == 0 {
            return;
        }
        if !inner.latest.contains_key(&device) && inner.latest.len() >= DEVICES_KEPT {
            return;
        }
        let values = inner.latest.entry(device).or_default();
        if !values.contains_key(rest) && values.len() >= TOPICS_PER_DEVICE {
            return;
        }
        values.insert(rest.to_owned(), shown(&publish.payload));
    }
}

/// `hearth/v1/dev/<id>/<rest>` → (id, rest).
fn split_device_topic(name: &str) -> Option<(DeviceId, &str)> {
    let tail = name.strip_prefix("hearth/v1/dev/")?;
    let (id, rest) = tail.split_once('/')?;
    Some((id.parse().ok()?, rest))
}

/// A value as a page shows it: UTF-8 text cut to [`VALUE_BYTES`] (at a
/// character boundary), or a note of its size.
fn shown(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(text) if text.len() <= VALUE_BYTES => text.to_owned(),
        Ok(text) => {
            let mut end = VALUE_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", &text[..end])
        }
        Err(_) => format!("({} bytes)", payload.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_releases_its_bytes_when_dropped() {
        let queued = Arc::new(AtomicUsize::new(0));
        queued.fetch_add(5, Ordering::Relaxed);
        let envelope = Envelope {
            text: "hello".into(),
            queued: Arc::clone(&queued),
        };
        assert_eq!(queued.load(Ordering::Relaxed), 5);
        drop(envelope);
        assert_eq!(queued.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn device_topics_split_and_others_do_not() {
        let id = "0jqs8adyj6jyjnsqmar523qbbd";
        let name = format!("hearth/v1/dev/{id}/tele/temp");
        let (d, rest) = split_device_topic(&name).unwrap();
        assert_eq!((d.as_str(), rest), (id, "tele/temp"));
        assert!(split_device_topic("hearth/v1/hub/info").is_none());
        assert!(split_device_topic("hearth/v1/dev/not-an-id/state").is_none());
    }

    #[test]
    fn long_values_are_cut_at_a_character() {
        let long = "é".repeat(400);
        let cut = shown(long.as_bytes());
        assert!(cut.ends_with('…'));
        assert!(cut.len() <= VALUE_BYTES + '…'.len_utf8());
        assert_eq!(shown(&[0xff, 0xfe]), "(2 bytes)");
        assert_eq!(shown(b"21.5"), "21.5");
    }
}
