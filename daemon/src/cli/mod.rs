//! The three binaries' command-line definitions (clap), kept in the library
//! so the man pages and shell completions are generated from the very
//! types the binaries parse with (see examples/gen-assets.rs).

pub mod device;
pub mod hearth;
pub mod hearthd;
