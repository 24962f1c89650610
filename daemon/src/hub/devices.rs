//! Device lifecycle: issue, renew, revoke, remove and retire. Each change
//! follows one rule, written once here: commit to SQLite, update the live
//! registry while the store is still locked (so no other change falls
//! between the two), then cut the device's sessions and purge the broker.

use hearth_protocol::admin::{DeviceStatus, IssuedDevice};
use hearth_protocol::policy::DeviceRole;
use hearth_protocol::{DeviceId, Label, Owner, Role};

use super::{Hub, HubError};
use crate::registry::DeviceIdentity;
use crate::store::NewDevice;

/// How long an old certificate keeps working after a renewal if the new
/// one is not used before.
pub const RENEWAL_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// What a revocation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// The device was active and is revoked now.
    Now,
    /// It was revoked before; it was cut off again all the same.
    Already,
}

impl Hub {
    /// Issues a certificate for a new device of `owner` from a PEM request.
    pub fn issue_device(
        &self,
        owner: Owner,
        label: Label,
        csr_pem: &str,
    ) -> Result<IssuedDevice, HubError> {
        // Signed and registered under the store lock: a member removal
        // cannot fall in between.
        let (device, issued) = self.store.with(|store| {
            let role = match &owner {
                Owner::Member(name) => match store.member_role(name)? {
                    Some(Role::Parent) => DeviceRole::Parent,
                    Some(Role::Child) => DeviceRole::Child,
                    None => return Err(HubError::NoSuchMember(name.clone())),
                },
                Owner::Service => DeviceRole::Service,
            };
            let device = DeviceId::from_entropy(crate::random_bytes());
            let issued = self.ca.issue_device(csr_pem, &device)?;
            store.add_device(&NewDevice {
                id: device,
                owner: &owner,
                label: &label,
                sha256: issued.sha256,
                serial_hex: &issued.serial_hex,
                not_after: issued.not_after,
            })?;
            self.registry.insert(
                issued.sha256,
                DeviceIdentity {
                    device,
                    owner,
                    role,
                    grants: Vec::new().into(),
                },
            );
            Ok::<_, HubError>((device, issued))
        })?;
        tracing::info!(device = %device, "device certificate issued");
        self.admin_audit(
            "device-issue",
            Some(device),
            format!("certificate {}", hex::encode(issued.sha256)),
        );
        Ok(IssuedDevice {
            device_id: device,
            certificate_pem: issued.pem,
            ca_pem: self.ca.cert_pem().to_owned(),
            settings: None,
        })
    }

    /// Renews a device's certificate from a new request (same device id).
    /// The old certificate keeps working until the new one is first used,
    /// or [`RENEWAL_GRACE`] at the latest. Returns the device and the new
    /// certificate (PEM).
    pub fn renew_device(
        &self,
        presented: &[u8; 32],
        csr_pem: &str,
    ) -> Result<(DeviceId, String), HubError> {
        let identity = self
            .registry
            .lookup(presented)
            .ok_or(HubError::NotAccepted)?;
        let issued = self.ca.issue_device(csr_pem, &identity.device)?;
        // The store lock is held until the registry knows the new
        // certificate, so a revocation cannot fall between the two; the
        // identity (grants) is read afresh under it.
        self.store.with(|store| {
            store.add_renewed_certificate(
                &identity.device,
                presented,
                issued.sha256,
                &issued.serial_hex,
                issued.not_after,
                crate::unix_now() + RENEWAL_GRACE.as_secs() as i64,
            )?;
            let current = self
                .registry
                .lookup(presented)
                .ok_or(HubError::NotAccepted)?;
            self.registry.insert(issued.sha256, current);
            self.registry.mark_renewing(identity.device);
            Ok::<_, HubError>(())
        })?;
        self.admin_audit(
            "renew",
            Some(identity.device),
            format!("certificate {}", hex::encode(issued.sha256)),
        );
        Ok((identity.device, issued.pem))
    }

