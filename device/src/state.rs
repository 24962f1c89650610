//! The device's directory: its key (0600), certificate chain, the hub CA
//! and `device.toml` (the pairing it remembers), in a directory only its
//! owner can enter (0700). Every file is written atomically with its mode
//! from the first byte, and a renewal interrupted half-way is completed on
//! the next load.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// What the device remembers about its pairing.
pub const SETTINGS: &str = "device.toml";
/// The device's private key (PEM), 0600.
pub const KEY: &str = "device.key";
/// The device's certificate followed by the hub CA (PEM).
pub const CERT: &str = "device.pem";
/// The hub CA certificate (PEM): the only root the device trusts.
pub const CA: &str = "ca.pem";
/// Where received pictures and voice notes are saved, 0700.
pub const INBOX: &str = "inbox";

const NEW: &str = ".new";

/// What the device remembers about its hub, in `device.toml` (the format
/// `hearth device issue --out` writes too).
pub use hearth_protocol::pairing::DeviceSettings as Pairing;

/// A paired device's files, read.
pub struct Paired {
    /// The pairing settings.
    pub pairing: Pairing,
    /// The hub CA (PEM).
    pub ca_pem: Vec<u8>,
    /// The device's certificate chain (PEM).
    pub chain_pem: Vec<u8>,
    /// The device's private key (PEM). Kept out of `Debug`.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for Paired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paired")
            .field("pairing", &self.pairing)
            .field("key_pem", &"<secret>")
            .finish_non_exhaustive()
    }
}

/// The credentials pairing produced, to be stored.
pub struct Credentials<'a> {
    /// The private key (PEM), made on this device.
    pub key_pem: &'a str,
    /// The device certificate then the CA (PEM).
    pub chain_pem: &'a str,
    /// The hub CA (PEM).
    pub ca_pem: &'a str,
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

/// The device's own directory.
#[derive(Debug, Clone)]
pub struct DeviceDir {
    path: PathBuf,
}

impl DeviceDir {
    /// The directory at `path` (nothing is touched until it is used).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DeviceDir { path: path.into() }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it holds a pairing already.
    pub fn is_paired(&self) -> bool {
        self.path.join(SETTINGS).exists()
    }

    /// Stores a new pairing: the directory made (or tightened to) 0700, the
    /// key 0600, the rest 0644, `device.toml` last so a half-written
    /// pairing never looks complete.
    pub fn store(&self, pairing: &Pairing, credentials: &Credentials<'_>) -> Result<()> {
        private_dir(&self.path)?;
        write_with_mode(&self.path.join(KEY), credentials.key_pem.as_bytes(), 0o600)?;
        write_with_mode(
            &self.path.join(CERT),
            credentials.chain_pem.as_bytes(),
            0o644,
        )?;
        write_with_mode(&self.path.join(CA), credentials.ca_pem.as_bytes(), 0o644)?;
        self.store_settings(pairing)
    }

    /// Rewrites `device.toml` alone, atomically: after the hub was found
    /// at a new address (and proved itself there over TLS).
    pub fn store_settings(&self, pairing: &Pairing) -> Result<()> {
        let settings = toml::to_string(pairing).map_err(|e| Error::Damaged {
            path: self.path.join(SETTINGS),
            message: e.to_string(),
        })?;
        write_with_mode(&self.path.join(SETTINGS), settings.as_bytes(), 0o644)
    }

    /// Reads the pairing and the credentials, completing an interrupted
    /// renewal first.
    pub fn load(&self) -> Result<Paired> {
        self.finish_renewal()?;
        let read = |name: &str| {
            let path = self.path.join(name);
            fs::read(&path).map_err(|source| Error::NotPaired { path, source })
        };
        let settings = read(SETTINGS)?;
        let damaged = |message: String| Error::Damaged {
            path: self.path.join(SETTINGS),
            message,
        };
        let text = String::from_utf8(settings).map_err(|e| damaged(e.to_string()))?;
        let pairing: Pairing = toml::from_str(&text).map_err(|e| damaged(e.to_string()))?;
        Ok(Paired {
            pairing,
            ca_pem: read(CA)?,
            chain_pem: read(CERT)?,
            key_pem: read(KEY)?,
        })
    }

