//! Advertises the hub on the LAN over mDNS/DNS-SD: `_hearth._tcp` (the
//! enrollment port, with the MQTT port, a CA fingerprint prefix and whether
//! a pairing window is open in TXT) and `_secure-mqtt._tcp`. Nothing that
//! names a person or a device is advertised; the records are withdrawn on
//! shutdown.

use std::sync::Arc;
use std::time::Duration;

use mdns_sd::{IfKind, ServiceDaemon, ServiceInfo};
use tokio_util::sync::CancellationToken;

use crate::config::DiscoverySection;
use crate::hub::HubPorts;
use crate::pairing::PairingWindows;

pub use hearth_protocol::pairing::HEARTH_SERVICE;
/// DNS-SD type of the mutual-TLS MQTT service.
pub const MQTT_SERVICE: &str = "_secure-mqtt._tcp.local.";
/// How often the advertisement follows the pairing windows.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);
/// How long shutdown waits for the goodbye packets to go out.
const WITHDRAW_LIMIT: Duration = Duration::from_secs(2);

/// The discovery records could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("discovery: {0}")]
pub struct DiscoveryError(String);

// The hub's names come from its CA, which names its server certificate
// with them; discovery only announces them.
pub use crate::ca::{host_name, instance_name};

/// A running advertisement.
pub struct Advertiser {
    daemon: ServiceDaemon,
    instance: String,
    ca_prefix: String,
    ports: HubPorts,
    pairing_open: bool,
}

impl std::fmt::Debug for Advertiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Advertiser")
            .field("instance", &self.instance)
            .field("pairing_open", &self.pairing_open)
            .finish_non_exhaustive()
    }
}

impl Advertiser {
    /// Starts the mDNS responder on the configured interfaces and
    /// publishes both services.
    pub fn start(
        config: &DiscoverySection,
        ca_fingerprint: &[u8; 32],
        ports: HubPorts,
    ) -> Result<Advertiser, DiscoveryError> {
        let fail = |e: mdns_sd::Error| DiscoveryError(e.to_string());
        let daemon = ServiceDaemon::new().map_err(fail)?;
        // Queued before the daemon thread opens its sockets, so it never
        // speaks on an interface it was not given.
        daemon.disable_interface(IfKind::All).map_err(fail)?;
        if config.interfaces.is_empty() {
            daemon
                .enable_interface(vec![IfKind::IPv4, IfKind::IPv6])
                .map_err(fail)?;
            daemon
                .disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])
                .map_err(fail)?;
        } else {
            let names: Vec<IfKind> = config
                .interfaces
                .iter()
                .map(|name| IfKind::Name(name.clone()))
                .collect();
            daemon.enable_interface(names).map_err(fail)?;
        }
        let mut advertiser = Advertiser {
            daemon,
            instance: instance_name(ca_fingerprint),
            ca_prefix: hex::encode(&ca_fingerprint[..8]),
            ports,
            pairing_open: false,
        };
        advertiser.publish_hearth()?;
        let host = format!("{}.", host_name(ca_fingerprint));
        let mqtt = ServiceInfo::new(
            MQTT_SERVICE,
            &advertiser.instance,
            &host,
            "",
            ports.mqtt,
            &[("v", "1")][..],
        )
        .map_err(fail)?
        .enable_addr_auto();
        advertiser.daemon.register(mqtt).map_err(fail)?;
        Ok(advertiser)
    }

    /// (Re-)announces `_hearth._tcp` with the current `pair` flag.
    fn publish_hearth(&mut self) -> Result<(), DiscoveryError> {
        let mqtt_port = self.ports.mqtt.to_string();
        let pair = if self.pairing_open { "1" } else { "0" };
        let txt = [
            ("v", "1"),
            ("mqtt", mqtt_port.as_str()),
            ("ca", self.ca_prefix.as_str()),
            ("pair", pair),
        ];
        let host = format!("{}.local.", self.instance);
        let info = ServiceInfo::new(
            HEARTH_SERVICE,
            &self.instance,
            &host,
            "",
            self.ports.enroll,
            &txt[..],
        )
        .map_err(|e| DiscoveryError(e.to_string()))?
        .enable_addr_auto();
        self.daemon
            .register(info)
            .map_err(|e| DiscoveryError(e.to_string()))
    }

    /// Keeps `pair=` in step with the pairing windows until `stop`, then
    /// withdraws both services and stops the responder.
    pub async fn run(mut self, windows: Arc<PairingWindows>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            }
            let open = windows.any_open();
            if open != self.pairing_open {
                self.pairing_open = open;
                if let Err(e) = self.publish_hearth() {
                    tracing::warn!(error = %e, "cannot update the discovery record");
                }
            }
        }
        for service in [HEARTH_SERVICE, MQTT_SERVICE] {
            let fullname = format!("{}.{service}", self.instance);
            if let Ok(done) = self.daemon.unregister(&fullname) {
                let _ = tokio::time::timeout(WITHDRAW_LIMIT, done.recv_async()).await;
            }
        }
        if let Ok(done) = self.daemon.shutdown() {
            let _ = tokio::time::timeout(WITHDRAW_LIMIT, done.recv_async()).await;
        }
    }
}
