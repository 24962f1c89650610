//! Network input that reaches a panic in the broker core (issue 13, "no
//! reachable panic"; the audit is in vendor/README.md): each test drives
//! the real hub to the site and checks that it is still running after.

use std::time::Duration;

use rumqttc::QoS;

use crate::harness::*;
use crate::on_both_listeners;

const LONG: Duration = Duration::from_secs(10);

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

/// 5 §4.13: a malformed packet closes the connection. A PUBACK whose
/// property length runs off the end of the packet passes the edge (which
/// reads only its packet id) and reached rumqttd's decoder, which took it
/// for a partial read: the connection stayed open and the packet was
/// silently gone, with the decoder's framing now trusted on a client that
/// sends garbage.
async fn a_v5_ack_whose_properties_run_past_it_closes_the_connection(b: Bench) {
    let mut raw = b.raw(Who::Phone).await;
    raw.send(&connect(true, 30, &b.client_id(Who::Phone), true, None))
        .await;
    match raw.next(LONG).await {
        Seen::Packet(0x20, _) => {}
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // PUBACK, packet id 1, reason 0, then a property length whose
    // continuation bit promises a byte that never comes.
    raw.send(&[0x40, 4, 0, 1, 0x00, 0x80]).await;
    assert_eq!(raw.next(LONG).await, Seen::Closed);
}
on_both_listeners!(a_v5_ack_whose_properties_run_past_it_closes_the_connection);