    /// Replaces key and certificate after a renewal: both are written
    /// beside the old ones, then moved into place, so a crash leaves either
    /// the old pair or (through [`DeviceDir::finish_renewal`]) the new one.
    pub fn replace_credentials(&self, key_pem: &str, chain_pem: &str) -> Result<()> {
        let (key_new, cert_new) = self.renewal_files();
        write_with_mode(&key_new, key_pem.as_bytes(), 0o600)?;
        write_with_mode(&cert_new, chain_pem.as_bytes(), 0o644)?;
        rename(&key_new, &self.path.join(KEY))?;
        rename(&cert_new, &self.path.join(CERT))
    }

    /// Completes a renewal that stopped between writing and moving its
    /// files: the new certificate written means the hub issued it for the
    /// new key; a new key alone means the certificate never came.
    pub fn finish_renewal(&self) -> Result<()> {
        let (key_new, cert_new) = self.renewal_files();
        if cert_new.exists() {
            if key_new.exists() {
                rename(&key_new, &self.path.join(KEY))?;
            }
            rename(&cert_new, &self.path.join(CERT))?;
        } else if key_new.exists() {
            fs::remove_file(&key_new).map_err(|source| Error::Io {
                path: key_new,
                source,
            })?;
        }
        Ok(())
    }

    /// Saves a received attachment as `inbox/NAME`, 0600 in a 0700
    /// directory; `name` must come from [`crate::inbox::attachment_name`].
    pub fn save_attachment(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        let dir = self.path.join(INBOX);
        private_dir(&dir)?;
        let path = dir.join(name);
        write_with_mode(&path, bytes, 0o600)?;
        Ok(path)
    }

    fn renewal_files(&self) -> (PathBuf, PathBuf) {
        (
            self.path.join(format!("{KEY}{NEW}")),
            self.path.join(format!("{CERT}{NEW}")),
        )
    }
}

