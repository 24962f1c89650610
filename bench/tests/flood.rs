//! hearthd's memory stays bounded under a QoS 0 flood towards a deliberately
//! slow subscriber, and the broker still serves a fresh client afterwards.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hearth_bench::broker::{wait_ready, Device, Env, Kind};
use hearth_bench::mqtt::{self, encode_publish, Packet};

/// hearthd from the same build (`cargo test --workspace` builds it for the
/// daemon's own integration tests), or $HEARTHD.
fn hearthd() -> PathBuf {
    if let Some(p) = std::env::var_os("HEARTHD") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = profile_dir.join("hearthd");
    assert!(
        p.exists(),
        "{} missing: run `cargo build -p hearth-daemon` (or the whole workspace's tests), or set HEARTHD",
        p.display()
    );
    p
}

async fn connect(addr: std::net::SocketAddr, d: &Device) -> anyhow::Result<mqtt::Client> {
    mqtt::connect(addr, d.tls.clone(), d.id(), 300, Duration::from_secs(10)).await
}

#[tokio::test]
async fn memory_stays_bounded_under_a_flood_to_a_slow_subscriber() {
    let test_start = Instant::now();
    let (env, pool) = Env::prepare(hearthd(), None, 3, 1).expect("prepare the hub");
    let mut broker = env.start(Kind::Hearth).expect("start hearthd");
    wait_ready(&mut broker, &pool.parents[0], Duration::from_secs(20))
        .await
        .expect("hearthd ready");
    let publisher = &pool.children[0];
    let topic = publisher.tele();
    let addr = broker.addr;

    // The slow subscriber: 1 KiB every 10 ms (~100 KB/s).
    let mut slow = connect(addr, &pool.parents[1]).await.expect("subscriber");
    slow.subscribe(&topic, 0).await.expect("subscribe");
    slow.rx.set_chunk(1024);
    let slow_task = tokio::spawn(async move {
        let mut got = 0u64;
        let end = Instant::now() + Duration::from_secs(4);
        while Instant::now() < end {
            let read = slow.rx.read(|p| {
                if let Packet::Publish { .. } = p {
                    got += 1;
                }
            });
            match tokio::time::timeout(Duration::from_millis(500), read).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        got
    });

    // The flood: QoS 0 batches for 3 s, TCP back-pressure only.
    let mut flood = connect(addr, publisher).await.expect("publisher");
    let payload = vec![b'x'; 256];
    let mut sent = 0u64;
    let mut peak_kib = 0;
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        for _ in 0..64 {
            encode_publish(&mut flood.tx.buf, &topic, 0, 0, &payload);
        }
        sent += 64;
        match tokio::time::timeout(Duration::from_secs(1), flood.tx.flush()).await {
            Ok(r) => r.expect("publish"),
            Err(_) => break, // the broker pushes back: fine, that is bounded.
        }
        if sent.is_multiple_of(6400) {
            peak_kib = peak_kib.max(broker.stat().expect("stat").hwm_kib);
        }
    }
    drop(flood);
    let got = slow_task.await.expect("slow subscriber");
    let stat = broker.stat().expect("stat");
    peak_kib = peak_kib.max(stat.hwm_kib);
    eprintln!(
        "sent {sent}, slow subscriber got {got}, VmHWM {} KiB",
        peak_kib
    );
    assert!(sent > 10_000, "the flood did not flow: {sent}");
    assert!(got > 0, "the slow subscriber got nothing");
    assert!(
        peak_kib < 64 * 1024,
        "hearthd's VmHWM reached {peak_kib} KiB under the flood"
    );

    // Still serving: a fresh pair round-trips a message.
    let mut sub = connect(addr, &pool.parents[2])
        .await
        .expect("fresh subscriber");
    sub.subscribe(&topic, 1).await.expect("fresh subscribe");
    let mut publ = connect(addr, publisher).await.expect("fresh publisher");
    encode_publish(&mut publ.tx.buf, &topic, 1, 1, b"still here");
    publ.tx.flush().await.expect("publish");
    let mut seen = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen && Instant::now() < deadline {
        let read = sub.rx.read(|p| {
            if let Packet::Publish { payload, .. } = p {
                seen |= payload == b"still here";
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(1), read).await;
    }
    broker.stop();
    assert!(seen, "no round trip after the flood");
    assert!(test_start.elapsed() < Duration::from_secs(30));
}
