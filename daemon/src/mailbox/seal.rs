//! Mailbox content at rest, sealed for crypto-erase: each message under its
//! own random data key, stored only wrapped by the mailbox key, so deleting
//! a message's row destroys the one key that opens it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// The mailbox key file in the data dir.
pub const KEY_FILE: &str = "mailbox.key";

const NONCE: usize = 24;

/// The mailbox key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The key file cannot be read, written or fixed.
    #[error("{path}: cannot {what}: {source}")]
    File {
        /// The key file.
        path: PathBuf,
        /// What was tried.
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file does not hold a key.
    #[error("{0} is not a 32-byte key; refusing to guess")]
    NotAKey(PathBuf),
    /// The key is gone but sealed messages wait: making a new key would
    /// leave them unopenable forever, and their senders would hear nothing.
    #[error(
        "{path} is missing or unreadable ({cause}) and {pending} sealed message(s) are stored. \
         hearthd will not make a new key: those messages could never be opened. \
         Either restore the data dir from a backup (`hearth restore FILE`), \
         or erase everything the hub holds and start afresh (`hearth erase-all --yes`)."
    )]
    KeyLost {
        /// The key file.
        path: PathBuf,
        /// Why it could not be used.
        cause: String,
        /// How many sealed messages are stored.
        pending: u64,
    },
}

/// The mailbox key (a key-encryption key: it only wraps data keys).
pub struct MailboxKey(XChaCha20Poly1305);

impl std::fmt::Debug for MailboxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MailboxKey(..)")
    }
}

/// A sealed message: the content under its data key, and the data key
/// wrapped by the mailbox key. Both are `nonce || ciphertext`.
#[derive(Debug)]
pub struct Sealed {
    /// The wrapped data key.
    pub wrapped_key: Vec<u8>,
    /// The content.
    pub sealed: Vec<u8>,
}

impl MailboxKey {
    /// Loads the key; makes one only when no sealed message exists
    /// (`pending` is how many are stored). A key that is missing or
    /// unreadable while messages wait is an error, never replaced.
    pub fn load(dir: &Path, pending: u64) -> Result<MailboxKey, SealError> {
        let path = dir.join(KEY_FILE);
        let file = |what, source| SealError::File {
            path: path.clone(),
            what,
            source,
        };
        let key = match std::fs::read(&path) {
            Ok(key) if key.len() == 32 => key,
            Ok(_) if pending > 0 => {
                return Err(SealError::KeyLost {
                    path,
                    cause: "not a 32-byte key".into(),
                    pending,
                })
            }
            Ok(_) => return Err(SealError::NotAKey(path)),
            Err(e) if pending > 0 => {
                return Err(SealError::KeyLost {
                    path,
                    cause: e.to_string(),
                    pending,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = crate::random_bytes::<32>().to_vec();
                crate::datadir::write_private(&path, &key).map_err(|e| file("write", e))?;
                key
            }
            Err(e) => return Err(file("read", e)),
        };
        let mode = std::fs::metadata(&path)
            .map_err(|e| file("stat", e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| file("chmod", e))?;
        }
        MailboxKey::from_bytes(&key).ok_or(SealError::NotAKey(path))
    }

    /// A key from its 32 bytes (tests and recovery checks read the file).
    pub fn from_bytes(key: &[u8]) -> Option<MailboxKey> {
        XChaCha20Poly1305::new_from_slice(key).ok().map(MailboxKey)
    }

    /// Seals `plain` under a fresh data key bound to the message id and
    /// the `to` it was sent to, and wraps that data key.
    pub fn seal(&self, id: &str, recipient: &str, plain: &[u8]) -> Sealed {
        let data_key = crate::random_bytes::<32>();
        let cipher =
            XChaCha20Poly1305::new_from_slice(&data_key).expect("a 32-byte XChaCha20-Poly1305 key");
        Sealed {
            wrapped_key: encrypt(&self.0, &wrap_aad(id), &data_key),
            sealed: encrypt(&cipher, &content_aad(id, recipient), plain),
        }
    }

    /// Opens a sealed message; `None` if anything does not match. A row
    /// without a wrapped key is one sealed before crypto-erase (directly
    /// under the mailbox key) and still opens until it is re-sealed.
    pub fn open(
        &self,
        id: &str,
        recipient: &str,
        wrapped_key: Option<&[u8]>,
        sealed: &[u8],
    ) -> Option<Vec<u8>> {
        let aad = content_aad(id, recipient);
        match wrapped_key {
            None => decrypt(&self.0, &aad, sealed),
            Some(wrapped) => {
                let data_key = decrypt(&self.0, &wrap_aad(id), wrapped)?;
                let cipher = XChaCha20Poly1305::new_from_slice(&data_key).ok()?;
                decrypt(&cipher, &aad, sealed)
            }
        }
    }
}

/// Seals as Hearth did before crypto-erase, directly under the mailbox key
/// (tests of the migration make old rows with it).
#[cfg(test)]
pub(crate) fn seal_without_data_key(
    key: &MailboxKey,
    id: &str,
    recipient: &str,
    plain: &[u8],
) -> Vec<u8> {
    encrypt(&key.0, &content_aad(id, recipient), plain)
}

fn content_aad(id: &str, recipient: &str) -> Vec<u8> {
    format!("hearth-mailbox-v1\0{id}\0{recipient}").into_bytes()
}

fn wrap_aad(id: &str) -> Vec<u8> {
    format!("hearth-mailbox-key-v1\0{id}").into_bytes()
}

fn encrypt(cipher: &XChaCha20Poly1305, aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let nonce = crate::random_bytes::<NONCE>();
    let body = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
        .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&body);
    out
}

fn decrypt(cipher: &XChaCha20Poly1305, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE);
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_opens_only_for_its_id_recipient_and_wrapped_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = MailboxKey::load(dir.path(), 0).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let one = key.seal("m1", "Ada", b"secret words");
        let two = key.seal("m2", "Ada", b"secret words");
        assert!(!one.sealed.windows(6).any(|w| w == b"secret"));
        let open = |id, to, k: &Sealed| key.open(id, to, Some(&k.wrapped_key), &k.sealed);
        assert_eq!(open("m1", "Ada", &one).unwrap(), b"secret words");
        assert!(open("m2", "Ada", &one).is_none());
        assert!(open("m1", "Bob", &one).is_none());
        // Each message has its own data key: another's wrapped key does
        // not open it, and without its own nothing does.
        assert!(key
            .open("m1", "Ada", Some(&two.wrapped_key), &one.sealed)
            .is_none());
        assert!(key.open("m1", "Ada", None, &one.sealed).is_none());
        // The same key comes back on the next start.
        let again = MailboxKey::load(dir.path(), 1).unwrap();
        assert_eq!(
            again
                .open("m1", "Ada", Some(&one.wrapped_key), &one.sealed)
                .unwrap(),
            b"secret words"
        );
    }

    #[test]
    fn a_lost_key_is_never_replaced_while_messages_wait() {
        let dir = tempfile::tempdir().unwrap();
        let err = MailboxKey::load(dir.path(), 2).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(KEY_FILE), "{text}");
        assert!(text.contains("hearth restore"), "{text}");
        assert!(text.contains("hearth erase-all"), "{text}");
        assert!(!dir.path().join(KEY_FILE).exists());
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        assert!(matches!(
            MailboxKey::load(dir.path(), 2),
            Err(SealError::KeyLost { .. })
        ));
        assert_eq!(
            std::fs::read(dir.path().join(KEY_FILE)).unwrap(),
            b"short",
            "left as it was"
        );
    }
}
