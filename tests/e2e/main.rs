//! End-to-end tests: the real `hearthd` and `hearth` binaries, real TLS
//! handshakes, real SQLite files and real MQTT clients. Compiled as one
//! test binary (see daemon/Cargo.toml). Tests that need foreign clients
//! (mosquitto-clients) are `#[ignore]`d here and run by `.ci/run` with
//! `-- --ignored` once those are installed.

mod attacks;
mod bridge;
mod campaign;
mod cli;
mod discovery;
mod erasure;
mod everyday;
mod foreign;
mod hub_core;
mod messaging;
mod metrics;
mod pairing;
mod refusals;
mod reload;
mod revocation;
mod sdk_c;
mod sdk_python;
mod sdk_support;
mod support;
mod tls_scan;
mod toymakers;
mod web;
mod web_browser;
