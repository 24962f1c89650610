//! Network input that reaches a panic in the broker core (issue 13, "no
//! reachable panic"; the audit is in vendor/README.md): each test drives
//! the real hub to the site and checks that it is still running after.

use std::time::Duration;

use crate::harness::*;
use crate::on_both_listeners;

const LONG: Duration = Duration::from_secs(10);

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
