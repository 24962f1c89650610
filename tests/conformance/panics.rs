//! Network input that reaches a panic in the broker core (issue 13, "no
//! reachable panic"; the audit is in vendor/README.md): each test drives
//! the real hub to the site and checks that it is still running after.

use std::time::Duration;

use rumqttc::QoS;

use crate::harness::*;

/// Hearth: a device that is the only member of a shared group, in a
/// persistent session (3.1.1 §3.1.2.4, 5 §4.8.2), drops its connection
/// with a QoS 1 delivery from the group unacknowledged. rumqttd's router
/// drops the emptied group first and then resets its cursor with
/// `expect("group must exists")`: the hub aborted.
#[tokio::test]
#[ignore = "router fix pending: routing.rs handle_disconnection, see vendor/README.md \"to fix in the router\""]
async fn the_last_shared_subscriber_leaving_with_an_unacked_delivery_does_not_stop_the_hub() {
    let mut b = Bench::start(Via::Tls);
    let mut options = b.v4(Who::Phone);
    options.set_clean_session(false);
    options.set_manual_acks(true);
    let mut mum = V4::connect(options).await;
    mum.subscribe(&format!("$share/g/{}", b.topic("x")), QoS::AtLeastOnce)
        .await;
    let mut toy = V4::connect(b.v4(Who::Toy)).await;
    toy.send(&b.topic("x"), QoS::AtLeastOnce, false, b"1").await;
    assert!(
        mum.publish(Duration::from_secs(5)).await.is_some(),
        "the shared subscriber got the message"
    );
    mum.drop_connection();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let running = b.hub.is_running();
    let log = b.hub.log();
    let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join("\n");
    assert!(
        running,
        "the hub stopped; its log ends (last first):\n{tail}"
    );
    toy.send(&b.topic("x"), QoS::AtLeastOnce, false, b"2").await;
}
