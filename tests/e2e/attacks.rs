//! The attack matrix: one named test per way an MQTT broker's authorization
//! has gone wrong elsewhere. Each asserts both the refusal a client sees and
//! the audit entry an administrator sees, against the real daemon over real
//! mutual TLS.

use std::time::Duration;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use time::OffsetDateTime;

use crate::support::*;

const V4_FAIL: u8 = 0x80;
const V5_NOT_AUTHORIZED: u8 = 0x87;

fn household() -> (TestHub, Device, Device, Device) {
    let hub = TestHub::start();
    let kid = hub.device("Ada", "child");
    let sibling = hub.device("Bo", "child");
    let parent = hub.device("Mum", "parent");
    (hub, kid, sibling, parent)
}

fn dev_topic(device: &Device, rest: &str) -> String {
    format!("hearth/v1/dev/{}/{rest}", device.id)
}

/// Asserts the audit holds a refused CONNECT for `device` with `reason`.
fn assert_connect_refused_audited(hub: &TestHub, device: &Device, reason: &str) {
    let found = wait_audit(hub, |e| {
        e.event == "connect-refused"
            && e.device.map(|d| d.to_string()).as_deref() == Some(device.id.as_str())
            && e.reason.as_deref().is_some_and(|r| r.contains(reason))
    });
    assert!(
        found.is_some(),
        "no connect-refused audit ({reason}):\n{:#?}",
        audit_entries(hub)
    );
}

/// Asserts a handshake refusal was audited with `reason` (and `device`, when
/// the certificate was the hub's own).
fn assert_handshake_refused_audited(hub: &TestHub, device: Option<&Device>, reason: &str) {
    let found = wait_audit(hub, |e| {
        e.event == "handshake-refused"
            && e.reason.as_deref() == Some(reason)
            && device
                .is_none_or(|d| e.device.map(|x| x.to_string()).as_deref() == Some(d.id.as_str()))
            && e.peer.is_some()
    });
    assert!(
        found.is_some(),
        "no handshake-refused audit ({reason}):\n{:#?}",
        audit_entries(hub)
    );
}

async fn refused_client_id(id: &str) {
    let hub = TestHub::start();
    let kid = hub.device("Ada", "child");
    for v5 in [false, true] {
        let mut tls = raw_tls(hub.mqtt, kid.tls()).await.unwrap();
        send(&mut tls, &connect_packet(v5, id, None)).await;
        let expected = if v5 {
            vec![0x20, 3, 0, 0x87, 0]
        } else {
            vec![0x20, 2, 0, 5]
        };
        assert_eq!(
            next(&mut tls, Duration::from_secs(5)).await,
            Next::Data(expected),
            "{id:?}"
        );
    }
    assert_connect_refused_audited(&hub, &kid, "is not the certificate's device id");
}

// ---- identity: client ids and certificates ----

#[tokio::test]
async fn client_id_plus_is_refused() {
    refused_client_id("+").await;
}

#[tokio::test]
async fn client_id_hash_is_refused() {
    refused_client_id("#").await;
}

#[tokio::test]
async fn client_id_slash_is_refused() {
    refused_client_id("a/b").await;
}

#[tokio::test]
async fn client_id_very_long_is_refused() {
    refused_client_id(&"x".repeat(5000)).await;
}

#[tokio::test]
async fn client_id_of_another_device_is_refused() {
    let hub = TestHub::start();
    let kid = hub.device("Ada", "child");
    let parent = hub.device("Mum", "parent");
    let mut tls = raw_tls(hub.mqtt, kid.tls()).await.unwrap();
    send(&mut tls, &connect_packet(false, &parent.id, None)).await;
    assert_eq!(
        next(&mut tls, Duration::from_secs(5)).await,
        Next::Data(vec![0x20, 2, 0, 5])
    );
    assert_connect_refused_audited(&hub, &kid, &parent.id);
}

#[tokio::test]
async fn empty_client_id_binds_to_the_certificate_not_to_a_choice() {
    let hub = TestHub::start();
    let kid = hub.device("Ada", "child");
    let mut tls = raw_tls(hub.mqtt, kid.tls()).await.unwrap();
    send(&mut tls, &connect_packet(false, "", None)).await;
    assert_eq!(
        next(&mut tls, Duration::from_secs(5)).await,
        Next::Data(vec![0x20, 2, 0, 0])
    );
    // The session is the certificate's device, and only its topics are open.
    send(&mut tls, &subscribe_packet(false, 1, &[b"#"])).await;
    assert_eq!(
        next(&mut tls, Duration::from_secs(5)).await,
        Next::Data(vec![0x90, 3, 0, 1, V4_FAIL])
    );
    assert!(wait_audit(&hub, |e| e.event == "connect"
        && e.device.map(|d| d.to_string()) == Some(kid.id.clone()))
    .is_some());
    assert_denied_audited(&hub, &kid, "subscribe", "#");
}

