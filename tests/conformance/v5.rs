//! MQTT 5.0 (OASIS Standard, 7 March 2019): one test per behaviour, through
//! both listeners, written from the specification's text. Each test cites
//! the section (and normative statement) it checks. Known failures are
//! ignored with the reason; docs/CONFORMANCE.md says what a fix takes.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{
    Filter, LastWill, LastWillProperties, PublishProperties, RetainForwardRule, SubscribeProperties,
};
use rumqttc::v5::mqttbytes::QoS;

use crate::harness::*;
use crate::on_both_listeners;

const SHORT: Duration = Duration::from_millis(700);
const LONG: Duration = Duration::from_secs(10);

fn no_props() -> PublishProperties {
    PublishProperties::default()
}

/// A topic the phone may both publish and subscribe to (its own telemetry).
fn phone_topic(b: &Bench, leaf: &str) -> String {
    format!("hearth/v1/dev/{}/tele/{leaf}", b.phone.id)
}

/// §3.1.2.10: "If the Keep Alive value is 0 ... the Client is not obliged
/// to send MQTT Control Packets on any particular schedule."
async fn keep_alive_zero_is_accepted(b: Bench) {
    let mut raw = b.raw(Who::Toy).await;
    raw.send(&connect(true, 0, &b.client_id(Who::Toy), true, None))
        .await;
    match raw.next(LONG).await {
        Seen::Packet(0x20, p) => assert_eq!(p[3], 0, "CONNACK reason code: {p:02x?}"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert_eq!(raw.next(Duration::from_secs(3)).await, Seen::Nothing);
}
on_both_listeners!(keep_alive_zero_is_accepted);

/// §3.1.2.10 [MQTT-3.1.2-22]: without a packet within one and a half times
/// the Keep Alive, "the Server MUST close the Network Connection".
async fn keep_alive_expiry_closes_the_connection(b: Bench) {
    let mut raw = b.raw(Who::Toy).await;
    raw.send(&connect(true, 1, &b.client_id(Who::Toy), true, None))
        .await;
    assert!(matches!(raw.next(LONG).await, Seen::Packet(0x20, _)));
    let started = std::time::Instant::now();
    let seen = loop {
        match raw.next(Duration::from_secs(5)).await {
            // A DISCONNECT with reason 0x8D (Keep Alive timeout) may come first.
            Seen::Packet(0xe0, _) => continue,
            other => break other,
        }
    };
    assert_eq!(seen, Seen::Closed);
    assert!(
        started.elapsed() <= Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
}
on_both_listeners!(keep_alive_expiry_closes_the_connection);

/// §3.2.2.3.7 [MQTT-3.2.2-16]: when the client's id is zero-length, "the
/// Server MUST respond with a CONNACK containing an Assigned Client
/// Identifier".
async fn an_empty_client_id_is_assigned_one(b: Bench) {
    let mut options = b.v5(Who::Toy);
    options.set_client_id(String::new());
    let client = V5::connect(options).await;
    let assigned = client
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.assigned_client_identifier.clone());
    assert!(
        assigned.is_some_and(|id| !id.is_empty()),
        "{:?}",
        client.connack
    );
}
on_both_listeners!(an_empty_client_id_is_assigned_one);

/// §3.1.2.11.2: "If the Session Expiry Interval is absent the value 0 is
/// used ... the Session ends when the Network Connection is closed", so a
/// reconnect with Clean Start 0 finds no session (§3.2.2.1.1: Session
/// Present 0).
async fn session_expiry_zero_ends_the_session_at_disconnect(b: Bench) {
    let mut options = b.v5(Who::Phone);
    options.set_clean_start(false);
    let mut first = V5::connect(options.clone()).await;
    first.subscribe(&b.topic("x"), QoS::AtLeastOnce).await;
    first.disconnect().await;
    let again = V5::connect(options).await;
    assert!(!again.connack.session_present);
}
on_both_listeners!(session_expiry_zero_ends_the_session_at_disconnect);

/// §3.1.2.11.2 and §3.1.2.4: with a Session Expiry Interval the session
/// (its subscriptions and the QoS 1 messages that arrive meanwhile)
/// outlives the connection; Session Present is 1 on resumption
/// [MQTT-3.2.2-3].
async fn a_session_with_expiry_keeps_subscriptions_and_queues_messages(b: Bench) {
    let topic = b.topic("queued");
    let mut options = b.v5(Who::Phone);
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(300));
    let mut sub = V5::connect(options.clone()).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    publisher
        .send(&topic, QoS::AtLeastOnce, false, b"waiting", no_props())
        .await;
    let mut back = V5::connect(options).await;
    assert!(back.connack.session_present);
    let got = back.publish(LONG).await.expect("the queued message");
    assert_eq!(&got.payload[..], b"waiting");
}
on_both_listeners!(a_session_with_expiry_keeps_subscriptions_and_queues_messages);

/// §3.3.2.3.3 [MQTT-3.3.2-5]: "If the Message Expiry Interval has passed
/// and the Server has not managed to start onward delivery to a matching
/// subscriber, then it MUST delete the copy of the message for that
/// subscriber."
async fn an_expired_message_is_not_delivered_late(b: Bench) {
    let topic = b.topic("expiring");
    let mut options = b.v5(Who::Phone);
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(300));
    let mut sub = V5::connect(options.clone()).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    let props = PublishProperties {
        message_expiry_interval: Some(1),
        ..no_props()
    };
    publisher
        .send(&topic, QoS::AtLeastOnce, false, b"stale", props)
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut back = V5::connect(options).await;
    assert!(back.publish(SHORT).await.is_none(), "expired while queued");
}
on_both_listeners!(an_expired_message_is_not_delivered_late);

