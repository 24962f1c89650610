//! Hearth's bounds (`[limits]`): a device that reaches one gets the answer
//! the specification gives (5: reason 0x97 Quota exceeded; 3.1.1: SUBACK
//! failure, or a publish acknowledged and dropped), the audit says so, and
//! every other device is served as before. The two exhaustion attacks found
//! on the hub (issue 13) are replayed and the hub's RSS measured.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Filter, PubAckReason, PublishProperties, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;

use crate::harness::*;
use crate::support::{wait_audit, Device};

const LONG: Duration = Duration::from_secs(10);
const MIB: u64 = 1024;

/// 5 options for another device of the household over mutual TLS.
fn v5_for(b: &Bench, device: &Device) -> rumqttc::v5::MqttOptions {
    let mut options = rumqttc::v5::MqttOptions::new(&device.id, "127.0.0.1", b.hub.mqtt.port());
    options.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
        device.tls(),
    )));
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(Some(16 * 1024 * 1024));
    options
}

/// Publishes at QoS 1 and returns the PUBACK's reason (`None`: no PUBACK,
/// the connection ended).
async fn publish_reason(
    client: &mut V5,
    topic: &str,
    retain: bool,
    payload: Vec<u8>,
) -> Option<PubAckReason> {
    client
        .client
        .publish_with_properties(
            topic,
            QoS::AtLeastOnce,
            retain,
            payload,
            PublishProperties::default(),
        )
        .await
        .ok()?;
    client
        .next_where(LONG, |p| match p {
            P5::PubAck(ack) => Some(ack.reason),
            _ => None,
        })
        .await
}

/// A device holds at most `max_retained_per_device` retained messages: the
/// next is refused with 0x97 and audited, replacing or clearing one of its
/// own is fine, and another device still retains.
#[tokio::test]
async fn a_device_over_its_retained_quota_is_refused_and_others_are_served() {
    let b = Bench::start_with(Via::Tls, "[limits]\nmax_retained_per_device = 3\n");
    let mut toy = V5::connect(b.v5(Who::Toy)).await;
    for i in 1..=3 {
        let topic = b.topic(&format!("r{i}"));
        let reason = publish_reason(&mut toy, &topic, true, b"v".to_vec()).await;
        assert_eq!(reason, Some(PubAckReason::Success), "r{i}");
    }
    let over = publish_reason(&mut toy, &b.topic("r4"), true, b"v".to_vec()).await;
    assert_eq!(over, Some(PubAckReason::QuotaExceeded));
    let toy_id = b.toy.id.clone();
    let audited = wait_audit(&b.hub, |e| {
        e.device.is_some_and(|d| d.to_string() == toy_id)
            && e.reason.as_deref().is_some_and(|r| r.contains("quota"))
    });
    assert!(audited.is_some(), "the refusal is audited");
    // Its own: replaced, or cleared to make room.
    let replaced = publish_reason(&mut toy, &b.topic("r1"), true, b"w".to_vec()).await;
    assert_eq!(replaced, Some(PubAckReason::Success));
    let cleared = publish_reason(&mut toy, &b.topic("r2"), true, Vec::new()).await;
    assert_eq!(cleared, Some(PubAckReason::Success));
    let now = publish_reason(&mut toy, &b.topic("r4"), true, b"v".to_vec()).await;
    assert_eq!(now, Some(PubAckReason::Success));
    // Not retained, it still flows.
    let live = publish_reason(&mut toy, &b.topic("r5"), false, b"v".to_vec()).await;
    assert_eq!(live, Some(PubAckReason::Success));
    // Another device is unaffected.
    let bob = b.hub.device("Bob", "child");
    let mut bobs_toy = V5::connect(v5_for(&b, &bob)).await;
    let topic = format!("hearth/v1/dev/{}/tele/r1", bob.id);
    let reason = publish_reason(&mut bobs_toy, &topic, true, b"v".to_vec()).await;
    assert_eq!(reason, Some(PubAckReason::Success));
    // And a subscriber sees exactly what was admitted.
    let mut phone = V5::connect(b.v5(Who::Phone)).await;
    phone.subscribe(&b.topic("#"), QoS::AtLeastOnce).await;
    let mut retained = Vec::new();
    while let Some(p) = phone.publish(Duration::from_millis(700)).await {
        retained.push(String::from_utf8_lossy(&p.topic).into_owned());
    }
    retained.sort();
    assert_eq!(
        retained,
        ["r1", "r3", "r4"].map(|leaf| b.topic(leaf)).to_vec()
    );
}

