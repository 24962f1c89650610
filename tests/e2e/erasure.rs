//! Children's data is gone when Hearth says it is and never kept where it
//! should not be: copies of the data dir taken after delivery and expiry
//! give nothing back even with the mailbox key, a lost key is never
//! silently replaced, erased members and devices leave no row behind, and
//! the audit and logs hold ids, never names, labels or typed text.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hearth_protocol::mailbox::ReceiptStatus;
use serde_json::json;

use crate::messaging::{db_count, files_containing, text, Mail};
use crate::support::*;

/// A copy of the data dir's database files and mailbox key, taken while
/// the hub runs, as a thief or a careless backup would.
struct Snapshot {
    dir: tempfile::TempDir,
}

impl Snapshot {
    fn take(data: &Path) -> Snapshot {
        let dir = tempfile::tempdir().unwrap();
        for name in ["hearth.db", "hearth.db-wal", "hearth.db-shm", "mailbox.key"] {
            let from = data.join(name);
            if from.exists() {
                std::fs::copy(&from, dir.path().join(name)).unwrap();
            }
        }
        Snapshot { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Ends of every committed transaction in a WAL file (bytes from its
/// start), oldest first: each is a state of the database someone holding
/// the file could open.
fn wal_commit_points(wal: &[u8]) -> Vec<usize> {
    if wal.len() < 32 {
        return Vec::new();
    }
    let page_size = u32::from_be_bytes(wal[8..12].try_into().unwrap()) as usize;
    let frame = 24 + page_size;
    let mut points = Vec::new();
    let mut at = 32;
    while at + frame <= wal.len() {
        let db_size = u32::from_be_bytes(wal[at + 4..at + 8].try_into().unwrap());
        at += frame;
        if db_size != 0 {
            points.push(at);
        }
    }
    points
}

/// What a message row holds, read from one state of the database.
struct Row {
    id: String,
    recipient: String,
    sealed: Vec<u8>,
    wrapped_key: Option<Vec<u8>>,
}

/// Every `messages` row of the database state made of `db` and the first
/// `wal_len` bytes of `wal`, opened in a scratch copy.
fn rows_at(db: &[u8], wal: &[u8], wal_len: usize) -> Vec<Row> {
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("hearth.db"), db).unwrap();
    std::fs::write(scratch.path().join("hearth.db-wal"), &wal[..wal_len]).unwrap();
    let conn = rusqlite::Connection::open(scratch.path().join("hearth.db")).unwrap();
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('messages')")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    if columns.is_empty() {
        return Vec::new();
    }
    let wrapped = if columns.iter().any(|c| c == "wrapped_key") {
        "wrapped_key"
    } else {
        "NULL"
    };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT id, recipient, sealed, {wrapped} FROM messages"
        ))
        .unwrap();
    stmt.query_map([], |row| {
        Ok(Row {
            id: row.get(0)?,
            recipient: row.get(1)?,
            sealed: row.get(2)?,
            wrapped_key: row.get(3)?,
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn open(cipher: &XChaCha20Poly1305, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < 24 {
        return None;
    }
    let (nonce, body) = sealed.split_at(24);
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad })
        .ok()
}

/// Tries, as an attacker with the mailbox key would, every way Hearth has
/// ever sealed a message: directly under the key, or under a data key
/// wrapped by it (any wrapped key seen for that id, in any state).
fn unseal(key: &[u8], row: &Row, wrapped_keys: &[(String, Vec<u8>)]) -> Option<Vec<u8>> {
    let kek = XChaCha20Poly1305::new_from_slice(key).unwrap();
    let aad = format!("hearth-mailbox-v1\0{}\0{}", row.id, row.recipient).into_bytes();
    if let Some(plain) = open(&kek, &aad, &row.sealed) {
        return Some(plain);
    }
    let wrap_aad = format!("hearth-mailbox-key-v1\0{}", row.id).into_bytes();
    let candidates = row.wrapped_key.iter().chain(
        wrapped_keys
            .iter()
            .filter(|(id, _)| id == &row.id)
            .map(|(_, k)| k),
    );
    for wrapped in candidates {
        if let Some(data_key) = open(&kek, &wrap_aad, wrapped) {
            let cipher = XChaCha20Poly1305::new_from_slice(&data_key).unwrap();
            if let Some(plain) = open(&cipher, &aad, &row.sealed) {
                return Some(plain);
            }
        }
    }
    None
}

/// Every message a snapshot can still give up: the main file alone, then
/// the WAL cut after each of its commits, every row tried with the key.
fn recoverable(snapshot: &Snapshot) -> (usize, Vec<(String, String)>) {
    let key = std::fs::read(snapshot.path("mailbox.key")).unwrap();
    let db = std::fs::read(snapshot.path("hearth.db")).unwrap();
    let wal = std::fs::read(snapshot.path("hearth.db-wal")).unwrap_or_default();
    let mut cuts = vec![0];
    cuts.extend(wal_commit_points(&wal));
    let states: Vec<Vec<Row>> = cuts.iter().map(|&n| rows_at(&db, &wal, n)).collect();
    let wrapped: Vec<(String, Vec<u8>)> = states
        .iter()
        .flatten()
        .filter_map(|r| r.wrapped_key.clone().map(|k| (r.id.clone(), k)))
        .collect();
    let mut opened = Vec::new();
    for row in states.iter().flatten() {
        if let Some(plain) = unseal(&key, row, &wrapped) {
            opened.push((
                row.id.clone(),
                String::from_utf8_lossy(&plain[..plain.len().min(60)]).into_owned(),
            ));
        }
    }
    opened.sort();
    opened.dedup();
    (cuts.len(), opened)
}

#[tokio::test]
async fn delivered_and_expired_messages_cannot_be_recovered_from_a_copy_of_the_data_dir() {
    let hub = TestHub::start_with("[mailbox]\nexpiry_secs = 5\n", &[]);
    let mum = hub.device("Mum", "parent");
    let ada = hub.device("Ada", "child");
    let _bob = hub.device("Bob", "child");
    let mut mum_mail = Mail::connect(&hub, &mum).await;
    let mut ada_mail = Mail::connect(&hub, &ada).await;

    let marker = format!("SECRET-{}", hex::encode(hearth_daemon::random_bytes::<8>()));
    let picture: Vec<u8> = (0..90_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let voice: Vec<u8> = (0..40_000u32).map(|i| (i * 13 % 241) as u8).collect();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    // Bob never connects: these two expire.
    mum_mail
        .send(text("x1", "Bob", &format!("expiring {marker}")))
        .await;
    mum_mail
        .send(
            json!({"v": 1, "type": "send", "ref": "x2", "to": "Bob", "kind": "image",
                     "data": b64(&picture), "content_type": "image/png"}),
        )
        .await;
    // Ada reads and acknowledges these.
    mum_mail
        .send(text("d1", "Ada", &format!("hello {marker}")))
        .await;
    mum_mail
        .send(
            json!({"v": 1, "type": "send", "ref": "d2", "to": "Ada", "kind": "image",
                     "data": b64(&picture), "content_type": "image/png"}),
        )
        .await;
    mum_mail
        .send(
            json!({"v": 1, "type": "send", "ref": "d3", "to": "Ada", "kind": "audio",
                     "data": b64(&voice), "content_type": "audio/ogg"}),
        )
        .await;
    let mut ids = std::collections::HashMap::new();
    for r in ["x1", "x2", "d1", "d2", "d3"] {
        let stored = mum_mail.receipt(r, ReceiptStatus::Stored).await;
        ids.insert(r, stored.id.unwrap());
    }
    for _ in 0..3 {
        let d = ada_mail
            .delivery(Duration::from_secs(10))
            .await
            .expect("delivered");
        ada_mail.ack(&d.id).await;
    }
    for r in ["d1", "d2", "d3"] {
        mum_mail.receipt(r, ReceiptStatus::Delivered).await;
    }
    let after_delivery = Snapshot::take(&hub.data);
    for r in ["x1", "x2"] {
        mum_mail.receipt(r, ReceiptStatus::Expired).await;
    }
    let after_expiry = Snapshot::take(&hub.data);
    assert_eq!(db_count(&hub.data, "messages"), 0);

    // The copy after delivery still holds the two waiting for Bob (that is
    // what a mailbox is); nothing delivered opens.
    let (states, opened) = recoverable(&after_delivery);
    let delivered: Vec<&String> = ["d1", "d2", "d3"].iter().map(|r| &ids[r]).collect();
    assert!(
        !opened.iter().any(|(id, _)| delivered.contains(&id)),
        "delivered messages recovered from a copy ({states} states): {opened:?}"
    );
    let (states, opened) = recoverable(&after_expiry);
    assert!(
        opened.is_empty(),
        "messages recovered from a copy after expiry ({states} states): {opened:?}"
    );
    // And nowhere in plaintext, in any file of the copies or the data dir.
    for dir in [
        after_delivery.dir.path(),
        after_expiry.dir.path(),
        &hub.data,
    ] {
        for needle in [marker.as_bytes(), &picture[1000..1064], &voice[500..564]] {
            let hits = files_containing(dir, needle);
            assert!(hits.is_empty(), "plaintext in {hits:?}");
        }
    }
}

/// Runs hearthd on a hub's files and returns its exit code and output,
/// killing it if it is still running after `limit`.
fn run_hearthd(hub: &TestHub, limit: Duration) -> (Option<i32>, String) {
    let log = hub.dir.path().join("refused.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(HEARTHD)
        .arg("--config")
        .arg(&hub.config)
        .arg("--data-dir")
        .arg(&hub.data)
        .env_remove("STATE_DIRECTORY")
        .env_remove("RUNTIME_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (code, std::fs::read_to_string(&log).unwrap_or_default())
}

#[tokio::test]
async fn a_lost_mailbox_key_with_messages_waiting_stops_the_hub_and_is_never_replaced() {
    let mut hub = TestHub::start();
    let mum = hub.device("Mum", "parent");
    let _ada = hub.device("Ada", "child");
    let mut mum_mail = Mail::connect(&hub, &mum).await;
    mum_mail.send(text("w1", "Ada", "waiting for Ada")).await;
    mum_mail.receipt("w1", ReceiptStatus::Stored).await;
    drop(mum_mail);
    assert!(hub.terminate().success());

    let key = hub.data.join("mailbox.key");
    let original = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let (code, said) = run_hearthd(&hub, Duration::from_secs(20));
    assert_eq!(code, Some(78), "hearthd must refuse to start: {said}");
    assert!(said.contains(&key.display().to_string()), "{said}");
    assert!(said.contains("hearth restore"), "{said}");
    assert!(said.contains("hearth erase-all"), "{said}");
    assert!(!key.exists(), "a new key was made silently");

    // A damaged key is refused the same way, and left as it is.
    std::fs::write(&key, b"not a key").unwrap();
    let (code, said) = run_hearthd(&hub, Duration::from_secs(20));
    assert_eq!(code, Some(78), "{said}");
    assert_eq!(std::fs::read(&key).unwrap(), b"not a key");

    // With the key back, the message is still there.
    std::fs::write(&key, &original).unwrap();
    hub.launch();
    assert!(hub.hearth_ok(&["mailbox"]).contains("1 waiting"));
}

/// Issues a device with a label of the test's choosing.
fn device_labelled(hub: &TestHub, member: &str, label: &str) -> Device {
    let out = hub.dir.path().join(format!(
        "dev-{}",
        hex::encode(hearth_daemon::random_bytes::<4>())
    ));
    let id = hub.hearth_ok(&[
        "device",
        "issue",
        "--member",
        member,
        "--label",
        label,
        "--out",
        out.to_str().unwrap(),
    ]);
    Device::load(id.trim(), &out)
}

/// Every row of every table (as sqlite_master lists them) whose text or
/// bytes contain one of `needles`: `table: row`.
fn rows_mentioning(data: &Path, needles: &[&str]) -> Vec<String> {
    let conn = rusqlite::Connection::open(data.join("hearth.db")).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(tables.len() >= 10, "tables: {tables:?}");
    let mut hits = Vec::new();
    for table in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let width = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            let mut text = Vec::new();
            for i in 0..width {
                match row.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        text.push(String::from_utf8_lossy(t).into_owned())
                    }
                    other => text.push(format!("{other:?}")),
                }
            }
            let line = text.join(" | ");
            if needles.iter().any(|n| line.contains(n)) {
                hits.push(format!("{table}: {line}"));
            }
        }
    }
    hits
}

#[tokio::test]
async fn removing_a_member_or_a_device_erases_every_row_about_them() {
    let hub = TestHub::start();
    let mum = hub.device("Mum", "parent");
    hub.hearth_ok(&["member", "add", "Cyrilla", "--role", "child"]);
    let cy_tablet = device_labelled(&hub, "Cyrilla", "Cyrilla tablet");
    let cy_toy = device_labelled(&hub, "Cyrilla", "Cyrilla toy");
    let _ada = hub.device("Ada", "child");
    let ada_toy = device_labelled(&hub, "Ada", "Ada diary toy");
    hub.hearth_ok(&["contacts", "allow", "Cyrilla", "Ada"]);

    // Mum writes twice to Cyrilla (both her devices).
    let mut mum_mail = Mail::connect(&hub, &mum).await;
    mum_mail.send(text("m1", "Cyrilla", "first")).await;
    mum_mail.send(text("m2", "Cyrilla", "second")).await;
    let m1 = mum_mail
        .receipt("m1", ReceiptStatus::Stored)
        .await
        .id
        .unwrap();
    let m2 = mum_mail
        .receipt("m2", ReceiptStatus::Stored)
        .await
        .id
        .unwrap();
    drop(mum_mail);
    // The tablet reads the first: its "delivered" receipt, naming the
    // tablet, waits for Mum. Then Cyrilla and Ada's toy write to Mum, who
    // is offline, and the tablet tries a topic it may not use.
    {
        let mut cy_mail = Mail::connect(&hub, &cy_tablet).await;
        let d = loop {
            let d = cy_mail.delivery(Duration::from_secs(10)).await.unwrap();
            if d.id == m1 {
                break d;
            }
        };
        cy_mail.ack(&d.id).await;
        cy_mail.send(text("c1", "Mum", "from Cyrilla")).await;
        cy_mail.receipt("c1", ReceiptStatus::Stored).await;
        cy_mail
            .client
            .publish(
                format!("hearth/v1/dev/{}/cmd/secret", mum.id),
                rumqttc::QoS::AtMostOnce,
                false,
                b"x".to_vec(),
            )
            .await
            .unwrap();
        let mut toy_mail = Mail::connect(&hub, &ada_toy).await;
        toy_mail.send(text("a1", "Mum", "from the diary toy")).await;
        toy_mail.receipt("a1", ReceiptStatus::Stored).await;
    }
    wait_audit(&hub, |e| {
        e.event == "denied" && e.device.map(|d| d.to_string()) == Some(cy_tablet.id.clone())
    })
    .expect("the denied publish is audited");
    let needles = [
        "Cyrilla",
        cy_tablet.id.as_str(),
        cy_toy.id.as_str(),
        ada_toy.id.as_str(),
        "Ada diary toy",
    ];
    assert!(!rows_mentioning(&hub.data, &needles).is_empty());

    // Erase through the admin operations the CLI calls.
    for request in [
        hearth_protocol::admin::AdminRequest::MemberRemove {
            name: "Cyrilla".parse().unwrap(),
        },
        hearth_protocol::admin::AdminRequest::DeviceRemove {
            id: ada_toy.id.parse().unwrap(),
        },
    ] {
        let answer = admin_request(&hub.socket, &request).unwrap();
        assert!(
            matches!(answer, hearth_protocol::admin::AdminResponse::Done { .. }),
            "{answer:?}"
        );
    }
    // Mum hears her two messages will not be delivered, and gets nothing
    // the erased devices sent.
    let mut mum_mail = Mail::connect(&hub, &mum).await;
    for (reference, id) in [("m1", &m1), ("m2", &m2)] {
        let r = mum_mail.receipt(reference, ReceiptStatus::Expired).await;
        assert_eq!(r.id.as_ref(), Some(id));
    }
    assert!(
        mum_mail.delivery(Duration::from_secs(2)).await.is_none(),
        "a message from an erased device was delivered"
    );
    drop(mum_mail);
    let audit = hub.hearth_ok(&["audit", "--device", &cy_tablet.id]);
    assert!(!audit.contains(&cy_tablet.id), "{audit}");

    let hits = rows_mentioning(&hub.data, &needles);
    assert!(hits.is_empty(), "rows still mention the erased: {hits:#?}");
    // What revocation needs stays: the fingerprints, revoked.
    let conn = rusqlite::Connection::open(hub.data.join("hearth.db")).unwrap();
    let revoked: i64 = conn
        .query_row(
            "SELECT count(*) FROM certificates WHERE status = 'revoked' AND device_id = ''",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(revoked, 3);
    drop(conn);
    // Nor in any file of the data dir, the WAL included.
    for needle in needles {
        let hits = files_containing(&hub.data, needle.as_bytes());
        assert!(hits.is_empty(), "{needle} still in {hits:?}");
    }
    // And the erased devices stay refused.
    let mut options = mqtt_v4(&hub, &cy_tablet, &cy_tablet.id);
    options.set_keep_alive(Duration::from_secs(5));
    let (_client, mut events) = rumqttc::AsyncClient::new(options, 10);
    assert!(v4_connected(&mut events).await.is_err());
}

#[tokio::test]
async fn the_audit_and_the_log_hold_no_names_labels_or_typed_text() {
    let hub = TestHub::start();
    let _mum = hub.device("Mum", "parent");
    hub.device("Ada", "child");
    hub.hearth_ok(&["member", "add", "Quillon", "--role", "child"]);
    let toy = device_labelled(&hub, "Quillon", "Quillon-Label-Canary");
    open_pairing(&hub, "Quillon", "PairLabelCanary", "1m");
    hub.hearth_ok(&["contacts", "allow", "Quillon", "Ada"]);
    let mut mail = Mail::connect(&hub, &toy).await;
    mail.send(text("r1", "Ada Lovelace, 12 Elm St", "hello"))
        .await;
    mail.receipt("r1", ReceiptStatus::Refused).await;
    drop(mail);
    let diary = format!("hearth/v1/dev/{}/secret diary: Bob is sad today", toy.id);
    let other = format!("hearth/v1/dev/{}/tele/canary words", _mum.id);
    let mut raw = Raw::connect(&hub, &toy, false).await;
    for (pkid, topic) in [(1u16, &diary), (2, &other)] {
        raw.send(&publish_packet(
            false,
            topic.as_bytes(),
            1,
            false,
            pkid,
            None,
            b"x",
        ))
        .await;
        let _ = raw.next().await;
    }
    let mine = |e: &hearth_protocol::admin::AuditEntry| {
        e.event == "denied" && e.device.map(|d| d.to_string()) == Some(toy.id.clone())
    };
    wait_audit(&hub, |e| {
        mine(e) && e.topic.as_deref().is_some_and(|t| t.ends_with("/other"))
    })
    .unwrap_or_else(|| panic!("diary topic not audited: {:#?}", audit_entries(&hub)));
    wait_audit(&hub, |e| {
        mine(e) && e.topic.as_deref() == Some(&*format!("hearth/v1/dev/{}/tele", _mum.id))
    })
    .expect("the denied telemetry topic is audited, by class");
    let refused = wait_audit(&hub, |e| e.event == "message-refused").expect("refusal audited");
    assert_eq!(refused.reason.as_deref(), Some("unknown recipient"));
    drop(raw);
    hub.hearth_ok(&["member", "list"]);

    let canaries = [
        "Quillon",
        "Quillon-Label-Canary",
        "PairLabelCanary",
        "Lovelace",
        "Elm St",
        "secret diary",
        "sad today",
        "canary words",
    ];
    let conn = rusqlite::Connection::open(hub.data.join("hearth.db")).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT coalesce(device, ''), event, coalesce(action, ''), coalesce(topic, ''),
                         coalesce(reason, ''), coalesce(peer, '') FROM audit",
        )
        .unwrap();
    let rows: Vec<String> = stmt
        .query_map([], |row| {
            let cols: Vec<String> = (0..6).map(|i| row.get(i)).collect::<Result<_, _>>()?;
            Ok(cols.join(" | "))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(rows.len() >= 5, "{rows:#?}");
    let log = hub.log();
    for canary in canaries {
        let hits: Vec<&String> = rows.iter().filter(|r| r.contains(canary)).collect();
        assert!(hits.is_empty(), "{canary:?} in the audit: {hits:#?}");
        assert!(!log.contains(canary), "{canary:?} in the log:\n{log}");
    }
    // Peer addresses only for refusals.
    assert!(
        rows.iter()
            .filter(|r| r.contains("| connect |") || r.contains("| denied |"))
            .all(|r| r.ends_with("| ")),
        "{rows:#?}"
    );
}

/// Runs the real `hearth` with extra environment; returns the output.
fn hearth_with(hub: &TestHub, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(HEARTH);
    cmd.arg("--socket").arg(&hub.socket).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run hearth")
}

#[tokio::test]
async fn backup_erase_all_and_restore_round_trip_and_the_backup_holds_no_key_in_clear() {
    let mut hub = TestHub::start();
    let mum = hub.device("Mum", "parent");
    let ada = hub.device("Ada", "child");
    let mut mum_mail = Mail::connect(&hub, &mum).await;
    mum_mail
        .send(text("b1", "Ada", "kept across a restore"))
        .await;
    let id = mum_mail
        .receipt("b1", ReceiptStatus::Stored)
        .await
        .id
        .unwrap();
    drop(mum_mail);

    let report = hub.hearth_ok(&["privacy", "report", "--member", "Ada"]);
    assert!(report.contains("messages waiting (sealed): 1"), "{report}");
    assert!(report.contains("Never stored"), "{report}");

    let file = hub.dir.path().join("hub.age");
    let file_arg = file.to_str().unwrap();
    let pass = [("HEARTH_BACKUP_PASSPHRASE", "a long family passphrase")];
    let out = hearth_with(&hub, &["backup", "--out", file_arg], &pass);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let backup = std::fs::read(&file).unwrap();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    assert!(backup.starts_with(b"age-encryption.org/v1"));
    let mailbox_key = std::fs::read(hub.data.join("mailbox.key")).unwrap();
    assert!(!backup.windows(32).any(|w| w == mailbox_key.as_slice()));
    assert!(!backup.windows(11).any(|w| w == b"PRIVATE KEY"));

    // erase-all refuses while the hub runs, and without --yes.
    let data = hub.data.to_str().unwrap().to_owned();
    assert!(
        !hearth_with(&hub, &["erase-all", "--yes", "--data-dir", &data], &[])
            .status
            .success()
    );
    assert!(hub.terminate().success());
    assert!(!hearth_with(&hub, &["erase-all", "--data-dir", &data], &[])
        .status
        .success());
    let out = hearth_with(&hub, &["erase-all", "--yes", "--data-dir", &data], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<_> = std::fs::read_dir(&hub.data).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");

    // A wrong passphrase restores nothing; the right one everything.
    let wrong = [("HEARTH_BACKUP_PASSPHRASE", "wrong")];
    assert!(
        !hearth_with(&hub, &["restore", file_arg, "--data-dir", &data], &wrong)
            .status
            .success()
    );
    assert!(!hub.data.join("hearth.db").exists());
    let out = hearth_with(&hub, &["restore", file_arg, "--data-dir", &data], &pass);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    hub.launch();

    // The same CA, devices and pending message: Ada's device connects
    // with its old certificate and gets it.
    let mut ada_mail = Mail::connect(&hub, &ada).await;
    let d = ada_mail
        .delivery(Duration::from_secs(10))
        .await
        .expect("delivered after restore");
    assert_eq!(d.id, id);
    assert_eq!(d.body.as_deref(), Some("kept across a restore"));
    ada_mail.ack(&d.id).await;
    let mut mum_mail = Mail::connect(&hub, &mum).await;
    mum_mail.receipt("b1", ReceiptStatus::Delivered).await;
}

#[tokio::test]
async fn a_member_export_holds_their_devices_waiting_messages_and_attachments() {
    let hub = TestHub::start();
    let mum = hub.device("Mum", "parent");
    hub.hearth_ok(&["member", "add", "Ada", "--role", "child"]);
    let ada = device_labelled(&hub, "Ada", "Ada's tablet");
    let picture: Vec<u8> = (0..5_000u32).map(|i| (i % 251) as u8).collect();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut mum_mail = Mail::connect(&hub, &mum).await;
    mum_mail.send(text("e1", "Ada", "see you at six")).await;
    mum_mail
        .send(
            json!({"v": 1, "type": "send", "ref": "e2", "to": "Ada", "kind": "image",
                     "data": b64(&picture), "content_type": "image/png"}),
        )
        .await;
    let image_id = {
        mum_mail.receipt("e1", ReceiptStatus::Stored).await;
        mum_mail
            .receipt("e2", ReceiptStatus::Stored)
            .await
            .id
            .unwrap()
    };
    let dir = hub.dir.path().join("ada-export");
    hub.hearth_ok(&["member", "export", "Ada", "--out", dir.to_str().unwrap()]);
    let data: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("member.json")).unwrap()).unwrap();
    assert_eq!(data["member"]["name"], "Ada");
    assert_eq!(data["devices"][0]["id"], ada.id.as_str());
    assert_eq!(data["devices"][0]["label"], "Ada's tablet");
    let messages = data["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{data:#}");
    assert!(messages
        .iter()
        .any(|m| m["content"]["body"] == "see you at six"));
    assert_eq!(
        std::fs::read(dir.join("attachments").join(format!("{image_id}.png"))).unwrap(),
        picture
    );
    let readme = std::fs::read_to_string(dir.join("README.txt")).unwrap();
    assert!(readme.contains("member.json") && readme.contains("attachments/"));
    // An existing folder is never written into.
    assert!(!hub
        .hearth(&["member", "export", "Ada", "--out", dir.to_str().unwrap()])
        .status
        .success());
}

/// The CN and DNS names of a hub's server certificate.
fn server_names(hub: &TestHub) -> (String, Vec<String>) {
    use rustls::pki_types::pem::PemObject;
    let der =
        rustls::pki_types::CertificateDer::from_pem_file(hub.data.join("server.pem")).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let mut dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = name {
                dns.push((*d).to_owned());
            }
        }
    }
    (cn, dns)
}

#[test]
fn the_server_certificate_names_the_hub_by_its_id_or_its_configured_name() {
    let hub = TestHub::start();
    use rustls::pki_types::pem::PemObject;
    let ca = rustls::pki_types::CertificateDer::from_pem_file(hub.data.join("ca.pem")).unwrap();
    let id_name = format!(
        "hearth-{}",
        hex::encode(&hearth_daemon::ca::fingerprint(&ca)[..4])
    );
    let (cn, dns) = server_names(&hub);
    assert_eq!(cn, id_name);
    assert!(dns.contains(&format!("{id_name}.local")), "{dns:?}");
    let os_host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_ascii_lowercase();
    assert!(!dns.contains(&os_host) && cn != os_host, "{cn} {dns:?}");

    let named = TestHub::start_with("[hub]\nname = \"den-hub\"\n", &[]);
    let ca = rustls::pki_types::CertificateDer::from_pem_file(named.data.join("ca.pem")).unwrap();
    let id_name = format!(
        "hearth-{}",
        hex::encode(&hearth_daemon::ca::fingerprint(&ca)[..4])
    );
    let (cn, dns) = server_names(&named);
    assert_eq!(cn, "den-hub");
    assert!(dns.contains(&"den-hub.local".to_owned()), "{dns:?}");
    assert!(
        dns.contains(&format!("{id_name}.local")),
        "the id name stays: {dns:?}"
    );
}