/// §3.3.2.3.3 [MQTT-3.3.2-6]: the forwarded PUBLISH "MUST contain a Message
/// Expiry Interval set to the received value minus the time that the
/// Application Message has been waiting in the Server".
async fn message_expiry_is_forwarded_and_counts_down(b: Bench) {
    let topic = b.topic("expiry");
    let mut sub = V5::connect(b.v5(Who::Phone)).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    let props = PublishProperties {
        message_expiry_interval: Some(60),
        ..no_props()
    };
    publisher
        .send(&topic, QoS::AtLeastOnce, false, b"e", props)
        .await;
    let got = sub.publish(LONG).await.unwrap();
    let left = got.properties.and_then(|p| p.message_expiry_interval);
    assert!(matches!(left, Some(1..=60)), "{left:?}");
}
on_both_listeners!(message_expiry_is_forwarded_and_counts_down);

/// §3.3.1.3 (v5): retained messages are set, replaced and cleared as in
/// 3.1.1 [MQTT-3.3.1-5..-7], and sent with RETAIN 1 on subscription.
async fn retained_messages_set_replace_and_clear(b: Bench) {
    let topic = b.topic("retained5");
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    publisher
        .send(&topic, QoS::AtLeastOnce, true, b"one", no_props())
        .await;
    publisher
        .send(&topic, QoS::AtLeastOnce, true, b"two", no_props())
        .await;
    let mut sub = V5::connect(b.v5(Who::Phone)).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let got = sub.publish(LONG).await.expect("retained");
    assert!(got.retain);
    assert_eq!(&got.payload[..], b"two");
    publisher
        .send(&topic, QoS::AtLeastOnce, true, b"", no_props())
        .await;
    sub.disconnect().await;
    let mut late = V5::connect(b.v5(Who::Phone)).await;
    late.subscribe(&topic, QoS::AtLeastOnce).await;
    assert!(late.publish(SHORT).await.is_none(), "cleared");
}
on_both_listeners!(retained_messages_set_replace_and_clear);

/// §3.3.2.3.7 [MQTT-3.3.2-17, -18]: "The Server MUST send all User
/// Properties unaltered in a PUBLISH packet when forwarding the
/// Application Message to a Client" and maintain their order.
async fn user_properties_are_forwarded_unaltered(b: Bench) {
    let topic = b.topic("props");
    let mut sub = V5::connect(b.v5(Who::Phone)).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    let sent = vec![
        ("b".to_owned(), "2".to_owned()),
        ("a".to_owned(), "1".to_owned()),
        ("b".to_owned(), "3".to_owned()),
    ];
    let props = PublishProperties {
        user_properties: sent.clone(),
        ..no_props()
    };
    publisher
        .send(&topic, QoS::AtLeastOnce, false, b"u", props)
        .await;
    let got = sub.publish(LONG).await.unwrap();
    assert_eq!(got.properties.map(|p| p.user_properties), Some(sent));
}
on_both_listeners!(user_properties_are_forwarded_unaltered);

/// §3.3.2.3.2 [MQTT-3.3.2-4]: "A Server MUST send the Payload Format
/// Indicator unaltered to all subscribers"; §3.3.2.3.9 [MQTT-3.3.2-20]:
/// likewise the Content Type.
async fn payload_format_and_content_type_are_forwarded(b: Bench) {
    let topic = b.topic("format");
    let mut sub = V5::connect(b.v5(Who::Phone)).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        ..no_props()
    };
    publisher
        .send(&topic, QoS::AtLeastOnce, false, b"{}", props)
        .await;
    let got = sub
        .publish(LONG)
        .await
        .unwrap()
        .properties
        .unwrap_or_default();
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
}
on_both_listeners!(payload_format_and_content_type_are_forwarded);

