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
    discover_until(secs, |_| false).await
}

/// Browses like [`discover`], but stops as soon as `enough` says what was
/// seen so far will do (a device looking for its own hub needs no more).
pub async fn discover_until(
    secs: u64,
    enough: impl Fn(&[FoundHub]) -> bool,
) -> Result<Vec<FoundHub>> {
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
        if enough(&hubs) {
            break;
        }
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

/// Whether `hub` advertises the CA whose full fingerprint `ca_sha256` the
/// device pinned. Only a filter on where to look: anyone can advertise any
/// prefix, so the TLS check (CA and name) is what proves it is the hub.
pub fn claims_ca(hub: &FoundHub, ca_sha256: &str) -> bool {
    !hub.ca_prefix.is_empty() && ca_sha256.starts_with(&hub.ca_prefix.to_ascii_lowercase())
}

/// Where the device's own hub (pinned CA `ca_sha256`) may have moved to,
/// among `hubs` seen on the LAN: one claiming that CA at a place (address
/// and MQTT port) other than `host:mqtt_port` and not in `tried` (places
/// already tried since the hub was last reached). None while the hub is
/// still advertised where the device knows it: it is there, only busy or
/// restarting.
pub fn moved_to<'a>(
    hubs: &'a [FoundHub],
    ca_sha256: &str,
    (host, mqtt_port): (&str, u16),
    tried: &[String],
) -> Option<&'a FoundHub> {
    let ours: Vec<&FoundHub> = hubs.iter().filter(|h| claims_ca(h, ca_sha256)).collect();
    if ours
        .iter()
        .any(|h| h.address == host && h.mqtt_port == mqtt_port)
    {
        return None;
    }
    ours.into_iter()
        .find(|h| !tried.contains(&place(&h.address, h.mqtt_port)))
}

/// `address:port` as [`moved_to`]'s `tried` lists places.
pub fn place(address: &str, port: u16) -> String {
    crate::est::authority(address, port)
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

    #[test]
    fn the_hub_is_followed_only_to_an_advertisement_of_its_own_ca() {
        let ca = format!("aaaa{}", "0".repeat(60));
        let ours = |address: &str| hub("home", address, "aaaa", false);
        let here = ("192.0.2.1", 8883);
        // Advertised where the device knows it: not moved.
        assert_eq!(moved_to(&[ours("192.0.2.1")], &ca, here, &[]), None);
        assert_eq!(
            moved_to(&[ours("192.0.2.9"), ours("192.0.2.1")], &ca, here, &[]),
            None
        );
        // Elsewhere under its CA: moved there.
        let found = [hub("home", "192.0.2.66", "bbbb", false), ours("192.0.2.9")];
        assert_eq!(
            moved_to(&found, &ca, here, &[]).map(|h| h.address.as_str()),
            Some("192.0.2.9")
        );
        // The same name with another CA is never followed.
        let impostor = [hub("home", "192.0.2.66", "bbbb", false)];
        assert_eq!(moved_to(&impostor, &ca, here, &[]), None);
        assert_eq!(
            moved_to(&[hub("home", "192.0.2.66", "", false)], &ca, here, &[]),
            None
        );
        // A place already tried in vain is not tried again until the hub
        // is reached.
        let tried = [place("192.0.2.9", 8883)];
        assert_eq!(moved_to(&found, &ca, here, &tried), None);
        // The same address with another port is another place.
        let mut moved_port = ours("192.0.2.1");
        moved_port.mqtt_port = 18883;
        assert!(moved_to(&[moved_port], &ca, here, &[]).is_some());
    }
}