fn forge(
    hub: &TestHub,
    device_id: &str,
    from: OffsetDateTime,
    until: OffsetDateTime,
    issuer: Option<&Issuer<'_, KeyPair>>,
) -> Device {
    let ca_pem = std::fs::read_to_string(hub.data.join("ca.pem")).unwrap();
    let hub_issuer;
    let issuer = match issuer {
        Some(i) => i,
        None => {
            let key = KeyPair::from_pem(&std::fs::read_to_string(hub.data.join("ca.key")).unwrap())
                .unwrap();
            hub_issuer = Issuer::from_ca_cert_pem(&ca_pem, key).unwrap();
            &hub_issuer
        }
    };
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, device_id);
    params.subject_alt_names = vec![SanType::URI(
        format!("urn:hearth:device:{device_id}").try_into().unwrap(),
    )];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = from;
    params.not_after = until;
    let cert = params.signed_by(&key, issuer).unwrap();
    Device {
        id: device_id.to_owned(),
        dir: hub.dir.path().to_owned(),
        cert_pem: cert.pem().into_bytes(),
        key_pem: key.serialize_pem().into_bytes(),
        ca_pem: ca_pem.into_bytes(),
    }
}

async fn handshake_fails(hub: &TestHub, device: &Device) {
    if let Ok(mut tls) = raw_tls(hub.mqtt, device.tls()).await {
        send(&mut tls, &connect_packet(false, &device.id, None)).await;
        assert_eq!(next(&mut tls, Duration::from_secs(5)).await, Next::Closed);
    }
}

#[tokio::test]
async fn certificate_not_yet_valid_is_refused() {
    let hub = TestHub::start();
    let kid = hub.device("Ada", "child");
    let now = OffsetDateTime::now_utc();
    let early = forge(
        &hub,
        &kid.id,
        now + time::Duration::days(2),
        now + time::Duration::days(30),
        None,
    );
    handshake_fails(&hub, &early).await;
    assert_handshake_refused_audited(&hub, None, "certificate not yet valid");
}

#[tokio::test]
async fn certificate_expired_is_refused() {
    let hub = TestHub::start();
    let kid = hub.device("Ada", "child");
    let now = OffsetDateTime::now_utc();
    let old = forge(
        &hub,
        &kid.id,
        now - time::Duration::days(30),
        now - time::Duration::days(2),
        None,
    );
    handshake_fails(&hub, &old).await;
    assert_handshake_refused_audited(&hub, None, "certificate expired");
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let hub = TestHub::start();
    let kid = hub.device("Ada", "child");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = Issuer::new(params, key);
    let now = OffsetDateTime::now_utc();
    let fake = forge(
        &hub,
        &kid.id,
        now - time::Duration::days(1),
        now + time::Duration::days(30),
        Some(&issuer),
    );
    handshake_fails(&hub, &fake).await;
    assert_handshake_refused_audited(&hub, None, "certificate from an unknown CA");
}

#[tokio::test]
async fn certificate_of_a_revoked_device_is_refused() {
    let hub = TestHub::start();
    let kid = hub.device("Ada", "child");
    hub.hearth_ok(&["device", "revoke", &kid.id]);
    handshake_fails(&hub, &kid).await;
    assert_handshake_refused_audited(&hub, Some(&kid), "certificate revoked");
}

#[tokio::test]
async fn certificate_reused_after_re_pairing_stays_dead() {
    let hub = TestHub::start();
    let old = hub.device("Ada", "child");
    // The family re-pairs the same toy: the old device is removed, a new
    // certificate (and id) issued.
    hub.hearth_ok(&["device", "remove", &old.id]);
    let new = hub.device("Ada", "child");
    assert_ne!(old.id, new.id);
    handshake_fails(&hub, &old).await;
    assert_handshake_refused_audited(&hub, Some(&old), "certificate revoked");
    Raw::connect(&hub, &new, false).await;
}

