//! What the hub tells its household about itself: the lists, the audit,
//! the privacy report, a member's export and the encrypted backup. They
//! only read (an export and a backup are audited, not whose); the admin
//! socket, and the family's web page to come, call these and nothing else.

use hearth_protocol::admin::{
    AuditEntry, ContactRule, DeviceInfo, MailboxPending, MemberInfo, PrivacyReport,
};
use hearth_protocol::{DeviceId, MemberName, Owner};
use serde_json::{json, Value};

use super::{Hub, HubError, Retention};
use crate::backup::{BackupError, BackupKey};

/// Largest audit page one question gets.
pub const AUDIT_PAGE_MAX: u32 = 10_000;

/// What a member export holds: the JSON document and its attachments
/// (file name, base64 content).
pub type MemberExport = (Value, Vec<(String, String)>);

/// What the report says is never stored, whoever asks.
const NEVER_STORED: [&str; 5] = [
    "delivered messages: deleted, and their key destroyed, when the last device confirms",
    "passwords, birthdates, addresses or photos of people (never asked for)",
    "device private keys (made on the device, never sent)",
    "what devices publish besides messages (telemetry, commands): passed on, never stored",
    "message text in the audit or the logs",
];

impl Hub {
    /// The household's members.
    pub fn members(&self) -> Result<Vec<MemberInfo>, HubError> {
        Ok(self.store.with(|s| s.members())?)
    }

    /// Every device the hub knows, with its state.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>, HubError> {
        Ok(self.store.with(|s| s.devices())?)
    }

    /// Messages waiting, per recipient device.
    pub fn mailbox_pending(&self) -> Result<Vec<MailboxPending>, HubError> {
        Ok(self.store.with(|s| s.mailbox_pending())?)
    }

    /// The contact rules between members.
    pub fn contact_rules(&self) -> Result<Vec<ContactRule>, HubError> {
        Ok(self.store.with(|s| s.contact_rules())?)
    }

    /// A page of the audit, oldest first. What was recorded before the
    /// question is in the answer.
    pub async fn audit_entries(
        &self,
        device: Option<&DeviceId>,
        since: Option<i64>,
        after_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, HubError> {
        self.audit.flush().await;
        let limit = limit.clamp(1, AUDIT_PAGE_MAX);
        Ok(self
            .store
            .with(|s| s.audit(device, since, after_id, limit))?)
    }

    /// What the hub holds, per kind, with how long each is kept; about
    /// one member, or everyone.
    pub fn privacy_report(&self, member: Option<MemberName>) -> Result<PrivacyReport, HubError> {
        let kept = kept_for(self.retention());
        if let Some(name) = &member {
            if self.store.with(|s| s.member_role(name))?.is_none() {
                return Err(HubError::NoSuchMember(name.clone()));
            }
        }
        let items = self
            .store
            .with(|s| s.privacy_items(member.as_ref(), &kept))?;
        Ok(PrivacyReport {
            member,
            items,
            never_stored: NEVER_STORED.iter().map(|s| (*s).to_owned()).collect(),
        })
    }

    /// Everything the hub holds about a member (GDPR Art. 15/20): the
    /// member, their devices, contact rules, audit entries of their
    /// devices, and the messages waiting for them or sent by them, opened
    /// (attachments apart). Audited without saying whose.
    pub fn member_export(&self, name: &MemberName) -> Result<MemberExport, HubError> {
        let export = self.store.with(|store| -> Result<_, HubError> {
            let role = store
                .member_role(name)?
                .ok_or_else(|| HubError::NoSuchMember(name.clone()))?;
            let owner = Owner::Member(name.clone());
            let devices: Vec<_> = store
                .devices()?
                .into_iter()
                .filter(|d| d.owner == owner)
                .collect();
            let contacts: Vec<_> = store
                .contact_rules()?
                .into_iter()
                .filter(|r| &r.from == name || &r.to == name)
                .collect();
            let mut audit = Vec::new();
            for d in &devices {
                audit.extend(store.audit(Some(&d.id), None, None, 100_000)?);
            }
            // The key is loaded only to open; it is never made here.
            let key = crate::mailbox::seal::MailboxKey::load(&self.data_dir, 1)
                .map_err(|e| HubError::Unreadable(e.to_string()))?;
            let mut attachments = Vec::new();
            let mut open = |id: &str, direction: &str| -> Result<Option<Value>, HubError> {
                let Some(m) = store.message(id)? else {
                    return Ok(None);
                };
                let plain = key
                    .open(&m.id, &m.recipient, m.wrapped_key.as_deref(), &m.sealed)
                    .ok_or_else(|| {
                        HubError::Unreadable(format!("message {} does not open", m.id))
                    })?;
                let mut content: Value = serde_json::from_slice(&plain)
                    .map_err(|e| HubError::Unreadable(format!("message {}: {e}", m.id)))?;
                if let Some(data) = content.get("data").and_then(Value::as_str) {
                    let file = format!("{}.{}", m.id, attachment_extension(&content));
                    attachments.push((file.clone(), data.to_owned()));
                    content["data"] = Value::String(format!("attachments/{file}"));
                }
                Ok(Some(json!({
                    "id": m.id, "direction": direction, "from_device": m.sender,
                    "to": m.recipient, "sent_at": m.sent_at, "expires_at": m.expires_at,
                    "content": content,
                })))
            };
            let mut messages = Vec::new();
            for d in &devices {
                for id in store.pending_ids(&d.id)? {
                    messages.extend(open(&id, "waiting for this member")?);
                }
                for id in store.messages_sent_by(&d.id)? {
                    messages.extend(open(&id, "sent by this member, not yet delivered")?);
                }
            }
            let data = json!({
                "format": "hearth-member-export-v1",
                "exported_at": crate::unix_now(),
                "member": {"name": name, "role": role},
                "devices": devices,
                "contact_rules": contacts,
                "messages": messages,
                "audit": audit,
            });
            Ok((data, attachments))
        })?;
        // Only the export is audited, not whose.
        self.admin_audit("member-export", None, "exported".into());
        Ok(export)
    }

    /// One encrypted backup: the snapshot and the keys are read under the
    /// store lock (so they belong together) and encrypted after it is
    /// released, on a blocking thread (a passphrase's scrypt takes a
    /// second of CPU).
    pub async fn backup(&self, key: BackupKey) -> Result<Vec<u8>, HubError> {
        let plain = self
            .store
            .with(|s| crate::backup::bundle(s, &self.data_dir))
            .map_err(backup_error)?;
        let file = tokio::task::spawn_blocking(move || crate::backup::seal(&plain, &key))
            .await
            .map_err(|e| HubError::Unreadable(format!("backup task: {e}")))?
            .map_err(backup_error)?;
        self.admin_audit("backup", None, "encrypted backup made".into());
        Ok(file)
    }
}

