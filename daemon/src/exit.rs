//! The exit codes of `hearthd`, in one place. Library code never exits:
//! it returns an error, `daemon` maps it to one of these, and the binary
//! exits with it (docs/ARCHITECTURE.md, "Exit codes of hearthd").

/// Something else failed at start (the broker did not come up).
pub const STARTUP: i32 = 1;
/// The broker stopped routing while the hub ran (sysexits EX_SOFTWARE):
/// the service manager restarts the hub.
pub const BROKER_DEAD: i32 = 70;
/// A bad configuration, an unusable data dir or state, or a listen address
/// that cannot be bound (sysexits EX_CONFIG).
pub const CONFIG: i32 = 78;