/// §3.8.3.1 [MQTT-3.8.3-3]: with No Local 1, "Application Messages MUST NOT
/// be forwarded to a connection with a ClientID equal to the ClientID of
/// the publishing connection".
async fn no_local_keeps_a_clients_own_messages_from_it(b: Bench) {
    let topic = phone_topic(&b, "nolocal");
    let mut phone = V5::connect(b.v5(Who::Phone)).await;
    let mut filter = Filter::new(&topic, QoS::AtLeastOnce);
    filter.nolocal = true;
    phone.subscribe_with(filter, None).await;
    phone
        .send(&topic, QoS::AtLeastOnce, false, b"mine", no_props())
        .await;
    assert!(
        phone.publish(SHORT).await.is_none(),
        "own message came back"
    );
}
on_both_listeners!(no_local_keeps_a_clients_own_messages_from_it);

/// §3.8.3.1 and §3.3.1.3 [MQTT-3.3.1-12, -13]: with Retain As Published 0
/// a forwarded message has RETAIN 0; with 1, RETAIN as published.
async fn retain_as_published_keeps_the_flag(b: Bench) {
    let topic = b.topic("rap");
    let mut plain = V5::connect(b.v5(Who::Phone)).await;
    plain.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    publisher
        .send(&topic, QoS::AtLeastOnce, true, b"r", no_props())
        .await;
    assert!(
        !plain.publish(LONG).await.unwrap().retain,
        "RAP 0: RETAIN 0"
    );
    plain.disconnect().await;
    let mut keeping = V5::connect(b.v5(Who::Phone)).await;
    let mut filter = Filter::new(&topic, QoS::AtLeastOnce);
    filter.preserve_retain = true;
    filter.retain_forward_rule = RetainForwardRule::Never;
    keeping.subscribe_with(filter, None).await;
    publisher
        .send(&topic, QoS::AtLeastOnce, true, b"s", no_props())
        .await;
    assert!(
        keeping.publish(LONG).await.unwrap().retain,
        "RAP 1: RETAIN as published"
    );
}
on_both_listeners!(retain_as_published_keeps_the_flag);

/// §3.8.3.1 Retain Handling [MQTT-3.3.1-9..-11]: 2 = "Do not send retained
/// messages at the time of the subscribe"; 1 = only if the subscription
/// did not already exist.
async fn retain_handling_is_respected(b: Bench) {
    let topic = b.topic("rh");
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    publisher
        .send(&topic, QoS::AtLeastOnce, true, b"kept", no_props())
        .await;
    let mut never = V5::connect(b.v5(Who::Phone)).await;
    let mut filter = Filter::new(&topic, QoS::AtLeastOnce);
    filter.retain_forward_rule = RetainForwardRule::Never;
    never.subscribe_with(filter, None).await;
    assert!(never.publish(SHORT).await.is_none(), "retain handling 2");
    never.disconnect().await;
    let mut new_only = V5::connect(b.v5(Who::Phone)).await;
    let mut filter = Filter::new(&topic, QoS::AtLeastOnce);
    filter.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
    new_only.subscribe_with(filter.clone(), None).await;
    assert!(new_only.publish(LONG).await.is_some(), "new subscription");
    new_only.subscribe_with(filter, None).await;
    assert!(
        new_only.publish(SHORT).await.is_none(),
        "existing subscription"
    );
    // 0: sent at every subscribe, the subscription existing or not.
    let filter = Filter::new(&topic, QoS::AtLeastOnce);
    new_only.subscribe_with(filter, None).await;
    let again = new_only
        .publish(LONG)
        .await
        .expect("retain handling 0 on an existing subscription");
    assert!(again.retain);
}
on_both_listeners!(retain_handling_is_respected);

/// §3.8.2.1.2 and §3.3.4 [MQTT-3.3.4-3]: "If the Client specified a
/// Subscription Identifier for any of the overlapping subscriptions the
/// Server MUST send those Subscription Identifiers in the message".
async fn subscription_identifiers_come_back(b: Bench) {
    let topic = b.topic("subid");
    let mut sub = V5::connect(b.v5(Who::Phone)).await;
    let props = SubscribeProperties {
        id: Some(42),
        user_properties: Vec::new(),
    };
    sub.subscribe_with(Filter::new(&topic, QoS::AtLeastOnce), Some(props))
        .await;
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    publisher
        .send(&topic, QoS::AtLeastOnce, false, b"i", no_props())
        .await;
    let got = sub.publish(LONG).await.expect("delivered");
    let ids = got.properties.map(|p| p.subscription_identifiers);
    assert_eq!(ids, Some(vec![42]));
}
on_both_listeners!(subscription_identifiers_come_back);

