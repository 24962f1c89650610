//! The household: members, the contact rules between them, and the grants
//! of service devices. A change that narrows what a device may do ends its
//! sessions, so none keeps what it lost.

use hearth_protocol::policy::{Direction, Grant};
use hearth_protocol::{DeviceId, MemberName, Role};

use super::{Hub, HubError};

/// What a grant change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantChange {
    /// The grant was added or taken back.
    Changed,
    /// Adding a grant the device already had.
    Unchanged,
}

impl Hub {
    /// Adds a member; nicknames are unique whatever their case, so "ada" is
    /// refused beside "Ada" (the check and the insert happen under one lock).
    pub fn add_member(&self, name: MemberName, role: Role) -> Result<(), HubError> {
        self.store.with(|store| {
            let members = store.members()?;
            if let Some(existing) = members
                .iter()
                .find(|m| hearth_protocol::reference::same_member(&m.name, &name))
            {
                return Err(HubError::MemberExists(existing.name.clone()));
            }
            store.add_member(&name, role)?;
            Ok(())
        })?;
        self.admin_audit("member-add", None, format!("{role}"));
        Ok(())
    }

    /// Removes a member and erases everything about them and their devices,
    /// as [`Hub::remove_device`] does. The last parent stays while other
    /// members remain (they would have no one to message and no one whose
    /// devices may command theirs). Returns the devices erased.
    pub async fn remove_member(&self, name: &MemberName) -> Result<Vec<DeviceId>, HubError> {
        if self.is_last_parent(name)? {
            return Err(HubError::LastParent(name.clone()));
        }
        let devices = self.store.with(|s| s.member_device_ids(name))?;
        for id in &devices {
            self.revoke_quietly(id).await?;
        }
        self.audit.flush().await;
        let devices = self.store.with(|s| s.remove_member(name))?;
        for id in &devices {
            self.observations.forget(id);
        }
        self.admin_audit(
            "member-remove",
            None,
            format!("{} device(s) erased", devices.len()),
        );
        Ok(devices)
    }

    /// Whether `name` is a parent whose removal would leave other members
    /// without any parent.
    fn is_last_parent(&self, name: &MemberName) -> Result<bool, HubError> {
        let members = self.store.with(|s| s.members())?;
        let Some(member) = members.iter().find(|m| &m.name == name) else {
            return Ok(false);
        };
        let parents = members.iter().filter(|m| m.role == Role::Parent).count();
        Ok(member.role == Role::Parent && parents == 1 && members.len() > 1)
    }

    /// Allows or forbids two members to message each other.
    pub fn set_contact(
        &self,
        a: &MemberName,
        b: &MemberName,
        allowed: bool,
    ) -> Result<(), HubError> {
        self.store.with(|s| s.set_contact(a, b, allowed))?;
        let verb = if allowed { "allow" } else { "deny" };
        // Members are not named in the audit (docs/PRIVACY.md).
        self.admin_audit("contacts", None, verb.to_owned());
        Ok(())
    }

    /// Gives a service device a grant (`add`) or takes one back. Its
    /// sessions end, since they hold the grants they started with; one that
    /// lost a grant also has its broker session purged, so a persistent
    /// session does not keep subscriptions the edge never sees again.
    pub async fn change_grant(
        &self,
        id: &DeviceId,
        filter: &str,
        direction: Direction,
        add: bool,
    ) -> Result<GrantChange, HubError> {
        let grant = Grant::new(filter, direction)?;
        let changed = self.store.with(|store| {
            let changed = if add {
                store.add_grant(id, &grant)
            } else {
                store.remove_grant(id, &grant)
            }?;
            if changed {
                self.registry.set_grants(id, store.grants(id)?);
            }
            Ok::<_, HubError>(changed)
        })?;
        if !changed {
            return if add {
                Ok(GrantChange::Unchanged)
            } else {
                Err(HubError::NoSuchGrant(*id))
            };
        }
        self.sessions.disconnect(id);
        if !add {
            self.purge(id).await;
        }
        let what = if add { "grant" } else { "revoke-grant" };
        let direction = match direction {
            Direction::Publish => "publish",
            Direction::Subscribe => "subscribe",
        };
        self.admin_audit(what, Some(*id), format!("{direction} {filter}"));
        Ok(GrantChange::Changed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{csr, hub};
    use super::*;
    use hearth_protocol::Owner;

    fn name(s: &str) -> MemberName {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn nicknames_are_unique_whatever_their_case() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path());
        hub.add_member(name("Ada"), Role::Parent).unwrap();
        let err = hub.add_member(name("ada"), Role::Child).unwrap_err();
        assert!(
            matches!(&err, HubError::MemberExists(n) if n.as_str() == "Ada"),
            "{err}"
        );
        assert_eq!(hub.store.with(|s| s.members()).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_last_parent_stays_while_others_remain() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path());
        hub.add_member(name("Mum"), Role::Parent).unwrap();
        hub.add_member(name("Ada"), Role::Child).unwrap();
        let err = hub.remove_member(&name("Mum")).await.unwrap_err();
        assert!(matches!(err, HubError::LastParent(_)), "{err}");
        // The child goes with its devices, and then the parent may.
        let issued = hub
            .issue_device(Owner::Member(name("Ada")), "robot".parse().unwrap(), &csr())
            .unwrap();
        let erased = hub.remove_member(&name("Ada")).await.unwrap();
        assert_eq!(erased, vec![issued.device_id]);
        assert!(hub.registry.is_empty());
        assert!(hub.remove_member(&name("Mum")).await.unwrap().is_empty());
        assert!(hub.store.with(|s| s.members()).unwrap().is_empty());
    }

    #[tokio::test]
    async fn grants_reach_the_registry_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path());
        let issued = hub
            .issue_device(Owner::Service, "bridge".parse().unwrap(), &csr())
            .unwrap();
        let id = issued.device_id;
        let sha = crate::ca::fingerprint(&crate::ca::pem_to_der(&issued.certificate_pem).unwrap());
        let filter = "hearth/v1/dev/+/state";
        assert_eq!(
            hub.change_grant(&id, filter, Direction::Subscribe, true)
                .await
                .unwrap(),
            GrantChange::Changed
        );
        assert_eq!(hub.registry.lookup(&sha).unwrap().grants.len(), 1);
        assert_eq!(
            hub.change_grant(&id, filter, Direction::Subscribe, true)
                .await
                .unwrap(),
            GrantChange::Unchanged
        );
        hub.change_grant(&id, filter, Direction::Subscribe, false)
            .await
            .unwrap();
        assert!(hub.registry.lookup(&sha).unwrap().grants.is_empty());
        let err = hub
            .change_grant(&id, filter, Direction::Subscribe, false)
            .await
            .unwrap_err();
        assert!(matches!(err, HubError::NoSuchGrant(_)), "{err}");
        let err = hub
            .change_grant(&id, "#", Direction::Subscribe, true)
            .await
            .unwrap_err();
        assert!(matches!(err, HubError::BadGrant(_)), "{err}");
    }
}
