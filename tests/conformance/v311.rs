//! MQTT 3.1.1 (OASIS Standard, 29 October 2014): one test per behaviour,
//! through both listeners, written from the specification's text. Each
//! test cites the section (and normative statement) it checks.

use std::time::Duration;

use rumqttc::QoS;

use crate::harness::*;
use crate::on_both_listeners;

const SHORT: Duration = Duration::from_millis(700);
const LONG: Duration = Duration::from_secs(10);

/// §3.1.2.10: "A Keep Alive value of zero (0) has the effect of turning off
/// the keep alive mechanism." A CONNECT with it is legal and accepted.
async fn keep_alive_zero_is_accepted(b: Bench) {
    let mut raw = b.raw(Who::Toy).await;
    raw.send(&connect(false, 0, &b.client_id(Who::Toy), true, None))
        .await;
    match raw.next(LONG).await {
        Seen::Packet(0x20, p) => assert_eq!(p[3], 0, "CONNACK return code: {p:02x?}"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // And the server does not close it for silence (§3.1.2.10).
    assert_eq!(raw.next(Duration::from_secs(3)).await, Seen::Nothing);
}
on_both_listeners!(keep_alive_zero_is_accepted);

/// §3.1.2.10: non-zero keep-alive, accepted with return code 0 (§3.2.2.3).
async fn keep_alive_nonzero_is_accepted(b: Bench) {
    let mut raw = b.raw(Who::Toy).await;
    raw.send(&connect(false, 30, &b.client_id(Who::Toy), true, None))
        .await;
    match raw.next(LONG).await {
        Seen::Packet(0x20, p) => assert_eq!(p[3], 0, "{p:02x?}"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}
on_both_listeners!(keep_alive_nonzero_is_accepted);

/// §3.1.2.10 [MQTT-3.1.2-24]: "If the Keep Alive value is non-zero and the
/// Server does not receive a Control Packet from the Client within one and
/// a half times the Keep Alive time period, it MUST disconnect". The will
/// is then published (§3.1.2.5).
async fn keep_alive_expiry_disconnects_and_publishes_the_will(b: Bench) {
    let will = b.topic("will");
    let mut watcher = V4::connect(b.v4(Who::Phone)).await;
    watcher.subscribe(&will, QoS::AtLeastOnce).await;
    let mut raw = b.raw(Who::Toy).await;
    raw.send(&connect(
        false,
        1,
        &b.client_id(Who::Toy),
        true,
        Some((&will, b"gone")),
    ))
    .await;
    assert!(matches!(raw.next(LONG).await, Seen::Packet(0x20, _)));
    let started = std::time::Instant::now();
    assert_eq!(raw.next(Duration::from_secs(5)).await, Seen::Closed);
    assert!(
        started.elapsed() <= Duration::from_millis(2500),
        "closed after {:?}",
        started.elapsed()
    );
    let got = watcher.publish(LONG).await.expect("the will");
    assert_eq!(&got.payload[..], b"gone");
}
on_both_listeners!(keep_alive_expiry_disconnects_and_publishes_the_will);

/// §3.1.3.1 [MQTT-3.1.3-6]: a server may accept a zero-byte client id with
/// CleanSession 1 and then "MUST treat this as a special case and assign a
/// unique ClientId to that Client".
async fn zero_length_client_id_with_clean_session_is_accepted(b: Bench) {
    let mut raw = b.raw(Who::Toy).await;
    raw.send(&connect(false, 30, "", true, None)).await;
    match raw.next(LONG).await {
        Seen::Packet(0x20, p) => assert_eq!(p[3], 0, "{p:02x?}"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}
on_both_listeners!(zero_length_client_id_with_clean_session_is_accepted);

/// §3.1.3.1 [MQTT-3.1.3-8]: "If the Client supplies a zero-byte ClientId
/// with CleanSession set to 0, the Server MUST respond to the CONNECT
/// Packet with a CONNACK return code 0x02 (Identifier rejected) and then
/// close the Network Connection."
async fn zero_length_client_id_without_clean_session_is_rejected(b: Bench) {
    let mut raw = b.raw(Who::Toy).await;
    raw.send(&connect(false, 30, "", false, None)).await;
    match raw.next(LONG).await {
        Seen::Packet(0x20, p) => assert_eq!(p[3], 0x02, "{p:02x?}"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert_eq!(raw.next(LONG).await, Seen::Closed);
}
on_both_listeners!(zero_length_client_id_without_clean_session_is_rejected);

/// §3.2.2.2: Session Present is 0 with CleanSession 1 [MQTT-3.2.2-1], and 1
/// when a persistent session is resumed [MQTT-3.2.2-2].
async fn session_present_follows_clean_session(b: Bench) {
    let mut options = b.v4(Who::Phone);
    options.set_clean_session(false);
    let mut first = V4::connect(options.clone()).await;
    first.subscribe(&b.topic("x"), QoS::AtLeastOnce).await;
    first.disconnect().await;
    let resumed = V4::connect(options).await;
    assert!(
        resumed.connack.session_present,
        "persistent session resumed"
    );
    resumed.disconnect().await;
    let clean = V4::connect(b.v4(Who::Phone)).await;
    assert!(!clean.connack.session_present);
}
on_both_listeners!(session_present_follows_clean_session);

/// §3.3.1.2, §3.8.4 and §4.3: a message is delivered at the minimum of the
/// published QoS and the subscription's maximum QoS, for QoS 0, 1 and 2.
async fn publish_and_subscribe_at_each_qos(b: Bench) {
    let mut sub = V4::connect(b.v4(Who::Phone)).await;
    let mut publisher = V4::connect(b.v4(Who::Toy)).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let topic = b.topic(&format!("qos{}", qos as u8));
        let granted = sub.subscribe(&topic, qos).await;
        assert_eq!(granted, vec![rumqttc::SubscribeReasonCode::Success(qos)]);
        publisher.send(&topic, qos, false, b"m").await;
        let got = sub.publish(LONG).await.expect("delivered");
        assert_eq!(got.topic, topic);
        assert_eq!(got.qos, qos, "delivered at the subscription's QoS");
    }
    // Downgrade: QoS 2 published to a QoS 0 subscription arrives at QoS 0.
    let topic = b.topic("down");
    sub.subscribe(&topic, QoS::AtMostOnce).await;
    publisher.send(&topic, QoS::ExactlyOnce, false, b"d").await;
    assert_eq!(sub.publish(LONG).await.unwrap().qos, QoS::AtMostOnce);
}
on_both_listeners!(publish_and_subscribe_at_each_qos);

/// §3.3.1.3: a retained message is sent to new subscribers with RETAIN 1
/// [MQTT-3.3.1-8], replaced by the next retained one [MQTT-3.3.1-5], and
/// cleared by a retained zero-byte message [MQTT-3.3.1-10, -11].
async fn retained_messages_set_replace_and_clear(b: Bench) {
    let topic = b.topic("retained");
    let mut publisher = V4::connect(b.v4(Who::Toy)).await;
    publisher
        .send(&topic, QoS::AtLeastOnce, true, b"first")
        .await;
    publisher
        .send(&topic, QoS::AtLeastOnce, true, b"second")
        .await;
    let mut sub = V4::connect(b.v4(Who::Phone)).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let got = sub.publish(LONG).await.expect("the retained message");
    assert!(
        got.retain,
        "RETAIN set on a retained message sent at subscribe"
    );
    assert_eq!(&got.payload[..], b"second");
    assert!(
        sub.publish(SHORT).await.is_none(),
        "only the latest is kept"
    );
    // A live message to an existing subscription has RETAIN 0 [MQTT-3.3.1-9].
    publisher
        .send(&topic, QoS::AtLeastOnce, true, b"third")
        .await;
    assert!(!sub.publish(LONG).await.unwrap().retain);
    publisher.send(&topic, QoS::AtLeastOnce, true, b"").await;
    sub.disconnect().await;
    let mut late = V4::connect(b.v4(Who::Phone)).await;
    late.subscribe(&topic, QoS::AtLeastOnce).await;
    assert!(late.publish(SHORT).await.is_none(), "cleared");
}
on_both_listeners!(retained_messages_set_replace_and_clear);

/// §3.1.2.5: the will is published when the connection closes without
/// DISCONNECT [MQTT-3.1.2-8], and not after a DISCONNECT [MQTT-3.1.2-10].
async fn will_on_abrupt_close_but_not_after_disconnect(b: Bench) {
    let will_topic = b.topic("status");
    let mut watcher = V4::connect(b.v4(Who::Phone)).await;
    watcher.subscribe(&will_topic, QoS::AtLeastOnce).await;
    let with_will = |payload: &'static str| {
        let mut options = b.v4(Who::Toy);
        options.set_last_will(rumqttc::LastWill::new(
            &will_topic,
            payload,
            QoS::AtLeastOnce,
            false,
        ));
        options
    };
    V4::connect(with_will("clean")).await.disconnect().await;
    assert!(
        watcher.publish(SHORT).await.is_none(),
        "no will after DISCONNECT"
    );
    V4::connect(with_will("lost")).await.drop_connection();
    let got = watcher.publish(LONG).await.expect("the will");
    assert_eq!(&got.payload[..], b"lost");
}
on_both_listeners!(will_on_abrupt_close_but_not_after_disconnect);

/// §3.3.5 [MQTT-3.3.5-1]: with overlapping subscriptions "the Server MUST
/// deliver the message to the Client respecting the maximum QoS of all the
/// matching subscriptions".
async fn overlapping_subscriptions_deliver_at_the_maximum_qos(b: Bench) {
    let topic = b.topic("overlap/x");
    let mut sub = V4::connect(b.v4(Who::Phone)).await;
    sub.subscribe(&b.topic("overlap/#"), QoS::AtMostOnce).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publisher = V4::connect(b.v4(Who::Toy)).await;
    publisher.send(&topic, QoS::AtLeastOnce, false, b"o").await;
    let mut best = None;
    while let Some(p) = sub.publish(SHORT).await {
        best = best.max(Some(p.qos as u8));
    }
    assert_eq!(best, Some(1), "delivered at QoS 1 at least once");
}
on_both_listeners!(overlapping_subscriptions_deliver_at_the_maximum_qos);

/// §4.7.2 [MQTT-4.7.2-1]: "The Server MUST NOT match Topic Filters starting
/// with a wildcard character (# or +) with Topic Names beginning with a $
/// character." Only the development listener lets a client use such
/// filters (the household policy denies both `#` and `$` topics over TLS,
/// which tests/e2e checks).
async fn dollar_topics_are_not_matched_by_wildcards(b: Bench) {
    let mut sub = V4::connect(b.v4(Who::Phone)).await;
    sub.subscribe("#", QoS::AtMostOnce).await;
    sub.subscribe("+/x", QoS::AtMostOnce).await;
    let mut publisher = V4::connect(b.v4(Who::Toy)).await;
    publisher
        .send("$test/x", QoS::AtLeastOnce, false, b"dollar")
        .await;
    publisher
        .send("plain/x", QoS::AtLeastOnce, false, b"plain")
        .await;
    let mut seen = Vec::new();
    while let Some(p) = sub.publish(SHORT).await {
        seen.push(p.topic);
    }
    assert!(!seen.iter().any(|t| t.starts_with('$')), "{seen:?}");
    assert!(seen.iter().any(|t| t == "plain/x"), "{seen:?}");
}
mod dollar_topics_are_not_matched_by_wildcards {
    #[tokio::test]
    async fn development() {
        super::dollar_topics_are_not_matched_by_wildcards(crate::harness::Bench::start(
            crate::harness::Via::Dev,
        ))
        .await
    }
}

/// §3.10.4 [MQTT-3.10.4-2]: after UNSUBSCRIBE the server "MUST stop adding
/// any new messages for delivery to the Client" on that filter.
async fn unsubscribe_stops_delivery(b: Bench) {
    let topic = b.topic("unsub");
    let mut sub = V4::connect(b.v4(Who::Phone)).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publisher = V4::connect(b.v4(Who::Toy)).await;
    publisher.send(&topic, QoS::AtLeastOnce, false, b"1").await;
    assert!(sub.publish(LONG).await.is_some());
    sub.unsubscribe(&topic).await;
    publisher.send(&topic, QoS::AtLeastOnce, false, b"2").await;
    assert!(sub.publish(SHORT).await.is_none());
}
on_both_listeners!(unsubscribe_stops_delivery);

/// §4.4 [MQTT-4.4.0-1]: "When a Client reconnects with CleanSession set to
/// 0, both the Client and Server MUST re-send any unacknowledged PUBLISH
/// Packets (where QoS > 0) ... using their original Packet Identifiers",
/// with DUP 1 [MQTT-3.3.1-1].
async fn unacknowledged_messages_are_redelivered_on_reconnect(b: Bench) {
    let topic = b.topic("redeliver");
    let mut options = b.v4(Who::Phone);
    options.set_clean_session(false);
    options.set_manual_acks(true);
    let mut sub = V4::connect(options.clone()).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publisher = V4::connect(b.v4(Who::Toy)).await;
    publisher
        .send(&topic, QoS::AtLeastOnce, false, b"again")
        .await;
    let first = sub.publish(LONG).await.expect("first delivery");
    sub.drop_connection(); // never acknowledged
    let mut back = V4::connect(options).await;
    let again = back.publish(LONG).await.expect("redelivered");
    assert_eq!(&again.payload[..], b"again");
    assert_eq!(again.pkid, first.pkid, "original packet identifier");
    assert!(again.dup, "DUP set on redelivery");
}
on_both_listeners!(unacknowledged_messages_are_redelivered_on_reconnect);

/// §3.1.2.4: a persistent session holds "QoS 1 and QoS 2 messages which
/// are new to the Session, but have not been transmitted to the Client"
/// while it is disconnected, and delivers them on reconnect.
async fn persistent_sessions_queue_while_offline(b: Bench) {
    let topic = b.topic("offline");
    let mut options = b.v4(Who::Phone);
    options.set_clean_session(false);
    let mut sub = V4::connect(options.clone()).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = V4::connect(b.v4(Who::Toy)).await;
    publisher
        .send(&topic, QoS::AtLeastOnce, false, b"queued")
        .await;
    let mut back = V4::connect(options).await;
    assert!(back.connack.session_present);
    let got = back.publish(LONG).await.expect("queued message");
    assert_eq!(&got.payload[..], b"queued");
}
on_both_listeners!(persistent_sessions_queue_while_offline);

/// §3.8.4: "the QoS of the Payload Messages delivered [is] the minimum of
/// the QoS of the originally published message and the maximum QoS
/// granted": a QoS 2 subscription receives QoS 0 and 1 messages at 0 and 1.
async fn a_higher_subscription_qos_does_not_raise_the_delivered_qos(b: Bench) {
    let topic = b.topic("upgrade");
    let mut sub = V4::connect(b.v4(Who::Phone)).await;
    sub.subscribe(&topic, QoS::ExactlyOnce).await;
    let mut publisher = V4::connect(b.v4(Who::Toy)).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publisher.send(&topic, qos, false, b"q").await;
        let got = sub.publish(LONG).await.expect("delivered");
        assert_eq!(got.qos, qos, "published at {qos:?}");
    }
}
on_both_listeners!(a_higher_subscription_qos_does_not_raise_the_delivered_qos);

/// §4.7.2 [MQTT-4.7.2-1]: "The Server MUST NOT match Topic Filters starting
/// with a wildcard character (# or +) with Topic Names beginning with a $
/// character"; the hub's own traffic lives under `$hearth/` and no client,
/// not even the development listener's, may see or touch it.
#[tokio::test]
async fn nothing_internal_reaches_a_wildcard_subscriber() {
    let b = Bench::start(Via::Dev);
    let mut everything = V4::connect(b.v4(Who::Phone)).await;
    everything.subscribe("#", QoS::AtMostOnce).await;
    let mut top = V4::connect(b.v4(Who::Toy)).await;
    top.subscribe("+/#", QoS::AtMostOnce).await;
    // The hub's liveness probe makes a round trip every 2 s. The one
    // message a wildcard may see is the hub's public, retained
    // `hearth/v1/hub/info` (its limits, for every device).
    let public = |p: &rumqttc::Publish| p.topic == "hearth/v1/hub/info" && p.retain;
    while let Some(seen) = everything.publish(Duration::from_secs(5)).await {
        assert!(public(&seen), "internal traffic leaked: {seen:?}");
    }
    while let Some(seen) = top.publish(SHORT).await {
        assert!(public(&seen), "internal traffic leaked: {seen:?}");
    }
    // Its own topics are refused outright.
    let codes = everything.subscribe("$hearth/#", QoS::AtMostOnce).await;
    assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Failure]);
    // And the ordinary traffic still flows.
    top.send("a/b", QoS::AtLeastOnce, false, b"x").await;
    assert_eq!(everything.publish(LONG).await.unwrap().topic, "a/b");
}

/// A third client beside the toy and the phone: another parent's phone
/// over TLS, another client id on the development listener.
fn second_phone(b: &Bench) -> rumqttc::MqttOptions {
    match b.via {
        Via::Tls => {
            let dad = b.hub.device("Dad", "parent");
            let mut options = rumqttc::MqttOptions::new(&dad.id, "127.0.0.1", b.hub.mqtt.port());
            options.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
                dad.tls(),
            )));
            options
        }
        Via::Dev => {
            let port = b.hub.dev.expect("dev listener").port();
            rumqttc::MqttOptions::new("conformance-dad", "127.0.0.1", port)
        }
    }
}