/// Creates a directory (and its parents) only its owner can enter; an
/// existing one open to others is tightened to 0700, since it holds a key.
fn private_dir(dir: &Path) -> Result<()> {
    let fail = |source| Error::Io {
        path: dir.to_owned(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(fail)?;
    let mode = fs::metadata(dir).map_err(fail)?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(fail)?;
    }
    Ok(())
}

/// Writes atomically with `mode` from the first byte: a temporary sibling
/// created with the mode, synced, then renamed over the target.
fn write_with_mode(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        // The umask may have narrowed the mode; make it exact.
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
        fs::rename(&tmp, path)
    };
    write().map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|source| Error::Io {
        path: to.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::DeviceId;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn pairing() -> Pairing {
        Pairing {
            device_id: DeviceId::from_entropy([7; 16]),
            host: "192.0.2.1".into(),
            mqtt_port: 8883,
            enroll_port: 8443,
            ca_sha256: "ab".repeat(32),
        }
    }

    const CREDENTIALS: Credentials<'static> = Credentials {
        key_pem: "KEY",
        chain_pem: "CHAIN",
        ca_pem: "CA",
    };

    #[test]
    fn a_stored_pairing_has_a_private_dir_and_key_and_loads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DeviceDir::new(tmp.path().join("a/robot"));
        assert!(!dir.is_paired());
        dir.store(&pairing(), &CREDENTIALS).unwrap();
        assert!(dir.is_paired());
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&dir.path().join(KEY)), 0o600);
        assert_eq!(mode(&dir.path().join(CERT)), 0o644);
        let paired = dir.load().unwrap();
        assert_eq!(paired.pairing, pairing());
        assert_eq!(paired.key_pem, b"KEY");
        assert_eq!(paired.chain_pem, b"CHAIN");
        assert_eq!(paired.ca_pem, b"CA");
        assert!(
            !format!("{paired:?}").contains("KEY\""),
            "the key stays out of Debug"
        );
    }

    #[test]
    fn a_new_hub_address_replaces_only_the_settings() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DeviceDir::new(tmp.path());
        dir.store(&pairing(), &CREDENTIALS).unwrap();
        let moved = Pairing {
            host: "192.0.2.9".into(),
            ..pairing()
        };
        dir.store_settings(&moved).unwrap();
        let paired = dir.load().unwrap();
        assert_eq!(paired.pairing, moved);
        assert_eq!(paired.key_pem, b"KEY");
        assert_eq!(mode(&tmp.path().join(KEY)), 0o600);
        assert!(!tmp.path().join(format!("{SETTINGS}.tmp")).exists());
    }

    #[test]
    fn a_directory_open_to_others_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("robot");
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        let dir = DeviceDir::new(&path);
        dir.store(&pairing(), &CREDENTIALS).unwrap();
        assert_eq!(mode(&path), 0o700);
    }

    #[test]
    fn an_unpaired_directory_says_to_pair_and_a_damaged_one_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DeviceDir::new(tmp.path());
        let err = dir.load().unwrap_err();
        assert!(matches!(err, Error::NotPaired { .. }), "{err}");
        assert!(err.to_string().contains("pair first"), "{err}");

        dir.store(&pairing(), &CREDENTIALS).unwrap();
        // A key this version does not know is refused, not ignored.
        let mut text = fs::read_to_string(tmp.path().join(SETTINGS)).unwrap();
        text.push_str("hub_name = \"x\"\n");
        fs::write(tmp.path().join(SETTINGS), text).unwrap();
        let err = dir.load().unwrap_err();
        assert!(matches!(err, Error::Damaged { .. }), "{err}");
        assert!(err.to_string().contains("hub_name"), "{err}");
    }

    #[test]
    fn renewal_replaces_both_files_and_an_interrupted_one_is_finished() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DeviceDir::new(tmp.path());
        dir.store(&pairing(), &CREDENTIALS).unwrap();
        dir.replace_credentials("KEY2", "CHAIN2").unwrap();
        let paired = dir.load().unwrap();
        assert_eq!(
            (paired.key_pem, paired.chain_pem),
            (b"KEY2".to_vec(), b"CHAIN2".to_vec())
        );
        assert_eq!(mode(&tmp.path().join(KEY)), 0o600);

        // Stopped after both new files were written: the new pair wins.
        let (key_new, cert_new) = dir.renewal_files();
        write_with_mode(&key_new, b"KEY3", 0o600).unwrap();
        write_with_mode(&cert_new, b"CHAIN3", 0o644).unwrap();
        let paired = dir.load().unwrap();
        assert_eq!(
            (paired.key_pem, paired.chain_pem),
            (b"KEY3".to_vec(), b"CHAIN3".to_vec())
        );
        assert!(!key_new.exists() && !cert_new.exists());

        // Stopped before the certificate came: the new key is dropped.
        write_with_mode(&key_new, b"KEY4", 0o600).unwrap();
        let paired = dir.load().unwrap();
        assert_eq!(paired.key_pem, b"KEY3");
        assert!(!key_new.exists());

        // Stopped after the key was moved: the certificate follows it.
        fs::write(tmp.path().join(KEY), b"KEY5").unwrap();
        write_with_mode(&cert_new, b"CHAIN5", 0o644).unwrap();
        let paired = dir.load().unwrap();
        assert_eq!(
            (paired.key_pem, paired.chain_pem),
            (b"KEY5".to_vec(), b"CHAIN5".to_vec())
        );
    }

    #[test]
    fn attachments_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DeviceDir::new(tmp.path().join("robot"));
        let path = dir.save_attachment("ab12.png", b"png").unwrap();
        assert_eq!(mode(&tmp.path().join("robot").join(INBOX)), 0o700);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::read(path).unwrap(), b"png");
    }
}
