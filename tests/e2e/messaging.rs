//! Family messaging end to end: real devices over mutual TLS send through
//! their outbox and read their inbox; the mailbox stores sealed, delivers
//! to every device of a member, deletes on acknowledgement or expiry, and
//! survives SIGKILL without losing what it acknowledged.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use hearth_protocol::mailbox::{Delivery, Inbox, Kind, Receipt, ReceiptStatus};
use rumqttc::QoS;
use serde_json::json;
use tokio::sync::mpsc;

use crate::support::*;

/// A device's mailbox connection: its inbox, decoded, in a channel.
pub(crate) struct Mail {
    id: String,
    pub(crate) client: rumqttc::AsyncClient,
    inbox: mpsc::UnboundedReceiver<Inbox>,
    held: VecDeque<Inbox>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Mail {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Mail {
    pub(crate) async fn connect(hub: &TestHub, device: &Device) -> Mail {
        let mut options = mqtt_v4(hub, device, &device.id);
        options.set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut events) = rumqttc::AsyncClient::new(options, 256);
        v4_connected(&mut events).await.expect("connects");
        client
            .subscribe(
                format!("hearth/v1/dev/{}/inbox", device.id),
                QoS::AtLeastOnce,
            )
            .await
            .unwrap();
        v4_wait_suback(&mut events).await;
        let (tx, inbox) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            while let Ok(event) = events.poll().await {
                if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event {
                    let envelope: Inbox = serde_json::from_slice(&p.payload)
                        .unwrap_or_else(|e| panic!("bad inbox envelope {e}: {:?}", p.payload));
                    if tx.send(envelope).is_err() {
                        return;
                    }
                }
            }
        });
        Mail {
            id: device.id.clone(),
            client,
            inbox,
            held: VecDeque::new(),
            driver,
        }
    }

    pub(crate) async fn send(&self, envelope: serde_json::Value) {
        self.send_raw(envelope.to_string().into_bytes()).await;
    }

    pub(crate) async fn send_raw(&self, payload: Vec<u8>) {
        self.client
            .publish(
                format!("hearth/v1/dev/{}/outbox", self.id),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .unwrap();
    }

    pub(crate) async fn ack(&self, id: &str) {
        self.send(json!({"v": 1, "type": "ack", "id": id})).await;
    }

    /// The next envelope matching `want`; others are kept for later.
    async fn next_where(
        &mut self,
        limit: Duration,
        want: impl Fn(&Inbox) -> bool,
    ) -> Option<Inbox> {
        if let Some(pos) = self.held.iter().position(&want) {
            return self.held.remove(pos);
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.inbox.recv()).await {
                Ok(Some(envelope)) if want(&envelope) => return Some(envelope),
                Ok(Some(envelope)) => self.held.push_back(envelope),
                _ => return None,
            }
        }
    }

    pub(crate) async fn receipt(&mut self, reference: &str, status: ReceiptStatus) -> Receipt {
        let found = self
            .next_where(Duration::from_secs(10), |e| {
                matches!(e, Inbox::Receipt(r) if r.reference == reference && r.status == status)
            })
            .await;
        match found {
            Some(Inbox::Receipt(r)) => r,
            _ => panic!(
                "no {status:?} receipt for {reference:?}; held {:?}",
                self.held
            ),
        }
    }

    pub(crate) async fn delivery(&mut self, limit: Duration) -> Option<Delivery> {
        match self
            .next_where(limit, |e| matches!(e, Inbox::Delivery(_)))
            .await
        {
            Some(Inbox::Delivery(d)) => Some(d),
            _ => None,
        }
    }
}

pub(crate) fn text(reference: &str, to: &str, body: &str) -> serde_json::Value {
    json!({"v": 1, "type": "send", "ref": reference, "to": to, "kind": "text", "body": body})
}

pub(crate) fn db_count(data: &Path, table: &str) -> i64 {
    let conn = rusqlite::Connection::open(data.join("hearth.db")).unwrap();
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
        row.get(0)
    })
    .unwrap()
}

/// Files of the data dir that contain `needle`.
pub(crate) fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_file() {
            if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(path.display().to_string());
                }
            }
        }
    }
    hits
}