/// How long each kind of data is kept, in the report's words.
fn kept_for(retention: Retention) -> impl Fn(&str) -> String {
    let Retention {
        audit_days,
        message_secs,
        browser_idle_days,
    } = retention;
    let message_time = if message_secs % 86_400 == 0 {
        format!("{} days", message_secs / 86_400)
    } else {
        format!("{message_secs} seconds")
    };
    move |kind: &str| -> String {
        match kind {
            "members" | "contact rules" => "until the member is removed".into(),
            "devices (id, label, owner, day last seen)" => format!(
                "until the device is removed; the day last seen is dropped after {audit_days} days"
            ),
            "certificates (fingerprints)" => {
                "while the device exists; after removal only the fingerprint, so it stays refused"
                    .into()
            }
            "audit entries" => format!("{audit_days} days"),
            "browser sessions (secret hashes, hour last used)" => format!(
                "until the browser signs out, is revoked, or is unused for {browser_idle_days} days"
            ),
            "devices shared with the bridge" => {
                "until a parent stops sharing it, or it is revoked or removed".into()
            }
            _ => format!("until delivered, at most {message_time}"),
        }
    }
}

/// The file extension for an attachment: the subtype of its content type
/// when that is plain letters and digits (`image/jpeg` → `jpeg`), else
/// `bin`, so a device-typed content type never names a path.
fn attachment_extension(content: &Value) -> &str {
    content
        .get("content_type")
        .and_then(Value::as_str)
        .and_then(|t| t.split('/').nth(1))
        .filter(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_alphanumeric()))
        .unwrap_or("bin")
}

fn backup_error(e: BackupError) -> HubError {
    match e {
        BackupError::Store(e) => HubError::from(e),
        BackupError::Age(message) => HubError::BadBackupKey(message),
        other => HubError::Unreadable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attachment_is_named_by_its_content_types_subtype_only_when_that_is_safe() {
        let named = |t: &str| attachment_extension(&json!({ "content_type": t })).to_owned();
        assert_eq!(named("image/jpeg"), "jpeg");
        assert_eq!(named("audio/webm"), "webm");
        assert_eq!(named("image/../../etc"), "bin");
        assert_eq!(named("image/"), "bin");
        assert_eq!(named("text"), "bin");
        assert_eq!(attachment_extension(&json!({})), "bin");
    }

    #[test]
    fn the_report_states_each_kinds_retention_from_the_config() {
        let kept = kept_for(Retention {
            audit_days: 30,
            message_secs: 7 * 86_400,
            browser_idle_days: 14,
        });
        assert_eq!(kept("audit entries"), "30 days");
        assert!(kept("browser sessions (secret hashes, hour last used)").ends_with("14 days"));
        assert_eq!(kept("messages waiting"), "until delivered, at most 7 days");
        let kept = kept_for(Retention {
            audit_days: 1,
            message_secs: 90,
            browser_idle_days: 30,
        });
        assert_eq!(
            kept("messages waiting"),
            "until delivered, at most 90 seconds"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_privacy_report_about_a_stranger_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let hub = super::super::testing::hub(dir.path());
        let stranger = "Nobody".parse::<MemberName>().unwrap();
        let err = hub.privacy_report(Some(stranger)).unwrap_err();
        assert!(matches!(err, HubError::NoSuchMember(_)), "{err}");
        assert!(!err.is_internal());
        let everyone = hub.privacy_report(None).unwrap();
        assert!(everyone
            .never_stored
            .iter()
            .any(|s| s.contains("message text")));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_backup_to_a_bad_recipient_is_the_callers_fault_and_a_good_one_is_age() {
        let dir = tempfile::tempdir().unwrap();
        let hub = super::super::testing::hub(dir.path());
        crate::mailbox::seal::MailboxKey::load(dir.path(), 0).unwrap();
        let identity = age::x25519::Identity::generate();
        let file = hub
            .backup(BackupKey::Recipient(identity.to_public().to_string()))
            .await
            .unwrap();
        assert!(file.starts_with(b"age-encryption.org/v1"));
        let err = hub
            .backup(BackupKey::Recipient("not-a-recipient".into()))
            .await
            .unwrap_err();
        assert!(matches!(err, HubError::BadBackupKey(_)), "{err}");
        assert!(!err.is_internal());
    }
}
