//! Finding hubs on the LAN: a DNS-SD browse for `_hearth._tcp`. What an
//! advertisement says is only where to look: which hub to trust comes from
//! the pinned CA fingerprint, never from mDNS (anyone on the LAN can
//! advertise).

use std::net::IpAddr;
use std::time::Duration;

use hearth_protocol::pairing::HEARTH_SERVICE;

use crate::{Error, Result};

/// A hub seen on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundHub {
    /// The advertised instance name (shown, never trusted).
    pub instance: String,
    /// The address to dial.
    pub address: String,
    /// The EST port.
    pub enroll_port: u16,
    /// The mutual-TLS MQTT port.
    pub mqtt_port: u16,
    /// The advertised prefix of the CA fingerprint (hex).
    pub ca_prefix: String,
    /// Whether a pairing window is open.
    pub pairing_open: bool,
}

impl std::fmt::Display for FoundHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} address={} enroll={} mqtt={} ca={} pair={}",
            self.instance,
            self.address,
            self.enroll_port,
            self.mqtt_port,
            self.ca_prefix,
            u8::from(self.pairing_open)
        )
    }
}

/// Browses `_hearth._tcp` for `secs` seconds and returns every distinct
/// advertisement seen.
pub async fn discover(secs: u64) -> Result<Vec<FoundHub>> {
    use mdns_sd::{ServiceDaemon, ServiceEvent};
    let mdns = ServiceDaemon::new().map_err(|e| Error::Discovery(e.to_string()))?;
    let events = mdns
        .browse(HEARTH_SERVICE)
        .map_err(|e| Error::Discovery(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut hubs: Vec<FoundHub> = Vec::new();
    while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, events.recv_async()).await {
        let ServiceEvent::ServiceResolved(info) = event else {
            continue;
        };
        let txt = |key: &str| {
            info.txt_properties
                .get_property_val_str(key)
                .map(str::to_owned)
        };
        let addresses = info.addresses.iter().map(|a| a.to_ip_addr());
        let (Some(address), Some(mqtt), Some(ca)) =
            (best_address(addresses), txt("mqtt"), txt("ca"))
        else {
            continue;
        };
        let instance = info
            .fullname
            .strip_suffix(&format!(".{HEARTH_SERVICE}"))
            .unwrap_or(&info.fullname)
            .to_owned();
        remember(
            &mut hubs,
            FoundHub {
                instance,
                address: address.to_string(),
                enroll_port: info.port,
                mqtt_port: mqtt.parse().unwrap_or(8883),
                ca_prefix: ca,
                pairing_open: txt("pair").as_deref() == Some("1"),
            },
        );
    }
    if let Ok(done) = mdns.shutdown() {
        let _ = tokio::time::timeout(Duration::from_secs(1), done.recv_async()).await;
    }
    Ok(hubs)
}

/// The address to dial among those advertised: IPv4 first, and never an
/// IPv6 link-local one, which needs a zone no TLS server name can carry.
pub fn best_address(addresses: impl IntoIterator<Item = IpAddr>) -> Option<IpAddr> {
    addresses
        .into_iter()
        .filter(|a| match a {
            IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 != 0xfe80,
            IpAddr::V4(_) => true,
        })
        .min_by_key(|a| (a.is_ipv6(), *a))
}

/// Adds `hub` to what was seen. Every distinct advertisement is kept: a
/// second one under the same name with another CA (an impostor) must show
/// up, not replace the first; the same one again updates it.
pub fn remember(hubs: &mut Vec<FoundHub>, hub: FoundHub) {
    if hubs.iter().any(|h| {
        h.instance == hub.instance && h.address == hub.address && h.ca_prefix == hub.ca_prefix
    }) {
        return;
    }
    hubs.retain(|h| !(h.instance == hub.instance && h.address == hub.address));
    hubs.push(hub);
}

/// The one hub with an open pairing window whose advertised CA prefix
/// agrees with `ca` (the administrator's fingerprint); several is an
/// error, since one of them is lying.
pub fn choose<'a>(hubs: &'a [FoundHub], ca: &str) -> Result<&'a FoundHub> {
    let open: Vec<&FoundHub> = hubs
        .iter()
        .filter(|h| h.pairing_open && !h.ca_prefix.is_empty() && ca.starts_with(&h.ca_prefix))
        .collect();
    match open.as_slice() {
        [one] => Ok(one),
        [] => Err(Error::Usage(
            "no hub with that CA and an open pairing window was found on the LAN".into(),
        )),
        _ => Err(Error::Usage(
            "several hubs claim that CA; use the pairing URI".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(instance: &str, address: &str, ca: &str, open: bool) -> FoundHub {
        FoundHub {
            instance: instance.into(),
            address: address.into(),
            enroll_port: 8443,
            mqtt_port: 8883,
            ca_prefix: ca.into(),
            pairing_open: open,
        }
    }

    #[test]
    fn ipv4_is_preferred_and_link_local_ipv6_skipped() {
        let addrs = |list: &[&str]| {
            list.iter()
                .map(|a| a.parse::<IpAddr>().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            best_address(addrs(&["fe80::1", "2001:db8::1", "192.0.2.9", "192.0.2.3"])),
            Some("192.0.2.3".parse().unwrap())
        );
        assert_eq!(
            best_address(addrs(&["fe80::1", "2001:db8::1"])),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(best_address(addrs(&["fe80::1"])), None);
    }

    #[test]
    fn an_impostor_under_the_same_name_is_kept_beside_the_hub() {
        let mut hubs = Vec::new();
        remember(&mut hubs, hub("home", "192.0.2.1", "aaaa", true));
        remember(&mut hubs, hub("home", "192.0.2.1", "aaaa", true));
        assert_eq!(hubs.len(), 1);
        remember(&mut hubs, hub("home", "192.0.2.66", "bbbb", true));
        assert_eq!(hubs.len(), 2);
    }

    #[test]
    fn the_hub_is_chosen_by_the_administrators_ca_only() {
        let ca = format!("aaaa{}", "0".repeat(28));
        let hubs = [
            hub("home", "192.0.2.1", "aaaa", true),
            hub("home", "192.0.2.66", "bbbb", true),
            hub("other", "192.0.2.2", "aaaa", false),
        ];
        assert_eq!(choose(&hubs, &ca).unwrap().address, "192.0.2.1");
        assert!(choose(&hubs[1..], &ca).is_err(), "closed or another CA");
        let twins = [hubs[0].clone(), hub("twin", "192.0.2.7", "aaaa", true)];
        assert!(choose(&twins, &ca)
            .unwrap_err()
            .to_string()
            .contains("several"));
        assert!(choose(&[hub("x", "192.0.2.8", "", true)], &ca).is_err());
    }
}
