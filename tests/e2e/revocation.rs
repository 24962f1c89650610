//! Revocation and narrowing: what a device loses, it loses at once —
//! connections, certificates, subscriptions, retained messages. And a
//! device that keeps trying what it may not cannot hurt anyone else.

use std::time::{Duration, Instant};

use crate::support::*;

fn dev_topic(device: &Device, rest: &str) -> String {
    format!("hearth/v1/dev/{}/{rest}", device.id)
}

#[tokio::test]
async fn a_revoked_device_is_disconnected_within_a_second_and_cannot_return() {
    let hub = TestHub::start();
    let kid = hub.device("Ada", "child");
    let mut raw = Raw::connect(&hub, &kid, false).await;
    let started = Instant::now();
    hub.hearth_ok(&["device", "revoke", &kid.id]);
    assert_eq!(
        raw.quiet(Duration::from_secs(1)).await,
        Next::Closed,
        "still connected after 1 s"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // It cannot come back.
    if let Ok(mut tls) = raw_tls(hub.mqtt, kid.tls()).await {
        send(&mut tls, &connect_packet(false, &kid.id, None)).await;
        assert_eq!(next(&mut tls, Duration::from_secs(5)).await, Next::Closed);
    }
    assert!(wait_audit(&hub, |e| e.event == "admin"
        && e.action.as_deref() == Some("device-revoke"))
    .is_some());
    assert!(wait_audit(&hub, |e| e.event == "handshake-refused"
        && e.reason.as_deref() == Some("certificate revoked"))
    .is_some());
    let list = hub.hearth_ok(&["device", "list"]);
    assert!(list.contains("revoked"), "{list}");
}

#[tokio::test]
async fn a_revoked_devices_retained_messages_and_subscriptions_stop() {
    let hub = TestHub::start();
    let kid = hub.device("Ada", "child");
    let parent = hub.device("Mum", "parent");
    // The toy leaves a retained reading and a persistent subscription.
    let mut options = mqtt_v4(&hub, &kid, &kid.id);
    options.set_clean_session(false);
    let (toy, mut toy_loop) = rumqttc::AsyncClient::new(options, 10);
    v4_connected(&mut toy_loop).await.unwrap();
    toy.subscribe(dev_topic(&kid, "cmd/#"), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    v4_wait_suback(&mut toy_loop).await;
    toy.publish(
        dev_topic(&kid, "tele/battery"),
        rumqttc::QoS::AtLeastOnce,
        true,
        b"55".to_vec(),
    )
    .await
    .unwrap();
    let driver = v4_drive(toy_loop);
    // A parent sees the retained reading.
    let mut p = Raw::connect(&hub, &parent, false).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pkid = 1;
    loop {
        let codes = p.subscribe(pkid, &[&dev_topic(&kid, "tele/#")]).await;
        assert_eq!(codes, vec![0]);
        if let Next::Data(d) = p.quiet(Duration::from_millis(300)).await {
            assert!(d.ends_with(b"55"));
            break;
        }
        assert!(Instant::now() < deadline, "retained message never arrived");
        p = Raw::connect(&hub, &parent, false).await;
        pkid += 1;
    }
    hub.hearth_ok(&["device", "revoke", &kid.id]);

    // A new subscriber gets no retained reading from the revoked toy.
    let mut late = Raw::connect(&hub, &parent, false).await;
    late.subscribe(2, &[&dev_topic(&kid, "tele/#")]).await;
    assert_eq!(
        late.quiet(Duration::from_millis(700)).await,
        Next::Silent,
        "retained message outlived revocation"
    );
    assert!(hub.log().contains("device cut off"), "{}", hub.log());
    driver.abort();
}

#[tokio::test]
async fn removing_a_member_revokes_their_devices() {
    let hub = TestHub::start();
    let kid = hub.device("Ada", "child");
    let mut raw = Raw::connect(&hub, &kid, true).await;
    hub.hearth_ok(&["member", "remove", "Ada", "--yes"]);
    assert_eq!(raw.quiet(Duration::from_secs(1)).await, Next::Closed);
    if let Ok(mut tls) = raw_tls(hub.mqtt, kid.tls()).await {
        send(&mut tls, &connect_packet(false, &kid.id, None)).await;
        assert_eq!(next(&mut tls, Duration::from_secs(5)).await, Next::Closed);
    }
    assert!(!hub.hearth_ok(&["member", "list"]).contains("Ada"));
    assert!(wait_audit(&hub, |e| e.event == "admin"
        && e.action.as_deref() == Some("member-remove"))
    .is_some());
}

fn service(hub: &TestHub) -> Device {
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
    Device::load(id.trim(), &out)
}

#[tokio::test]
async fn a_service_gets_exactly_its_grants_and_loses_them_at_once() {
    let hub = TestHub::start();
    let svc = service(&hub);
    let kid = hub.device("Ada", "child");
    let tele = "hearth/v1/dev/+/tele/#";

    // No grants: nothing, audited.
    let mut raw = Raw::connect(&hub, &svc, false).await;
    assert_eq!(raw.subscribe(1, &[tele]).await, vec![0x80]);
    assert_denied_audited(&hub, &svc, "subscribe", tele);

    hub.hearth_ok(&["grant", &svc.id, tele, "--subscribe"]);
    // A grant change ends the session so it starts with the new grants.
    assert_eq!(raw.next().await, Next::Closed);
    // A persistent session this time: the broker would keep its
    // subscriptions across reconnects.
    let mut raw = Raw::connect_with(&hub, &svc, false, false).await;
    assert_eq!(raw.subscribe(1, &[tele]).await, vec![0]);
    let mut toy = Raw::connect(&hub, &kid, false).await;
    toy.send(&publish_packet(
        false,
        dev_topic(&kid, "tele/t").as_bytes(),
        0,
        false,
        0,
        None,
        b"21",
    ))
    .await;
    match raw.next().await {
        Next::Data(d) => assert!(d.ends_with(b"21")),
        other => panic!("granted telemetry not delivered: {other:?}"),
    }

    // Taking the grant back closes the session, and the old subscription
    // does not survive into the next persistent session.
    hub.hearth_ok(&["revoke-grant", &svc.id, tele, "--subscribe"]);
    assert_eq!(raw.next().await, Next::Closed);
    let mut raw = Raw::connect_with(&hub, &svc, false, false).await;
    toy.send(&publish_packet(
        false,
        dev_topic(&kid, "tele/t").as_bytes(),
        0,
        false,
        0,
        None,
        b"22",
    ))
    .await;
    assert_eq!(raw.quiet(Duration::from_millis(500)).await, Next::Silent);
    assert_eq!(raw.subscribe(2, &[tele]).await, vec![0x80]);
    assert!(wait_audit(&hub, |e| e.event == "admin"
        && e.action.as_deref() == Some("revoke-grant"))
    .is_some());
}

#[test]
fn grants_are_refused_outside_the_namespace_and_on_messages() {
    let hub = TestHub::start();
    let svc = service(&hub);
    let kid = hub.device("Ada", "child");
    for filter in [
        "#",
        "$SYS/#",
        "hearth/#",
        "hearth/v1/dev/+/inbox",
        "hearth/v1/dev/#",
    ] {
        let out = hub.hearth(&["grant", &svc.id, filter, "--subscribe"]);
        assert!(!out.status.success(), "{filter} granted");
    }
    // Grants are for service devices only.
    let out = hub.hearth(&["grant", &kid.id, "hearth/v1/x/#", "--publish"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a service device"));
}

#[tokio::test]
async fn a_device_flooding_denied_publishes_is_cut_off_and_others_carry_on() {
    let hub = TestHub::start();
    let kid = hub.device("Ada", "child");
    let sibling = hub.device("Bo", "child");
    let parent = hub.device("Mum", "parent");
    let mut watcher = Raw::connect(&hub, &parent, false).await;
    assert_eq!(
        watcher
            .subscribe(1, &[&dev_topic(&sibling, "tele/#")])
            .await,
        vec![0]
    );
    let mut good = Raw::connect(&hub, &sibling, false).await;

    let mut flooder = Raw::connect(&hub, &kid, false).await;
    let forbidden = dev_topic(&sibling, "inbox");
    let mut closed = false;
    for i in 0..200u16 {
        flooder
            .send(&publish_packet(
                false,
                forbidden.as_bytes(),
                0,
                false,
                0,
                None,
                &[0; 64],
            ))
            .await;
        if i % 10 == 0 {
            // The others' traffic flows while the flood goes on.
            good.send(&publish_packet(
                false,
                dev_topic(&sibling, "tele/t").as_bytes(),
                0,
                false,
                0,
                None,
                &i.to_be_bytes(),
            ))
            .await;
            match watcher.next().await {
                Next::Data(d) => assert!(d.ends_with(&i.to_be_bytes()), "{d:?}"),
                other => panic!("delivery stalled during the flood: {other:?}"),
            }
        }
        if let Next::Closed = flooder.quiet(Duration::from_millis(1)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "the flooding device was never disconnected");
    assert!(wait_audit(&hub, |e| e.event == "disconnected"
        && e.device.map(|d| d.to_string()) == Some(kid.id.clone()))
    .is_some());
    // The hub is healthy.
    assert!(hub.hearth_ok(&["status"]).contains("connected devices"));
}

#[tokio::test]
async fn the_audit_of_a_noisy_device_is_rate_limited() {
    let hub = TestHub::start();
    let kid = hub.device("Ada", "child");
    // Reconnect and flood until well past the per-minute budget.
    for _ in 0..12 {
        let mut raw = Raw::connect(&hub, &kid, false).await;
        let filters: Vec<String> = (0..20).map(|i| format!("forbidden/{i}")).collect();
        let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
        raw.subscribe(1, &refs).await;
    }
    let entries = audit_entries(&hub);
    let denied = entries.iter().filter(|e| e.event == "denied").count();
    assert!(denied > 0 && denied <= 60, "{denied} denials recorded");
    assert!(
        entries.iter().any(|e| e.event == "suppressed"),
        "no note of the suppressed entries"
    );
}

#[test]
fn the_audit_is_readable_with_the_cli() {
    let hub = TestHub::start();
    let kid = hub.device("Ada", "child");
    hub.hearth_ok(&["device", "revoke", &kid.id]);
    let all = hub.hearth_ok(&["audit"]);
    assert!(
        all.contains("device-revoke") && all.contains("device-issue"),
        "{all}"
    );
    let mine = hub.hearth_ok(&["audit", "--device", &kid.id, "--since", "1h"]);
    assert!(mine.lines().all(|l| l.contains(&kid.id)), "{mine}");
    let none = hub.hearth_ok(&["audit", "--since", "0"]);
    assert!(!none.is_empty());
}

#[test]
fn a_revoked_reference_device_stops_retrying_and_says_why() {
    // Issue 18: a revoked device retried forever with `CertificateUnknown`.
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let hub = TestHub::start();
    let toy = hub.device("Ada", "child");
    let mut run = Command::new(hearth_device_bin())
        .arg("--dir")
        .arg(&toy.dir)
        .args(["run", "--interval", "0.2"])
        .env_remove("HEARTH_DEVICE_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hearth-device");
    // Its stdout is read to the end on a thread, so a later line never
    // meets a closed pipe.
    let stdout = BufReader::new(run.stdout.take().unwrap());
    let (connected_tx, connected) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if line.starts_with("connected") {
                let _ = connected_tx.send(());
            }
        }
    });
    assert!(
        connected.recv_timeout(Duration::from_secs(20)).is_ok(),
        "the device never connected"
    );
    hub.hearth_ok(&["device", "revoke", &toy.id]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = run.kill();
            let mut stderr = String::new();
            let _ = std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut stderr);
            panic!("the revoked device was still retrying after 20 s: {stderr}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("no longer accepts this device") && stderr.contains("pair it again"),
        "{stderr}"
    );
    // Started again (a full TLS handshake, no session to resume), it says
    // so at once rather than retrying.
    let started = Instant::now();
    let again = hearth_device(&toy.dir, &["run", "--interval", "0.2"]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success());
    assert!(stderr.contains("no longer accepts this device"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "{stderr}");
}