/// Receives until `limit` passes with nothing new; returns the payloads.
async fn drain(client: &mut V4, limit: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while let Some(p) = client.publish(limit).await {
        got.push(p.payload.to_vec());
    }
    got
}

/// 5 §4.8.2 (shared subscriptions, also offered to 3.1.1 clients): a
/// shared subscription is identified by its Share Name *and* its Topic
/// Filter, so two clients using one group name with different filters
/// each get every message of their own filter.
async fn one_group_name_with_different_filters_is_two_groups(b: Bench) {
    let mut mum = V4::connect(b.v4(Who::Phone)).await;
    mum.subscribe(&format!("$share/g/{}", b.topic("a")), QoS::AtLeastOnce)
        .await;
    let mut dad = V4::connect(second_phone(&b)).await;
    dad.subscribe(&format!("$share/g/{}", b.topic("b")), QoS::AtLeastOnce)
        .await;
    let mut toy = V4::connect(b.v4(Who::Toy)).await;
    for i in 0..20u8 {
        toy.send(&b.topic("a"), QoS::AtLeastOnce, false, &[i]).await;
        toy.send(&b.topic("b"), QoS::AtLeastOnce, false, &[i]).await;
    }
    assert_eq!(drain(&mut mum, SHORT).await.len(), 20, "group g on a");
    assert_eq!(drain(&mut dad, SHORT).await.len(), 20, "group g on b");
}
on_both_listeners!(one_group_name_with_different_filters_is_two_groups);

