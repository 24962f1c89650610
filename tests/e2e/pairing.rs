//! Pairing end to end: `hearth pair` opens a window, `hearth-device` makes
//! its key, enrolls over EST and runs; enrollment refusals are audited and
//! leave the hub serving; renewal retires the old certificate.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use rumqttc::QoS;
use rustls::pki_types::pem::PemObject;

use crate::support::*;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[tokio::test]
async fn a_paired_device_runs_and_a_parent_receives_its_telemetry() {
    let hub = TestHub::start();
    let mum = hub.device("Mum", "parent");
    hub.hearth_ok(&["member", "add", "Ada", "--role", "child"]);
    // The human output carries the token, the URI and a QR code.
    let shown = hub.hearth_ok(&[
        "pair",
        "--member",
        "Ada",
        "--label",
        "robot",
        "--host",
        "127.0.0.1",
    ]);
    assert!(shown.contains('█'), "a QR code is drawn: {shown}");
    let uri = shown
        .lines()
        .find_map(|l| l.strip_prefix("uri:"))
        .expect("uri line")
        .trim()
        .to_owned();
    let token = shown
        .lines()
        .find_map(|l| l.strip_prefix("token:"))
        .expect("token line")
        .trim()
        .to_owned();
    assert!(token.len() >= 32, "at least 128 bits: {token}");
    assert!(uri.contains(&format!("token={token}")), "{uri}");
    let ca_fp = hex::encode(hearth_daemon::ca::fingerprint(
        &rustls_pki_types::CertificateDer::from_pem_file(hub.data.join("ca.pem")).unwrap(),
    ));
    assert!(uri.contains(&format!("ca={ca_fp}")), "{uri}");
    assert!(
        uri.contains(&format!("port={}", hub.enroll.port())),
        "{uri}"
    );
    assert!(uri.contains(&format!("mqtt={}", hub.mqtt.port())), "{uri}");
    assert!(hub.hearth_ok(&["pair", "--list"]).contains("robot"));

    let toy_dir = hub.dir.path().join("robot");
    let id = stdout(&hearth_device(&toy_dir, &["pair", &uri]));
    assert_eq!(mode(&toy_dir), 0o700);
    assert_eq!(mode(&toy_dir.join("device.key")), 0o600);
    // The window closed with its use.
    assert!(hub
        .hearth_ok(&["pair", "--list"])
        .contains("no pairing window"));
    let devices = hub.hearth_ok(&["device", "list"]);
    assert!(
        devices
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("Ada") && l.contains("robot")),
        "{devices}"
    );
    // The key was made on the device and never reached the hub.
    let key = std::fs::read_to_string(toy_dir.join("device.key")).unwrap();
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let key_der = base64::engine::general_purpose::STANDARD
        .decode(&key_body)
        .unwrap();
    // PKCS#8 for P-256: the 32-byte private scalar follows a fixed
    // 36-byte header. Neither it nor its hex may be anywhere in the hub.
    assert_eq!(&key_der[33..36], &[0x01, 0x04, 0x20], "PKCS#8 P-256 layout");
    let scalar = &key_der[36..68];
    let scalar_hex = hex::encode(scalar);
    for file in files_under(&hub.data) {
        let Ok(contents) = std::fs::read(&file) else {
            continue;
        };
        assert!(
            !contents.windows(32).any(|w| w == scalar)
                && !contents
                    .windows(64)
                    .any(|w| w.eq_ignore_ascii_case(scalar_hex.as_bytes())),
            "{} holds the device key",
            file.display()
        );
    }

    // A parent subscribes to the toy's telemetry; the toy runs.
    let (parent, mut events) = rumqttc::AsyncClient::new(mqtt_v4(&hub, &mum, &mum.id), 10);
    v4_connected(&mut events).await.unwrap();
    parent
        .subscribe(format!("hearth/v1/dev/{id}/tele/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    v4_wait_suback(&mut events).await;
    let run = tokio::task::spawn_blocking({
        let dir = toy_dir.clone();
        move || hearth_device(&dir, &["run", "--interval", "0.2", "--count", "3"])
    });
    let got = v4_next_publish(&mut events, Duration::from_secs(15))
        .await
        .expect("telemetry reaches the parent");
    assert_eq!(got.topic, format!("hearth/v1/dev/{id}/tele/status"));
    let reading: serde_json::Value = serde_json::from_slice(&got.payload).unwrap();
    assert_eq!(reading["seq"], 1);
    let out = run.await.unwrap();
    let said = stdout(&out);
    assert!(said.contains(&format!("as {id}")), "{said}");
    assert!(said.contains("sent 3 telemetry"), "{said}");
    // Pairing again with the same URI fails: the token was used once.
    let again = hearth_device(&hub.dir.path().join("robot-2"), &["pair", &uri]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[tokio::test]
async fn a_pairing_uri_with_another_ca_fingerprint_is_refused_by_the_device() {
    let hub = TestHub::start();
    hub.hearth_ok(&["member", "add", "Ada", "--role", "child"]);
    let (_, token, uri) = open_pairing(&hub, "Ada", "robot", "10m");
    let forged = uri.replace(
        &uri[uri.find("ca=").unwrap() + 3..uri.find("ca=").unwrap() + 3 + 64],
        &"ab".repeat(32),
    );
    let out = hearth_device(&hub.dir.path().join("robot"), &["pair", &forged]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match the fingerprint"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The token was not sent, so the window is still open and usable.
    assert!(hub.hearth_ok(&["pair", "--list"]).contains("robot"));
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

fn refusals(hub: &TestHub) -> Vec<(String, String, String)> {
    audit_entries(hub)
        .into_iter()
        .filter(|e| e.event == "enroll-refused")
        .map(|e| {
            (
                e.action.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.peer.unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn enrollment_refusals_get_clear_statuses_are_audited_and_the_hub_keeps_serving() {
    let hub = TestHub::start();
    let mum = hub.device("Mum", "parent");
    hub.hearth_ok(&["member", "add", "Ada", "--role", "child"]);
    let (_key, csr) = key_and_csr();
    let post = |token: Option<String>, body: Vec<u8>| {
        let hub = &hub;
        async move {
            est_request(
                hub,
                "127.0.0.1",
                None,
                "POST",
                "simpleenroll",
                token.as_deref(),
                &body,
            )
            .await
        }
    };

    // cacerts: the hub CA, base64 PKCS#7.
    let cacerts = est_request(&hub, "127.0.0.1", None, "GET", "cacerts", None, b"").await;
    assert_eq!(cacerts.status, 200);
    assert!(
        cacerts.headers.contains("application/pkcs7-mime"),
        "{}",
        cacerts.headers
    );
    let der = base64::engine::general_purpose::STANDARD
        .decode(cacerts.body.split_whitespace().collect::<String>())
        .unwrap();
    let certs = hearth_protocol::pki::certificates(&der).unwrap();
    assert_eq!(certs.len(), 1);
    assert_eq!(
        certs[0],
        rustls_pki_types::CertificateDer::from_pem_file(hub.data.join("ca.pem"))
            .unwrap()
            .to_vec()
    );
    assert_eq!(
        est_request(&hub, "127.0.0.1", None, "GET", "csrattrs", None, b"")
            .await
            .status,
        404
    );
    assert_eq!(
        est_request(&hub, "127.0.0.1", None, "GET", "simpleenroll", None, b"")
            .await
            .status,
        405
    );

    // Outside any window: refused at once, whatever the token.
    let outside = post(Some("0".repeat(40)), csr.clone()).await;
    assert_eq!(outside.status, 403, "{outside:?}");

    let (_, token, _) = open_pairing(&hub, "Ada", "robot", "10m");
    // No credentials: 401 with a challenge.
    let bare = post(None, csr.clone()).await;
    assert_eq!(bare.status, 401);
    assert!(
        bare.headers.contains("www-authenticate: basic"),
        "{}",
        bare.headers
    );
    // A request with a bad signature (no proof of possession): 400, and
    // the token is not spent.
    let mut forged = base64::engine::general_purpose::STANDARD
        .decode(&csr)
        .unwrap();
    let last = forged.len() - 1;
    forged[last] ^= 0x55;
    let bad_sig = post(
        Some(token.clone()),
        base64::engine::general_purpose::STANDARD
            .encode(&forged)
            .into_bytes(),
    )
    .await;
    assert_eq!(bad_sig.status, 400, "{bad_sig:?}");
    assert_eq!(
        post(Some(token.clone()), b"not base64 !!".to_vec())
            .await
            .status,
        400
    );
    // Oversized: 413.
    let huge = post(Some(token.clone()), vec![b'A'; 64 * 1024]).await;
    assert_eq!(huge.status, 413, "{huge:?}");
    // The right token with a good request: 200 and a certificate.
    let ok = post(Some(token.clone()), csr.clone()).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let der = base64::engine::general_purpose::STANDARD
        .decode(ok.body.split_whitespace().collect::<String>())
        .unwrap();
    let issued = hearth_protocol::pki::certificates(&der).unwrap();
    assert!(hearth_daemon::ca::device_id_of(&issued[0]).is_some());

    // Reused token: while another window is open, 401; with none, 403.
    let (second, _, _) = open_pairing(&hub, "Ada", "second", "10m");
    assert_eq!(post(Some(token.clone()), csr.clone()).await.status, 401);
    hub.hearth_ok(&["pair", "--cancel", &second.to_string()]);
    assert_eq!(post(Some(token.clone()), csr.clone()).await.status, 403);
    // A cancelled window's token and an expired window's token.
    let (cancelled, cancelled_token, _) = open_pairing(&hub, "Ada", "c", "10m");
    let (_, _keep_open, _) = open_pairing(&hub, "Ada", "k", "10m");
    hub.hearth_ok(&["pair", "--cancel", &cancelled.to_string()]);
    assert_eq!(post(Some(cancelled_token), csr.clone()).await.status, 401);
    let (_, expiring_token, _) = open_pairing(&hub, "Ada", "e", "1s");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(post(Some(expiring_token), csr.clone()).await.status, 401);

    // Wrong tokens lock the source address out, even for a right token;
    // another address is unaffected.
    let (_, good, _) = open_pairing(&hub, "Ada", "lock", "10m");
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(post(Some("f".repeat(40)), csr.clone()).await.status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(post(Some(good.clone()), csr.clone()).await.status, 429);
    let elsewhere = est_request(
        &hub,
        "127.0.0.2",
        None,
        "POST",
        "simpleenroll",
        Some(&good),
        &csr,
    )
    .await;
    assert_eq!(elsewhere.status, 200, "{elsewhere:?}");

    // Every refusal is audited with the peer address and a reason.
    let audited = refusals(&hub);
    for reason in [
        "no pairing window is open",
        "HTTP Basic",
        "signature",
        "too large",
        "wrong, used or expired pairing token",
        "locked out",
        "too many wrong tokens",
    ] {
        assert!(
            audited
                .iter()
                .any(|(_, r, peer)| r.contains(reason) && peer == "127.0.0.1"),
            "no audit entry saying {reason:?}: {audited:?}"
        );
    }
    // The hub kept serving: MQTT and the admin socket answer.
    let (_client, mut events) = rumqttc::AsyncClient::new(mqtt_v4(&hub, &mum, &mum.id), 10);
    v4_connected(&mut events).await.unwrap();
    hub.hearth_ok(&["status"]);
}

#[tokio::test]
async fn renewal_gives_a_new_certificate_and_the_old_one_stops_once_the_new_is_used() {
    let hub = TestHub::start();
    hub.hearth_ok(&["member", "add", "Ada", "--role", "child"]);
    let (_, _, uri) = open_pairing(&hub, "Ada", "robot", "10m");
    let dir = hub.dir.path().join("robot");
    let id = stdout(&hearth_device(&dir, &["pair", &uri]));
    let before = Device::load(&id, &dir);
    stdout(&hearth_device(&dir, &["renew"]));
    let after = Device::load(&id, &dir);
    assert_ne!(before.cert_pem, after.cert_pem);
    assert_ne!(before.key_pem, after.key_pem, "renewal makes a new key");
    assert_eq!(mode(&dir.join("device.key")), 0o600);
    // Until the new certificate is used, the old one still works (a device
    // that lost the answer is not locked out).
    assert!(
        raw_tls_mqtt_ok(&hub, &before).await,
        "old certificate within grace"
    );
    // The new one is used...
    stdout(&hearth_device(
        &dir,
        &["run", "--interval", "0.1", "--count", "1"],
    ));
    // ...and from then on the old one is refused, and audited.
    assert!(
        !raw_tls_mqtt_ok(&hub, &before).await,
        "old certificate after the new was used"
    );
    assert!(raw_tls_mqtt_ok(&hub, &after).await);
    assert!(wait_audit(&hub, |e| e.event == "handshake-refused"
        && e.device.map(|d| d.to_string()) == Some(id.clone()))
    .is_some());
    // Renewal needs the device's certificate.
    let (_key, csr) = key_and_csr();
    let anonymous = est_request(
        &hub,
        "127.0.0.1",
        None,
        "POST",
        "simplereenroll",
        None,
        &csr,
    )
    .await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    let renewed = est_request(
        &hub,
        "127.0.0.1",
        Some(&after),
        "POST",
        "simplereenroll",
        None,
        &csr,
    )
    .await;
    assert_eq!(renewed.status, 200, "{renewed:?}");
    // Renewing again and again is capped: three live certificates (here
    // the current one and two pending renewals), then a clear refusal.
    stdout(&hearth_device(&dir, &["renew"]));
    let again = hearth_device(&dir, &["renew"]);
    assert!(
        !again.status.success(),
        "a fourth live certificate is refused"
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("renewed recently"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let after = Device::load(&id, &dir);
    // A revoked device cannot renew: its handshake is refused.
    hub.hearth_ok(&["device", "revoke", &id]);
    let tls = tokio::net::TcpStream::connect(hub.enroll).await.unwrap();
    let refused = tokio_rustls::TlsConnector::from(after.tls())
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tls,
        )
        .await;
    if let Ok(mut stream) = refused {
        // TLS 1.3 reports the client-certificate refusal on first read.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = stream
            .write_all(b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut buf = [0u8; 64];
        assert!(matches!(stream.read(&mut buf).await, Ok(0) | Err(_)));
    }
}

/// Whether a device gets a CONNACK over mutual TLS.
async fn raw_tls_mqtt_ok(hub: &TestHub, device: &Device) -> bool {
    let (_client, mut events) = rumqttc::AsyncClient::new(mqtt_v4(hub, device, &device.id), 10);
    let ok = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    ok
}