#[tokio::test]
async fn certificate_signed_by_the_hub_but_never_issued_is_refused() {
    let hub = TestHub::start();
    let now = OffsetDateTime::now_utc();
    let stray = forge(
        &hub,
        "0000000000000000000000000b",
        now - time::Duration::days(1),
        now + time::Duration::days(30),
        None,
    );
    handshake_fails(&hub, &stray).await;
    assert_handshake_refused_audited(&hub, Some(&stray), "unknown device");
}

#[tokio::test]
async fn certificate_forged_with_the_hub_key_for_a_registered_id_is_refused() {
    // Even holding the CA key (a stolen hub backup), a new certificate for
    // a registered device's id is refused: the fingerprint decides.
    let hub = TestHub::start();
    let kid = hub.device("Ada", "child");
    let now = OffsetDateTime::now_utc();
    let twin = forge(
        &hub,
        &kid.id,
        now - time::Duration::days(1),
        now + time::Duration::days(30),
        None,
    );
    handshake_fails(&hub, &twin).await;
    assert_handshake_refused_audited(&hub, Some(&kid), "unknown device");
}

// ---- subscribe ----

async fn subscribe_denied(filter_for: impl Fn(&Device, &Device, &Device) -> String, who: usize) {
    let (hub, kid, sibling, parent) = household();
    let filter = filter_for(&kid, &sibling, &parent);
    let subject = [&kid, &sibling, &parent][who];
    for v5 in [false, true] {
        let mut raw = Raw::connect(&hub, subject, v5).await;
        let codes = raw.subscribe(7, &[&filter]).await;
        assert_eq!(
            codes,
            vec![if v5 { V5_NOT_AUTHORIZED } else { V4_FAIL }],
            "{filter} v5={v5}"
        );
    }
    assert_denied_audited(&hub, subject, "subscribe", &filter);
}

#[tokio::test]
async fn subscribe_hash_is_denied() {
    subscribe_denied(|_, _, _| "#".into(), 0).await;
}

#[tokio::test]
async fn subscribe_plus_levels_is_denied() {
    subscribe_denied(|_, _, _| "+/+/+/+/+".into(), 2).await;
}

#[tokio::test]
async fn subscribe_sys_is_denied() {
    subscribe_denied(|_, _, _| "$SYS/#".into(), 2).await;
}

#[tokio::test]
async fn subscribe_another_devices_inbox_is_denied() {
    subscribe_denied(|_, sibling, _| dev_topic(sibling, "inbox"), 0).await;
}

#[tokio::test]
async fn subscribe_another_devices_inbox_is_denied_even_for_a_parent() {
    subscribe_denied(|kid, _, _| dev_topic(kid, "inbox"), 2).await;
}

#[tokio::test]
async fn subscribe_another_devices_cmd_is_denied() {
    subscribe_denied(|_, sibling, _| dev_topic(sibling, "cmd/#"), 0).await;
}

#[tokio::test]
async fn subscribe_a_parents_filter_from_a_child_is_denied() {
    subscribe_denied(|_, _, _| "hearth/v1/dev/+/tele/#".into(), 0).await;
}

#[tokio::test]
async fn subscribe_shared_to_another_devices_inbox_is_denied() {
    subscribe_denied(
        |_, sibling, _| format!("$share/g/{}", dev_topic(sibling, "inbox")),
        0,
    )
    .await;
}

#[tokio::test]
async fn subscribe_with_some_filters_denied_keeps_the_allowed_ones() {
    let (hub, kid, sibling, parent) = household();
    for v5 in [false, true] {
        let mut raw = Raw::connect(&hub, &kid, v5).await;
        let denied = dev_topic(&sibling, "inbox");
        let codes = raw
            .subscribe(3, &["#", &dev_topic(&kid, "cmd/#"), &denied])
            .await;
        let fail = if v5 { V5_NOT_AUTHORIZED } else { V4_FAIL };
        assert_eq!(codes, vec![fail, 0, fail], "v5={v5}");
        // The allowed filter really is subscribed.
        let mut p = Raw::connect(&hub, &parent, v5).await;
        p.send(&publish_packet(
            v5,
            dev_topic(&kid, "cmd/led").as_bytes(),
            0,
            false,
            0,
            None,
            b"on",
        ))
        .await;
        match raw.next().await {
            Next::Data(d) => assert!(d.ends_with(b"on"), "{d:?}"),
            other => panic!("command not delivered: {other:?}"),
        }
    }
    assert_denied_audited(&hub, &kid, "subscribe", "#");
}

// ---- publish ----