/// Hearth: a shared group is the household member's own (a service's own):
/// another member's device that joins the same group name and filter does
/// not take messages from it.
#[tokio::test]
async fn another_member_cannot_join_a_shared_group() {
    let b = Bench::start(Via::Tls);
    let filter = format!("$share/g/{}", b.topic("#"));
    let mut mum = V4::connect(b.v4(Who::Phone)).await;
    mum.subscribe(&filter, QoS::AtLeastOnce).await;
    let mut dad = V4::connect(second_phone(&b)).await;
    dad.subscribe(&filter, QoS::AtLeastOnce).await;
    let mut toy = V4::connect(b.v4(Who::Toy)).await;
    for i in 0..20u8 {
        toy.send(&b.topic("x"), QoS::AtLeastOnce, false, &[i]).await;
    }
    assert_eq!(drain(&mut mum, SHORT).await.len(), 20, "mum's group");
    assert_eq!(drain(&mut dad, SHORT).await.len(), 20, "dad's group");
    // Leaving works by the name the client knows.
    mum.unsubscribe(&filter).await;
    toy.send(&b.topic("x"), QoS::AtLeastOnce, false, b"after")
        .await;
    assert!(mum.publish(SHORT).await.is_none(), "mum left her group");
    assert_eq!(drain(&mut dad, SHORT).await.len(), 1);
}

