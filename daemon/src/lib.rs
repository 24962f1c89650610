//! The Hearth daemon: a mutual-TLS MQTT edge in front of an embedded rumqttd
//! router, a local certificate authority, the device registry and the admin
//! socket, around one domain core (`hub`). `hearthd` and `hearth` are thin
//! wrappers over this library. Modules depend on lower layers only
//! (docs/ARCHITECTURE.md, "Layers"; checked by `tests/layers.rs`).

pub mod admin;
pub mod admission;
pub mod audit;
pub mod backup;
pub mod bridge;
pub mod broker;
pub mod ca;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod datadir;
pub mod discovery;
pub mod edge;
pub mod enroll;
pub mod exit;
pub mod hub;
pub mod logging;
pub mod mailbox;
pub mod metrics;
pub mod pairing;
pub mod registry;
pub mod reload;
pub mod scrape;
pub mod store;
pub mod sync;
pub mod web;

/// Seconds since the Unix epoch, as stored in the database.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Fills a buffer from the operating system's random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // Without an OS random source no key, token or id is safe to make:
    // failing closed here is the only sound answer.
    getrandom::getrandom(&mut buf).expect("the OS random source is unavailable");
    buf
}
