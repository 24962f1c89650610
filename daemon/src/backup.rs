//! Backups, restore and factory reset of the data dir: one `age`-encrypted
//! file holding the database snapshot, the CA and the mailbox key (never a
//! key in clear outside the state directory), and `erase-all`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use age::secrecy::SecretString;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::mailbox::seal::KEY_FILE as MAILBOX_KEY_FILE;
use crate::store::{Store, DB_FILE};

/// What a backup holds, besides the database: (file, is a key).
const FILES: &[(&str, bool)] = &[
    ("ca.key", true),
    ("ca.pem", false),
    (MAILBOX_KEY_FILE, true),
];
/// The format name inside the encrypted file.
const FORMAT: &str = "hearth-backup-v1";

/// A backup, restore or erase failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// A file could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The database snapshot failed.
    #[error("database snapshot: {0}")]
    Store(#[from] crate::store::StoreError),
    /// Encryption or decryption failed (wrong passphrase or key).
    #[error("{0}")]
    Age(String),
    /// The file is not a Hearth backup.
    #[error("not a Hearth backup: {0}")]
    Format(String),
    /// The data dir already holds a hub.
    #[error("{0} already holds a hub (hearth.db or keys); run `hearth erase-all --yes` first")]
    NotEmpty(String),
}

/// How a backup is encrypted or opened.
#[derive(Debug, Clone)]
pub enum BackupKey {
    /// A passphrase (age's scrypt recipient).
    Passphrase(String),
    /// An age recipient (`age1...`) to encrypt to.
    Recipient(String),
    /// An age identity (`AGE-SECRET-KEY-1...`) to open with.
    Identity(String),
}

#[derive(Serialize, Deserialize)]
struct Bundle {
    format: String,
    created_at: i64,
    /// File name → base64 content.
    files: BTreeMap<String, String>,
}

/// Makes an encrypted backup of a running hub's data dir: [`bundle`], then
/// [`seal`].
pub fn create(store: &Store, dir: &Path, key: &BackupKey) -> Result<Vec<u8>, BackupError> {
    seal(&bundle(store, dir)?, key)
}

/// What a backup holds, in clear, in memory: a snapshot of the database
/// (the caller holds the store, so it and the keys belong together) and
/// the key files. The clear snapshot file exists only inside the data
/// dir, and only until it is read.
pub fn bundle(store: &Store, dir: &Path) -> Result<Vec<u8>, BackupError> {
    let snapshot = dir.join(format!(
        ".backup-{}.db",
        hex::encode(crate::random_bytes::<8>())
    ));
    let taken = store.snapshot(&snapshot);
    let db = taken
        .map_err(BackupError::from)
        .and_then(|()| std::fs::read(&snapshot).map_err(BackupError::from));
    let _ = std::fs::remove_file(&snapshot);
    let mut files = BTreeMap::new();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    files.insert(DB_FILE.to_owned(), b64(&db?));
    for (name, _) in FILES {
        files.insert((*name).to_owned(), b64(&std::fs::read(dir.join(name))?));
    }
    let bundle = Bundle {
        format: FORMAT.into(),
        created_at: crate::unix_now(),
        files,
    };
    serde_json::to_vec(&bundle).map_err(|e| BackupError::Format(e.to_string()))
}

/// Encrypts a [`bundle`] with age. A passphrase costs about a second of
/// scrypt: run it off the async workers and without the store.
pub fn seal(plain: &[u8], key: &BackupKey) -> Result<Vec<u8>, BackupError> {
    let age_err = |e: &dyn std::fmt::Display| BackupError::Age(e.to_string());
    let encryptor = match key {
        BackupKey::Passphrase(p) => {
            age::Encryptor::with_user_passphrase(SecretString::from(p.clone()))
        }
        BackupKey::Recipient(r) => {
            let recipient: age::x25519::Recipient = r
                .parse()
                .map_err(|e: &str| BackupError::Age(format!("recipient: {e}")))?;
            age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                .map_err(|e| age_err(&e))?
        }
        BackupKey::Identity(_) => {
            return Err(BackupError::Age(
                "a backup is made with a passphrase or a recipient".into(),
            ))
        }
    };
    let mut out = Vec::new();
    let mut writer = encryptor.wrap_output(&mut out)?;
    writer.write_all(plain)?;
    writer.finish()?;
    Ok(out)
}