/// §3.3.2.3.4: a client may send a Topic Alias with the topic, then the
/// alias alone; "the receiver ... MUST use the Topic Alias mapping" and
/// the message is delivered on the topic.
async fn topic_aliases_from_the_client_are_resolved(b: Bench) {
    let topic = b.topic("alias");
    let mut sub = V5::connect(b.v5(Who::Phone)).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    let aliased = || PublishProperties {
        topic_alias: Some(3),
        ..no_props()
    };
    publisher
        .send(&topic, QoS::AtLeastOnce, false, b"first", aliased())
        .await;
    publisher
        .send("", QoS::AtLeastOnce, false, b"second", aliased())
        .await;
    for expected in [&b"first"[..], b"second"] {
        let got = sub.publish(LONG).await.expect("delivered");
        assert_eq!(&got.payload[..], expected);
        assert_eq!(&got.topic[..], topic.as_bytes());
    }
}
on_both_listeners!(topic_aliases_from_the_client_are_resolved);

/// §3.3.2.3.4 [MQTT-3.3.2-9]: "A Server MUST NOT send a Topic Alias in a
/// PUBLISH packet to the Client greater than the Topic Alias Maximum" the
/// client sent (0 when absent: no aliases at all).
async fn no_topic_alias_is_sent_to_a_client_that_allowed_none(b: Bench) {
    let topic = b.topic("noalias");
    let mut sub = V5::connect(b.v5(Who::Phone)).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    for _ in 0..3 {
        publisher
            .send(&topic, QoS::AtLeastOnce, false, b"x", no_props())
            .await;
        let got = sub.publish(LONG).await.unwrap();
        assert_eq!(got.properties.and_then(|p| p.topic_alias), None);
        assert_eq!(&got.topic[..], topic.as_bytes());
    }
}
on_both_listeners!(no_topic_alias_is_sent_to_a_client_that_allowed_none);

/// §3.1.2.11.4 [MQTT-3.1.2-25, -26]: "The Server MUST NOT send packets
/// exceeding Maximum Packet Size to the Client" and discards such a
/// message for that client (who stays connected).
async fn the_clients_maximum_packet_size_is_respected(b: Bench) {
    let topic = b.topic("maxsize");
    let mut options = b.v5(Who::Phone);
    options.set_max_packet_size(Some(512));
    let mut sub = V5::connect(options).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    publisher
        .send(&topic, QoS::AtLeastOnce, false, &[7u8; 2000], no_props())
        .await;
    publisher
        .send(&topic, QoS::AtLeastOnce, false, b"small", no_props())
        .await;
    let got = sub.publish(LONG).await.expect("the small one");
    assert_eq!(&got.payload[..], b"small", "the large one was discarded");
    // Interleaved with messages the client does take, at QoS 1 and 2: the
    // discarded flows complete in the order the broker needs (nothing stays
    // in flight, no acknowledgement out of order), and later messages keep
    // coming.
    for (leaf, qos) in [
        ("maxsize1", QoS::AtLeastOnce),
        ("maxsize2", QoS::ExactlyOnce),
    ] {
        let topic = b.topic(leaf);
        sub.subscribe(&topic, qos).await;
        for round in 0..5u8 {
            for payload in [vec![round; 2000], vec![round], vec![round; 3000]] {
                publisher
                    .client
                    .publish(&topic, qos, false, payload)
                    .await
                    .unwrap();
            }
            let got = sub.publish(LONG).await.expect("the small one");
            assert_eq!(&got.payload[..], &[round][..], "{qos:?}");
        }
    }
    let topic2 = b.topic("maxsize2b");
    sub.subscribe(&topic2, QoS::ExactlyOnce).await;
    for round in 0..3u8 {
        for payload in [vec![round; 2000], vec![round]] {
            publisher
                .client
                .publish(&topic2, QoS::ExactlyOnce, false, payload)
                .await
                .unwrap();
        }
        let got = sub.publish(LONG).await.expect("the small one at QoS 2");
        assert_eq!(&got.payload[..], &[round][..]);
    }
}
on_both_listeners!(the_clients_maximum_packet_size_is_respected);

