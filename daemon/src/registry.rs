//! The live registry the edge consults on every handshake: certificate
//! fingerprint → device. Loaded from the database at start and updated
//! with it, so a lookup never touches the disk.

use std::collections::HashMap;
use std::sync::RwLock;

use hearth_protocol::{DeviceId, Owner};

use crate::store::ActiveCertificate;

/// A device as the edge knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// The device id, also its MQTT client id.
    pub device: DeviceId,
    /// Who it belongs to.
    pub owner: Owner,
}

/// Fingerprints of the certificates the hub accepts now. A fingerprint that
/// is not here is refused: unknown, revoked and superseded alike.
#[derive(Debug, Default)]
pub struct Registry {
    by_fingerprint: RwLock<HashMap<[u8; 32], DeviceIdentity>>,
}

impl Registry {
    /// A registry holding exactly these certificates.
    pub fn new(active: Vec<ActiveCertificate>) -> Registry {
        let map = active
            .into_iter()
            .map(|c| {
                (
                    c.sha256,
                    DeviceIdentity {
                        device: c.device,
                        owner: c.owner,
                    },
                )
            })
            .collect();
        Registry {
            by_fingerprint: RwLock::new(map),
        }
    }

    /// The device a certificate belongs to, if the certificate is accepted.
    pub fn lookup(&self, sha256: &[u8; 32]) -> Option<DeviceIdentity> {
        self.read().get(sha256).cloned()
    }

    /// Accepts a newly issued certificate (after the database has it).
    pub fn insert(&self, sha256: [u8; 32], identity: DeviceIdentity) {
        self.write().insert(sha256, identity);
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
        // A poisoned lock means a writer panicked mid-update; with
        // panic = "abort" that cannot happen, and the map stays consistent
        // per entry anyway.
        self.by_fingerprint
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<[u8; 32], DeviceIdentity>> {
        self.by_fingerprint
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
