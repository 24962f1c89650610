//! The hub core as a user meets it: start on defaults, issue devices with
//! the CLI, exchange messages over mutual TLS, restart, shut down.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use rumqttc::QoS;

use crate::support::*;

#[tokio::test]
async fn v311_devices_exchange_messages_through_the_hub() {
    let hub = TestHub::start();
    let toy = hub.device("Ada", "child");
    let phone = hub.device("Mum", "parent");
    let topic = format!("hearth/v1/dev/{}/tele/battery", toy.id);

    let (sub, mut sub_loop) = rumqttc::AsyncClient::new(mqtt_v4(&hub, &phone, &phone.id), 10);
    v4_connected(&mut sub_loop).await.unwrap();
    sub.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
    v4_wait_suback(&mut sub_loop).await;

    let (publisher, pub_loop) = rumqttc::AsyncClient::new(mqtt_v4(&hub, &toy, &toy.id), 10);
    let driver = v4_drive(pub_loop);
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"87".to_vec())
        .await
        .unwrap();

    let got = v4_next_publish(&mut sub_loop, Duration::from_secs(10))
        .await
        .expect("message delivered");
    assert_eq!(got.topic, topic);
    assert_eq!(&got.payload[..], b"87");
    driver.abort();
}

#[tokio::test]
async fn v5_devices_exchange_messages_through_the_hub() {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event};

    let hub = TestHub::start();
    let toy = hub.device("Ada", "child");
    let phone = hub.device("Mum", "parent");
    let topic = format!("hearth/v1/dev/{}/cmd/led", toy.id);

    let (sub, mut sub_loop) = AsyncClient::new(mqtt_v5(&hub, &toy, &toy.id), 10);
    sub.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
    let (publisher, mut pub_loop) = AsyncClient::new(mqtt_v5(&hub, &phone, &phone.id), 10);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut subscribed = false;
    let mut published = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => panic!("no delivery within 10 s (subscribed: {subscribed})"),
            event = sub_loop.poll() => match event.expect("subscriber connection") {
                Event::Incoming(Packet::SubAck(_)) => {
                    subscribed = true;
                    publisher.publish(&topic, QoS::AtLeastOnce, false, b"on".to_vec()).await.unwrap();
                    published = true;
                }
                Event::Incoming(Packet::Publish(p)) => {
                    assert!(published);
                    assert_eq!(&p.topic[..], topic.as_bytes());
                    assert_eq!(&p.payload[..], b"on");
                    return;
                }
                _ => {}
            },
            event = pub_loop.poll() => { event.expect("publisher connection"); }
        }
    }
}

#[tokio::test]
async fn tls_1_2_and_1_3_both_work() {
    let hub = TestHub::start();
    let toy = hub.device("Ada", "child");
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(&toy.ca_pem).unwrap())
            .unwrap();
        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(&toy.cert_pem)
            .map(|c| c.unwrap())
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&toy.key_pem).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        let mut tls = raw_tls(hub.mqtt, std::sync::Arc::new(config))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
        send(&mut tls, &connect_packet(false, &toy.id, None)).await;
        assert_eq!(
            next(&mut tls, Duration::from_secs(5)).await,
            Next::Data(vec![0x20, 2, 0, 0])
        );
    }
}

#[tokio::test]
async fn an_empty_client_id_becomes_the_device_id() {
    let hub = TestHub::start();
    let toy = hub.device("Ada", "child");
    let mut tls = raw_tls(hub.mqtt, toy.tls()).await.unwrap();
    send(&mut tls, &connect_packet(false, "", None)).await;
    assert_eq!(
        next(&mut tls, Duration::from_secs(5)).await,
        Next::Data(vec![0x20, 2, 0, 0])
    );
    let status = hub.hearth_ok(&["status"]);
    assert!(
        status.contains(&toy.id),
        "status does not list the device:\n{status}"
    );
}