/// Restores a backup into `dir`, which must hold no hub (no database and
/// no keys): the database, CA and mailbox key, keys 0600, dir 0700. The
/// server certificate is made anew at the next start.
pub fn restore(encrypted: &[u8], key: &BackupKey, dir: &Path) -> Result<(), BackupError> {
    let age_err = |e: &dyn std::fmt::Display| BackupError::Age(e.to_string());
    let decryptor = age::Decryptor::new_buffered(encrypted).map_err(|e| age_err(&e))?;
    let plain = {
        let mut reader = match key {
            BackupKey::Passphrase(p) => {
                let identity = age::scrypt::Identity::new(SecretString::from(p.clone()));
                decryptor
                    .decrypt(std::iter::once(&identity as &dyn age::Identity))
                    .map_err(|e| age_err(&e))?
            }
            BackupKey::Identity(i) => {
                let identity: age::x25519::Identity = i
                    .parse()
                    .map_err(|e: &str| BackupError::Age(format!("identity: {e}")))?;
                decryptor
                    .decrypt(std::iter::once(&identity as &dyn age::Identity))
                    .map_err(|e| age_err(&e))?
            }
            BackupKey::Recipient(_) => {
                return Err(BackupError::Age(
                    "a backup made to a recipient opens with its identity (--identity)".into(),
                ))
            }
        };
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut plain)?;
        plain
    };
    let bundle: Bundle =
        serde_json::from_slice(&plain).map_err(|e| BackupError::Format(e.to_string()))?;
    if bundle.format != FORMAT {
        return Err(BackupError::Format(format!("format {:?}", bundle.format)));
    }
    crate::datadir::create_private_dir(dir)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    if holds_a_hub(dir) {
        return Err(BackupError::NotEmpty(dir.display().to_string()));
    }
    let decode = |name: &str| -> Result<Vec<u8>, BackupError> {
        let text = bundle
            .files
            .get(name)
            .ok_or_else(|| BackupError::Format(format!("{name} missing")))?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| BackupError::Format(format!("{name}: {e}")))
    };
    for (name, is_key) in FILES {
        let bytes = decode(name)?;
        if *is_key {
            crate::datadir::write_private(&dir.join(name), &bytes)?;
        } else {
            crate::datadir::write_public(&dir.join(name), &bytes)?;
        }
    }
    // The database last: a hub found with keys but no database is easier
    // to explain than the other way round.
    crate::datadir::write_private(&dir.join(DB_FILE), &decode(DB_FILE)?)?;
    Ok(())
}

/// Whether `dir` holds a database or any of the hub's keys.
fn holds_a_hub(dir: &Path) -> bool {
    [DB_FILE, "ca.key", "server.key", MAILBOX_KEY_FILE]
        .iter()
        .any(|name| dir.join(name).exists())
}

/// Factory reset: destroys every key and the database in `dir` (keys are
/// overwritten with random bytes and synced before they are unlinked),
/// and every other file the hub made there. The directory itself stays.
/// The hub must not be running. Returns the files removed.
pub fn erase_all(dir: &Path) -> Result<Vec<String>, BackupError> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            continue;
        }
        if kind.is_file() && name.ends_with(".key") {
            let len = entry.metadata()?.len() as usize;
            let mut file = std::fs::OpenOptions::new().write(true).open(&path)?;
            let mut noise = vec![0u8; len];
            getrandom::getrandom(&mut noise).map_err(|e| std::io::Error::other(e.to_string()))?;
            file.write_all(&noise)?;
            file.sync_all()?;
        }
        std::fs::remove_file(&path)?;
        removed.push(name);
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_opens_only_with_its_key_and_holds_no_key_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (name, _) in FILES {
            std::fs::write(dir.path().join(name), format!("CLEAR-{name}-BYTES")).unwrap();
        }
        let key = BackupKey::Passphrase("correct horse".into());
        let file = create(&store, dir.path(), &key).unwrap();
        assert!(!file.windows(6).any(|w| w == b"CLEAR-"));
        assert!(
            std::fs::read_dir(dir.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".backup")),
            "the clear snapshot is gone"
        );
        let target = tempfile::tempdir().unwrap();
        let wrong = BackupKey::Passphrase("wrong".into());
        assert!(restore(&file, &wrong, target.path()).is_err());
        restore(&file, &key, target.path()).unwrap();
        assert_eq!(
            std::fs::read(target.path().join("mailbox.key")).unwrap(),
            b"CLEAR-mailbox.key-BYTES"
        );
        // Not over a hub.
        assert!(matches!(
            restore(&file, &key, target.path()),
            Err(BackupError::NotEmpty(_))
        ));
        let removed = erase_all(target.path()).unwrap();
        assert!(removed.contains(&"mailbox.key".to_owned()), "{removed:?}");
        assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 0);
    }
}