    /// Revokes every certificate of a device and cuts it off. Revoking a
    /// revoked device cuts it off again (cheap, and never less safe).
    pub async fn revoke_device(&self, id: &DeviceId) -> Result<Revoked, HubError> {
        let already = self
            .store
            .with(|s| s.devices())
            .map(|all| {
                all.iter()
                    .any(|d| d.id == *id && d.status == DeviceStatus::Revoked)
            })
            .unwrap_or(false);
        self.revoke_quietly(id).await?;
        if already {
            return Ok(Revoked::Already);
        }
        self.admin_audit("device-revoke", Some(*id), "certificates revoked".into());
        Ok(Revoked::Now)
    }

    /// Removes a device and erases everything about it. It is revoked and
    /// cut off first, and the audit entries its last session left are
    /// written, so nothing about it is recorded after the erasure.
    pub async fn remove_device(&self, id: &DeviceId) -> Result<(), HubError> {
        self.revoke_quietly(id).await?;
        self.audit.flush().await;
        self.store.with(|s| s.remove_device(id))?;
        self.observations.forget(id);
        // The entry says a device was erased, not which: its id is gone.
        self.admin_audit("device-remove", None, "device erased".into());
        Ok(())
    }

    /// The lifecycle rule for a device leaving: commit the revocation, take
    /// its certificates out of the registry under the same lock, then cut
    /// its sessions and purge the broker.
    pub(super) async fn revoke_quietly(&self, id: &DeviceId) -> Result<(), HubError> {
        self.store.with(|store| {
            store.revoke_device(id)?;
            self.registry.remove_device(id);
            Ok::<_, HubError>(())
        })?;
        self.cut_off(id).await;
        Ok(())
    }

    /// A renewed certificate was just used: its predecessors stop working
    /// now rather than at the end of their grace. Returns how many retired.
    pub fn retire_predecessors(
        &self,
        device: &DeviceId,
        used: &[u8; 32],
    ) -> Result<usize, HubError> {
        self.store.with(|store| {
            let retired = store.retire_predecessors(device, used)?;
            if !retired.is_empty() {
                self.registry.retire(Some(device), &retired);
            }
            Ok(retired.len())
        })
    }

    /// Retires certificates whose renewal grace ended before `now` without
    /// the successor being used, and ends the sessions still open on them.
    /// Returns how many retired.
    pub fn retire_due(&self, now: i64) -> Result<usize, HubError> {
        let mut ended = Vec::new();
        let count = self.store.with(|store| {
            let retired = store.retire_due(now)?;
            for sha in &retired {
                let device = self.registry.lookup(sha).map(|identity| identity.device);
                self.registry.retire(device.as_ref(), &[*sha]);
                ended.extend(device);
            }
            Ok::<_, HubError>(retired.len())
        })?;
        for device in &ended {
            self.sessions.disconnect(device);
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{csr, hub};
    use super::*;
    use hearth_protocol::MemberName;

    fn member(hub: &Hub, name: &str, role: Role) -> MemberName {
        let name: MemberName = name.parse().unwrap();
        hub.add_member(name.clone(), role).unwrap();
        name
    }

    fn fingerprint(pem: &str) -> [u8; 32] {
        crate::ca::fingerprint(&crate::ca::pem_to_der(pem).unwrap())
    }

    #[tokio::test]
    async fn an_issued_device_is_accepted_and_a_revoked_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path());
        let ada = member(&hub, "Ada", Role::Child);
        let issued = hub
            .issue_device(Owner::Member(ada), "robot".parse().unwrap(), &csr())
            .unwrap();
        let sha = fingerprint(&issued.certificate_pem);
        let known = hub.registry.lookup(&sha).expect("accepted once issued");
        assert_eq!(known.device, issued.device_id);
        assert_eq!(known.role, DeviceRole::Child);

        assert_eq!(
            hub.revoke_device(&issued.device_id).await.unwrap(),
            Revoked::Now
        );
        assert!(hub.registry.lookup(&sha).is_none());
        assert!(hub.registry.is_revoked(&sha));
        // The database says so too: a restart loads the same registry.
        assert!(hub
            .store
            .with(|s| s.active_certificates())
            .unwrap()
            .is_empty());
        assert_eq!(
            hub.revoke_device(&issued.device_id).await.unwrap(),
            Revoked::Already
        );
    }