#[tokio::test]
async fn a_parent_messages_a_child_with_two_devices_one_offline_and_nothing_remains() {
    let hub = TestHub::start();
    let mum = hub.device("Mum", "parent");
    let tablet = hub.device("Ada", "child");
    let toy = hub.device("Ada", "child");
    let mut mum_mail = Mail::connect(&hub, &mum).await;
    let mut tablet_mail = Mail::connect(&hub, &tablet).await;

    let marker = format!("MARKER-{}", hex::encode(hearth_daemon::random_bytes::<8>()));
    let image: Vec<u8> = (0..120_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let audio: Vec<u8> = (0..60_000u32).map(|i| (i * 13 % 241) as u8).collect();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    mum_mail
        .send(text("t1", "Ada", &format!("hello Ada {marker}")))
        .await;
    mum_mail
        .send(
            json!({"v": 1, "type": "send", "ref": "i1", "to": "Ada", "kind": "image",
                     "data": b64(&image), "content_type": "image/png"}),
        )
        .await;
    mum_mail
        .send(
            json!({"v": 1, "type": "send", "ref": "a1", "to": "Ada", "kind": "audio",
                     "data": b64(&audio), "content_type": "audio/ogg"}),
        )
        .await;
    let mut ids = Vec::new();
    for reference in ["t1", "i1", "a1"] {
        let stored = mum_mail.receipt(reference, ReceiptStatus::Stored).await;
        ids.push(stored.id.expect("stored receipts carry the id"));
    }
    // The online device receives them at once, in order, from Mum.
    for (n, id) in ids.iter().enumerate() {
        let d = tablet_mail
            .delivery(Duration::from_secs(10))
            .await
            .expect("delivered to the online device");
        assert_eq!(&d.id, id, "in order");
        assert_eq!(d.from.member.as_str(), "Mum");
        assert_eq!(d.from.device.to_string(), mum.id);
        assert!(d.expires_at > d.sent_at);
        match n {
            0 => assert_eq!(d.body.as_deref(), Some(&*format!("hello Ada {marker}"))),
            1 => {
                assert_eq!(d.kind, Kind::Image);
                assert_eq!(d.data.as_deref(), Some(&*b64(&image)));
                assert_eq!(d.content_type.as_deref(), Some("image/png"));
            }
            _ => assert_eq!(d.data.as_deref(), Some(&*b64(&audio))),
        }
    }
    for id in &ids {
        tablet_mail.ack(id).await;
    }
    for reference in ["t1", "i1", "a1"] {
        let r = mum_mail.receipt(reference, ReceiptStatus::Delivered).await;
        assert_eq!(r.device.map(|d| d.to_string()), Some(tablet.id.clone()));
    }
    // Still pending for the offline toy; sealed, nowhere in plaintext.
    let status = hub.hearth_ok(&["mailbox"]);
    assert!(
        status.contains(&format!("{}\t3 waiting", toy.id)),
        "{status}"
    );
    assert!(!status.contains(&marker));
    assert_eq!(db_count(&hub.data, "messages"), 3);
    for needle in [
        marker.as_bytes(),
        &image[1000..1064],
        &b64(&audio).as_bytes()[..64],
    ] {
        let hits = files_containing(&hub.data, needle);
        assert!(hits.is_empty(), "plaintext found in {hits:?}");
    }
    // The toy connects and gets them all, in order.
    let mut toy_mail = Mail::connect(&hub, &toy).await;
    for id in &ids {
        let d = toy_mail
            .delivery(Duration::from_secs(10))
            .await
            .expect("delivered on connect");
        assert_eq!(&d.id, id);
        toy_mail.ack(id).await;
    }
    for reference in ["t1", "i1", "a1"] {
        let r = mum_mail.receipt(reference, ReceiptStatus::Delivered).await;
        assert_eq!(r.device.map(|d| d.to_string()), Some(toy.id.clone()));
    }
    // Acknowledged by every device: nothing of the messages remains.
    assert_eq!(db_count(&hub.data, "messages"), 0);
    assert_eq!(db_count(&hub.data, "deliveries"), 0);
    assert!(hub.hearth_ok(&["mailbox"]).contains("empty"));
}

#[tokio::test]
async fn bad_sends_get_refusal_receipts_nothing_is_stored_and_the_sender_stays_connected() {
    let hub = TestHub::start();
    let mum = hub.device("Mum", "parent");
    let ada = hub.device("Ada", "child");
    let bob = hub.device("Bob", "child");
    let mut ada_mail = Mail::connect(&hub, &ada).await;
    let mut bob_mail = Mail::connect(&hub, &bob).await;
    let _mum_mail = Mail::connect(&hub, &mum).await;

    // A child may not message another child by default.
    ada_mail.send(text("c1", "Bob", "hi")).await;
    let r = ada_mail.receipt("c1", ReceiptStatus::Refused).await;
    assert!(r.reason.unwrap().contains("may not message"));
    let big = "x".repeat(9 * 1024);
    let cases = [
        (
            json!({"v": 1, "type": "send", "ref": "r-big", "to": "Mum", "kind": "text", "body": big}),
            "r-big",
            "bytes",
        ),
        (
            json!({"v": 1, "type": "send", "ref": "r-b64", "to": "Mum", "kind": "image", "data": "%%%", "content_type": "image/png"}),
            "r-b64",
            "base64",
        ),
        (
            json!({"v": 1, "type": "send", "ref": "r-kind", "to": "Mum", "kind": "video", "body": "x"}),
            "r-kind",
            "video",
        ),
        (
            json!({"v": 1, "type": "send", "ref": "r-type", "to": "Mum", "kind": "image", "data": "AAAA", "content_type": "text/html"}),
            "r-type",
            "content_type",
        ),
        (
            json!({"v": 1, "type": "send", "ref": "r-who", "to": "Nobody", "kind": "text", "body": "x"}),
            "r-who",
            "no member",
        ),
        (
            json!({"v": 9, "type": "send", "ref": "r-ver", "to": "Mum", "kind": "text", "body": "x"}),
            "r-ver",
            "version",
        ),
    ];
    for (envelope, reference, says) in cases {
        ada_mail.send(envelope).await;
        let r = ada_mail.receipt(reference, ReceiptStatus::Refused).await;
        let reason = r.reason.unwrap_or_default();
        assert!(reason.contains(says), "{reference}: {reason}");
    }
    ada_mail.send_raw(b"{not json".to_vec()).await;
    let r = ada_mail.receipt("", ReceiptStatus::Refused).await;
    assert!(r.reason.unwrap().contains("JSON"));
    assert_eq!(
        db_count(&hub.data, "messages"),
        0,
        "nothing refused was stored"
    );
    // Every refusal is audited.
    assert!(wait_audit(&hub, |e| e.event == "message-refused"
        && e.reason.as_deref().is_some_and(|r| r.contains("base64")))
    .is_some());

    // Still connected: a good message goes, and `from` in the payload is ignored.
    ada_mail
        .send(
            json!({"v": 1, "type": "send", "ref": "ok", "to": "Mum", "kind": "text",
                     "body": "hi Mum", "from": {"member": "Mum", "device": mum.id}}),
        )
        .await;
    ada_mail.receipt("ok", ReceiptStatus::Stored).await;
    // An administrator lets the children talk.
    hub.hearth_ok(&["contacts", "allow", "Ada", "Bob"]);
    assert!(hub
        .hearth_ok(&["contacts", "list"])
        .contains("Ada\tallow\tBob"));
    ada_mail.send(text("c2", "Bob", "hi Bob")).await;
    ada_mail.receipt("c2", ReceiptStatus::Stored).await;
    let d = bob_mail
        .delivery(Duration::from_secs(10))
        .await
        .expect("Bob gets it");
    assert_eq!(d.from.member.as_str(), "Ada");
    assert_eq!(d.from.device.to_string(), ada.id);
    hub.hearth_ok(&["contacts", "deny", "Ada", "Bob"]);
    bob_mail.send(text("c3", "Ada", "back")).await;
    bob_mail.receipt("c3", ReceiptStatus::Refused).await;
}

#[tokio::test]
async fn a_refusal_is_audited_for_the_rule_that_refused_whatever_the_recipient_is_called() {
    // Nicknames may hold spaces: a child called "is revoked" is a child,
    // and a parent reading the audit must not be told a device was revoked.
    let hub = TestHub::start();
    let _mum = hub.device("Mum", "parent");
    let ada = hub.device("Ada", "child");
    let _odd = hub.device("is revoked", "child");
    let mut ada_mail = Mail::connect(&hub, &ada).await;

    ada_mail.send(text("c1", "is revoked", "hi")).await;
    let r = ada_mail.receipt("c1", ReceiptStatus::Refused).await;
    assert!(r.reason.unwrap().contains("may not message"));
    ada_mail
        .send(text("c2", "Nobody max_total_bytes", "hi"))
        .await;
    let r = ada_mail.receipt("c2", ReceiptStatus::Refused).await;
    assert!(r.reason.unwrap().contains("no member"));
    // The envelope parser quotes an unknown kind back in its reason.
    ada_mail
        .send(json!({"v": 1, "type": "send", "ref": "c3", "to": "Mum", "kind": "is revoked"}))
        .await;
    let r = ada_mail.receipt("c3", ReceiptStatus::Refused).await;
    assert!(r.reason.unwrap().contains("is revoked"));

    let refused = |class: &'static str| {
        let ada = ada.id.clone();
        move |e: &hearth_protocol::admin::AuditEntry| {
            e.event == "message-refused"
                && e.device.map(|d| d.to_string()) == Some(ada.clone())
                && e.reason.as_deref() == Some(class)
        }
    };
    for class in [
        "contact not allowed",
        "unknown recipient",
        "invalid message",
    ] {
        assert!(
            wait_audit(&hub, refused(class)).is_some(),
            "no {class:?} refusal: {:#?}",
            audit_entries(&hub)
        );
    }
    let classes: Vec<_> = audit_entries(&hub)
        .into_iter()
        .filter(|e| e.event == "message-refused")
        .map(|e| e.reason)
        .collect();
    assert_eq!(classes.len(), 3, "{classes:?}");
}

