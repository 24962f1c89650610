//! Browsers signed in to the family web app: a registry entry of kind
//! `browser` per browser, and the hash of its session secret.

use hearth_protocol::{DeviceId, Label, MemberName, Role};
use rusqlite::{params, OptionalExtension};

use super::{parse, Store, StoreError};

/// A browser whose session secret matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserSession {
    /// The browser's registry entry.
    pub device: DeviceId,
    /// Whose browser it is.
    pub member: MemberName,
    /// The member's role.
    pub role: Role,
    /// The hour it was last used, Unix seconds.
    pub last_used: i64,
}

/// Hours are what `last_used` keeps: enough for idle expiry in days.
fn hour(at: i64) -> i64 {
    at - at.rem_euclid(3600)
}

impl Store {
    /// Registers a browser of `member`'s with its session secret's hash,
    /// in one transaction.
    pub fn add_browser(
        &mut self,
        id: &DeviceId,
        member: &MemberName,
        label: &Label,
        secret_sha256: &[u8; 32],
        now: i64,
    ) -> Result<(), StoreError> {
        if self.member_role(member)?.is_none() {
            return Err(StoreError::NoSuchMember(member.to_string()));
        }
        let tx = self.conn_mut().transaction()?;
        tx.execute(
            "INSERT INTO devices (id, member, label, status, created_at, last_seen, kind)
             VALUES (?1, ?2, ?3, 'active', ?4, ?5, 'browser')",
            params![
                id.as_str(),
                member.as_str(),
                label.as_str(),
                now,
                super::day(now)
            ],
        )?;
        tx.execute(
            "INSERT INTO browser_sessions (device_id, secret_sha256, last_used) VALUES (?1, ?2, ?3)",
            params![id.as_str(), &secret_sha256[..], hour(now)],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The active browser holding the secret with this hash, if any.
    pub fn browser_session(
        &self,
        secret_sha256: &[u8; 32],
    ) -> Result<Option<BrowserSession>, StoreError> {
        let row = self
            .conn()
            .prepare_cached(
                "SELECT d.id, d.member, m.role, s.last_used
                 FROM browser_sessions s
                 JOIN devices d ON d.id = s.device_id
                 JOIN members m ON m.name = d.member
                 WHERE s.secret_sha256 = ?1 AND d.status = 'active' AND d.kind = 'browser'",
            )?
            .query_row(params![&secret_sha256[..]], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            })
            .optional()?;
        row.map(|(device, member, role, last_used)| {
            Ok(BrowserSession {
                device: parse(&device)?,
                member: parse(&member)?,
                role: parse(&role)?,
                last_used,
            })
        })
        .transpose()
    }

    /// Whether a browser is still signed in (active, with a session).
    pub fn browser_is_active(&self, device: &DeviceId) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM browser_sessions s JOIN devices d ON d.id = s.device_id
                 WHERE s.device_id = ?1 AND d.status = 'active')",
            )?
            .query_row(params![device.as_str()], |row| row.get(0))?)
    }

    /// Browsers last used before `before` (Unix seconds).
    pub fn idle_browsers(&self, before: i64) -> Result<Vec<DeviceId>, StoreError> {
        let mut stmt = self
            .conn()
            .prepare_cached("SELECT device_id FROM browser_sessions WHERE last_used < ?1")?;
        let rows = stmt.query_map(params![before], |row| row.get::<_, String>(0))?;
        rows.map(|row| parse(&row?)).collect()
    }

    /// Notes that a browser was used now (to the hour), and that it was
    /// seen today (the day only, as for every device).
    pub fn touch_browser(&self, device: &DeviceId, now: i64) -> Result<(), StoreError> {
        self.conn()
            .prepare_cached(
                "UPDATE browser_sessions SET last_used = ?2 WHERE device_id = ?1 AND last_used < ?2",
            )?
            .execute(params![device.as_str(), hour(now)])?;
        self.conn()
            .prepare_cached("UPDATE devices SET last_seen = ?2 WHERE id = ?1")?
            .execute(params![device.as_str(), super::day(now)])?;
        Ok(())
    }

    /// Sets when a browser was last used (tests of idle expiry).
    #[cfg(test)]
    pub fn backdate_browser(&self, device: &DeviceId, last_used: i64) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE browser_sessions SET last_used = ?2 WHERE device_id = ?1",
            params![device.as_str(), last_used],
        )?;
        Ok(())
    }

    /// Renames a device or browser.
    pub fn relabel_device(&self, device: &DeviceId, label: &Label) -> Result<(), StoreError> {
        let n = self
            .conn()
            .prepare_cached("UPDATE devices SET label = ?2 WHERE id = ?1")?
            .execute(params![device.as_str(), label.as_str()])?;
        if n == 0 {
            return Err(StoreError::NoSuchDevice(device.to_string()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn a_secret_finds_its_browser_until_it_is_revoked() {
        let (_dir, mut store) = store();
        let ada: MemberName = "ada".parse().unwrap();
        store.add_member(&ada, Role::Parent).unwrap();
        let id = DeviceId::from_entropy(crate::random_bytes());
        let label: Label = "Ada's phone".parse().unwrap();
        store
            .add_browser(&id, &ada, &label, &[7; 32], 7_200 + 5)
            .unwrap();
        assert_eq!(
            store.devices().unwrap()[0].last_seen,
            Some(0),
            "seen the day it joined"
        );
        let found = store.browser_session(&[7; 32]).unwrap().unwrap();
        assert_eq!(
            (found.device, found.role, found.last_used),
            (id, Role::Parent, 7_200)
        );
        assert_eq!(store.browser_session(&[8; 32]).unwrap(), None);
        store.touch_browser(&id, 3 * 3600 + 1).unwrap();
        let found = store.browser_session(&[7; 32]).unwrap().unwrap();
        assert_eq!(found.last_used, 3 * 3600);
        store.revoke_device(&id).unwrap();
        assert_eq!(store.browser_session(&[7; 32]).unwrap(), None);
        let listed = store.devices().unwrap();
        assert_eq!(listed[0].kind, hearth_protocol::admin::DeviceKind::Browser);
    }

    #[test]
    fn removing_the_member_erases_the_session() {
        let (_dir, mut store) = store();
        let bob: MemberName = "bob".parse().unwrap();
        store.add_member(&bob, Role::Child).unwrap();
        let id = DeviceId::from_entropy(crate::random_bytes());
        store
            .add_browser(&id, &bob, &"tablet".parse().unwrap(), &[9; 32], 0)
            .unwrap();
        store.remove_member(&bob).unwrap();
        let left: i64 = store
            .conn()
            .query_row("SELECT count(*) FROM browser_sessions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }
}