    #[tokio::test]
    async fn a_device_for_a_missing_member_or_a_bad_request_is_the_callers_error() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path());
        let nobody: MemberName = "Nobody".parse().unwrap();
        let err = hub
            .issue_device(Owner::Member(nobody), "robot".parse().unwrap(), &csr())
            .unwrap_err();
        assert!(matches!(err, HubError::NoSuchMember(_)), "{err}");
        assert!(!err.is_internal());
        let err = hub
            .issue_device(Owner::Service, "bridge".parse().unwrap(), "not a csr")
            .unwrap_err();
        assert!(matches!(err, HubError::BadRequest(_)), "{err}");
        assert!(!err.is_internal());
        assert!(hub.registry.is_empty());
    }

    #[tokio::test]
    async fn a_database_failure_is_the_hubs_error_and_registers_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path());
        let ada = member(&hub, "Ada", Role::Child);
        // Another connection breaks the schema under the hub's feet, as a
        // damaged file would.
        let other = rusqlite::Connection::open(dir.path().join(crate::store::DB_FILE)).unwrap();
        other.execute_batch("DROP TABLE certificates").unwrap();
        let err = hub
            .issue_device(Owner::Member(ada), "robot".parse().unwrap(), &csr())
            .unwrap_err();
        assert!(matches!(err, HubError::Store(_)), "{err:?}");
        assert!(err.is_internal());
        assert!(hub.registry.is_empty());
    }

    #[tokio::test]
    async fn a_renewal_is_accepted_beside_the_old_certificate_until_it_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path());
        let issued = hub
            .issue_device(Owner::Service, "bridge".parse().unwrap(), &csr())
            .unwrap();
        let old = fingerprint(&issued.certificate_pem);
        let (device, pem) = hub.renew_device(&old, &csr()).unwrap();
        assert_eq!(device, issued.device_id);
        let new = fingerprint(&pem);
        assert!(hub.registry.lookup(&old).is_some());
        assert!(hub.registry.lookup(&new).is_some());
        assert!(hub.registry.is_renewing(&device));

        assert_eq!(hub.retire_predecessors(&device, &new).unwrap(), 1);
        assert!(hub.registry.lookup(&old).is_none());
        assert!(hub.registry.lookup(&new).is_some());
        assert!(!hub.registry.is_renewing(&device));
        // The retired certificate cannot renew any more.
        let err = hub.renew_device(&old, &csr()).unwrap_err();
        assert!(matches!(err, HubError::NotAccepted), "{err}");
    }

    #[tokio::test]
    async fn an_unused_renewal_retires_the_old_certificate_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path());
        let issued = hub
            .issue_device(Owner::Service, "bridge".parse().unwrap(), &csr())
            .unwrap();
        let old = fingerprint(&issued.certificate_pem);
        let (_, pem) = hub.renew_device(&old, &csr()).unwrap();
        assert_eq!(hub.retire_due(crate::unix_now()).unwrap(), 0);
        let later = crate::unix_now() + RENEWAL_GRACE.as_secs() as i64 + 1;
        assert_eq!(hub.retire_due(later).unwrap(), 1);
        assert!(hub.registry.lookup(&old).is_none());
        assert!(hub.registry.lookup(&fingerprint(&pem)).is_some());
    }

    #[tokio::test]
    async fn a_removed_device_is_erased_and_stays_refused() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path());
        let issued = hub
            .issue_device(Owner::Service, "bridge".parse().unwrap(), &csr())
            .unwrap();
        let sha = fingerprint(&issued.certificate_pem);
        hub.remove_device(&issued.device_id).await.unwrap();
        assert!(hub.store.with(|s| s.devices()).unwrap().is_empty());
        assert!(hub.registry.lookup(&sha).is_none());
        assert!(hub
            .store
            .with(|s| s.revoked_fingerprints())
            .unwrap()
            .contains(&sha));
        let err = hub.remove_device(&issued.device_id).await.unwrap_err();
        assert!(matches!(err, HubError::Refused(_)), "{err}");
    }
}