async fn publish_denied(
    topic_for: impl Fn(&Device, &Device, &Device) -> Vec<u8>,
    who: usize,
    retain: bool,
    audit_topic: Option<&str>,
) {
    let (hub, kid, sibling, parent) = household();
    let topic = topic_for(&kid, &sibling, &parent);
    let subject = [&kid, &sibling, &parent][who];
    // v5 QoS 1: refused with 0x87 in the PUBACK.
    let mut raw = Raw::connect(&hub, subject, true).await;
    raw.send(&publish_packet(true, &topic, 1, retain, 11, None, b"x"))
        .await;
    assert_eq!(
        raw.next().await,
        Next::Data(vec![0x40, 3, 0, 11, V5_NOT_AUTHORIZED])
    );
    // 3.1.1 QoS 1: acknowledged (the spec has no refusal) and dropped.
    let mut raw = Raw::connect(&hub, subject, false).await;
    raw.send(&publish_packet(false, &topic, 1, retain, 12, None, b"x"))
        .await;
    assert_eq!(raw.next().await, Next::Data(vec![0x40, 2, 0, 12]));
    let shown = audit_topic
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8(topic.clone()).unwrap());
    let action = if retain {
        "publish-retained"
    } else {
        "publish"
    };
    assert_denied_audited(&hub, subject, action, &shown);
}

#[tokio::test]
async fn publish_to_another_devices_inbox_is_denied() {
    publish_denied(
        |_, sibling, _| dev_topic(sibling, "inbox").into_bytes(),
        0,
        false,
        None,
    )
    .await;
}

#[tokio::test]
async fn publish_to_another_devices_outbox_is_denied() {
    publish_denied(
        |kid, _, _| dev_topic(kid, "outbox").into_bytes(),
        2,
        false,
        None,
    )
    .await;
}

#[tokio::test]
async fn publish_to_another_devices_cmd_from_a_child_is_denied() {
    publish_denied(
        |_, sibling, _| dev_topic(sibling, "cmd/unlock").into_bytes(),
        0,
        false,
        None,
    )
    .await;
}

#[tokio::test]
async fn publish_to_another_devices_state_is_denied() {
    publish_denied(
        |kid, _, _| dev_topic(kid, "state").into_bytes(),
        2,
        false,
        None,
    )
    .await;
}

/// A v5 PUBACK for `pkid` that is not a refusal (the reason code, when
/// there is one, is success).
fn is_accepted_puback(packet: &Next, pkid: u16) -> bool {
    let [hi, lo] = pkid.to_be_bytes();
    matches!(packet, Next::Data(d)
        if d.len() >= 4 && d[0] == 0x40 && d[2] == hi && d[3] == lo
            && d.get(4).is_none_or(|code| *code == 0))
}

#[tokio::test]
async fn topics_allowed_before_do_not_open_others_on_the_same_connection() {
    // The edge remembers the last four topics it allowed a connection's
    // plain publishes to and does not decide them again: what it
    // remembers must not let a neighbouring topic through.
    let (hub, kid, sibling, _parent) = household();
    let mut raw = Raw::connect(&hub, &kid, true).await;
    // The outbox takes plain publishes only (the mailbox answers this
    // one's bad envelope on the inbox, which this client does not read).
    // Four: as many as the edge remembers, so the second round is
    // answered from its memory.
    let own = ["tele/a", "outbox", "tele/d", "tele/e"];
    let mut pkid = 100;
    for _round in 0..2 {
        for rest in own {
            pkid += 1;
            let topic = dev_topic(&kid, rest);
            raw.send(&publish_packet(
                true,
                topic.as_bytes(),
                1,
                false,
                pkid,
                None,
                b"x",
            ))
            .await;
            let answer = raw.next().await;
            assert!(is_accepted_puback(&answer, pkid), "{rest}: {answer:?}");
        }
    }
    // With those four remembered: another device's telemetry under the
    // same level names, a prefix of an allowed topic, and an allowed topic
    // retained, each decided afresh.
    let refused: [(String, bool); 4] = [
        (dev_topic(&sibling, "tele/e"), false),
        (dev_topic(&sibling, "tele/d"), false),
        (format!("hearth/v1/dev/{}", kid.id), false),
        (dev_topic(&kid, "outbox"), true),
    ];
    for (topic, retain) in refused {
        pkid += 1;
        raw.send(&publish_packet(
            true,
            topic.as_bytes(),
            1,
            retain,
            pkid,
            None,
            b"x",
        ))
        .await;
        let [hi, lo] = pkid.to_be_bytes();
        assert_eq!(
            raw.next().await,
            Next::Data(vec![0x40, 3, hi, lo, V5_NOT_AUTHORIZED]),
            "{topic} (retain {retain})"
        );
    }
    assert_denied_audited(&hub, &kid, "publish", &dev_topic(&sibling, "tele/d"));
}

