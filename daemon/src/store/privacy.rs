//! What the hub holds, counted per kind of data for `hearth privacy
//! report` (no content is read), and the database snapshot for backups.

use std::path::Path;

use hearth_protocol::admin::PrivacyItem;
use hearth_protocol::MemberName;
use rusqlite::params;

use super::{Store, StoreError};

impl Store {
    /// One line per kind of data, for the household or one member (and
    /// their devices). `kept` texts come from the caller (they depend on
    /// the configuration).
    pub fn privacy_items(
        &self,
        member: Option<&MemberName>,
        kept: &dyn Fn(&str) -> String,
    ) -> Result<Vec<PrivacyItem>, StoreError> {
        let name = member.map(|m| m.as_str().to_owned());
        // ?1: the member or NULL for everyone. Devices of the member.
        const MINE: &str =
            "(?1 IS NULL OR device_id IN (SELECT id FROM devices WHERE member = ?1))";
        let queries: [(&str, String); 10] = [
            (
                "members",
                "SELECT count(*), 0, min(created_at) FROM members WHERE (?1 IS NULL OR name = ?1)".into(),
            ),
            (
                "devices (id, label, owner, day last seen)",
                "SELECT count(*), 0, min(created_at) FROM devices WHERE (?1 IS NULL OR member = ?1)".into(),
            ),
            (
                "certificates (fingerprints)",
                format!("SELECT count(*), 0, min(issued_at) FROM certificates WHERE {MINE}"),
            ),
            (
                "messages waiting (sealed)",
                format!(
                    "SELECT count(*), coalesce(sum(length(sealed)), 0), min(sent_at) FROM messages
                     WHERE id IN (SELECT message_id FROM deliveries WHERE {MINE})"
                ),
            ),
            (
                "messages sent, not yet delivered (sealed)",
                "SELECT count(*), coalesce(sum(length(sealed)), 0), min(sent_at) FROM messages
                 WHERE (?1 IS NULL OR sender IN (SELECT id FROM devices WHERE member = ?1))"
                    .into(),
            ),
            (
                "receipts waiting",
                format!("SELECT count(*), coalesce(sum(length(envelope)), 0), NULL FROM receipts WHERE {MINE}"),
            ),
            (
                "contact rules",
                "SELECT count(*), 0, NULL FROM contacts
                 WHERE (?1 IS NULL OR from_member = ?1 OR to_member = ?1)"
                    .into(),
            ),
            (
                "browser sessions (secret hashes, hour last used)",
                format!("SELECT count(*), 0, min(last_used) FROM browser_sessions WHERE {MINE}"),
            ),
            (
                "devices shared with the bridge",
                format!("SELECT count(*), 0, min(enabled_at) FROM bridged_devices WHERE {MINE}"),
            ),
            (
                "audit entries",
                "SELECT count(*), 0, min(at) FROM audit
                 WHERE (?1 IS NULL OR device IN (SELECT id FROM devices WHERE member = ?1))"
                    .into(),
            ),
        ];
        let mut items = Vec::new();
        for (kind, sql) in queries {
            let (count, bytes, oldest): (i64, i64, Option<i64>) =
                self.conn().query_row(&sql, params![name], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?;
            items.push(PrivacyItem {
                kind: kind.to_owned(),
                count: count.max(0) as u64,
                bytes: bytes.max(0) as u64,
                oldest,
                kept: kept(kind),
            });
        }
        Ok(items)
    }

    /// Ids of the messages a device sent that still wait for delivery.
    pub fn messages_sent_by(
        &self,
        device: &hearth_protocol::DeviceId,
    ) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn()
            .prepare("SELECT id FROM messages WHERE sender = ?1 ORDER BY sent_at")?;
        let rows = stmt.query_map(params![device.as_str()], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Writes a consistent, compacted copy of the database to `path` (a
    /// new file): deleted rows and free pages are not carried over.
    pub fn snapshot(&self, path: &Path) -> Result<(), StoreError> {
        let text = path.to_string_lossy().into_owned();
        self.conn().execute("VACUUM INTO ?1", params![text])?;
        Ok(())
    }
}