/// Issue 13's first exhaustion: 60 retained messages of 1 MiB on a device's
/// own telemetry grew the hub by 119 MiB. With the default bounds (1 MiB of
/// retained messages per device) the hub grows by less than 16 MiB.
#[tokio::test]
async fn sixty_retained_mebibytes_do_not_grow_the_hub() {
    let mut b = Bench::start(Via::Tls);
    let mut toy = V5::connect(b.v5(Who::Toy)).await;
    // Warm up: one ordinary retained message and a subscriber.
    publish_reason(&mut toy, &b.topic("warm"), true, b"w".to_vec()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = b.hub.rss_kib();
    let mut refused = 0;
    for i in 0..60 {
        let topic = b.topic(&format!("big/{i}"));
        match publish_reason(&mut toy, &topic, true, vec![b'x'; 1024 * 1024]).await {
            Some(PubAckReason::Success) => {}
            Some(PubAckReason::QuotaExceeded) => refused += 1,
            other => {
                // Too many refusals in a row end the connection, as any
                // run of denials does; an attacker reconnects.
                assert!(other.is_none(), "{other:?}");
                toy = V5::connect(b.v5(Who::Toy)).await;
            }
        }
    }
    assert!(refused >= 50, "only {refused} refused");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let grown = b.hub.rss_kib().saturating_sub(before);
    assert!(grown < 16 * MIB, "RSS grew by {grown} KiB");
    assert!(b.hub.is_running());
}

/// Issue 13's second exhaustion: 3000 tiny publishes on unique long topics,
/// with a parent subscribed to the device's telemetry, grew the hub by 181
/// MiB for good (rumqttd remembered every topic). Less than 16 MiB now.
#[tokio::test]
async fn unique_long_topics_do_not_grow_the_hub() {
    let mut b = Bench::start(Via::Tls);
    let mut phone = V5::connect(b.v5(Who::Phone)).await;
    phone.subscribe(&b.topic("#"), QoS::AtMostOnce).await;
    let mut toy = V5::connect(b.v5(Who::Toy)).await;
    let long = "x".repeat(60_000);
    let send = |toy: &V5, i: usize| {
        let topic = b.topic(&format!("{long}/{i}"));
        let client = toy.client.clone();
        async move {
            client
                .publish(topic, QoS::AtMostOnce, false, b"1".to_vec())
                .await
                .unwrap()
        }
    };
    // Warm up the paths (buffers, TLS records of this size) first.
    for i in 0..100 {
        send(&toy, i).await;
    }
    while phone.publish(Duration::from_millis(500)).await.is_some() {}
    let before = b.hub.rss_kib();
    for i in 100..3100 {
        send(&toy, i).await;
        if i % 100 == 0 {
            // Read along so that nothing queues in the test's own client.
            while phone.publish(Duration::from_millis(1)).await.is_some() {}
        }
    }
    let mut quiet = 0;
    while quiet < 3 {
        match phone.publish(Duration::from_millis(300)).await {
            Some(_) => quiet = 0,
            None => quiet += 1,
        }
    }
    let grown = b.hub.rss_kib().saturating_sub(before);
    assert!(grown < 16 * MIB, "RSS grew by {grown} KiB");
    // Still served.
    let reason = publish_reason(&mut toy, &b.topic("after"), false, b"a".to_vec()).await;
    assert_eq!(reason, Some(PubAckReason::Success));
    assert!(b.hub.is_running());
}

/// A client session holds at most `max_subscriptions_per_client` filters:
/// the next gets 0x97 (5) or 0x80 (3.1.1), a filter it holds may be
/// subscribed again, an UNSUBSCRIBE makes room, and another device is not
/// affected.
#[tokio::test]
async fn a_client_over_its_subscription_quota_is_refused_and_others_are_served() {
    let b = Bench::start_with(Via::Tls, "[limits]\nmax_subscriptions_per_client = 3\n");
    let mut phone = V5::connect(b.v5(Who::Phone)).await;
    for leaf in ["a", "b", "c"] {
        phone.subscribe(&b.topic(leaf), QoS::AtLeastOnce).await;
    }
    let over = phone
        .subscribe_with(Filter::new(b.topic("d"), QoS::AtLeastOnce), None)
        .await;
    assert_eq!(over, vec![SubscribeReasonCode::QuotaExceeded]);
    let again = phone
        .subscribe_with(Filter::new(b.topic("a"), QoS::AtMostOnce), None)
        .await;
    assert_eq!(again, vec![SubscribeReasonCode::Success(QoS::AtMostOnce)]);
    phone.client.unsubscribe(b.topic("b")).await.unwrap();
    phone
        .next_where(LONG, |p| matches!(p, P5::UnsubAck(_)).then_some(()))
        .await
        .expect("UNSUBACK");
    phone.subscribe(&b.topic("d"), QoS::AtLeastOnce).await;
    // 3.1.1: the failure return code.
    let mut old = V4::connect(b.v4(Who::Toy)).await;
    let own_cmd = format!("hearth/v1/dev/{}/cmd", b.toy.id);
    for leaf in ["x", "y", "z"] {
        old.subscribe(&format!("{own_cmd}/{leaf}"), rumqttc::QoS::AtLeastOnce)
            .await;
    }
    let codes = old
        .subscribe(&format!("{own_cmd}/#"), rumqttc::QoS::AtLeastOnce)
        .await;
    assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Failure]);
    // The phone's subscriptions still deliver.
    let mut toy = V5::connect(b.v5(Who::Toy)).await;
    let reason = publish_reason(&mut toy, &b.topic("d"), false, b"d".to_vec()).await;
    assert_eq!(reason, Some(PubAckReason::Success));
    assert_eq!(
        &phone.publish(LONG).await.expect("delivered").payload[..],
        b"d"
    );
}