/// §3.1.2.11.3 and §4.9 [MQTT-3.3.4-9]: "The Server MUST NOT send more than
/// Receive Maximum QoS 1 and QoS 2 PUBLISH packets for which it has not
/// received PUBACK, PUBCOMP, or PUBREC".
async fn the_clients_receive_maximum_is_respected(b: Bench) {
    let topic = b.topic("recvmax");
    let mut options = b.v5(Who::Phone);
    options.set_receive_maximum(Some(2));
    options.set_manual_acks(true);
    let mut sub = V5::connect(options).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    for n in 0..5u8 {
        publisher
            .send(&topic, QoS::AtLeastOnce, false, &[n], no_props())
            .await;
    }
    // Round by round: never more than 2 unacknowledged; acknowledging
    // lets the next ones through, in order, until all 5 have come.
    let mut received = Vec::new();
    while received.len() < 5 {
        let mut unacked = Vec::new();
        while let Some(p) = sub.publish(SHORT).await {
            unacked.push(p);
        }
        assert!(
            (1..=2).contains(&unacked.len()),
            "{} in flight with Receive Maximum 2 (after {} received)",
            unacked.len(),
            received.len()
        );
        for p in unacked {
            sub.client.ack(&p).await.unwrap();
            received.push(p.payload[0]);
        }
    }
    assert_eq!(received, vec![0, 1, 2, 3, 4], "in order");
}
on_both_listeners!(the_clients_receive_maximum_is_respected);

/// §3.1.3.2.2 [MQTT-3.1.3-9]: "The Server delays publishing the Client's
/// Will Message until the Will Delay Interval has passed or the Session
/// ends, whichever happens first."
async fn the_will_waits_for_its_delay(b: Bench) {
    let will_topic = b.topic("delayed-will");
    let mut watcher = V5::connect(b.v5(Who::Phone)).await;
    watcher.subscribe(&will_topic, QoS::AtLeastOnce).await;
    let mut options = b.v5(Who::Toy);
    options.set_session_expiry_interval(Some(60));
    let properties = LastWillProperties {
        delay_interval: Some(2),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    };
    options.set_last_will(LastWill::new(
        &will_topic,
        "late",
        QoS::AtLeastOnce,
        false,
        Some(properties),
    ));
    V5::connect(options).await.drop_connection();
    assert!(
        watcher.publish(Duration::from_millis(1200)).await.is_none(),
        "too early"
    );
    let got = watcher
        .publish(LONG)
        .await
        .expect("the will, after its delay");
    assert_eq!(&got.payload[..], b"late");
}
on_both_listeners!(the_will_waits_for_its_delay);

/// §3.3.1.2 and §4.3 (v5): delivery at QoS 0, 1 and 2, at the minimum of
/// the published and subscribed QoS.
async fn publish_and_subscribe_at_each_qos(b: Bench) {
    let mut sub = V5::connect(b.v5(Who::Phone)).await;
    let publisher = V5::connect(b.v5(Who::Toy)).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let topic = b.topic(&format!("v5qos{}", qos as u8));
        sub.subscribe(&topic, qos).await;
        publisher
            .client
            .publish(&topic, qos, false, b"q".to_vec())
            .await
            .unwrap();
        let got = sub.publish(LONG).await.expect("delivered");
        assert_eq!(got.qos, qos);
    }
}
on_both_listeners!(publish_and_subscribe_at_each_qos);

/// §4.4 [MQTT-4.4.0-1] (v5): on a resumed session (Clean Start 0) the
/// server resends unacknowledged QoS 1 PUBLISHes with their original packet
/// identifiers and DUP 1 (§3.3.1.1).
async fn unacknowledged_messages_are_redelivered_on_reconnect(b: Bench) {
    let topic = b.topic("redeliver5");
    let mut options = b.v5(Who::Phone);
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(300));
    options.set_manual_acks(true);
    let mut sub = V5::connect(options.clone()).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    publisher
        .send(&topic, QoS::AtLeastOnce, false, b"again", no_props())
        .await;
    let first = sub.publish(LONG).await.expect("first delivery");
    sub.drop_connection();
    let mut back = V5::connect(options).await;
    let again = back.publish(LONG).await.expect("redelivered");
    assert_eq!(&again.payload[..], b"again");
    assert_eq!(again.pkid, first.pkid);
    assert!(again.dup, "DUP set on redelivery");
}
on_both_listeners!(unacknowledged_messages_are_redelivered_on_reconnect);

/// §3.10.4 [MQTT-3.10.4-2] (v5): UNSUBSCRIBE stops new deliveries.
async fn unsubscribe_stops_delivery(b: Bench) {
    let topic = b.topic("unsub5");
    let mut sub = V5::connect(b.v5(Who::Phone)).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    publisher
        .send(&topic, QoS::AtLeastOnce, false, b"1", no_props())
        .await;
    assert!(sub.publish(LONG).await.is_some());
    sub.client.unsubscribe(&topic).await.unwrap();
    sub.next_where(LONG, |p| matches!(p, P5::UnsubAck(_)).then_some(()))
        .await
        .expect("UNSUBACK");
    publisher
        .send(&topic, QoS::AtLeastOnce, false, b"2", no_props())
        .await;
    assert!(sub.publish(SHORT).await.is_none());
}
on_both_listeners!(unsubscribe_stops_delivery);