/// A persistent session leaving with an unacknowledged delivery of a shared
/// subscription used to abort the hub (rumqttd looked up the group it had
/// just emptied with `expect`): the hub keeps serving, and the session
/// resumes.
async fn leaving_a_shared_group_with_a_delivery_in_flight_is_harmless(mut b: Bench) {
    let mut options = b.v4(Who::Phone);
    options.set_clean_session(false);
    options.set_manual_acks(true);
    let mut phone = V4::connect(options.clone()).await;
    phone
        .subscribe(&format!("$share/g/{}", b.topic("#")), QoS::AtLeastOnce)
        .await;
    let mut toy = V4::connect(b.v4(Who::Toy)).await;
    toy.send(&b.topic("x"), QoS::AtLeastOnce, false, b"1").await;
    assert!(
        phone.publish(LONG).await.is_some(),
        "delivered, not acknowledged"
    );
    phone.drop_connection();
    // A dead router stops the hub within seconds (its liveness probe).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(b.hub.is_running(), "the hub survived");
    let back = V4::connect(options).await;
    assert!(back.connack.session_present);
    toy.send(&b.topic("y"), QoS::AtLeastOnce, false, b"2").await;
}
on_both_listeners!(leaving_a_shared_group_with_a_delivery_in_flight_is_harmless);