/// Sessions are stored state too: `max_session_expiry_secs` bounds how long
/// a 3.1.1 persistent session (which asks for no limit) and a 5 session
/// that asks for longer outlive their connection.
#[tokio::test]
async fn sessions_outlive_their_connection_at_most_the_configured_time() {
    let b = Bench::start_with(Via::Tls, "[limits]\nmax_session_expiry_secs = 2\n");
    let topic = b.topic("capped");
    let mut old = b.v4(Who::Phone);
    old.set_clean_session(false);
    let mut sub = V4::connect(old.clone()).await;
    sub.subscribe(&topic, rumqttc::QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut new = b.v5(Who::Toy);
    new.set_clean_start(false);
    new.set_session_expiry_interval(Some(u32::MAX));
    let own = format!("hearth/v1/dev/{}/cmd/x", b.toy.id);
    let mut toy = V5::connect(new.clone()).await;
    toy.subscribe(&own, QoS::AtLeastOnce).await;
    toy.disconnect().await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let back = V4::connect(old).await;
    assert!(!back.connack.session_present, "3.1.1 session ended");
    let back = V5::connect(new).await;
    assert!(!back.connack.session_present, "5 session ended");
}

/// The toy connects (v5), publishes `accepted` (topic, retain, alias; QoS 1,
/// acknowledged), then publishes `refused` (topic, payload; QoS 1,
/// retained) defining topic alias 1: the hub refuses it with `code`, sends
/// a DISCONNECT with the same code and closes.
async fn a_refused_alias_definition_closes(
    b: &Bench,
    accepted: (&str, bool, Option<u16>),
    refused: (&str, &[u8]),
    code: u8,
) {
    let mut raw = b.raw(Who::Toy).await;
    raw.send(&connect(true, 30, &b.client_id(Who::Toy), true, None))
        .await;
    assert!(matches!(raw.next(LONG).await, Seen::Packet(0x20, _)));
    let (topic, retain, alias) = accepted;
    raw.send(&crate::support::publish_packet(
        true,
        topic.as_bytes(),
        1,
        retain,
        1,
        alias,
        b"1",
    ))
    .await;
    assert_eq!(
        raw.next(LONG).await,
        Seen::Packet(0x40, vec![0x40, 2, 0, 1])
    );
    let (topic, payload) = refused;
    raw.send(&crate::support::publish_packet(
        true,
        topic.as_bytes(),
        1,
        true,
        2,
        Some(1),
        payload,
    ))
    .await;
    assert_eq!(
        raw.next(LONG).await,
        Seen::Packet(0x40, vec![0x40, 3, 0, 2, code])
    );
    assert_eq!(
        raw.next(LONG).await,
        Seen::Packet(0xe0, vec![0xe0, 1, code])
    );
    assert_eq!(raw.next(LONG).await, Seen::Closed);
}

/// A retained publish refused for quota while it (re)defines a topic alias
/// ends the connection (5: DISCONNECT 0x97): the broker never learnt the
/// alias, so keeping the connection would leave the edge checking one topic
/// and the broker publishing to another (found by review).
#[tokio::test]
async fn a_quota_refusal_that_defines_a_topic_alias_ends_the_connection() {
    let b = Bench::start_with(Via::Tls, "[limits]\nmax_retained_per_device = 1\n");
    let (first, second) = (b.topic("a"), b.topic("b"));
    a_refused_alias_definition_closes(&b, (&first, true, None), (&second, b"2"), 0x97).await;
}

/// A description refused for its format while it (re)defines a topic alias
/// ends the connection too (5: DISCONNECT 0x99). The broker kept the
/// alias's earlier topic; left open, the alias alone with a valid
/// description would be judged as the device's `meta` (retained allowed)
/// and published retained to the earlier topic (found by review).
#[tokio::test]
async fn a_format_refusal_that_defines_a_topic_alias_ends_the_connection() {
    let b = Bench::start_with(Via::Tls, "");
    let first = b.topic("a");
    let meta = format!("hearth/v1/dev/{}/meta", b.client_id(Who::Toy));
    a_refused_alias_definition_closes(
        &b,
        (&first, false, Some(1)),
        (&meta, b"not a description"),
        0x99,
    )
    .await;
}

/// A retained will counts against the device's retained quota from its
/// CONNECT on: over it, the CONNECT is refused (and audited), so a device
/// cannot grow the hub's retained messages through wills (found by review).
#[tokio::test]
async fn a_retained_will_over_the_quota_is_refused_at_connect() {
    let b = Bench::start_with(Via::Tls, "[limits]\nmax_retained_per_device = 1\n");
    let mut toy = V5::connect(b.v5(Who::Toy)).await;
    let held = publish_reason(&mut toy, &b.topic("a"), true, b"1".to_vec()).await;
    assert_eq!(held, Some(PubAckReason::Success));
    toy.disconnect().await;
    let mut options = b.v5(Who::Toy);
    options.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
        b.topic("status"),
        "gone",
        QoS::AtLeastOnce,
        true,
        None,
    ));
    assert!(V5::try_connect(options).await.is_err(), "refused");
    let toy_id = b.toy.id.clone();
    let audited = wait_audit(&b.hub, |e| {
        e.device.is_some_and(|d| d.to_string() == toy_id) && e.event == "connect-refused"
    });
    assert!(audited.is_some());
    // Without the will, or with one that is not retained, it connects.
    V5::connect(b.v5(Who::Toy)).await;
}

