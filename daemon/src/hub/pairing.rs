//! Opening a pairing window: who the device will belong to, for how long,
//! and the address its pairing URI names, refused when devices could not
//! reach the hub there.

use hearth_protocol::admin::{ListenerInfo, PairingTicket};
use hearth_protocol::pairing::{DeviceSettings, PairingUri};
use hearth_protocol::{DeviceId, Label, MemberName};

use super::{Hub, HubError};
use crate::ca::HubCa;

impl Hub {
    /// Opens a pairing window for a device of `member`'s, labelled
    /// `label`, for `ttl_secs`; its URI names `host` (by default the
    /// address devices on the home network most likely reach the hub at).
    pub fn open_pairing(
        &self,
        member: MemberName,
        label: Label,
        ttl_secs: u64,
        host: Option<String>,
    ) -> Result<PairingTicket, HubError> {
        let hub = self;
        if hub.store.with(|s| s.member_role(&member))?.is_none() {
            return Err(HubError::NoSuchMember(member));
        }
        if ttl_secs == 0 || ttl_secs > crate::pairing::MAX_TTL.as_secs() {
            return Err(HubError::PairingTime);
        }
        let host = hub.device_host(host)?;
        let (id, token, expires_at) = hub.windows.open(
            member.clone(),
            label,
            std::time::Duration::from_secs(ttl_secs),
        );
        let uri = PairingUri {
            host,
            port: hub.ports.enroll,
            mqtt_port: hub.ports.mqtt,
            ca_sha256: hex::encode(hub.ca.fingerprint()),
            token: token.clone(),
        }
        .to_string();
        if let Err(e) = uri.parse::<PairingUri>() {
            hub.windows.cancel(Some(id));
            return Err(HubError::PairingHost(format!(
                "cannot build the pairing URI: {e}"
            )));
        }
        hub.admin_audit("pair-open", None, format!("window {id}, {ttl_secs}s"));
        Ok(PairingTicket {
            id,
            token,
            uri,
            expires_at,
        })
    }

    /// The host devices are told to reach the hub at: `host` if given,
    /// else the address devices on the home network most likely reach it
    /// at; refused, saying what to change, when the hub does not listen
    /// there for both enrollment and MQTT.
    pub fn device_host(&self, host: Option<String>) -> Result<String, HubError> {
        let explicit = host.is_some();
        let host = host
            .or_else(|| default_host(&self.listeners))
            .unwrap_or_else(|| lan_host(&self.ca));
        check_pairing_host(
            &host,
            explicit,
            &self.listeners,
            &crate::ca::ServerNames::discover(&crate::ca::instance_name(&self.ca.fingerprint())),
        )
        .map_err(HubError::PairingHost)?;
        Ok(host)
    }

    /// The host a device issued by hand is told (its `device.toml`): `host`
    /// if given, checked like a pairing URI's; else the pairing default,
    /// or, when the hub does not listen there (a loopback-only hub), the
    /// address its MQTT listener is bound to, so the device can at least
    /// run on this machine.
    pub fn issue_host(&self, host: Option<String>) -> Result<String, HubError> {
        if host.is_some() {
            return self.device_host(host);
        }
        Ok(self.device_host(None).unwrap_or_else(|_| {
            bound(&self.listeners, "mqtt")
                .map(|a| a.ip())
                .filter(|ip| !ip.is_unspecified())
                .map_or_else(|| "localhost".to_owned(), |ip| ip.to_string())
        }))
    }

    /// What a device issued by hand needs in its `device.toml` to reach
    /// this hub at `host`.
    pub fn device_settings(&self, device_id: DeviceId, host: String) -> DeviceSettings {
        DeviceSettings {
            device_id,
            host,
            mqtt_port: self.ports.mqtt,
            enroll_port: self.ports.enroll,
            ca_sha256: hex::encode(self.ca.fingerprint()),
        }
    }
}

/// Refuses a pairing host that devices could not reach the hub at: an
/// address neither the enrollment nor the MQTT listener is bound to (the
/// hub listening on loopback only, say), with what to do about it. A name
/// other than this machine's is taken on trust: checking it needs DNS.
fn check_pairing_host(
    host: &str,
    explicit: bool,
    listeners: &[ListenerInfo],
    machine: &crate::ca::ServerNames,
) -> Result<(), String> {
    let (Some(enroll), Some(mqtt)) = (bound(listeners, "enroll"), bound(listeners, "mqtt")) else {
        return Ok(());
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let lower = bare.to_ascii_lowercase();
    let candidates: Vec<std::net::IpAddr> = if let Ok(ip) = bare.parse() {
        vec![ip]
    } else if lower == "localhost" {
        vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()]
    } else if machine.dns.contains(&lower) || lower.ends_with(".local") {
        // This machine by name, or an mDNS name (ours): its LAN addresses.
        machine
            .ips
            .iter()
            .copied()
            .filter(|ip| !ip.is_loopback())
            .collect()
    } else {
        return Ok(());
    };
    let local = |ip: &std::net::IpAddr| ip.is_loopback() || machine.ips.contains(ip);
    let serves = |listener: std::net::SocketAddr, ip: &std::net::IpAddr| match listener.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => ip.is_ipv4() && local(ip),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => local(ip),
        bound => bound == *ip,
    };
    if candidates
        .iter()
        .any(|ip| serves(enroll, ip) && serves(mqtt, ip))
    {
        return Ok(());
    }
    let chosen = if explicit {
        format!("the host given, {host},")
    } else {
        format!("this machine's network address ({host})")
    };
    let loopback_only = enroll.ip().is_loopback() || mqtt.ip().is_loopback();
    let fix = if loopback_only {
        format!(
            "To pair devices on the home network, set `listen = \"0.0.0.0:{}\"` under [enroll] \
             and `listen = \"0.0.0.0:{}\"` under [mqtt] in hearthd's config and restart it; to \
             pair a device on this machine, pass --host {}",
            enroll.port(),
            mqtt.port(),
            enroll.ip()
        )
    } else {
        format!(
            "Pass --host with an address the hub listens on ({}), or change [enroll] listen and \
             [mqtt] listen in hearthd's config",
            enroll.ip()
        )
    };
    Err(format!(
        "no pairing window opened: devices could not reach the hub at {chosen} because it \
         listens for enrollment on {enroll} and for MQTT on {mqtt}. {fix}"
    ))
}