#[tokio::test]
async fn a_retried_send_with_the_same_ref_is_stored_once() {
    let hub = TestHub::start();
    let mum = hub.device("Mum", "parent");
    let ada = hub.device("Ada", "child");
    let mut mum_mail = Mail::connect(&hub, &mum).await;
    let mut ada_mail = Mail::connect(&hub, &ada).await;
    mum_mail.send(text("same", "Ada", "once")).await;
    mum_mail.send(text("same", "Ada", "once")).await;
    let first = mum_mail.receipt("same", ReceiptStatus::Stored).await;
    let second = mum_mail.receipt("same", ReceiptStatus::Stored).await;
    assert_eq!(first.id, second.id);
    let d = ada_mail.delivery(Duration::from_secs(10)).await.unwrap();
    ada_mail.ack(&d.id).await;
    mum_mail.receipt("same", ReceiptStatus::Delivered).await;
    // No second message arrives.
    assert!(ada_mail.delivery(Duration::from_secs(1)).await.is_none());
    assert_eq!(db_count(&hub.data, "messages"), 0);
    // The pending cap refuses clearly.
    let capped = TestHub::start_with("[mailbox]\nmax_pending_per_device = 2\n", &[]);
    let mum = capped.device("Mum", "parent");
    capped.device("Ada", "child");
    let mut mum_mail = Mail::connect(&capped, &mum).await;
    for n in 0..3 {
        mum_mail.send(text(&format!("p{n}"), "Ada", "x")).await;
    }
    mum_mail.receipt("p1", ReceiptStatus::Stored).await;
    let r = mum_mail.receipt("p2", ReceiptStatus::Refused).await;
    assert!(r.reason.unwrap().contains("full"));
}