/// §3.8.4 (v5): delivered QoS is the minimum of the published QoS and the
/// subscription's Maximum QoS — never raised to the subscription's.
async fn a_higher_subscription_qos_does_not_raise_the_delivered_qos(b: Bench) {
    let topic = b.topic("upgrade5");
    let mut sub = V5::connect(b.v5(Who::Phone)).await;
    sub.subscribe(&topic, QoS::ExactlyOnce).await;
    let publisher = V5::connect(b.v5(Who::Toy)).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publisher
            .client
            .publish(&topic, qos, false, b"q".to_vec())
            .await
            .unwrap();
        let got = sub.publish(LONG).await.expect("delivered");
        assert_eq!(got.qos, qos, "published at {qos:?}");
    }
}
on_both_listeners!(a_higher_subscription_qos_does_not_raise_the_delivered_qos);

/// §3.1.2.4 and §3.1.2.11.2: Clean Start 1 discards an existing session,
/// but with a Session Expiry Interval the new session still outlives the
/// connection (paho's default is Clean Start 1 on the first connect): a
/// reconnect with Clean Start 0 finds it (Session Present 1) and the QoS 1
/// message published meanwhile.
async fn a_clean_start_session_with_expiry_outlives_its_connection(b: Bench) {
    let topic = b.topic("fresh");
    let mut first = b.v5(Who::Phone);
    first.set_clean_start(true);
    first.set_session_expiry_interval(Some(300));
    let mut sub = V5::connect(first).await;
    assert!(!sub.connack.session_present);
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    publisher
        .send(&topic, QoS::AtLeastOnce, false, b"kept", no_props())
        .await;
    let mut again = b.v5(Who::Phone);
    again.set_clean_start(false);
    again.set_session_expiry_interval(Some(300));
    let mut back = V5::connect(again).await;
    assert!(back.connack.session_present, "the session was kept");
    let got = back.publish(LONG).await.expect("the queued message");
    assert_eq!(&got.payload[..], b"kept");
}
on_both_listeners!(a_clean_start_session_with_expiry_outlives_its_connection);

/// §3.1.2.11.2: "The Client and Server MUST store the Session State after
/// the Network Connection is closed if the Session Expiry Interval is
/// greater than 0" — and no longer than that: after it the session is gone.
async fn a_session_ends_when_its_expiry_interval_passes(b: Bench) {
    let topic = b.topic("expires");
    let mut options = b.v5(Who::Phone);
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(2));
    let mut sub = V5::connect(options.clone()).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    sub.disconnect().await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    publisher
        .send(&topic, QoS::AtLeastOnce, false, b"late", no_props())
        .await;
    let mut back = V5::connect(options).await;
    assert!(!back.connack.session_present, "expired");
    assert!(back.publish(SHORT).await.is_none());
}
on_both_listeners!(a_session_ends_when_its_expiry_interval_passes);

/// §3.11.3 [MQTT-3.11.3-1], §3.10.4 [MQTT-3.10.4-5] (v5): one UNSUBACK
/// answers an UNSUBSCRIBE, with a reason per filter in order: 0x00 for the
/// filter held, 0x11 No subscription existed for one that was not.
async fn one_unsuback_has_a_reason_per_filter(b: Bench) {
    let held = b.topic("unsub-held");
    let mut raw = b.raw(Who::Phone).await;
    raw.send(&connect(true, 30, &b.client_id(Who::Phone), true, None))
        .await;
    assert!(matches!(raw.next(LONG).await, Seen::Packet(0x20, _)));
    raw.send(&subscribe_packet(true, 1, std::slice::from_ref(&held)))
        .await;
    assert!(matches!(raw.next(LONG).await, Seen::Packet(0x90, _)));
    raw.send(&unsubscribe_packet(
        true,
        2,
        &[held, b.topic("unsub-never")],
    ))
    .await;
    match raw.next(LONG).await {
        Seen::Packet(0xb0, p) => assert_eq!(&p[2..], &[0, 2, 0, 0x00, 0x11], "{p:02x?}"),
        other => panic!("expected UNSUBACK, saw {other:?}"),
    }
    assert_eq!(raw.next(SHORT).await, Seen::Nothing, "one UNSUBACK only");
}
on_both_listeners!(one_unsuback_has_a_reason_per_filter);

