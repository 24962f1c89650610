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