#[tokio::test]
async fn an_undelivered_message_expires_with_a_receipt_and_is_deleted() {
    let hub = TestHub::start_with("[mailbox]\nexpiry_secs = 5\n", &[]);
    let mum = hub.device("Mum", "parent");
    hub.device("Ada", "child");
    let mut mum_mail = Mail::connect(&hub, &mum).await;
    mum_mail.send(text("e1", "Ada", "too late")).await;
    let stored = mum_mail.receipt("e1", ReceiptStatus::Stored).await;
    assert_eq!(db_count(&hub.data, "messages"), 1);
    let expired = mum_mail
        .next_where(
            Duration::from_secs(15),
            |e| matches!(e, Inbox::Receipt(r) if r.status == ReceiptStatus::Expired),
        )
        .await
        .expect("an expired receipt");
    let Inbox::Receipt(expired) = expired else {
        unreachable!()
    };
    assert_eq!(expired.reference, "e1");
    assert_eq!(expired.id, stored.id);
    assert_eq!(db_count(&hub.data, "messages"), 0);
    assert_eq!(db_count(&hub.data, "deliveries"), 0);
}

#[tokio::test]
async fn sigkill_after_stored_receipts_loses_nothing_over_twenty_restarts() {
    let mut hub = TestHub::start();
    let mum = hub.device("Mum", "parent");
    let tablet = hub.device("Ada", "child");
    let bystander = hub.device("Bob", "child");
    // ref -> id of every message the hub said it stored.
    let mut stored: HashMap<String, String> = HashMap::new();
    let mut next = 0u32;
    for round in 0..20 {
        if round > 0 {
            hub.launch();
        }
        let mut mum_mail = Mail::connect(&hub, &mum).await;
        // A steady load: a send every few milliseconds; kill the hub
        // right after the third "stored" receipt of this round.
        let mut this_round = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while this_round < 3 {
            assert!(Instant::now() < deadline, "round {round}: no receipts");
            let reference = format!("m{next}");
            next += 1;
            mum_mail.send(text(&reference, "Ada", &reference)).await;
            if let Some(Inbox::Receipt(r)) = mum_mail
                .next_where(
                    Duration::from_millis(5),
                    |e| matches!(e, Inbox::Receipt(r) if r.status == ReceiptStatus::Stored),
                )
                .await
            {
                stored.insert(r.reference.clone(), r.id.clone().unwrap());
                this_round += 1;
            }
        }
        hub.kill();
        drop(mum_mail);
    }
    hub.launch();
    let integrity: String = rusqlite::Connection::open(hub.data.join("hearth.db"))
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let mut bob_mail = Mail::connect(&hub, &bystander).await;
    let mut ada_mail = Mail::connect(&hub, &tablet).await;
    let mut got: HashSet<String> = HashSet::new();
    while let Some(d) = ada_mail.delivery(Duration::from_secs(5)).await {
        let body = d.body.clone().expect("a text body");
        if let Some(id) = stored.get(&body) {
            assert_eq!(&d.id, id, "the id the stored receipt named");
        }
        assert_eq!(d.from.device.to_string(), mum.id);
        ada_mail.ack(&d.id).await;
        got.insert(d.body.unwrap());
        if stored.keys().all(|r| got.contains(r)) {
            break;
        }
    }
    let lost: Vec<&String> = stored.keys().filter(|r| !got.contains(*r)).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(
        bob_mail
            .delivery(Duration::from_millis(500))
            .await
            .is_none(),
        "nothing goes to another member's device"
    );
}

