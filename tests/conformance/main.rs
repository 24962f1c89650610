//! MQTT 3.1.1 and 5 conformance of Hearth, through the mutual-TLS and the
//! development listeners, one named test per behaviour, each citing the
//! specification. Known failures are `#[ignore]`d with their reason and
//! listed in docs/CONFORMANCE.md; `cargo test --test conformance --
//! --ignored` shows where Hearth still falls short.

#[allow(dead_code, unused_imports)]
#[path = "../e2e/support.rs"]
mod support;

mod harness;
mod limits;
mod mixed;
mod panics;
mod v311;
mod v5;