#[tokio::test]
async fn publish_a_command_as_a_child_is_denied() {
    publish_denied(
        |kid, _, _| dev_topic(kid, "cmd/led").into_bytes(),
        0,
        false,
        None,
    )
    .await;
}

#[tokio::test]
async fn publish_retained_where_retain_is_not_allowed_is_denied() {
    publish_denied(
        |kid, _, _| dev_topic(kid, "outbox").into_bytes(),
        0,
        true,
        None,
    )
    .await;
}

#[tokio::test]
async fn publish_retained_command_is_denied() {
    publish_denied(
        |kid, _, _| dev_topic(kid, "cmd/led").into_bytes(),
        2,
        true,
        None,
    )
    .await;
}

#[tokio::test]
async fn publish_to_an_empty_topic_is_denied() {
    publish_denied(|_, _, _| Vec::new(), 0, false, Some("")).await;
}

#[tokio::test]
async fn publish_to_a_topic_with_nul_is_denied() {
    let (hub, kid, _, _) = household();
    let topic = dev_topic(&kid, "tele/a\0b");
    let mut raw = Raw::connect(&hub, &kid, true).await;
    raw.send(&publish_packet(
        true,
        topic.as_bytes(),
        1,
        false,
        11,
        None,
        b"x",
    ))
    .await;
    assert_eq!(
        raw.next().await,
        Next::Data(vec![0x40, 3, 0, 11, V5_NOT_AUTHORIZED])
    );
    // The audit shows control characters escaped.
    let shown = dev_topic(&kid, "tele/a\\0b");
    let reason = assert_denied_audited(&hub, &kid, "publish", &shown);
    assert!(reason.contains("NUL"), "{reason}");
}

#[tokio::test]
async fn publish_to_invalid_utf8_is_denied() {
    let (hub, kid, _, _) = household();
    let mut topic = dev_topic(&kid, "tele/").into_bytes();
    topic.extend_from_slice(&[0xff, 0xfe]);
    let mut raw = Raw::connect(&hub, &kid, false).await;
    raw.send(&publish_packet(false, &topic, 1, false, 12, None, b"x"))
        .await;
    assert_eq!(raw.next().await, Next::Data(vec![0x40, 2, 0, 12]));
    let shown = dev_topic(&kid, "tele/\u{fffd}\u{fffd}");
    let reason = assert_denied_audited(&hub, &kid, "publish", &shown);
    assert!(reason.contains("UTF-8"), "{reason}");
}

#[tokio::test]
async fn publish_with_wildcards_in_the_topic_is_denied() {
    publish_denied(
        |kid, _, _| dev_topic(kid, "tele/+").into_bytes(),
        0,
        false,
        None,
    )
    .await;
}

#[tokio::test]
async fn publish_to_sys_is_denied() {
    publish_denied(|_, _, _| b"$SYS/broker/uptime".to_vec(), 2, false, None).await;
}

#[tokio::test]
async fn a_denied_qos2_publish_is_completed_by_the_hub_and_never_delivered() {
    let (hub, kid, sibling, _) = household();
    let mut victim = Raw::connect(&hub, &sibling, false).await;
    assert_eq!(
        victim.subscribe(1, &[&dev_topic(&sibling, "inbox")]).await,
        vec![0]
    );
    let mut raw = Raw::connect(&hub, &kid, false).await;
    raw.send(&publish_packet(
        false,
        dev_topic(&sibling, "inbox").as_bytes(),
        2,
        false,
        21,
        None,
        b"boo",
    ))
    .await;
    assert_eq!(raw.next().await, Next::Data(vec![0x50, 2, 0, 21]));
    raw.send(&[0x62, 2, 0, 21]).await; // PUBREL
    assert_eq!(raw.next().await, Next::Data(vec![0x70, 2, 0, 21]));
    assert_eq!(victim.quiet(Duration::from_millis(500)).await, Next::Silent);
    assert_denied_audited(&hub, &kid, "publish", &dev_topic(&sibling, "inbox"));
}

// ---- wills ----