/// §3.10.4 [MQTT-3.10.4-4, -5]: one UNSUBACK answers an UNSUBSCRIBE, even
/// when a filter in it was not subscribed.
async fn one_unsuback_answers_an_unsubscribe(b: Bench) {
    let held = b.topic("unsub-held4");
    let mut raw = b.raw(Who::Phone).await;
    raw.send(&connect(false, 30, &b.client_id(Who::Phone), true, None))
        .await;
    assert!(matches!(raw.next(LONG).await, Seen::Packet(0x20, _)));
    raw.send(&subscribe_packet(false, 1, std::slice::from_ref(&held)))
        .await;
    assert!(matches!(raw.next(LONG).await, Seen::Packet(0x90, _)));
    raw.send(&unsubscribe_packet(
        false,
        2,
        &[held, b.topic("unsub-never4")],
    ))
    .await;
    assert_eq!(
        raw.next(LONG).await,
        Seen::Packet(0xb0, vec![0xb0, 2, 0, 2])
    );
    assert_eq!(raw.next(SHORT).await, Seen::Nothing, "one UNSUBACK only");
    // A filter never subscribed, alone: still answered.
    raw.send(&unsubscribe_packet(false, 3, &[b.topic("unsub-never4")]))
        .await;
    assert_eq!(
        raw.next(LONG).await,
        Seen::Packet(0xb0, vec![0xb0, 2, 0, 3])
    );
}
on_both_listeners!(one_unsuback_answers_an_unsubscribe);