#[tokio::test]
async fn the_cli_manages_members_and_devices() {
    let hub = TestHub::start();
    hub.hearth_ok(&["member", "add", "Ada", "--role", "child"]);
    hub.hearth_ok(&["member", "add", "Mum", "--role", "parent"]);
    assert_eq!(
        hub.hearth_ok(&["member", "list"]),
        "NAME  ROLE    DEVICES  ONLINE  LAST SEEN\n\
         Ada   child   0        0       never\n\
         Mum   parent  0        0       never\n"
    );

    let again = hub.hearth(&["member", "add", "Ada", "--role", "parent"]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("already exists"), "{err}");

    let nobody = hub.hearth(&[
        "device",
        "issue",
        "--member",
        "Nobody",
        "--label",
        "x",
        "--out",
        "/tmp/never",
    ]);
    assert!(!nobody.status.success());
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("no member named"));

    let bad_name = hub.hearth(&["member", "add", "a/#", "--role", "child"]);
    assert!(!bad_name.status.success());

    let toy = hub.device("Ada", "child");
    let key_mode = std::fs::metadata(toy.dir.join("device.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let list = hub.hearth_ok(&["device", "list"]);
    assert!(
        list.contains(&toy.id) && list.contains("Ada") && list.contains("active"),
        "{list}"
    );
}

#[tokio::test]
async fn a_device_issued_from_its_own_csr_connects() {
    let hub = TestHub::start();
    hub.hearth_ok(&["member", "add", "Ada", "--role", "child"]);
    // The key is made here, "on the device"; only the CSR goes to the hub.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(vec!["whatever".into()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let dir = hub.dir.path().join("own");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("toy.csr"), csr).unwrap();
    let id = hub.hearth_ok(&[
        "device",
        "issue",
        "--member",
        "Ada",
        "--label",
        "toy",
        "--csr",
        dir.join("toy.csr").to_str().unwrap(),
    ]);
    std::fs::write(
        dir.join("device.pem"),
        std::fs::read(dir.join("toy.pem")).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("device.key"), key.serialize_pem()).unwrap();
    let toy = Device::load(id.trim(), &dir);
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(mqtt_v4(&hub, &toy, &toy.id), 10);
    v4_connected(&mut eventloop).await.unwrap();
    // Its connection is recorded as last seen (with the audit batch), as
    // the day only (docs/PRIVACY.md).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let list: serde_json::Value =
            serde_json::from_str(&hub.hearth_ok(&["--json", "device", "list"])).unwrap();
        let seen = list["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == toy.id.as_str())
            .map(|d| d["last_seen"].as_i64());
        if let Some(Some(at)) = seen {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            assert_eq!(at, now - now % 86_400, "last_seen {at}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no last_seen: {list}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The hub never saw the key.
    let key_text = key.serialize_pem();
    let key_body = key_text.lines().nth(1).unwrap();
    for entry in walk(&hub.data) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(key_body),
            "{} holds the device key",
            entry.display()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.is_file() {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn state_survives_a_restart_and_the_ca_is_kept() {
    let mut hub = TestHub::start();
    let toy = hub.device("Ada", "child");
    let ca_before = std::fs::read(hub.data.join("ca.pem")).unwrap();
    let key_before = std::fs::read(hub.data.join("ca.key")).unwrap();
    assert!(hub.terminate().success());

    hub.launch();
    assert_eq!(std::fs::read(hub.data.join("ca.pem")).unwrap(), ca_before);
    assert_eq!(std::fs::read(hub.data.join("ca.key")).unwrap(), key_before);
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(mqtt_v4(&hub, &toy, &toy.id), 10);
    v4_connected(&mut eventloop).await.unwrap();
    assert!(hub.hearth_ok(&["member", "list"]).contains("Ada"));
}

#[test]
fn state_files_are_private() {
    let hub = TestHub::start();
    let mode = |name: &str| {
        std::fs::metadata(hub.data.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        std::fs::metadata(&hub.data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(mode("ca.key"), 0o600);
    assert_eq!(mode("server.key"), 0o600);
    assert_eq!(mode("hearth.db") & 0o077, 0, "database readable by others");
    assert_eq!(mode("admin.sock"), 0o660);
}

#[tokio::test]
async fn sigterm_closes_connections_and_exits_zero() {
    let mut hub = TestHub::start();
    let toy = hub.device("Ada", "child");
    let mut tls = raw_tls(hub.mqtt, toy.tls()).await.unwrap();
    send(&mut tls, &connect_packet(false, &toy.id, None)).await;
    assert_eq!(
        next(&mut tls, Duration::from_secs(5)).await,
        Next::Data(vec![0x20, 2, 0, 0])
    );
    let started = std::time::Instant::now();
    let status = hub.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(next(&mut tls, Duration::from_secs(2)).await, Next::Closed);
    assert!(!hub.socket.exists(), "admin socket left behind");
}

#[test]
fn a_dead_router_makes_the_daemon_exit_non_zero() {
    // Debug builds inject the fault on request; the liveness probe must
    // notice within a few seconds and end the process for a restart.
    let mut hub = TestHub::start_with("", &[("HEARTH_DEBUG_FAULT", "router-unreachable")]);
    let status = hub
        .wait_exit(Duration::from_secs(15))
        .expect("hearthd kept running with a dead router");
    assert_eq!(status.code(), Some(70), "{}", hub.log());
    assert!(hub.log().contains("liveness probe failed"), "{}", hub.log());
}

#[tokio::test]
async fn a_router_thread_that_ends_drains_the_sessions_and_exits_70() {
    // Debug builds report the router thread's end 5 s after start. The
    // daemon must still close and audit its sessions, then exit 70 for a
    // restart (it used to exit on the spot, losing the sessions' entries).
    let mut hub = TestHub::start_with("", &[("HEARTH_DEBUG_FAULT", "router-thread-ends")]);
    let toy = hub.device("Ada", "child");
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(mqtt_v4(&hub, &toy, &toy.id), 10);
    v4_connected(&mut eventloop).await.unwrap();
    let driver = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let status = hub
        .wait_exit(Duration::from_secs(20))
        .expect("hearthd kept running after its router thread ended");
    driver.abort();
    assert_eq!(status.code(), Some(70), "{}", hub.log());
    assert!(
        hub.log().contains("the broker stopped routing"),
        "{}",
        hub.log()
    );
    let conn = rusqlite::Connection::open(hub.data.join("hearth.db")).unwrap();
    let ended: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit WHERE event = 'disconnect' AND device = ?1",
            [&toy.id],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(ended, 1, "the session's end is in the audit log");
}

/// The TCP ports process `pid` listens on: its socket descriptors matched
/// against the kernel's tables of listening sockets.
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, state 0A (LISTEN), inode
            if fields.len() > 9 && fields[3] == "0A" && inodes.iter().any(|i| i == fields[9]) {
                let port = fields[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports.sort_unstable();
    ports
}

#[test]
fn the_broker_core_has_no_listener_of_its_own() {
    // The edge hands rumqttd each client's connection in-process (ADR
    // 0002): the only ports the hub listens on are the ones configured.
    // rumqttd used to listen on two loopback ports behind a password.
    let hub = TestHub::start_with("[web]\nenabled = false\n", &[]);
    let mut expected = vec![hub.mqtt.port(), hub.enroll.port()];
    expected.extend(hub.dev.map(|dev| dev.port()));
    expected.sort_unstable();
    assert_eq!(listening_ports(hub.pid()), expected, "{}", hub.log());
}

#[tokio::test]
async fn the_development_listener_gives_plaintext_access_on_loopback() {
    let hub = TestHub::start_with("[dev]\nlisten = \"127.0.0.1:0\"\n", &[]);
    let dev = hub.dev.expect("dev listener bound");
    assert!(hub.log().contains("plaintext development listener is on"));
    let topic = "hearth/v1/dev/anything/tele/x";
    let (sub, mut sub_loop) = rumqttc::AsyncClient::new(
        rumqttc::MqttOptions::new("maker-1", "127.0.0.1", dev.port()),
        10,
    );
    v4_connected(&mut sub_loop).await.unwrap();
    sub.subscribe(topic, QoS::AtMostOnce).await.unwrap();
    v4_wait_suback(&mut sub_loop).await;
    let (publisher, pub_loop) = rumqttc::AsyncClient::new(
        rumqttc::MqttOptions::new("maker-2", "127.0.0.1", dev.port()),
        10,
    );
    let driver = v4_drive(pub_loop);
    publisher
        .publish(topic, QoS::AtMostOnce, false, b"hi".to_vec())
        .await
        .unwrap();
    let got = v4_next_publish(&mut sub_loop, Duration::from_secs(10))
        .await
        .expect("delivered");
    assert_eq!(&got.payload[..], b"hi");
    driver.abort();
}

#[test]
fn bad_configs_exit_78_naming_the_problem() {
    let cases: &[(&str, &str)] = &[
        ("[mqtt]\nlisten = \"127.0.0.1:0\"\nport = 1\n", "port"),
        ("[mqtt]\nlisten = \"not-an-address\"\n", "line 2"),
        ("[limits]\nmax_conections = 5\n", "max_conections"),
        ("[dev]\nlisten = \"0.0.0.0:1883\"\n", "dev.listen"),
        ("[mqtt]\nlisten = \"192.0.2.1:8883\"\n", "mqtt.listen"),
        (
            "[mqtt]\nlisten = \"127.0.0.1:0\"\n[enroll]\nlisten = \"192.0.2.1:8443\"\n",
            "enroll.listen",
        ),
        (
            "[discovery]\ninterfaces = [\"eth0 wlan0\"]\n",
            "discovery.interfaces",
        ),
        ("[discovery]\nenabled = \"yes\"\n", "line 2"),
    ];
    for (text, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, text).unwrap();
        let out = std::process::Command::new(HEARTHD)
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(78), "config {text:?}: {said}");
        assert!(
            said.contains(needle),
            "config {text:?} should name {needle:?}: {said}"
        );
        assert_eq!(said.matches("ERROR").count(), 1, "one error line: {said}");
    }
}

#[test]
fn an_unusable_data_dir_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    for data in [file.clone(), file.join("below")] {
        let config = dir.path().join("ok.toml");
        std::fs::write(
            &config,
            "[mqtt]\nlisten = \"127.0.0.1:0\"\n[web]\nenabled = false\n",
        )
        .unwrap();
        let out = std::process::Command::new(HEARTHD)
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(out.status.code(), Some(78), "{said}");
        assert!(said.contains("data dir"), "{said}");
    }
}

#[test]
fn a_missing_config_file_exits_78() {
    let out = std::process::Command::new(HEARTHD)
        .args(["--config", "/nonexistent/hearth.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stdout).contains("/nonexistent/hearth.toml"));
}

#[tokio::test]
async fn a_new_connection_of_a_device_takes_over_and_quick_reconnects_work() {
    let hub = TestHub::start();
    let toy = hub.device("Ada", "child");
    let own = format!("hearth/v1/dev/{}/cmd/#", toy.id);
    // MQTT takeover: the second connection with the same client id wins.
    let mut first = Raw::connect(&hub, &toy, false).await;
    let mut second = Raw::connect(&hub, &toy, true).await;
    assert_eq!(first.next().await, Next::Closed);
    assert_eq!(second.subscribe(1, &[&own]).await, vec![0]);
    drop(second);
    // Rapid reconnects with the same client id all get a working session
    // (rumqttd reuses connection ids; a late disconnect must not hit the
    // new connection).
    for round in 0..30u16 {
        let v5 = round % 2 == 0;
        let mut raw = Raw::connect(&hub, &toy, v5).await;
        assert_eq!(
            raw.subscribe(round + 1, &[&own]).await,
            vec![0],
            "round {round}"
        );
    }
}

#[tokio::test]
async fn sessions_open_at_shutdown_are_audited_before_hearthd_exits() {
    let mut hub = TestHub::start();
    let toy = hub.device("Ada", "child");
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(mqtt_v4(&hub, &toy, &toy.id), 10);
    v4_connected(&mut eventloop).await.unwrap();
    let driver = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    assert!(hub.terminate().success());
    driver.abort();
    let conn = rusqlite::Connection::open(hub.data.join("hearth.db")).unwrap();
    let ended: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit WHERE event = 'disconnect' AND device = ?1",
            [&toy.id],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(ended, 1, "the session's end is in the audit log");
}
