//! The two daemon binaries' command-line definitions (clap), kept in the
//! library so the man pages and shell completions are generated from the
//! very types the binaries parse with (see examples/gen-assets.rs; the
//! `hearth-device` one lives in the device crate, `hearth_device::cli`).

pub mod hearth;
pub mod hearthd;