/// §3.2.2.3.2 and §3.2.2.3.3 (v5): the CONNACK says the Session Expiry
/// Interval the hub uses when it caps the client's (`max_session_expiry_secs`)
/// and gives the hub's Receive Maximum (`max_inflight`).
async fn the_connack_says_the_capped_expiry_and_the_receive_maximum(b: Bench) {
    let mut options = b.v5(Who::Phone);
    options.set_clean_start(true);
    options.set_session_expiry_interval(Some(u32::MAX));
    let client = V5::connect(options).await;
    let properties = client
        .connack
        .properties
        .clone()
        .expect("CONNACK properties");
    assert_eq!(properties.session_expiry_interval, Some(604_800));
    assert_eq!(properties.receive_max, Some(100));
    // Asked for less than the cap: nothing to say.
    let mut options = b.v5(Who::Toy);
    options.set_session_expiry_interval(Some(60));
    let client = V5::connect(options).await;
    let properties = client
        .connack
        .properties
        .clone()
        .expect("CONNACK properties");
    assert_eq!(properties.session_expiry_interval, None);
}
on_both_listeners!(the_connack_says_the_capped_expiry_and_the_receive_maximum);

/// §3.8.4, §3.10.4 (v5): a resumed session's subscriptions are the
/// connection's own: UNSUBSCRIBE is answered and stops delivery.
async fn unsubscribe_after_resuming_a_session_stops_delivery(b: Bench) {
    let topic = b.topic("resume-unsub5");
    let mut options = b.v5(Who::Phone);
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(600));
    let mut sub = V5::connect(options.clone()).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut sub = V5::connect(options).await;
    assert!(sub.connack.session_present, "session resumed");
    sub.client.unsubscribe(&topic).await.unwrap();
    sub.next_where(LONG, |p| matches!(p, P5::UnsubAck(_)).then_some(()))
        .await
        .expect("UNSUBACK");
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    publisher
        .send(&topic, QoS::AtLeastOnce, false, b"gone", no_props())
        .await;
    assert!(sub.publish(SHORT).await.is_none());
}
on_both_listeners!(unsubscribe_after_resuming_a_session_stops_delivery);

/// §3.3.2.3.4 [MQTT-3.3.2-10 … -12]: topic aliases from the hub to a client
/// that allows them name topics, one alias per topic: a wildcard
/// subscriber's messages on different topics keep their own topics.
/// rumqttd keyed its aliases by subscription filter, so every message after
/// the first on `tele/#` came with the first one's alias: the client read
/// them as published to the first topic.
async fn topic_aliases_to_a_client_name_each_topic(b: Bench) {
    let mut options = b.v5(Who::Phone);
    options.set_topic_alias_max(Some(10));
    let mut sub = V5::connect(options).await;
    sub.subscribe(&b.topic("aliased/+"), QoS::AtMostOnce).await;
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    let sent = ["a", "b", "a", "c", "b"].map(|leaf| b.topic(&format!("aliased/{leaf}")));
    for topic in &sent {
        publisher
            .send(topic, QoS::AtLeastOnce, false, topic.as_bytes(), no_props())
            .await;
    }
    // The client resolves aliases as the specification says.
    let mut aliases: std::collections::HashMap<u16, String> = Default::default();
    let mut aliased = 0;
    for expected in &sent {
        let got = sub.publish(LONG).await.expect("delivered");
        let alias = got.properties.as_ref().and_then(|p| p.topic_alias);
        let topic = if got.topic.is_empty() {
            aliased += 1;
            let alias = alias.expect("an empty topic comes with an alias");
            aliases
                .get(&alias)
                .cloned()
                .expect("an alias defined before")
        } else {
            let topic = String::from_utf8(got.topic.to_vec()).unwrap();
            if let Some(alias) = alias {
                assert!(
                    (1..=10).contains(&alias),
                    "alias {alias} within the maximum"
                );
                aliases.insert(alias, topic.clone());
            }
            topic
        };
        assert_eq!(&topic, expected);
        assert_eq!(&got.payload[..], expected.as_bytes());
    }
    assert!(aliased >= 2, "repeated topics travel as aliases");
}
on_both_listeners!(topic_aliases_to_a_client_name_each_topic);

/// §3.3.2.3.4: a client whose Receive Maximum makes the edge hold back
/// QoS 1/2 messages (while QoS 0 ones go on) gets no aliases from the hub:
/// an alias defined in a held message would be used before the client
/// learnt it.
async fn a_client_the_edge_holds_messages_for_gets_no_aliases(b: Bench) {
    let mut options = b.v5(Who::Phone);
    options.set_topic_alias_max(Some(10));
    options.set_receive_maximum(Some(2));
    let mut sub = V5::connect(options).await;
    sub.subscribe(&b.topic("held/+"), QoS::AtLeastOnce).await;
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    for leaf in ["a", "a", "b"] {
        let topic = b.topic(&format!("held/{leaf}"));
        publisher
            .send(&topic, QoS::AtLeastOnce, false, b"h", no_props())
            .await;
        let got = sub.publish(LONG).await.expect("delivered");
        assert_eq!(&got.topic[..], topic.as_bytes());
        assert_eq!(got.properties.and_then(|p| p.topic_alias), None);
    }
}
on_both_listeners!(a_client_the_edge_holds_messages_for_gets_no_aliases);

