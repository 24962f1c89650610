//! Which devices the bridge may carry to another broker: a parent's
//! opt-in per device, kept in the store and handed to the bridge through
//! a watch channel, so an enable or disable takes effect at once.

use std::collections::BTreeSet;

use hearth_protocol::DeviceId;

use super::{Hub, HubError};

impl Hub {
    /// Lets the bridge carry `id` (an active device). Returns whether it
    /// was new.
    pub fn bridge_enable(&self, id: &DeviceId) -> Result<bool, HubError> {
        let now = crate::unix_now();
        let new = self.store.with(|s| s.bridge_enable(id, now))?;
        if new {
            self.admin_audit("bridge-enable", Some(*id), "bridging enabled".into());
        }
        self.refresh_bridged();
        Ok(new)
    }

    /// Stops bridging `id`; the bridge takes back its discovery entries.
    /// Returns whether it was bridged.
    pub fn bridge_disable(&self, id: &DeviceId) -> Result<bool, HubError> {
        let was = self.store.with(|s| s.bridge_disable(id))?;
        if was {
            self.admin_audit("bridge-disable", Some(*id), "bridging disabled".into());
        }
        self.refresh_bridged();
        Ok(was)
    }

    /// The devices the bridge may carry.
    pub fn bridged_devices(&self) -> Result<Vec<DeviceId>, HubError> {
        Ok(self.store.with(|s| s.bridged_devices())?)
    }

    /// Re-reads the bridged set from the store and tells the bridge when
    /// it changed (after an enable, a disable, a revocation or a removal).
    /// On a store failure the bridge keeps the set it had, less nothing:
    /// it is logged, and the next change reads again.
    pub(crate) fn refresh_bridged(&self) {
        match self.store.with(|s| s.bridged_devices()) {
            Ok(now) => {
                let now: BTreeSet<DeviceId> = now.into_iter().collect();
                self.bridged.send_if_modified(|set| {
                    let changed = *set != now;
                    *set = now;
                    changed
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the bridged devices"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;

    #[tokio::test]
    async fn enabling_reaches_the_bridge_and_revoking_takes_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let hub = testing::hub(dir.path());
        let mut seen = hub.bridged.subscribe();
        hub.add_member("Ada".parse().unwrap(), hearth_protocol::Role::Child)
            .unwrap();
        let issued = hub
            .issue_device(
                hearth_protocol::Owner::Member("Ada".parse().unwrap()),
                "robot".parse().unwrap(),
                &testing::csr(),
            )
            .unwrap();
        let id = issued.device_id;
        assert!(hub.bridge_enable(&id).unwrap());
        assert!(
            !hub.bridge_enable(&id).unwrap(),
            "enabling twice changes nothing"
        );
        assert!(seen.has_changed().unwrap());
        assert!(seen.borrow_and_update().contains(&id));
        assert_eq!(hub.bridged_devices().unwrap(), vec![id]);
        // Revoking a device drops its bridging, in the store and live.
        hub.revoke_device(&id).await.unwrap();
        assert!(hub.bridged_devices().unwrap().is_empty());
        assert!(!seen.borrow_and_update().contains(&id));
        // A revoked device cannot be bridged again.
        assert!(hub.bridge_enable(&id).is_err());
    }
}