/// The subscription quota is the session's: a client that resumes its
/// session cannot subscribe another quota's worth of filters.
#[tokio::test]
async fn a_resumed_session_keeps_its_subscription_count() {
    let b = Bench::start_with(Via::Tls, "[limits]\nmax_subscriptions_per_client = 2\n");
    let mut options = b.v5(Who::Phone);
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(600));
    let mut phone = V5::connect(options.clone()).await;
    phone.subscribe(&b.topic("a"), QoS::AtLeastOnce).await;
    phone.subscribe(&b.topic("b"), QoS::AtLeastOnce).await;
    phone.disconnect().await;
    let mut phone = V5::connect(options.clone()).await;
    assert!(phone.connack.session_present);
    let over = phone
        .subscribe_with(Filter::new(b.topic("c"), QoS::AtLeastOnce), None)
        .await;
    assert_eq!(over, vec![SubscribeReasonCode::QuotaExceeded]);
    // A clean start ends the session and its count.
    phone.disconnect().await;
    options.set_clean_start(true);
    let mut phone = V5::connect(options).await;
    let fresh = phone
        .subscribe_with(Filter::new(b.topic("c"), QoS::AtLeastOnce), None)
        .await;
    assert_eq!(fresh, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
}

/// A v5 client that sends more unanswered QoS 1/2 PUBLISHes than the
/// CONNACK's Receive Maximum (`max_inflight`) is disconnected with 0x93
/// (5 §3.3.4); another device is served.
#[tokio::test]
async fn a_client_over_the_receive_maximum_is_disconnected() {
    let b = Bench::start_with(Via::Tls, "[limits]\nmax_inflight = 2\n");
    let mut raw = b.raw(Who::Toy).await;
    raw.send(&connect(true, 30, &b.client_id(Who::Toy), true, None))
        .await;
    match raw.next(LONG).await {
        // Receive Maximum (0x21) = 2 among the properties.
        Seen::Packet(0x20, p) => {
            assert!(p.windows(3).any(|w| w == [0x21, 0, 2]), "CONNACK {p:02x?}")
        }
        other => panic!("expected CONNACK, saw {other:?}"),
    }
    let topic = b.topic("window");
    for pkid in 1..=2u16 {
        // QoS 2, no PUBREL: each stays in flight until PUBCOMP.
        raw.send(&crate::support::publish_packet(
            true,
            topic.as_bytes(),
            2,
            false,
            pkid,
            None,
            b"w",
        ))
        .await;
        assert!(
            matches!(raw.next(LONG).await, Seen::Packet(0x50, _)),
            "PUBREC {pkid}"
        );
    }
    raw.send(&crate::support::publish_packet(
        true,
        topic.as_bytes(),
        2,
        false,
        3,
        None,
        b"w",
    ))
    .await;
    match raw.next(LONG).await {
        Seen::Packet(0xe0, p) => assert_eq!(p.get(2), Some(&0x93), "{p:02x?}"),
        other => panic!("expected DISCONNECT 0x93, saw {other:?}"),
    }
    assert_eq!(raw.next(LONG).await, Seen::Closed);
    let mut phone = V5::connect(b.v5(Who::Phone)).await;
    phone.subscribe(&b.topic("#"), QoS::AtLeastOnce).await;
}