#[tokio::test]
async fn a_will_on_another_devices_topic_is_refused() {
    let (hub, kid, sibling, _) = household();
    let will_topic = dev_topic(&sibling, "cmd/unlock");
    let (client, mut eventloop) = {
        let mut options = mqtt_v4(&hub, &kid, &kid.id);
        options.set_last_will(rumqttc::LastWill::new(
            &will_topic,
            "boom",
            rumqttc::QoS::AtMostOnce,
            false,
        ));
        rumqttc::AsyncClient::new(options, 10)
    };
    match v4_connected(&mut eventloop).await {
        Err(rumqttc::ConnectionError::ConnectionRefused(
            rumqttc::ConnectReturnCode::NotAuthorized,
        )) => {}
        other => panic!("expected NotAuthorized, got {other:?}"),
    }
    drop(client);
    let found = wait_audit(&hub, |e| {
        e.event == "connect-refused"
            && e.action.as_deref() == Some("will")
            && e.topic.as_deref() == Some(hearth_daemon::store::audit_topic(&will_topic).as_str())
    });
    assert!(found.is_some(), "{:#?}", audit_entries(&hub));
}

#[tokio::test]
async fn a_retained_will_on_the_outbox_is_refused() {
    let (hub, kid, _, _) = household();
    let mut options = mqtt_v4(&hub, &kid, &kid.id);
    options.set_last_will(rumqttc::LastWill::new(
        dev_topic(&kid, "outbox"),
        "x",
        rumqttc::QoS::AtMostOnce,
        true,
    ));
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    assert!(v4_connected(&mut eventloop).await.is_err());
    assert_connect_refused_audited(&hub, &kid, "retain not allowed");
}

// ---- MQTT 5 topic aliases ----

#[tokio::test]
async fn a_topic_alias_pointing_at_a_forbidden_topic_stays_forbidden() {
    let (hub, kid, sibling, _) = household();
    let forbidden = dev_topic(&sibling, "inbox");
    let mut victim = Raw::connect(&hub, &sibling, true).await;
    assert_eq!(victim.subscribe(1, &[&forbidden]).await, vec![0]);
    let mut raw = Raw::connect(&hub, &kid, true).await;
    // Define alias 1 as the forbidden topic (denied), then use the alias alone.
    raw.send(&publish_packet(
        true,
        forbidden.as_bytes(),
        1,
        false,
        1,
        Some(1),
        b"a",
    ))
    .await;
    assert_eq!(
        raw.next().await,
        Next::Data(vec![0x40, 3, 0, 1, V5_NOT_AUTHORIZED])
    );
    raw.send(&publish_packet(true, b"", 1, false, 2, Some(1), b"b"))
        .await;
    assert_eq!(
        raw.next().await,
        Next::Data(vec![0x40, 3, 0, 2, V5_NOT_AUTHORIZED])
    );
    // An alias first set to an allowed topic, then re-pointed at the
    // forbidden one, then used alone.
    raw.send(&publish_packet(
        true,
        dev_topic(&kid, "tele/t").as_bytes(),
        0,
        false,
        0,
        Some(2),
        b"c",
    ))
    .await;
    raw.send(&publish_packet(
        true,
        forbidden.as_bytes(),
        1,
        false,
        4,
        Some(2),
        b"d",
    ))
    .await;
    assert_eq!(
        raw.next().await,
        Next::Data(vec![0x40, 3, 0, 4, V5_NOT_AUTHORIZED])
    );
    raw.send(&publish_packet(true, b"", 1, false, 5, Some(2), b"e"))
        .await;
    assert_eq!(
        raw.next().await,
        Next::Data(vec![0x40, 3, 0, 5, V5_NOT_AUTHORIZED])
    );
    assert_eq!(victim.quiet(Duration::from_millis(500)).await, Next::Silent);
    assert_denied_audited(&hub, &kid, "publish", &forbidden);
}

#[tokio::test]
async fn a_topic_alias_never_defined_disconnects() {
    let (hub, kid, _, _) = household();
    let mut raw = Raw::connect(&hub, &kid, true).await;
    raw.send(&publish_packet(true, b"", 0, false, 0, Some(9), b"x"))
        .await;
    assert_eq!(raw.next().await, Next::Data(vec![0xe0, 1, 0x82]));
    assert_eq!(raw.next().await, Next::Closed);
    let found = wait_audit(&hub, |e| {
        e.event == "denied" && e.reason.as_deref() == Some("topic alias never defined")
    });
    assert!(found.is_some(), "{:#?}", audit_entries(&hub));
}
