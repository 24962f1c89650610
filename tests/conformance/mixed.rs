//! Across protocol versions: what an MQTT 5 client sends must reach an MQTT
//! 3.1.1 subscriber as a 3.1.1 PUBLISH (§3.3 of each: 3.1.1 has no
//! properties, so the server drops them), live, retained and as a will —
//! and never take the hub down.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties, PublishProperties};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::QoS;

use crate::harness::*;
use crate::on_both_listeners;

const LONG: Duration = Duration::from_secs(10);

/// One PUBLISH property of each kind a client may send (§3.3.2.3; the
/// Topic Alias is resolved by the hub and the Subscription Identifier is
/// the server's to send).
fn publish_property_kinds(b: &Bench) -> Vec<(&'static str, PublishProperties)> {
    let none = PublishProperties::default;
    vec![
        (
            "payload-format",
            PublishProperties {
                payload_format_indicator: Some(1),
                ..none()
            },
        ),
        (
            "message-expiry",
            PublishProperties {
                message_expiry_interval: Some(60),
                ..none()
            },
        ),
        (
            "response-topic",
            PublishProperties {
                response_topic: Some(b.topic("reply")),
                ..none()
            },
        ),
        (
            "correlation-data",
            PublishProperties {
                correlation_data: Some(Bytes::from_static(b"c0ffee")),
                ..none()
            },
        ),
        (
            "user-property",
            PublishProperties {
                user_properties: vec![("k".into(), "v".into())],
                ..none()
            },
        ),
        (
            "content-type",
            PublishProperties {
                content_type: Some("text/plain".into()),
                ..none()
            },
        ),
        (
            "all",
            PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                response_topic: Some(b.topic("reply")),
                correlation_data: Some(Bytes::from_static(b"c0ffee")),
                user_properties: vec![("k".into(), "v".into())],
                content_type: Some("text/plain".into()),
                ..none()
            },
        ),
    ]
}

/// The will properties a client may send (§3.1.3.2), each alone.
fn will_property_kinds(b: &Bench) -> Vec<(&'static str, LastWillProperties)> {
    let none = || LastWillProperties {
        delay_interval: None,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    };
    vec![
        (
            "payload-format",
            LastWillProperties {
                payload_format_indicator: Some(1),
                ..none()
            },
        ),
        (
            "message-expiry",
            LastWillProperties {
                message_expiry_interval: Some(60),
                ..none()
            },
        ),
        (
            "content-type",
            LastWillProperties {
                content_type: Some("text/plain".into()),
                ..none()
            },
        ),
        (
            "response-topic",
            LastWillProperties {
                response_topic: Some(b.topic("reply")),
                ..none()
            },
        ),
        (
            "correlation-data",
            LastWillProperties {
                correlation_data: Some(Bytes::from_static(b"c0ffee")),
                ..none()
            },
        ),
        (
            "user-property",
            LastWillProperties {
                user_properties: vec![("k".into(), "v".into())],
                ..none()
            },
        ),
    ]
}

/// A 5 PUBLISH with any property, delivered live to a 3.1.1 subscriber,
/// arrives as a plain 3.1.1 PUBLISH (it once aborted the hub).
async fn v5_properties_reach_a_v311_subscriber_live(b: Bench) {
    let mut sub = V4::connect(b.v4(Who::Phone)).await;
    sub.subscribe(&b.topic("live/#"), QoS::AtLeastOnce).await;
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    for (kind, props) in publish_property_kinds(&b) {
        let topic = b.topic(&format!("live/{kind}"));
        publisher
            .send(&topic, QoS5::AtLeastOnce, false, kind.as_bytes(), props)
            .await;
        let got = sub
            .publish(LONG)
            .await
            .unwrap_or_else(|| panic!("{kind}: nothing delivered"));
        assert_eq!(got.topic, topic);
        assert_eq!(&got.payload[..], kind.as_bytes());
    }
}
on_both_listeners!(v5_properties_reach_a_v311_subscriber_live);

/// The same for retained messages, sent when a 3.1.1 client subscribes.
async fn v5_properties_reach_a_v311_subscriber_retained(b: Bench) {
    let mut publisher = V5::connect(b.v5(Who::Toy)).await;
    let kinds = publish_property_kinds(&b);
    for (kind, props) in kinds.clone() {
        let topic = b.topic(&format!("kept/{kind}"));
        publisher
            .send(&topic, QoS5::AtLeastOnce, true, kind.as_bytes(), props)
            .await;
    }
    for (kind, _) in kinds {
        let topic = b.topic(&format!("kept/{kind}"));
        let mut sub = V4::connect(b.v4(Who::Phone)).await;
        sub.subscribe(&topic, QoS::AtLeastOnce).await;
        let got = sub
            .publish(LONG)
            .await
            .unwrap_or_else(|| panic!("{kind}: retained message not delivered"));
        assert!(got.retain, "{kind}");
        assert_eq!(&got.payload[..], kind.as_bytes());
        sub.disconnect().await;
    }
}
on_both_listeners!(v5_properties_reach_a_v311_subscriber_retained);

/// The same for a 5 client's will, published when it drops.
async fn v5_will_properties_reach_a_v311_subscriber(b: Bench) {
    let mut watcher = V4::connect(b.v4(Who::Phone)).await;
    watcher
        .subscribe(&b.topic("will/#"), QoS::AtLeastOnce)
        .await;
    for (kind, props) in will_property_kinds(&b) {
        let topic = b.topic(&format!("will/{kind}"));
        let mut options = b.v5(Who::Toy);
        options.set_last_will(LastWill::new(
            &topic,
            kind,
            QoS5::AtLeastOnce,
            false,
            Some(props),
        ));
        V5::connect(options).await.drop_connection();
        let got = watcher
            .publish(LONG)
            .await
            .unwrap_or_else(|| panic!("{kind}: will not delivered"));
        assert_eq!(got.topic, topic);
        assert_eq!(&got.payload[..], kind.as_bytes());
    }
}
on_both_listeners!(v5_will_properties_reach_a_v311_subscriber);