/// 5 options for the phone that take packets as large as the hub sends.
fn phone_taking_large(b: &Bench) -> rumqttc::v5::MqttOptions {
    let mut options = b.v5(Who::Phone);
    options.set_max_packet_size(Some(16 * 1024 * 1024));
    options
}

/// The router keeps a log per subscribed filter. Subscribing to ever new
/// filters, each getting a message, and unsubscribing again grew the hub
/// for good (rumqttd never dropped a filter's log): 500 of them with 64 KiB
/// each now grow it by less than 16 MiB.
#[tokio::test]
async fn filters_subscribed_and_left_do_not_grow_the_hub() {
    let b = Bench::start(Via::Tls);
    let mut phone = V5::connect(phone_taking_large(&b)).await;
    let mut toy = V5::connect(b.v5(Who::Toy)).await;
    let payload = vec![b'f'; 64 * 1024];
    let mut before = 0;
    for i in 0..550 {
        if i == 50 {
            before = b.hub.rss_kib();
        }
        let topic = b.topic(&format!("churn/{i}"));
        phone.subscribe(&topic, QoS::AtMostOnce).await;
        let reason = publish_reason(&mut toy, &topic, false, payload.clone()).await;
        assert_eq!(reason, Some(PubAckReason::Success));
        assert!(phone.publish(LONG).await.is_some(), "delivered {i}");
        phone.client.unsubscribe(&topic).await.unwrap();
        phone
            .next_where(LONG, |p| matches!(p, P5::UnsubAck(_)).then_some(()))
            .await
            .expect("UNSUBACK");
    }
    let grown = b.hub.rss_kib().saturating_sub(before);
    assert!(grown < 16 * MIB, "RSS grew by {grown} KiB");
}