#[test]
fn the_reference_device_sends_reads_saves_attachments_and_acknowledges() {
    let hub = TestHub::start();
    hub.hearth_ok(&["member", "add", "Mum", "--role", "parent"]);
    hub.hearth_ok(&["member", "add", "Ada", "--role", "child"]);
    let pair = |member: &str| {
        let (_, _, uri) = open_pairing(&hub, member, "reference", "10m");
        let dir = hub.dir.path().join(member);
        let out = hearth_device(&dir, &["pair", &uri]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    };
    let (mum, ada) = (pair("Mum"), pair("Ada"));
    let picture = hub.dir.path().join("drawing.png");
    std::fs::write(&picture, b"\x89PNG not really, but bytes").unwrap();
    let said = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(said(hearth_device(
        &mum,
        &["send", "--to", "Ada", "--text", "dinner!"]
    ))
    .starts_with("stored"));
    assert!(said(hearth_device(
        &mum,
        &["send", "--to", "Ada", "--image", picture.to_str().unwrap()]
    ))
    .starts_with("stored"));
    let refused = hearth_device(&ada, &["send", "--to", "Nobody", "--text", "x"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no member or device"));
    let inbox = said(hearth_device(&ada, &["inbox", "--wait", "2"]));
    assert!(
        inbox.contains("from Mum") && inbox.contains("dinner!"),
        "{inbox}"
    );
    let saved = inbox
        .lines()
        .find_map(|l| l.split("saved ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no attachment saved: {inbox}"));
    assert_eq!(
        std::fs::read(saved).unwrap(),
        std::fs::read(&picture).unwrap()
    );
    // Acknowledged: the mailbox is empty and Mum hears of both deliveries.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hub.hearth_ok(&["mailbox"]).contains("empty") {
        assert!(Instant::now() < deadline, "still pending");
        std::thread::sleep(Duration::from_millis(100));
    }
    let receipts = said(hearth_device(&mum, &["inbox", "--wait", "2"]));
    assert_eq!(receipts.matches(" delivered to ").count(), 2, "{receipts}");
}

#[tokio::test]
async fn a_burst_of_sends_from_several_devices_is_stored_in_full() {
    // More sends at once than the broker hands the mailbox in one batch
    // (rumqttd pauses a link after 200 notifications until it is woken).
    const PER_DEVICE: usize = 150;
    let hub = TestHub::start();
    let senders = [
        hub.device("Mum", "parent"),
        hub.device("Dad", "parent"),
        hub.device("Mum", "parent"),
    ];
    hub.device("Ada", "child");
    let mut mails = Vec::new();
    for device in &senders {
        mails.push(Mail::connect(&hub, device).await);
    }
    for n in 0..PER_DEVICE {
        for (d, mail) in mails.iter().enumerate() {
            mail.send(text(&format!("b{d}-{n}"), "Ada", "burst")).await;
        }
    }
    for (d, mail) in mails.iter_mut().enumerate() {
        let mut stored = HashSet::new();
        while stored.len() < PER_DEVICE {
            let receipt = mail
                .next_where(Duration::from_secs(20), |e| matches!(e, Inbox::Receipt(_)))
                .await;
            match receipt {
                Some(Inbox::Receipt(r)) => {
                    assert_eq!(r.status, ReceiptStatus::Stored, "{r:?}");
                    stored.insert(r.reference);
                }
                _ => panic!("device {d}: only {} of {PER_DEVICE} stored", stored.len()),
            }
        }
    }
    assert_eq!(db_count(&hub.data, "messages"), (3 * PER_DEVICE) as i64);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_device_reads_the_hubs_limits_and_the_reference_device_keeps_them() {
    // Issue 18: an oversize send ended in "Connection reset by peer" (or a
    // 16 MiB figure that was not the hub's limit).
    let hub = TestHub::start_with("[mailbox]\nmax_image_bytes = 1000\n", &[]);
    let mum = hub.device("Mum", "parent");
    let ada = hub.device("Ada", "child");
    let (client, mut events) = rumqttc::AsyncClient::new(mqtt_v4(&hub, &ada, &ada.id), 10);
    v4_connected(&mut events).await.unwrap();
    client
        .subscribe("hearth/v1/hub/info", QoS::AtMostOnce)
        .await
        .unwrap();
    let info = v4_next_publish(&mut events, Duration::from_secs(5))
        .await
        .expect("the hub's info is retained");
    assert!(info.retain);
    let info: hearth_protocol::hub_info::HubInfo = serde_json::from_slice(&info.payload).unwrap();
    assert_eq!(info.mailbox.max_image_bytes, 1000);
    assert_eq!(info.max_packet_bytes, 8 * 1024 * 1024);
    // Nobody may write it: a device's attempt is refused (the check at the
    // end reads the hub's own document still).
    client
        .publish("hearth/v1/hub/info", QoS::AtLeastOnce, true, "{}")
        .await
        .unwrap();
    let driver = v4_drive(events);
    assert!(wait_audit(&hub, |e| e.event == "denied").is_some());
    driver.abort();
    drop(client);

    let picture = hub.dir.path().join("big.png");
    std::fs::write(&picture, vec![7u8; 2000]).unwrap();
    let out = hearth_device(
        &mum.dir,
        &["send", "--to", "Ada", "--image", picture.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("not sent: the picture is 2000 bytes; this hub takes at most 1000 bytes"),
        "{stderr}"
    );
    assert!(hub.hearth_ok(&["mailbox"]).contains("empty"));
    std::fs::write(&picture, vec![7u8; 1000]).unwrap();
    let out = hearth_device(
        &mum.dir,
        &["send", "--to", "Ada", "--image", picture.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The retained info is still the hub's own.
    let (client, mut events) = rumqttc::AsyncClient::new(mqtt_v4(&hub, &mum, &mum.id), 10);
    v4_connected(&mut events).await.unwrap();
    client
        .subscribe("hearth/v1/hub/info", QoS::AtMostOnce)
        .await
        .unwrap();
    let again = v4_next_publish(&mut events, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<hearth_protocol::hub_info::HubInfo>(&again.payload).unwrap(),
        info
    );
}