/// The address the listener called `name` is bound to.
pub(super) fn bound(listeners: &[ListenerInfo], name: &str) -> Option<std::net::SocketAddr> {
    listeners
        .iter()
        .find(|l| l.name == name)
        .and_then(|l| l.address.parse().ok())
}

/// The host a pairing URI names by default when enrollment is bound to one
/// LAN address (else the caller falls back to [`lan_host`]).
fn default_host(listeners: &[ListenerInfo]) -> Option<String> {
    bound(listeners, "enroll")
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
        .map(|ip| ip.to_string())
}

/// The address a device on the LAN most likely reaches the hub by: the
/// first IPv4 address of a non-loopback interface, else the hub's mDNS name.
pub(super) fn lan_host(ca: &HubCa) -> String {
    let names = crate::ca::ServerNames::discover(&crate::ca::instance_name(&ca.fingerprint()));
    names
        .ips
        .iter()
        .find(|ip| match ip {
            std::net::IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
            std::net::IpAddr::V6(_) => false,
        })
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| format!("{}.local", names.host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listening(enroll: &str, mqtt: &str) -> Vec<ListenerInfo> {
        vec![
            ListenerInfo {
                name: "mqtt".into(),
                address: mqtt.into(),
            },
            ListenerInfo {
                name: "enroll".into(),
                address: enroll.into(),
            },
        ]
    }

    fn machine() -> crate::ca::ServerNames {
        crate::ca::ServerNames {
            host: "den".into(),
            dns: ["den", "den.local", "localhost"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ips: ["127.0.0.1", "::1", "192.0.2.10", "2001:db8::10"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
        }
    }

    #[test]
    fn a_wildcard_listener_serves_every_address_of_the_machine() {
        let all = listening("0.0.0.0:8443", "0.0.0.0:8883");
        for host in ["192.0.2.10", "127.0.0.1", "localhost", "den.local", "den"] {
            assert!(
                check_pairing_host(host, true, &all, &machine()).is_ok(),
                "{host}"
            );
        }
        // Not this machine's address; IPv6 on an IPv4-only wildcard.
        assert!(check_pairing_host("192.0.2.99", true, &all, &machine()).is_err());
        assert!(check_pairing_host("[2001:db8::10]", true, &all, &machine()).is_err());
        let dual = listening("[::]:8443", "[::]:8883");
        assert!(check_pairing_host("[2001:db8::10]", true, &dual, &machine()).is_ok());
        // Another machine's name cannot be checked without DNS: trusted.
        assert!(check_pairing_host("hub.example", true, &all, &machine()).is_ok());
    }

    #[test]
    fn a_loopback_hub_refuses_the_lan_address_and_says_what_to_change() {
        let lo = listening("127.0.0.1:8443", "127.0.0.1:8883");
        let err = check_pairing_host("192.0.2.10", false, &lo, &machine()).unwrap_err();
        assert!(err.contains("listen = \"0.0.0.0:8443\""), "{err}");
        assert!(err.contains("listen = \"0.0.0.0:8883\""), "{err}");
        assert!(err.contains("--host 127.0.0.1"), "{err}");
        assert!(check_pairing_host("den.local", false, &lo, &machine()).is_err());
        assert!(check_pairing_host("127.0.0.1", true, &lo, &machine()).is_ok());
        // Both listeners must be reachable at the host.
        let split = listening("0.0.0.0:8443", "127.0.0.1:8883");
        assert!(check_pairing_host("192.0.2.10", true, &split, &machine()).is_err());
    }

    #[test]
    fn the_default_host_is_the_one_lan_address_enrollment_is_bound_to() {
        assert_eq!(
            default_host(&listening("192.0.2.10:8443", "192.0.2.10:8883")).as_deref(),
            Some("192.0.2.10")
        );
        assert_eq!(
            default_host(&listening("127.0.0.1:8443", "127.0.0.1:8883")),
            None
        );
    }
}
