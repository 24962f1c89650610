//! Regression tests for what the attack campaign of issue 14 found: each
//! one failed on the hub before its fix. Real daemon, real mutual TLS.

use std::time::Duration;

use crate::support::*;

fn dev_topic(device: &Device, rest: &str) -> String {
    format!("hearth/v1/dev/{}/{rest}", device.id)
}

/// Whether `hearth status` lists `device` as connected.
fn listed_connected(hub: &TestHub, device: &Device) -> bool {
    hub.hearth_ok(&["status"]).contains(&device.id)
}

/// A connection that finished TLS and then waited while its device lost
/// its standing must be closed, never given a session.
async fn tls_then_cut_then_connect(hub: &TestHub, device: &Device, cut: &[&str]) {
    let mut tls = raw_tls(hub.mqtt, device.tls()).await.expect("handshake");
    // Let the hub finish its side of the handshake (TLS 1.3 verifies the
    // client's certificate after the client considers itself done).
    tokio::time::sleep(Duration::from_millis(300)).await;
    hub.hearth_ok(cut);
    // Closed at the cut, or at the latest refused at CONNECT.
    match next(&mut tls, Duration::from_millis(1500)).await {
        Next::Closed => {}
        Next::Silent => {
            send(&mut tls, &connect_packet(false, &device.id, None)).await;
            match next(&mut tls, Duration::from_secs(5)).await {
                Next::Closed => {}
                Next::Data(d) if d[0] == 0x20 && d[3] != 0 => {}
                other => panic!("{cut:?} between TLS and CONNECT: got {other:?}"),
            }
        }
        other => panic!("unexpected {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !listed_connected(hub, device),
        "{cut:?}: the device still shows as connected"
    );
}

#[tokio::test]
async fn revoking_between_tls_and_connect_gives_no_session() {
    let hub = TestHub::start();
    let kid = hub.device("Ada", "child");
    tls_then_cut_then_connect(&hub, &kid, &["device", "revoke", &kid.id]).await;
}

#[tokio::test]
async fn removing_a_device_between_tls_and_connect_gives_no_session() {
    let hub = TestHub::start();
    let kid = hub.device("Ada", "child");
    tls_then_cut_then_connect(&hub, &kid, &["device", "remove", &kid.id]).await;
}

#[tokio::test]
async fn removing_a_member_between_tls_and_connect_gives_no_session() {
    let hub = TestHub::start();
    let kid = hub.device("Ada", "child");
    tls_then_cut_then_connect(&hub, &kid, &["member", "remove", "Ada", "--yes"]).await;
}

#[tokio::test]
async fn a_grant_revoked_between_tls_and_connect_is_not_kept() {
    let hub = TestHub::start();
    let out = hub.dir.path().join("svc");
    let id = hub.hearth_ok(&[
        "device",
        "issue",
        "--service",
        "--label",
        "lights",
        "--out",
        out.to_str().unwrap(),
    ]);
    let service = Device::load(id.trim(), &out);
    let filter = "hearth/v1/dev/+/tele/#";
    hub.hearth_ok(&["grant", &service.id, filter, "--subscribe"]);
    let mut tls = raw_tls(hub.mqtt, service.tls()).await.expect("handshake");
    tokio::time::sleep(Duration::from_millis(300)).await;
    hub.hearth_ok(&["revoke-grant", &service.id, filter, "--subscribe"]);
    // The connection that waited is closed; if it were not, its CONNECT
    // must at least not carry the old grant.
    if next(&mut tls, Duration::from_millis(1500)).await == Next::Silent {
        send(&mut tls, &connect_packet(false, &service.id, None)).await;
        if let Next::Data(d) = next(&mut tls, Duration::from_secs(5)).await {
            if d[0] == 0x20 && d[3] == 0 {
                send(&mut tls, &subscribe_packet(false, 1, &[filter.as_bytes()])).await;
                if let Next::Data(ack) = next(&mut tls, Duration::from_secs(5)).await {
                    assert_ne!(ack.last(), Some(&0), "the revoked grant still works");
                }
            }
        }
    }
}

/// Connects `device` over MQTT 3.1.1 with a retained will on its own
/// `tele/status`, and keeps the connection driven in the background.
async fn connect_with_retained_will(
    hub: &TestHub,
    device: &Device,
) -> (
    rumqttc::AsyncClient,
    tokio::task::JoinHandle<Option<rumqttc::ConnectionError>>,
) {
    let mut options = mqtt_v4(hub, device, &device.id);
    options.set_last_will(rumqttc::LastWill::new(
        dev_topic(device, "tele/status"),
        b"gone".to_vec(),
        rumqttc::QoS::AtLeastOnce,
        true,
    ));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    v4_connected(&mut eventloop).await.expect("connected");
    (client, v4_drive(eventloop))
}

#[tokio::test]
async fn a_revoked_devices_will_is_never_published() {
    let hub = TestHub::start();
    let kid = hub.device("Ada", "child");
    let parent = hub.device("Mum", "parent");
    let (_toy, driver) = connect_with_retained_will(&hub, &kid).await;
    let mut watcher = Raw::connect(&hub, &parent, false).await;
    assert_eq!(
        watcher.subscribe(1, &[&dev_topic(&kid, "tele/#")]).await,
        vec![0]
    );
    hub.hearth_ok(&["device", "revoke", &kid.id]);
    // Neither a live subscriber nor a later one hears the will (the live
    // one may see the empty retained message that clears the topic).
    while let Next::Data(d) = watcher.quiet(Duration::from_millis(1500)).await {
        assert!(
            !d.ends_with(b"gone"),
            "the revoked device's will was published"
        );
    }
    let mut late = Raw::connect(&hub, &parent, false).await;
    assert_eq!(
        late.subscribe(1, &[&dev_topic(&kid, "tele/#")]).await,
        vec![0]
    );
    assert_eq!(
        late.quiet(Duration::from_millis(700)).await,
        Next::Silent,
        "the revoked device's retained will outlived revocation"
    );
    driver.abort();
}

#[tokio::test]
async fn a_retained_will_published_before_revocation_is_cleared_by_it() {
    let hub = TestHub::start();
    let kid = hub.device("Ada", "child");
    let parent = hub.device("Mum", "parent");
    let (_toy, driver) = connect_with_retained_will(&hub, &kid).await;
    // The toy loses power: the broker publishes its will, retained.
    driver.abort();
    let topic = dev_topic(&kid, "tele/#");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut pkid = 1;
    loop {
        let mut p = Raw::connect(&hub, &parent, false).await;
        assert_eq!(p.subscribe(pkid, &[&topic]).await, vec![0]);
        if let Next::Data(d) = p.quiet(Duration::from_millis(300)).await {
            assert!(d.ends_with(b"gone"), "{d:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the will never arrived"
        );
        pkid += 1;
    }
    hub.hearth_ok(&["device", "revoke", &kid.id]);
    let mut late = Raw::connect(&hub, &parent, false).await;
    assert_eq!(late.subscribe(1, &[&topic]).await, vec![0]);
    assert_eq!(
        late.quiet(Duration::from_millis(700)).await,
        Next::Silent,
        "the retained will outlived revocation"
    );
}

/// A PKCS#10 request for a P-384 key signed ecdsa-with-SHA256 (the
/// signature OID P-256 requests use), made once with `openssl req -new
/// -sha256` on a secp384r1 key; the signature is valid.
const P384_CSR_SIGNED_SHA256: &[u8] = b"MIIBDDCBkgIBADATMREwDwYDVQQDDAhjYW1wYWlnbjB2MBAGByqGSM49AgEGBSuBBAAiA2IABN0H1jOxxkoXdNa0gONdz8fh7uypVm4lgssnppxIk2EPyQ5NSSZQpOplCiYw55lww1+Slg2ALOrHVI3009fYDzEodEmBT9/sGY+DhWUk7A/INH+WEctnjj+jPL3OQ6x3iKAAMAoGCCqGSM49BAMCA2kAMGYCMQC6UUX8appUPHTKKUdEG5MWPjmyOFqhqcAF6Wy5YRlELvbzE5A+EHwK8x+EXpTgogoCMQDEHjsTO2Pxc8YRfvrHkX15BU7PN7de9HKhqmhD0C+sqTbxc1tAVKQpq26zR70+x4c=";

#[tokio::test]
async fn a_p384_key_signed_with_sha256_is_refused_and_keeps_the_token() {
    let hub = TestHub::start();
    hub.hearth_ok(&["member", "add", "Ada", "--role", "child"]);
    let (_, token, _) = open_pairing(&hub, "Ada", "robot", "10m");
    let refused = est_request(
        &hub,
        "127.0.0.1",
        None,
        "POST",
        "simpleenroll",
        Some(&token),
        P384_CSR_SIGNED_SHA256,
    )
    .await;
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(refused.body.contains("P-256 or Ed25519"), "{refused:?}");
    // The window is still there and the token still pairs a proper key.
    let (_key, csr) = key_and_csr();
    let answer = est_request(
        &hub,
        "127.0.0.1",
        None,
        "POST",
        "simpleenroll",
        Some(&token),
        &csr,
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[tokio::test]
async fn a_revoked_senders_message_is_refused_as_revoked() {
    let hub = TestHub::start_with("[dev]\nlisten = \"127.0.0.1:0\"\n", &[]);
    let kid = hub.device("Ada", "child");
    hub.device("Mum", "parent");
    hub.hearth_ok(&["device", "revoke", &kid.id]);
    // A message already in the broker when its sender was revoked: put
    // there through the development listener, which may publish anywhere.
    let dev = hub.dev.expect("dev listener bound");
    let mut tcp = tokio::net::TcpStream::connect(dev).await.unwrap();
    send(&mut tcp, &connect_packet(false, "maker", None)).await;
    assert!(matches!(next(&mut tcp, Duration::from_secs(5)).await, Next::Data(d) if d[0] == 0x20));
    let send_envelope = r#"{"v":1,"type":"send","ref":"r1","to":"Mum","kind":"text","body":"hi"}"#;
    let topic = dev_topic(&kid, "outbox");
    send(
        &mut tcp,
        &publish_packet(
            false,
            topic.as_bytes(),
            1,
            false,
            1,
            None,
            send_envelope.as_bytes(),
        ),
    )
    .await;
    let refused = wait_audit(&hub, |e| {
        e.event == "message-refused"
            && e.device.map(|d| d.to_string()).as_deref() == Some(kid.id.as_str())
    });
    let refused =
        refused.unwrap_or_else(|| panic!("not refused: {:#?}\n{}", audit_entries(&hub), hub.log()));
    assert_eq!(
        refused.reason.as_deref(),
        Some("the sending device is revoked"),
        "{refused:?}"
    );
}

/// A TLS handshake without a client certificate from `source`, a loopback
/// address; the hub refuses it (and audits the refusal).
async fn refused_handshake_from(
    hub: &TestHub,
    source: std::net::Ipv4Addr,
    config: std::sync::Arc<rustls::ClientConfig>,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    let Ok(tcp) = socket.connect(hub.mqtt).await else {
        return;
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    if let Ok(mut tls) = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
    {
        // TLS 1.3: the refusal arrives after the client's last flight.
        let _ = next(&mut tls, Duration::from_secs(2)).await;
    }
}

#[tokio::test]
async fn refused_handshakes_from_many_addresses_are_bounded_in_total() {
    let hub = TestHub::start_with("[audit]\nmax_unidentified_entries_per_minute = 40\n", &[]);
    let ca_pem = std::fs::read(hub.data.join("ca.pem")).unwrap();
    let config = client_config(&ca_pem, None);
    // 150 attempts from 50 addresses: each address stays well within its
    // own budget of 60 a minute.
    for round in 0..3u8 {
        for i in 0..50u8 {
            let source = std::net::Ipv4Addr::new(127, 0, 1 + round, 1 + i);
            refused_handshake_from(&hub, source, config.clone()).await;
        }
    }
    let entries = audit_entries(&hub);
    let refused = entries
        .iter()
        .filter(|e| e.event == "handshake-refused")
        .count();
    assert!(refused > 0, "{entries:#?}");
    assert!(
        refused <= 40,
        "{refused} refusals written with a total budget of 40"
    );
    // One row says the rest were dropped; it names no device or address.
    let suppressed: Vec<_> = entries
        .iter()
        .filter(|e| e.event == "suppressed" && e.device.is_none() && e.peer.is_none())
        .collect();
    assert_eq!(suppressed.len(), 1, "{entries:#?}");
    assert!(suppressed[0].topic.is_none() && suppressed[0].action.is_none());
    // Administrative changes and registered devices are still recorded.
    let kid = hub.device("Ada", "child");
    assert!(wait_audit(&hub, |e| e.action.as_deref() == Some("member-add")).is_some());
    let (_c, mut eventloop) = rumqttc::AsyncClient::new(mqtt_v4(&hub, &kid, &kid.id), 10);
    v4_connected(&mut eventloop).await.unwrap();
    let connected = wait_audit(&hub, |e| {
        e.event == "connect" && e.device.map(|d| d.to_string()).as_deref() == Some(kid.id.as_str())
    });
    assert!(
        connected.is_some(),
        "a device's connect was dropped by the flood"
    );
}

/// Idle TCP sockets from `source`, never starting TLS.
async fn idle_sockets(
    target: std::net::SocketAddr,
    source: std::net::Ipv4Addr,
    n: usize,
) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((source, 0).into()).unwrap();
        if let Ok(tcp) = socket.connect(target).await {
            held.push(tcp);
        }
    }
    held
}

#[tokio::test]
async fn idle_sockets_from_many_addresses_leave_room_for_a_device() {
    let hub = TestHub::start_with(
        "[limits]\nmax_connections = 20\nhandshake_timeout_secs = 10\n\
         max_unauthenticated = 16\nmax_unauthenticated_per_source = 4\n",
        &[],
    );
    let kid = hub.device("Ada", "child");
    // 10 addresses with 4 idle sockets each: more than max_connections.
    let mut idle = Vec::new();
    for i in 0..10u8 {
        let source = std::net::Ipv4Addr::new(127, 0, 2, 1 + i);
        idle.extend(idle_sockets(hub.mqtt, source, 4).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let (_c, mut eventloop) = rumqttc::AsyncClient::new(mqtt_v4(&hub, &kid, &kid.id), 10);
    v4_connected(&mut eventloop)
        .await
        .expect("the device gets in");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the device waited {:?} behind idle sockets",
        started.elapsed()
    );
    drop(idle);
}

#[tokio::test]
async fn idle_sockets_from_one_address_do_not_block_enrollment() {
    let hub = TestHub::start();
    let idle = idle_sockets(hub.enroll, std::net::Ipv4Addr::new(127, 0, 3, 1), 64).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = tokio::time::timeout(
        Duration::from_secs(3),
        est_request(&hub, "127.0.0.1", None, "GET", "cacerts", None, b""),
    )
    .await
    .expect("the EST port answered within 3 s");
    assert_eq!(answer.status, 200, "{answer:?}");
    drop(idle);
}

/// Sends a text of `len` bytes from `sender` (connected raw, subscribed to
/// its inbox) to `to`; returns the receipt's JSON for `reference`.
async fn send_text(
    raw: &mut Raw,
    sender: &Device,
    reference: &str,
    to: &str,
    len: usize,
) -> serde_json::Value {
    let envelope = serde_json::json!({
        "v": 1, "type": "send", "ref": reference, "to": to, "kind": "text",
        "body": "x".repeat(len),
    });
    let topic = dev_topic(sender, "outbox");
    let packet = publish_packet(
        false,
        topic.as_bytes(),
        1,
        false,
        1,
        None,
        envelope.to_string().as_bytes(),
    );
    raw.send(&packet).await;
    loop {
        let Next::Data(d) = raw.next().await else {
            panic!("no receipt for {reference}");
        };
        if d[0] & 0xf0 != 0x30 {
            continue;
        }
        // Whatever JSON the PUBLISH carries after its topic (and packet id).
        let Some(start) = d.iter().position(|b| *b == b'{') else {
            continue;
        };
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&d[start..]) else {
            continue;
        };
        if json["type"] == "receipt" && json["ref"] == reference {
            return json;
        }
    }
}

/// A household whose child sends texts to a parent under `config`.
async fn texting(config: &str) -> (TestHub, Device, Raw) {
    let hub = TestHub::start_with(config, &[]);
    let kid = hub.device("Ada", "child");
    hub.device("Mum", "parent");
    let mut raw = Raw::connect(&hub, &kid, false).await;
    assert_eq!(
        raw.subscribe(1, &[&dev_topic(&kid, "inbox")]).await,
        vec![0]
    );
    (hub, kid, raw)
}

/// Sends three texts of 7000 bytes: two fit under a 20000-byte `key`, the
/// third is refused naming it, and the two stored stay stored.
async fn third_text_is_refused_by(key: &str) {
    let (hub, kid, mut raw) = texting(&format!("[mailbox]\n{key} = 20000\n")).await;
    for reference in ["r1", "r2"] {
        let receipt = send_text(&mut raw, &kid, reference, "Mum", 7000).await;
        assert_eq!(receipt["status"], "stored", "{receipt}");
    }
    let receipt = send_text(&mut raw, &kid, "r3", "Mum", 7000).await;
    assert_eq!(receipt["status"], "refused", "{receipt}");
    let reason = receipt["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&format!("mailbox.{key}")), "{receipt}");
    let pending = hub.hearth_ok(&["mailbox"]);
    assert!(pending.contains('2'), "{pending}");
}

#[tokio::test]
async fn a_sender_is_held_to_its_bytes_per_day() {
    third_text_is_refused_by("max_sender_bytes_per_day").await;
}

#[tokio::test]
async fn a_recipient_device_is_held_to_its_pending_bytes() {
    third_text_is_refused_by("max_pending_bytes_per_device").await;
}

#[tokio::test]
async fn the_mailbox_is_held_to_its_total_bytes() {
    third_text_is_refused_by("max_total_bytes").await;
}

#[tokio::test]
async fn messages_are_refused_below_the_free_space_floor() {
    // A floor no disk reaches: every new message is refused, naming it.
    let (_hub, kid, mut raw) = texting("[mailbox]\nmin_free_bytes = 9000000000000000000\n").await;
    let receipt = send_text(&mut raw, &kid, "r1", "Mum", 10).await;
    assert_eq!(receipt["status"], "refused", "{receipt}");
    assert!(
        receipt["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("mailbox.min_free_bytes"),
        "{receipt}"
    );
}

#[tokio::test]
async fn a_resumed_tls_session_of_a_revoked_device_is_refused_and_audited() {
    let hub = TestHub::start();
    let kid = hub.device("Ada", "child");
    // One client config: its session cache lets the second handshake resume.
    let config = kid.tls();
    let mut first = raw_tls(hub.mqtt, config.clone()).await.expect("handshake");
    send(&mut first, &connect_packet(false, &kid.id, None)).await;
    assert!(
        matches!(next(&mut first, Duration::from_secs(5)).await, Next::Data(d) if d[0] == 0x20)
    );
    // TLS 1.3 tickets arrive after the handshake; by CONNACK they are in.
    drop(first);
    hub.hearth_ok(&["device", "revoke", &kid.id]);
    let before = audit_entries(&hub)
        .iter()
        .filter(|e| e.event == "handshake-refused")
        .count();
    assert_eq!(before, 0);
    let mut second = raw_tls(hub.mqtt, config).await.expect("resumed handshake");
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the second handshake did not resume; the test proves nothing"
    );
    send(&mut second, &connect_packet(false, &kid.id, None)).await;
    // The protocol's answer, so the device knows to stop (CONNACK 5, not
    // authorized), then the close; no session.
    assert_eq!(
        next(&mut second, Duration::from_secs(5)).await,
        Next::Data(vec![0x20, 2, 0, 5])
    );
    assert_eq!(
        next(&mut second, Duration::from_secs(5)).await,
        Next::Closed
    );
    let refused = wait_audit(&hub, |e| {
        e.event == "handshake-refused"
            && e.device.map(|d| d.to_string()).as_deref() == Some(kid.id.as_str())
            && e.reason.as_deref() == Some("certificate revoked")
            && e.peer.is_some()
    });
    assert!(refused.is_some(), "{:#?}", audit_entries(&hub));
}

/// Rows in a table of the hub's database, read beside the running hub.
fn rows(hub: &TestHub, table: &str) -> i64 {
    let db = rusqlite::Connection::open_with_flags(
        hub.data.join("hearth.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
        row.get(0)
    })
    .unwrap()
}

/// Waits up to `limit` for `table` to hold `n` rows.
async fn wait_rows(hub: &TestHub, table: &str, n: i64, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if rows(hub, table) == n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test]
async fn a_receipt_nobody_collects_expires() {
    let (hub, kid, mut raw) = texting("[mailbox]\nexpiry_secs = 5\n").await;
    // Mum's device is offline: the message waits, then expires, and its
    // `expired` receipt is queued for the child, gone by then too.
    let receipt = send_text(&mut raw, &kid, "r1", "Mum", 10).await;
    assert_eq!(receipt["status"], "stored", "{receipt}");
    drop(raw);
    assert!(
        wait_rows(&hub, "receipts", 1, Duration::from_secs(10)).await,
        "no receipt was queued"
    );
    assert!(
        wait_rows(&hub, "receipts", 0, Duration::from_secs(10)).await,
        "the queued receipt never expired"
    );
}

#[tokio::test]
#[ignore = "needs root (a tmpfs in a mount namespace of its own); run with -- --ignored"]
async fn a_full_disk_refuses_new_messages_and_keeps_the_stored_ones() {
    // No quota and no floor in the way: the filesystem itself fills up.
    let hub = TestHub::start_on_small_fs(
        "[mailbox]\nmin_free_bytes = 0\nmax_text_bytes = 1048576\n\
         max_sender_bytes_per_day = 1000000000\nmax_pending_bytes_per_device = 1000000000\n\
         max_total_bytes = 1000000000\n",
        "8m",
    );
    let kid = hub.device("Ada", "child");
    hub.device("Mum", "parent");
    let mut raw = Raw::connect(&hub, &kid, false).await;
    assert_eq!(
        raw.subscribe(1, &[&dev_topic(&kid, "inbox")]).await,
        vec![0]
    );
    let mut stored = 0;
    let mut refused = 0;
    for i in 0..40 {
        let receipt = send_text(&mut raw, &kid, &format!("r{i}"), "Mum", 512 * 1024).await;
        match receipt["status"].as_str() {
            Some("stored") => stored += 1,
            Some("refused") => {
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            _ => panic!("{receipt}"),
        }
    }
    assert!(stored >= 2, "only {stored} stored before the disk was full");
    assert_eq!(refused, 3, "the disk never filled ({stored} stored)");
    eprintln!("full disk: {stored} messages stored, then {refused} refused");
    // The hub still serves, and what it said was stored still is: the
    // database, copied out of the namespace, is sound and holds them all.
    hub.hearth_ok(&["status"]);
    let copy = hub.dir.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for file in ["hearth.db", "hearth.db-wal"] {
        let out = std::process::Command::new("nsenter")
            .args(["-t", &hub.pid().to_string(), "-m", "cat"])
            .arg(hub.data.join(file))
            .output()
            .expect("run nsenter");
        if out.status.success() {
            std::fs::write(copy.join(file), out.stdout).unwrap();
        }
    }
    let db = rusqlite::Connection::open(copy.join("hearth.db")).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let messages: i64 = db
        .query_row("SELECT count(*) FROM messages", [], |row| row.get(0))
        .unwrap();
    assert_eq!(messages, stored, "stored messages were lost");
}
