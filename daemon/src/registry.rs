//! The live registry the edge consults on every handshake: certificate
//! fingerprint → device, with the device's role and grants. Loaded from the
//! database at start and updated after each committed change, so a lookup
//! never touches the disk.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use hearth_protocol::policy::{DeviceRole, Grant, Subject};
use hearth_protocol::{DeviceId, Owner};

use crate::store::ActiveCertificate;

/// A device as the edge knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// The device id, also its MQTT client id.
    pub device: DeviceId,
    /// Who it belongs to.
    pub owner: Owner,
    /// Its role for the policy.
    pub role: DeviceRole,
    /// Its grants (service devices only).
    pub grants: Arc<[Grant]>,
}

impl DeviceIdentity {
    /// The policy's view of this device.
    pub fn subject(&self) -> Subject<'_> {
        Subject {
            device: &self.device,
            role: self.role,
            grants: &self.grants,
        }
    }
}

/// Fingerprints of the certificates the hub accepts now. A fingerprint that
/// is not here is refused: unknown, revoked and superseded alike.
#[derive(Debug, Default)]
pub struct Registry {
    by_fingerprint: RwLock<HashMap<[u8; 32], DeviceIdentity>>,
    /// Fingerprints known to be revoked, only to tell "revoked" from
    /// "unknown" in the audit; refusal does not depend on it.
    revoked: RwLock<std::collections::HashSet<[u8; 32]>>,
    /// Devices holding a renewed certificate not used yet.
    renewing: RwLock<std::collections::HashSet<DeviceId>>,
}

impl Registry {
    /// A registry holding exactly these certificates.
    pub fn new(active: Vec<ActiveCertificate>, revoked: Vec<[u8; 32]>) -> Registry {
        let map = active
            .into_iter()
            .map(|c| {
                (
                    c.sha256,
                    DeviceIdentity {
                        device: c.device,
                        owner: c.owner,
                        role: c.role,
                        grants: c.grants.into(),
                    },
                )
            })
            .collect();
        Registry {
            by_fingerprint: RwLock::new(map),
            revoked: RwLock::new(revoked.into_iter().collect()),
            renewing: RwLock::default(),
        }
    }

    /// Notes that a device was given a new certificate.
    pub fn mark_renewing(&self, device: DeviceId) {
        crate::sync::write(&self.renewing).insert(device);
    }

    /// Whether a device's renewed certificate has not been used yet.
    pub fn is_renewing(&self, device: &DeviceId) -> bool {
        crate::sync::read(&self.renewing).contains(device)
    }

    /// Stops accepting these certificates (superseded by a renewal).
    pub fn retire(&self, device: Option<&DeviceId>, fingerprints: &[[u8; 32]]) {
        let mut map = self.write();
        let mut revoked = crate::sync::write(&self.revoked);
        for sha in fingerprints {
            map.remove(sha);
            revoked.insert(*sha);
        }
        if let Some(device) = device {
            crate::sync::write(&self.renewing).remove(device);
        }
    }

    /// Whether a certificate was revoked (as opposed to never issued).
    pub fn is_revoked(&self, sha256: &[u8; 32]) -> bool {
        crate::sync::read(&self.revoked).contains(sha256)
    }

    /// The device a certificate belongs to, if the certificate is accepted.
    pub fn lookup(&self, sha256: &[u8; 32]) -> Option<DeviceIdentity> {
        self.read().get(sha256).cloned()
    }

    /// Accepts a newly issued certificate (after the database has it).
    pub fn insert(&self, sha256: [u8; 32], identity: DeviceIdentity) {
        self.write().insert(sha256, identity);
    }

    /// Stops accepting every certificate of a device; returns how many.
    pub fn remove_device(&self, device: &DeviceId) -> usize {
        let mut map = self.write();
        let mut revoked = crate::sync::write(&self.revoked);
        let before = map.len();
        map.retain(|sha, identity| {
            let keep = identity.device != *device;
            if !keep {
                revoked.insert(*sha);
            }
            keep
        });
        before - map.len()
    }

    /// Replaces a device's grants.
    pub fn set_grants(&self, device: &DeviceId, grants: Vec<Grant>) {
        let grants: Arc<[Grant]> = grants.into();
        for identity in self.write().values_mut() {
            if identity.device == *device {
                identity.grants = Arc::clone(&grants);
            }
        }
    }

    /// How many certificates are accepted.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no certificate is accepted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<[u8; 32], DeviceIdentity>> {
        // With panic = "abort" no writer can die holding the lock; in tests
        // the map is still consistent per entry.
        crate::sync::read(&self.by_fingerprint)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<[u8; 32], DeviceIdentity>> {
        crate::sync::write(&self.by_fingerprint)
    }
}