/// All filters' logs together hold at most `max_queued_bytes`: 60 filters
/// each given 1 MiB (60 MiB, each log under its own bound) grow the hub by
/// far less, and the subscriber still gets new messages.
#[tokio::test]
async fn queued_messages_are_held_to_the_hub_wide_budget() {
    let b = Bench::start_with(Via::Tls, "[limits]\nmax_queued_bytes = 8388608\n");
    let mut phone = V5::connect(phone_taking_large(&b)).await;
    let mut toy = V5::connect(b.v5(Who::Toy)).await;
    for i in 0..60 {
        phone
            .subscribe(&b.topic(&format!("q/{i}")), QoS::AtMostOnce)
            .await;
    }
    // Warm up the paths with one large message.
    publish_reason(&mut toy, &b.topic("q/0"), false, vec![b'w'; 1024 * 1024]).await;
    while phone.publish(Duration::from_millis(500)).await.is_some() {}
    let before = b.hub.rss_kib();
    for i in 0..60 {
        let topic = b.topic(&format!("q/{i}"));
        let reason = publish_reason(&mut toy, &topic, false, vec![b'q'; 1024 * 1024]).await;
        assert_eq!(reason, Some(PubAckReason::Success));
        while phone.publish(Duration::from_millis(1)).await.is_some() {}
    }
    while phone.publish(Duration::from_millis(500)).await.is_some() {}
    let grown = b.hub.rss_kib().saturating_sub(before);
    assert!(grown < 28 * MIB, "RSS grew by {grown} KiB");
    let reason = publish_reason(&mut toy, &b.topic("q/1"), false, b"new".to_vec()).await;
    assert_eq!(reason, Some(PubAckReason::Success));
    assert_eq!(&phone.publish(LONG).await.expect("new").payload[..], b"new");
}

/// Large packets being received hold a hub-wide budget
/// (`max_large_packet_bytes`, each counted twice): while one device's large
/// publish is arriving, another's waits (its connection is not read on)
/// and goes through once the first is complete; nothing is refused.
#[tokio::test]
async fn large_packets_being_received_share_the_hub_wide_budget() {
    let b = Bench::start_with(
        Via::Tls,
        "[limits]\nmax_payload = 1048576\nmax_large_packet_bytes = 2097152\n",
    );
    let bo = b.hub.device("Bo", "child");
    let mut phone = V5::connect(phone_taking_large(&b)).await;
    phone.subscribe(&b.topic("big"), QoS::AtMostOnce).await;
    let bo_topic = format!("hearth/v1/dev/{}/tele/big", bo.id);
    phone.subscribe(&bo_topic, QoS::AtMostOnce).await;
    // The toy sends half of a 1 MB publish, and waits.
    let mut raw = b.raw(Who::Toy).await;
    raw.send(&connect(true, 30, &b.client_id(Who::Toy), true, None))
        .await;
    assert!(matches!(raw.next(LONG).await, Seen::Packet(0x20, _)));
    let toys = crate::support::publish_packet(
        true,
        b.topic("big").as_bytes(),
        1,
        false,
        1,
        None,
        &vec![b't'; 1_000_000],
    );
    raw.send(&toys[..500_000]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Bo's 900 kB publish finds the budget taken.
    let mut bo_client = V5::connect(v5_for(&b, &bo)).await;
    bo_client
        .client
        .publish(&bo_topic, QoS::AtLeastOnce, false, vec![b'b'; 900_000])
        .await
        .unwrap();
    let early = bo_client
        .next_where(Duration::from_secs(1), |p| {
            matches!(p, P5::PubAck(_)).then_some(())
        })
        .await;
    assert!(early.is_none(), "Bo's large publish did not wait");
    // The toy's publish completes: both go through.
    raw.send(&toys[500_000..]).await;
    assert_eq!(
        raw.next(LONG).await,
        Seen::Packet(0x40, vec![0x40, 2, 0, 1])
    );
    let acked = bo_client
        .next_where(LONG, |p| match p {
            P5::PubAck(ack) => Some(ack.reason),
            _ => None,
        })
        .await;
    assert_eq!(acked, Some(PubAckReason::Success));
    let mut sizes = vec![
        phone.publish(LONG).await.expect("toy's").payload.len(),
        phone.publish(LONG).await.expect("Bo's").payload.len(),
    ];
    sizes.sort();
    assert_eq!(sizes, vec![900_000, 1_000_000]);
}