/// §3.1.2.4, §3.10.4: a resumed session's subscriptions are the
/// connection's own: UNSUBSCRIBE is answered and stops delivery.
async fn unsubscribe_after_resuming_a_session_stops_delivery(b: Bench) {
    let topic = b.topic("resume-unsub4");
    let mut options = b.v4(Who::Phone);
    options.set_clean_session(false);
    let mut sub = V4::connect(options.clone()).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut sub = V4::connect(options).await;
    assert!(sub.connack.session_present, "session resumed");
    sub.unsubscribe(&topic).await;
    let mut publisher = V4::connect(b.v4(Who::Toy)).await;
    publisher
        .send(&topic, QoS::AtLeastOnce, false, b"gone")
        .await;
    assert!(sub.publish(SHORT).await.is_none());
}
on_both_listeners!(unsubscribe_after_resuming_a_session_stops_delivery);

/// §3.8.4 [MQTT-3.8.4-3]: a SUBSCRIBE for a filter already held replaces
/// the subscription: the new maximum QoS applies, and the retained
/// messages are sent again.
async fn subscribing_again_replaces_the_subscription(b: Bench) {
    let topic = b.topic("again4");
    let mut publisher = V4::connect(b.v4(Who::Toy)).await;
    publisher
        .send(&topic, QoS::AtLeastOnce, true, b"kept")
        .await;
    let mut sub = V4::connect(b.v4(Who::Phone)).await;
    sub.subscribe(&topic, QoS::AtMostOnce).await;
    let first = sub.publish(LONG).await.expect("retained at subscribe");
    assert!(first.retain);
    assert_eq!(first.qos, QoS::AtMostOnce);
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let again = sub.publish(LONG).await.expect("retained again");
    assert!(again.retain);
    assert_eq!(&again.payload[..], b"kept");
    publisher
        .send(&topic, QoS::AtLeastOnce, false, b"live")
        .await;
    let live = sub.publish(LONG).await.expect("live");
    assert_eq!(&live.payload[..], b"live");
    assert_eq!(live.qos, QoS::AtLeastOnce, "the new maximum QoS");
}
on_both_listeners!(subscribing_again_replaces_the_subscription);