/// §4.10 (request/response): a requester names a Response Topic and
/// Correlation Data; the responder receives both and answers there, and
/// the requester matches the answer by its Correlation Data.
async fn request_and_response(b: Bench) {
    let request_topic = format!("hearth/v1/dev/{}/cmd/ask", b.toy.id);
    let response_topic = b.topic("answer");
    let mut responder = V5::connect(b.v5(Who::Toy)).await;
    responder.subscribe(&request_topic, QoS::AtLeastOnce).await;
    let mut requester = V5::connect(b.v5(Who::Phone)).await;
    requester.subscribe(&response_topic, QoS::AtLeastOnce).await;
    let request = PublishProperties {
        response_topic: Some(response_topic.clone()),
        correlation_data: Some(bytes::Bytes::from_static(b"req-7")),
        ..no_props()
    };
    requester
        .send(&request_topic, QoS::AtLeastOnce, false, b"ping?", request)
        .await;
    let asked = responder.publish(LONG).await.expect("request delivered");
    let props = asked.properties.expect("request properties");
    let answer_to = props.response_topic.expect("Response Topic");
    assert_eq!(answer_to, response_topic);
    let correlation = props.correlation_data.expect("Correlation Data");
    let answer = PublishProperties {
        correlation_data: Some(correlation),
        ..no_props()
    };
    responder
        .send(&answer_to, QoS::AtLeastOnce, false, b"pong", answer)
        .await;
    let answered = requester.publish(LONG).await.expect("response delivered");
    assert_eq!(&answered.payload[..], b"pong");
    assert_eq!(
        answered
            .properties
            .and_then(|p| p.correlation_data)
            .as_deref(),
        Some(&b"req-7"[..])
    );
}
on_both_listeners!(request_and_response);

/// A v5 CONNECT asking for `expiry` seconds of session, over a raw
/// connection.
fn connect_with_expiry(client_id: &str, expiry: u32) -> Vec<u8> {
    let properties = rumqttd::protocol::ConnectProperties {
        session_expiry_interval: Some(expiry),
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties: Vec::new(),
        authentication_method: None,
        authentication_data: None,
    };
    let connect = rumqttd::protocol::Connect {
        keep_alive: 30,
        client_id: client_id.to_owned(),
        clean_session: false,
    };
    encode(
        true,
        rumqttd::protocol::Packet::Connect(connect, Some(properties), None, None, None),
    )
}

/// A v5 DISCONNECT (normal) with a Session Expiry Interval.
fn disconnect_with_expiry(expiry: u32) -> Vec<u8> {
    let mut packet = vec![0xe0, 0x07, 0x00, 0x05, 0x11];
    packet.extend_from_slice(&expiry.to_be_bytes());
    packet
}

/// §3.14.2.2.2: a DISCONNECT with Session Expiry Interval 0 ends a session
/// the CONNECT asked to keep.
async fn a_disconnect_can_end_the_session(b: Bench) {
    let client_id = b.client_id(Who::Phone);
    let mut raw = b.raw(Who::Phone).await;
    raw.send(&connect_with_expiry(&client_id, 600)).await;
    assert!(matches!(raw.next(LONG).await, Seen::Packet(0x20, _)));
    raw.send(&subscribe_packet(true, 1, &[b.topic("ended")]))
        .await;
    assert!(matches!(raw.next(LONG).await, Seen::Packet(0x90, _)));
    raw.send(&disconnect_with_expiry(0)).await;
    assert_eq!(raw.next(LONG).await, Seen::Closed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut options = b.v5(Who::Phone);
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(600));
    let back = V5::connect(options).await;
    assert!(!back.connack.session_present, "the session ended");
}
on_both_listeners!(a_disconnect_can_end_the_session);

/// §3.14.2.2.2: after a CONNECT without a Session Expiry Interval, a
/// DISCONNECT that sets one is a Protocol Error (0x82), not a DISCONNECT.
async fn a_disconnect_cannot_give_a_session_an_expiry(b: Bench) {
    let mut raw = b.raw(Who::Toy).await;
    raw.send(&connect(true, 30, &b.client_id(Who::Toy), true, None))
        .await;
    assert!(matches!(raw.next(LONG).await, Seen::Packet(0x20, _)));
    raw.send(&disconnect_with_expiry(60)).await;
    match raw.next(LONG).await {
        Seen::Packet(0xe0, p) => assert_eq!(p.get(2), Some(&0x82), "{p:02x?}"),
        other => panic!("expected DISCONNECT 0x82, saw {other:?}"),
    }
    assert_eq!(raw.next(LONG).await, Seen::Closed);
}
on_both_listeners!(a_disconnect_cannot_give_a_session_an_expiry);
