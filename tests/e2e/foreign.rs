//! The hub with foreign clients: mosquitto_pub and mosquitto_sub (Debian's
//! mosquitto-clients, OpenSSL underneath). Ignored by a plain `cargo test`;
//! `.ci/run` installs the tools and runs these with `-- --ignored`.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

fn tls_args(device: &Device, host: &str, port: u16) -> Vec<String> {
    let d = &device.dir;
    vec![
        "-h".into(),
        host.into(),
        "-p".into(),
        port.to_string(),
        "--cafile".into(),
        d.join("ca.pem").display().to_string(),
        "--cert".into(),
        d.join("device.pem").display().to_string(),
        "--key".into(),
        d.join("device.key").display().to_string(),
        "-i".into(),
        device.id.clone(),
    ]
}

fn require(tool: &str) {
    assert!(
        have(tool),
        "{tool} is not installed (apt-get install mosquitto-clients)"
    );
}

#[test]
#[ignore = "needs mosquitto-clients; run with -- --ignored"]
fn mosquitto_clients_exchange_a_message() {
    require("mosquitto_sub");
    let hub = TestHub::start();
    let toy = hub.device("Ada", "child");
    let phone = hub.device("Mum", "parent");
    let topic = format!("hearth/v1/dev/{}/tele/battery", toy.id);
    for version in ["mqttv311", "mqttv5"] {
        let sub = Command::new("mosquitto_sub")
            .args(tls_args(&phone, "127.0.0.1", hub.mqtt.port()))
            .args(["-V", version, "-t", &topic, "-C", "1", "-W", "10"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Publish until the subscriber has its subscription in place.
        let mut out = None;
        let sub = std::sync::Arc::new(std::sync::Mutex::new(Some(sub)));
        for _ in 0..50 {
            let status = Command::new("mosquitto_pub")
                .args(tls_args(&toy, "localhost", hub.mqtt.port()))
                .args(["-V", version, "-t", &topic, "-m", "87"])
                .status()
                .unwrap();
            assert!(
                status.success(),
                "mosquitto_pub {version} failed: {}",
                hub.log()
            );
            std::thread::sleep(Duration::from_millis(100));
            let mut guard = sub.lock().unwrap();
            if let Some(child) = guard.as_mut() {
                if child.try_wait().unwrap().is_some() {
                    out = Some(guard.take().unwrap().wait_with_output().unwrap());
                    break;
                }
            }
        }
        let out = out.expect("mosquitto_sub received nothing");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "87");
    }
}

#[test]
#[ignore = "needs mosquitto-clients; run with -- --ignored"]
fn mosquitto_pub_connects_by_ip_and_by_name() {
    require("mosquitto_pub");
    let hub = TestHub::start();
    let toy = hub.device("Ada", "child");
    let topic = format!("hearth/v1/dev/{}/tele/x", toy.id);
    for host in ["127.0.0.1", "localhost"] {
        let out = Command::new("mosquitto_pub")
            .args(tls_args(&toy, host, hub.mqtt.port()))
            .args(["-t", &topic, "-m", "1", "-d"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "-h {host}: {said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains("received CONNACK (0)"), "-h {host}: {said}");
    }
}

#[test]
#[ignore = "needs mosquitto-clients; run with -- --ignored"]
fn mosquitto_pub_with_a_wrong_client_id_is_not_authorized() {
    require("mosquitto_pub");
    let hub = TestHub::start();
    let toy = hub.device("Ada", "child");
    let mut args = tls_args(&toy, "127.0.0.1", hub.mqtt.port());
    let last = args.len() - 1;
    args[last] = "someone-else".into();
    let out = Command::new("mosquitto_pub")
        .args(&args)
        .args(["-t", "x", "-m", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not authorised"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
#[ignore = "needs curl, openssl and mosquitto-clients; run with -- --ignored"]
async fn curl_and_openssl_alone_enroll_and_the_certificate_connects_with_mosquitto_pub() {
    for tool in ["curl", "openssl", "mosquitto_pub"] {
        require(tool);
    }
    let hub = TestHub::start();
    let mum = hub.device("Mum", "parent");
    hub.hearth_ok(&["member", "add", "Ada", "--role", "child"]);
    let (_, token, uri) = open_pairing(&hub, "Ada", "curl toy", "10m");
    let ca = uri
        .split('&')
        .find_map(|p| p.strip_prefix("ca="))
        .unwrap()
        .to_owned();
    // The documented script, exactly as docs/PAIRING.md shows it.
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/examples/enroll-with-curl.sh"
    );
    let dir = hub.dir.path().join("curl-device");
    let port = hub.enroll.port().to_string();
    // A wrong fingerprint stops the script before the token is sent.
    let wrong = Command::new("bash")
        .args([script, "127.0.0.1", &port, &"0".repeat(64), &token])
        .arg(hub.dir.path().join("wrong"))
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("not the one in the pairing URI"));
    let out = Command::new("bash")
        .args([script, "127.0.0.1", &port, &ca, &token])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        hub.hearth_ok(&["device", "list"]).contains(&id),
        "enrolled device {id:?} is registered"
    );
    // A parent listens; mosquitto_pub with the curl-made key publishes.
    let (parent, mut events) = rumqttc::AsyncClient::new(mqtt_v4(&hub, &mum, &mum.id), 10);
    v4_connected(&mut events).await.unwrap();
    let topic = format!("hearth/v1/dev/{id}/tele/hello");
    parent
        .subscribe(&topic, rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    v4_wait_suback(&mut events).await;
    let publish = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &hub.mqtt.port().to_string()])
        .arg("--cafile")
        .arg(dir.join("ca.pem"))
        .arg("--cert")
        .arg(dir.join("device.pem"))
        .arg("--key")
        .arg(dir.join("device.key"))
        .args(["-i", &id, "-t", &topic, "-m", "made with curl", "-q", "1"])
        .output()
        .unwrap();
    assert!(
        publish.status.success(),
        "{}",
        String::from_utf8_lossy(&publish.stderr)
    );
    let got = v4_next_publish(&mut events, Duration::from_secs(10))
        .await
        .expect("the parent receives it");
    assert_eq!(&got.payload[..], b"made with curl");
}
