//! Topic names of the version-1 namespace, `hearth/v1/dev/{device}/...`
//! and the hub's own `hearth/v1/hub/info`.
//! Built here, in one place, so the edge, the services and the tests agree.

use crate::id::DeviceId;

/// The root every device topic lives under.
pub const DEVICE_ROOT: &str = "hearth/v1/dev";

/// The hub's description and the limits devices must respect, retained
/// (a [`crate::hub_info::HubInfo`]).
pub const HUB_INFO: &str = "hearth/v1/hub/info";

/// The per-device prefix, with a trailing `/`.
pub fn device_prefix(device: &DeviceId) -> String {
    format!("{DEVICE_ROOT}/{device}/")
}

/// Retained online/offline state, published by the hub.
pub fn state(device: &DeviceId) -> String {
    format!("{DEVICE_ROOT}/{device}/state")
}

/// Telemetry the device publishes (`sub` may add levels below `tele`).
pub fn tele(device: &DeviceId, sub: &str) -> String {
    join(device, "tele", sub)
}

/// Commands to the device (`sub` may add levels below `cmd`).
pub fn cmd(device: &DeviceId, sub: &str) -> String {
    join(device, "cmd", sub)
}

/// Where the hub delivers messages to the device.
pub fn inbox(device: &DeviceId) -> String {
    format!("{DEVICE_ROOT}/{device}/inbox")
}

/// The device's own description, retained.
pub fn meta(device: &DeviceId) -> String {
    format!("{DEVICE_ROOT}/{device}/meta")
}

/// Where the device hands messages to the hub.
pub fn outbox(device: &DeviceId) -> String {
    format!("{DEVICE_ROOT}/{device}/outbox")
}

fn join(device: &DeviceId, kind: &str, sub: &str) -> String {
    if sub.is_empty() {
        format!("{DEVICE_ROOT}/{device}/{kind}")
    } else {
        format!("{DEVICE_ROOT}/{device}/{kind}/{sub}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_sit_under_the_device_prefix() {
        let d = DeviceId::from_entropy([1; 16]);
        let prefix = device_prefix(&d);
        for t in [
            state(&d),
            tele(&d, ""),
            tele(&d, "battery"),
            cmd(&d, "led"),
            inbox(&d),
            outbox(&d),
        ] {
            assert!(t.starts_with(&prefix), "{t}");
        }
        assert_eq!(
            tele(&d, "battery"),
            format!("hearth/v1/dev/{d}/tele/battery")
        );
    }
}
