//! The Prometheus endpoint: off by default, on its own loopback listener
//! when enabled, in the text format, with no names, labels or ids in it.

use std::io::{Read, Write};
use std::time::Duration;

use hearth_protocol::admin::{AdminRequest, AdminResponse};

use crate::support::*;

pub fn metrics_address(hub: &TestHub) -> Option<String> {
    let AdminResponse::Status(status) = admin_request(&hub.socket, &AdminRequest::Status).unwrap()
    else {
        panic!("no status");
    };
    status
        .listeners
        .into_iter()
        .find(|l| l.name == "metrics")
        .map(|l| l.address)
}

/// One HTTP/1.1 request; (status code, body).
pub fn get(address: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The samples of a text-format exposition: name with labels → value.
/// Panics on a line that is neither a comment nor `name{labels} value`.
pub fn samples(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let value: f64 = value.parse().unwrap_or_else(|e| panic!("{l:?}: {e}"));
            let bare = name.split('{').next().unwrap();
            assert!(
                bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "bad metric name in {l:?}"
            );
            (name.to_owned(), value)
        })
        .collect()
}

#[test]
fn there_is_no_metrics_listener_unless_it_is_enabled() {
    let hub = TestHub::start();
    assert_eq!(metrics_address(&hub), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scrape_parses_and_counts_handshakes_connections_and_the_mailbox() {
    let hub = TestHub::start_with("[metrics]\nenabled = true\nlisten = \"127.0.0.1:0\"\n", &[]);
    let address = metrics_address(&hub).expect("a metrics listener in status");
    assert!(address.starts_with("127.0.0.1:"), "{address}");
    let mum = hub.device("Mum", "parent");
    let ada = hub.device("Ada", "child");
    let _raw = Raw::connect(&hub, &ada, false).await;
    let sent = hearth_device(&mum.dir, &["send", "--to", "Ada", "--text", "hello"]);
    assert!(sent.status.success());
    // A revoked device tries to come back: a refusal of class "revoked".
    let gone = hub.device("Bo", "child");
    hub.hearth_ok(&["device", "revoke", &gone.id]);
    if let Ok(mut tls) = raw_tls(hub.mqtt, gone.tls()).await {
        send(&mut tls, &connect_packet(false, &gone.id, None)).await;
        let _ = next(&mut tls, Duration::from_secs(5)).await;
    }
    // Mum's device has just sent and gone: once its session has ended,
    // Ada's raw connection is the one left.
    let scrape = move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = get(&address, "/metrics");
            let connected = samples(&body).get("hearth_connected_devices").copied();
            if connected == Some(1.0) || std::time::Instant::now() > deadline {
                return (status, body);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (status, body) = tokio::task::spawn_blocking(scrape).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let s = samples(&body);
    assert_eq!(s["hearth_connected_devices"], 1.0, "{body}");
    assert!(
        s[r#"hearth_handshakes_total{result="accepted",reason=""}"#] >= 2.0,
        "{body}"
    );
    assert_eq!(
        s.get(r#"hearth_handshakes_total{result="refused",reason="revoked"}"#),
        Some(&1.0),
        "{body}"
    );
    // Mum's message waits for Ada's device, which has not read it.
    assert_eq!(s["hearth_mailbox_messages"], 1.0, "{body}");
    assert!(s["hearth_mailbox_bytes"] > 0.0);
    assert!(s["hearth_audit_rows"] > 0.0);
    assert!(s["hearth_process_resident_bytes"] > 1e6);
    assert!(s["hearth_process_open_fds"] > 3.0);
    // Nothing that names anyone.
    for secret in [
        "Mum",
        "Ada",
        "Bo",
        &ada.id,
        &mum.id,
        &gone.id,
        "hello",
        "test device",
    ] {
        assert!(!body.contains(secret), "{secret} in\n{body}");
    }
    let address = metrics_address(&hub).unwrap();
    let (status, _) = tokio::task::spawn_blocking(move || get(&address, "/"))
        .await
        .unwrap();
    assert_eq!(status, 404);
}
