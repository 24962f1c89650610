//! What the hub does for toy makers: it checks a device's description
//! when it arrives, and `hearth device check` reports what it saw of a
//! device's sessions, line by line.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};

use crate::support::*;

const GOOD_META: &str = r#"{"v":1,"maker":"Acme Toys","model":"Robo 2","firmware":"1.4.0",
    "telemetry":[{"name":"temp","type":"number","unit":"°C"}],
    "commands":[{"name":"led","args":[{"name":"on","type":"boolean"}]}]}"#;

async fn v5_connected(hub: &TestHub, device: &Device) -> (AsyncClient, EventLoop) {
    let (client, mut events) = AsyncClient::new(mqtt_v5(hub, device, &device.id), 10);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(P5::ConnAck(_)))) => return (client, events),
            Ok(Ok(_)) => {}
            other => panic!("no CONNACK: {other:?}"),
        }
    }
}

/// Publishes at QoS 1 (retained) and returns the PUBACK's reason.
async fn publish_reason(
    client: &AsyncClient,
    events: &mut EventLoop,
    topic: &str,
    payload: &str,
) -> PubAckReason {
    client
        .publish(topic, QoS::AtLeastOnce, true, payload.to_owned())
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(P5::PubAck(ack)))) => return ack.reason,
            Ok(Ok(_)) => {}
            other => panic!("no PUBACK: {other:?}"),
        }
    }
}

/// `hearth device check ID`'s report once it contains `wanted` (the
/// edge and the mailbox record as packets pass; under load a beat
/// behind), or the last one after 10 s; with its exit status.
fn check_until(hub: &TestHub, id: &str, wanted: &str) -> (bool, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = hub.hearth(&["device", "check", id]);
        let report = String::from_utf8_lossy(&out.stdout).to_string();
        if report.contains(wanted) || std::time::Instant::now() > deadline {
            return (out.status.success(), report);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_description_is_refused_with_its_reason_and_a_good_one_is_kept() {
    let hub = TestHub::start();
    let toy = hub.device("Ada", "child");
    let mum = hub.device("Mum", "parent");
    let meta = format!("hearth/v1/dev/{}/meta", toy.id);
    let (client, mut events) = v5_connected(&hub, &toy).await;
    assert_eq!(
        publish_reason(&client, &mut events, &meta, GOOD_META).await,
        PubAckReason::Success
    );
    let bad = GOOD_META.replace("\"temp\"", "\"Temp/../x\"");
    assert_eq!(
        publish_reason(&client, &mut events, &meta, &bad).await,
        PubAckReason::PayloadFormatInvalid
    );
    let denied = wait_audit(&hub, |e| e.event == "denied").expect("the refusal is audited");
    assert_eq!(
        denied.reason.as_deref(),
        Some("a field or command name is not [a-z0-9_]{1,32}")
    );
    // A parent reads the good description, retained; the bad one never
    // reached the broker.
    let (parent, mut parent_events) = v5_connected(&hub, &mum).await;
    parent
        .subscribe("hearth/v1/dev/+/meta", QoS::AtMostOnce)
        .await
        .unwrap();
    let got = loop {
        match tokio::time::timeout(Duration::from_secs(10), parent_events.poll()).await {
            Ok(Ok(Event::Incoming(P5::Publish(p)))) => break p,
            Ok(Ok(_)) => {}
            other => panic!("no description: {other:?}"),
        }
    };
    assert_eq!(got.payload, GOOD_META.as_bytes());
}

#[tokio::test(flavor = "multi_thread")]
async fn device_check_passes_a_well_behaved_toy_and_fails_a_reconnection_storm() {
    let hub = TestHub::start();
    let toy = hub.device("Ada", "child");
    let check = |id: &str| hub.hearth(&["device", "check", id]);
    // Never connected: the report says so, and fails.
    let out = check(&toy.id);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no session seen"));

    let (client, mut events) = v5_connected(&hub, &toy).await;
    let own = |rest: &str| format!("hearth/v1/dev/{}/{rest}", toy.id);
    client
        .subscribe(own("cmd/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .subscribe(own("inbox"), QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        publish_reason(&client, &mut events, &own("meta"), GOOD_META).await,
        PubAckReason::Success
    );
    for _ in 0..3 {
        publish_reason(&client, &mut events, &own("tele/temp"), "21.5").await;
    }
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), events.poll()).await;
    drop(events);
    // The telemetry is reported when the connection's upstream half ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (out, report) = loop {
        let out = check(&toy.id);
        let report = String::from_utf8_lossy(&out.stdout).to_string();
        if report.contains("at most 4 bytes") || std::time::Instant::now() > deadline {
            break (out, report);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(out.status.success(), "{report}");
    for line in [
        "pass  TLS                  TLS 1.3",
        "pass  MQTT                 MQTT 5",
        "pass  keep-alive           10 s",
        "pass  inbox",
        "pass  commands",
        "pass  description",
        "pass  telemetry            at most 4 bytes",
        "pass  reconnect back-off",
        "pass  certificate",
    ] {
        assert!(report.contains(line), "{line:?} missing from\n{report}");
    }

    // A toy that loses its connection (no DISCONNECT) and reconnects at
    // once, again and again.
    for _ in 0..4 {
        let (client, events) = v5_connected(&hub, &toy).await;
        drop((client, events));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (passed, report) = check_until(&hub, &toy.id, "FAIL  reconnect back-off");
    assert!(!passed, "{report}");
    assert!(report.contains("FAIL  reconnect back-off"), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn device_check_fails_a_toy_that_never_acknowledges_a_message() {
    let hub = TestHub::start();
    let mum = hub.device("Mum", "parent");
    let toy = hub.device("Ada", "child");
    let (client, mut events) = v5_connected(&hub, &toy).await;
    client
        .subscribe(format!("hearth/v1/dev/{}/inbox", toy.id), QoS::AtLeastOnce)
        .await
        .unwrap();
    let sent = hearth_device(&mum.dir, &["send", "--to", "Ada", "--text", "bath time"]);
    assert!(sent.status.success());
    // It takes the delivery (rumqttc PUBACKs the MQTT packet) but never
    // sends the mailbox's ack.
    let delivered = loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(P5::Publish(p)))) => break p,
            Ok(Ok(_)) => {}
            other => panic!("no delivery: {other:?}"),
        }
    };
    assert!(String::from_utf8_lossy(&delivered.payload).contains("bath time"));
    let (passed, report) = check_until(&hub, &toy.id, "FAIL  acknowledgements");
    assert!(!passed, "{report}");
    assert!(report.contains("FAIL  acknowledgements"), "{report}");
    // The reference device acknowledges, and passes.
    let ada = hub.device("Ada", "child");
    let sent = hearth_device(&mum.dir, &["send", "--to", &ada.id, "--text", "story"]);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let inbox = hearth_device(&ada.dir, &["inbox", "--wait", "2"]);
    assert!(String::from_utf8_lossy(&inbox.stdout).contains("story"));
    let (_, report) = check_until(&hub, &ada.id, "pass  acknowledgements     1 acks");
    assert!(
        report.contains("pass  acknowledgements     1 acks for 1 deliveries"),
        "{report}"
    );
}
