//! The SQLite database: schema migrations by `user_version`, household
//! members, devices and the certificates issued to them.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hearth_protocol::admin::{AuditEntry, DeviceInfo, DeviceKind, DeviceStatus, MemberInfo};
use hearth_protocol::policy::{DeviceRole, Direction, Grant};
use hearth_protocol::{DeviceId, Label, MemberName, Owner, Role};
use rusqlite::{params, Connection, OptionalExtension};

pub use handle::{never_wait_on_this_thread, StoreHandle};

mod browsers;
pub use browsers::BrowserSession;
mod erase;
mod handle;
mod mailbox;
mod minimise;
mod privacy;
pub use mailbox::{ExpiredMessage, NewMessage, PendingDelivery};
pub use minimise::audit_topic;

/// The database file's name inside the data dir.
pub const DB_FILE: &str = "hearth.db";

/// A database operation failed or was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file could not be created with the right mode.
    #[error("database file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The database was written by a newer Hearth.
    #[error("database schema version {0} is newer than this hearthd understands")]
    TooNew(i64),
    /// A member with that nickname exists.
    #[error("a member named {0:?} already exists")]
    MemberExists(String),
    /// No member has that nickname.
    #[error("no member named {0:?}")]
    NoSuchMember(String),
    /// No device has that id.
    #[error("no device {0}")]
    NoSuchDevice(String),
    /// The operation needs a service device.
    #[error("device {0} is not a service device; grants are for service devices only")]
    NotAService(String),
    /// The device renewed and has not used its new certificate yet.
    #[error("device {0} has renewed recently; connect with the new certificate first")]
    RenewalPending(String),
    /// A stored value does not parse: the file was edited or is damaged.
    #[error("database holds an invalid value: {0}")]
    Corrupt(String),
    /// SQLite rolled a batch's transaction back after an error (a full
    /// disk, an I/O error); none of the batch was kept.
    #[error("the transaction was rolled back after a database error")]
    BatchLost,
}

/// Schema migrations, applied in order; `user_version` counts how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: the household registry.
    "CREATE TABLE members (
        name TEXT PRIMARY KEY NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('parent', 'child')),
        created_at INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE devices (
        id TEXT PRIMARY KEY NOT NULL,
        member TEXT REFERENCES members(name),
        label TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
        created_at INTEGER NOT NULL,
        last_seen INTEGER
     ) STRICT;
     -- Certificates outlive their devices: a revoked fingerprint stays
     -- refused even after the device is removed or paired again.
     CREATE TABLE certificates (
        sha256 TEXT PRIMARY KEY NOT NULL,
        device_id TEXT NOT NULL,
        serial TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('active', 'revoked', 'superseded')),
        issued_at INTEGER NOT NULL,
        not_after INTEGER NOT NULL
     ) STRICT;
     CREATE INDEX certificates_by_device ON certificates(device_id);",
    // 2: service grants and the audit log.
    "CREATE TABLE grants (
        device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        filter TEXT NOT NULL,
        direction TEXT NOT NULL CHECK (direction IN ('publish', 'subscribe')),
        PRIMARY KEY (device_id, filter, direction)
     ) STRICT;
     CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        device TEXT,
        event TEXT NOT NULL,
        action TEXT,
        topic TEXT,
        reason TEXT,
        peer TEXT
     ) STRICT;
     CREATE INDEX audit_by_time ON audit(at);
     CREATE INDEX audit_by_device ON audit(device, id);",
    // 3: renewal: a superseded certificate is retired once its successor
    // has been used, or at retire_at at the latest.
    "ALTER TABLE certificates ADD COLUMN retire_at INTEGER;",
    // 4: the mailbox. Content is sealed (XChaCha20-Poly1305); the rest is
    // what routing, receipts and `hearth mailbox` need.
    "CREATE TABLE messages (
        id TEXT PRIMARY KEY NOT NULL,
        sender TEXT NOT NULL,
        ref TEXT NOT NULL,
        recipient TEXT NOT NULL,
        sealed BLOB NOT NULL,
        sent_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
     ) STRICT;
     CREATE INDEX messages_by_expiry ON messages(expires_at);
     CREATE TABLE deliveries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        device_id TEXT NOT NULL,
        UNIQUE (message_id, device_id)
     ) STRICT;
     CREATE INDEX deliveries_by_device ON deliveries(device_id, seq);
     CREATE TABLE sent_refs (
        sender TEXT NOT NULL,
        ref TEXT NOT NULL,
        message_id TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (sender, ref)
     ) STRICT;
     CREATE TABLE receipts (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id TEXT NOT NULL,
        envelope TEXT NOT NULL
     ) STRICT;
     CREATE INDEX receipts_by_device ON receipts(device_id, seq);
     CREATE TABLE contacts (
        from_member TEXT NOT NULL REFERENCES members(name) ON DELETE CASCADE,
        to_member TEXT NOT NULL REFERENCES members(name) ON DELETE CASCADE,
        allowed INTEGER NOT NULL,
        PRIMARY KEY (from_member, to_member)
     ) STRICT;",
    // 5: expiry of sent references is an index lookup, not a scan.
    "CREATE INDEX sent_refs_by_expiry ON sent_refs(expires_at);",
    // 6: a member's devices without a scan (the mailbox asks on every send).
    "CREATE INDEX devices_by_member ON devices(member, created_at);",
    // 7: queued receipts expire like the messages they are about (7 days,
    // the default mailbox.expiry_secs, for those queued before).
    "ALTER TABLE receipts ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;
     UPDATE receipts SET expires_at = CAST(strftime('%s', 'now') AS INTEGER) + 604800;
     CREATE INDEX receipts_by_expiry ON receipts(expires_at);",
    // 8: crypto-erase: each message's content is sealed under its own data
    // key, stored here wrapped by the mailbox key. Rows from before have
    // none and are re-sealed by the mailbox at start.
    "ALTER TABLE messages ADD COLUMN wrapped_key BLOB;",
    // 9: metadata retention: `last_seen` keeps the day only (receipts
    // expire with their message since 7).
    "UPDATE devices SET last_seen = last_seen - (last_seen % 86400) WHERE last_seen IS NOT NULL;",
    // 10: browsers signed in to the family web app are registry entries
    // too; each holds a session secret of which only the hash is kept.
    // `last_used` (the hour) is for idle expiry.
    "ALTER TABLE devices ADD COLUMN kind TEXT NOT NULL DEFAULT 'device'
        CHECK (kind IN ('device', 'browser'));
     CREATE TABLE browser_sessions (
        device_id TEXT PRIMARY KEY NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        secret_sha256 BLOB NOT NULL UNIQUE,
        last_used INTEGER NOT NULL
     ) STRICT;",
    // 11: the bridge to another broker: the devices a parent let it carry.
    // Revoking a device deletes its row; removing the device cascades.
    "CREATE TABLE bridged_devices (
        device_id TEXT PRIMARY KEY NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        enabled_at INTEGER NOT NULL
     ) STRICT;",
];

/// A certificate the registry accepts, with the device it names.
#[derive(Debug, Clone)]
pub struct ActiveCertificate {
    /// SHA-256 of the certificate.
    pub sha256: [u8; 32],
    /// The device.
    pub device: DeviceId,
    /// Its owner.
    pub owner: Owner,
    /// Its role for the policy.
    pub role: DeviceRole,
    /// Its grants (service devices).
    pub grants: Vec<Grant>,
}

/// A new device and its first certificate.
#[derive(Debug, Clone)]
pub struct NewDevice<'a> {
    /// The id.
    pub id: DeviceId,
    /// Its owner.
    pub owner: &'a Owner,
    /// A label for people.
    pub label: &'a Label,
    /// Its certificate's fingerprint.
    pub sha256: [u8; 32],
    /// Its certificate's serial, hex.
    pub serial_hex: &'a str,
    /// Its certificate's end of validity, Unix seconds.
    pub not_after: i64,
}

/// The open database.
#[derive(Debug)]
pub struct Store {
    /// Reached only through [`Store::conn`], which checks it is not used
    /// on an async worker thread.
    db: Connection,
    /// Rows with content or metadata about people were deleted since the
    /// WAL was last truncated: their old images may still be in it.
    erased: bool,
}

impl Store {
    /// The connection. Every SQLite call goes through here (or through
    /// [`Store::conn_mut`]), so debug builds catch one made on an async
    /// worker thread instead of through [`StoreHandle::with`].
    fn conn(&self) -> &Connection {
        handle::check_off_runtime();
        &self.db
    }

    fn conn_mut(&mut self) -> &mut Connection {
        handle::check_off_runtime();
        &mut self.db
    }

    /// Opens (creating 0600 if needed) and migrates the database.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        handle::check_off_runtime();
        let path = dir.join(DB_FILE);
        // Create the file ourselves so it is 0600 from its first byte;
        // SQLite gives its -wal and -shm files the database file's mode.
        let file_err = |source| StoreError::File {
            path: path.clone(),
            source,
        };
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(file_err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(file_err)?;
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Deleted rows (delivered messages, purged devices) are overwritten,
        // not left in free pages.
        conn.pragma_update(None, "secure_delete", "ON")?;
        // Whenever the WAL restarts it is cut back to nothing, so frames of
        // deleted rows do not linger at its end.
        conn.pragma_update(None, "journal_size_limit", 0)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Room for every statement the store caches (about 30; rusqlite's
        // default is 16, so the mailbox's per-message statements and its
        // twice-a-second expiry evicted each other and were parsed again).
        conn.set_prepared_statement_cache_capacity(64);
        let mut store = Store {
            db: conn,
            erased: true,
        };
        store.migrate()?;
        // A crash or a pulled plug can leave deleted rows' old images in the
        // WAL: fold it into the main file (where `secure_delete` zeroed
        // them) and truncate it before serving anything.
        store.settle()?;
        Ok(store)
    }

    /// Runs `work` in one transaction, so everything it writes becomes
    /// durable together with one sync at the commit (group commit). Store
    /// methods called inside nest as savepoints: one that fails undoes only
    /// its own writes. If the commit fails, nothing `work` wrote is kept.
    pub fn batch<T>(&mut self, work: impl FnOnce(&mut Store) -> T) -> Result<T, StoreError> {
        self.conn().execute_batch("BEGIN IMMEDIATE")?;
        let out = work(self);
        if self.conn().is_autocommit() {
            // SQLite rolled the transaction back on its own (a full disk,
            // an I/O error): what `work` wrote after that committed piece
            // by piece, but the batch as a whole did not happen.
            return Err(StoreError::BatchLost);
        }
        if let Err(e) = self.conn().execute_batch("COMMIT") {
            let _ = self.conn().execute_batch("ROLLBACK");
            return Err(e.into());
        }
        self.settle()?;
        Ok(out)
    }

    /// Notes that rows were deleted whose old images must not survive in
    /// the WAL; [`Store::settle`] truncates it after the commit.
    pub(crate) fn mark_erased(&mut self) {
        self.erased = true;
    }

    /// After deletions are committed: checkpoints the WAL into the main
    /// file (whose freed space `secure_delete` zeroes) and truncates it to
    /// nothing, so no frame of a deleted row is left to read. Inside a
    /// transaction it waits for the outermost commit.
    pub fn settle(&mut self) -> Result<(), StoreError> {
        if !self.erased || !self.conn().is_autocommit() {
            return Ok(());
        }
        let (busy, _, _): (i64, i64, i64) =
            self.conn()
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?;
        if busy == 0 {
            self.erased = false;
        } else {
            // Another connection (a backup in progress) holds a snapshot;
            // the next settle tries again.
            tracing::debug!("WAL checkpoint busy; retried after the next deletion");
        }
        Ok(())
    }

    /// Whether a [`Store::batch`] in progress lost its transaction (SQLite
    /// rolled it back after an error); the batch should stop.
    pub fn batch_lost(&self) -> bool {
        self.conn().is_autocommit()
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn()
            .pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version > MIGRATIONS.len() as i64 {
            return Err(StoreError::TooNew(version));
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn_mut().transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (index + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Adds a member.
    pub fn add_member(&self, name: &MemberName, role: Role) -> Result<(), StoreError> {
        let inserted = self.conn().execute(
            "INSERT INTO members (name, role, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO NOTHING",
            params![name.as_str(), role.as_str(), crate::unix_now()],
        )?;
        if inserted == 0 {
            return Err(StoreError::MemberExists(name.to_string()));
        }
        Ok(())
    }

    /// Every member, by nickname.
    pub fn members(&self) -> Result<Vec<MemberInfo>, StoreError> {
        let mut stmt = self
            .conn()
            .prepare("SELECT name, role FROM members ORDER BY name")?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        rows.map(|row| {
            let (name, role) = row?;
            Ok(MemberInfo {
                name: parse(&name)?,
                role: role
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("{e}")))?,
            })
        })
        .collect()
    }

    /// A member's role, if the member exists.
    pub fn member_role(&self, name: &MemberName) -> Result<Option<Role>, StoreError> {
        let role: Option<String> = self
            .conn()
            .prepare_cached("SELECT role FROM members WHERE name = ?1")?
            .query_row(params![name.as_str()], |row| row.get(0))
            .optional()?;
        role.map(|r| r.parse().map_err(|e| StoreError::Corrupt(format!("{e}"))))
            .transpose()
    }

    /// Registers a device with its first certificate, in one transaction.
    pub fn add_device(&mut self, device: &NewDevice<'_>) -> Result<(), StoreError> {
        let member = match device.owner {
            Owner::Member(name) => {
                if self.member_role(name)?.is_none() {
                    return Err(StoreError::NoSuchMember(name.to_string()));
                }
                Some(name.as_str())
            }
            Owner::Service => None,
        };
        let now = crate::unix_now();
        let tx = self.conn_mut().transaction()?;
        tx.execute(
            "INSERT INTO devices (id, member, label, status, created_at) VALUES (?1, ?2, ?3, 'active', ?4)",
            params![device.id.as_str(), member, device.label.as_str(), now],
        )?;
        tx.execute(
            "INSERT INTO certificates (sha256, device_id, serial, status, issued_at, not_after)
             VALUES (?1, ?2, ?3, 'active', ?4, ?5)",
            params![
                hex::encode(device.sha256),
                device.id.as_str(),
                device.serial_hex,
                now,
                device.not_after
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every certificate the edge may accept now: active certificates of
    /// active devices, with each device's role and grants.
    pub fn active_certificates(&self) -> Result<Vec<ActiveCertificate>, StoreError> {
        let mut stmt = self.conn().prepare(
            "SELECT c.sha256, d.id, d.member, m.role FROM certificates c
             JOIN devices d ON d.id = c.device_id
             LEFT JOIN members m ON m.name = d.member
             WHERE c.status = 'active' AND d.status = 'active'",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<String>>(2)?,
                row.get::<_, Option<String>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (sha, id, member, role) = row?;
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(&sha, &mut sha256)
                .map_err(|_| StoreError::Corrupt(format!("fingerprint {sha:?}")))?;
            let device: DeviceId = parse(&id)?;
            let role = match role.as_deref() {
                None => DeviceRole::Service,
                Some("parent") => DeviceRole::Parent,
                Some("child") => DeviceRole::Child,
                Some(other) => return Err(StoreError::Corrupt(format!("role {other:?}"))),
            };
            let grants = if role == DeviceRole::Service {
                self.grants(&device)?
            } else {
                Vec::new()
            };
            out.push(ActiveCertificate {
                sha256,
                device,
                owner: owner(member)?,
                role,
                grants,
            });
        }
        Ok(out)
    }

    /// Adds a renewed certificate to an active device and schedules its
    /// other active certificates to retire at `retire_at`.
    pub fn add_renewed_certificate(
        &self,
        device: &DeviceId,
        presented: &[u8; 32],
        sha256: [u8; 32],
        serial_hex: &str,
        not_after: i64,
        retire_at: i64,
    ) -> Result<(), StoreError> {
        let tx = self.conn().unchecked_transaction()?;
        let active: Option<String> = tx
            .query_row(
                "SELECT d.status FROM devices d JOIN certificates c ON c.device_id = d.id
                 WHERE d.id = ?1 AND c.sha256 = ?2 AND c.status = 'active'",
                params![device.as_str(), hex::encode(presented)],
                |row| row.get(0),
            )
            .optional()?;
        if active.as_deref() != Some("active") {
            return Err(StoreError::NoSuchDevice(device.to_string()));
        }
        // At most three live certificates per device: renewing again and
        // again cannot grow the registry (a retry after a lost answer fits).
        let live: i64 = tx.query_row(
            "SELECT count(*) FROM certificates WHERE device_id = ?1 AND status = 'active'",
            params![device.as_str()],
            |row| row.get(0),
        )?;
        if live >= 3 {
            return Err(StoreError::RenewalPending(device.to_string()));
        }
        tx.execute(
            "UPDATE certificates SET retire_at = ?2
             WHERE device_id = ?1 AND status = 'active' AND retire_at IS NULL",
            params![device.as_str(), retire_at],
        )?;
        tx.execute(
            "INSERT INTO certificates (sha256, device_id, serial, status, issued_at, not_after)
             VALUES (?1, ?2, ?3, 'active', ?4, ?5)",
            params![
                hex::encode(sha256),
                device.as_str(),
                serial_hex,
                crate::unix_now(),
                not_after
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Retires, at once, a device's certificates that wait to retire, if
    /// `keep` is their successor (not itself waiting to retire). Returns
    /// the retired fingerprints.
    pub fn retire_predecessors(
        &self,
        device: &DeviceId,
        keep: &[u8; 32],
    ) -> Result<Vec<[u8; 32]>, StoreError> {
        self.retire(
            "UPDATE certificates SET status = 'superseded'
             WHERE device_id = ?1 AND sha256 != ?2 AND status = 'active' AND retire_at IS NOT NULL
               AND EXISTS (SELECT 1 FROM certificates
                           WHERE sha256 = ?2 AND device_id = ?1 AND retire_at IS NULL)
             RETURNING sha256",
            params![device.as_str(), hex::encode(keep)],
        )
    }

    /// Retires every certificate whose grace ended before `now`.
    pub fn retire_due(&self, now: i64) -> Result<Vec<[u8; 32]>, StoreError> {
        self.retire(
            "UPDATE certificates SET status = 'superseded'
             WHERE status = 'active' AND retire_at IS NOT NULL AND retire_at <= ?1
             RETURNING sha256",
            params![now],
        )
    }

    fn retire(&self, sql: &str, args: impl rusqlite::Params) -> Result<Vec<[u8; 32]>, StoreError> {
        let mut stmt = self.conn().prepare(sql)?;
        let rows = stmt.query_map(args, |row| row.get::<_, String>(0))?;
        rows.map(|row| {
            let sha = row?;
            let mut out = [0u8; 32];
            hex::decode_to_slice(&sha, &mut out)
                .map_err(|_| StoreError::Corrupt(format!("fingerprint {sha:?}")))?;
            Ok(out)
        })
        .collect()
    }

    /// Fingerprints of revoked certificates.
    pub fn revoked_fingerprints(&self) -> Result<Vec<[u8; 32]>, StoreError> {
        let mut stmt = self
            .conn()
            .prepare("SELECT sha256 FROM certificates WHERE status IN ('revoked', 'superseded')")?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
        rows.map(|row| {
            let sha = row?;
            let mut out = [0u8; 32];
            hex::decode_to_slice(&sha, &mut out)
                .map_err(|_| StoreError::Corrupt(format!("fingerprint {sha:?}")))?;
            Ok(out)
        })
        .collect()
    }

    /// A device's grants.
    pub fn grants(&self, device: &DeviceId) -> Result<Vec<Grant>, StoreError> {
        let mut stmt = self.conn().prepare(
            "SELECT filter, direction FROM grants WHERE device_id = ?1 ORDER BY filter, direction",
        )?;
        let rows = stmt.query_map(params![device.as_str()], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        rows.map(|row| {
            let (filter, direction) = row?;
            let direction = match direction.as_str() {
                "publish" => Direction::Publish,
                _ => Direction::Subscribe,
            };
            Grant::new(&filter, direction)
                .map_err(|e| StoreError::Corrupt(format!("grant {filter:?}: {e}")))
        })
        .collect()
    }

    /// Adds a grant to a service device; returns whether it was new.
    pub fn add_grant(&self, device: &DeviceId, grant: &Grant) -> Result<bool, StoreError> {
        self.require_service(device)?;
        let n = self.conn().execute(
            "INSERT INTO grants (device_id, filter, direction) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
            params![
                device.as_str(),
                grant.filter,
                direction_str(grant.direction)
            ],
        )?;
        Ok(n > 0)
    }

    /// Removes a grant; returns whether it existed.
    pub fn remove_grant(&self, device: &DeviceId, grant: &Grant) -> Result<bool, StoreError> {
        self.require_service(device)?;
        let n = self.conn().execute(
            "DELETE FROM grants WHERE device_id = ?1 AND filter = ?2 AND direction = ?3",
            params![
                device.as_str(),
                grant.filter,
                direction_str(grant.direction)
            ],
        )?;
        Ok(n > 0)
    }

    fn require_service(&self, device: &DeviceId) -> Result<(), StoreError> {
        let member: Option<Option<String>> = self
            .conn()
            .query_row(
                "SELECT member FROM devices WHERE id = ?1",
                params![device.as_str()],
                |row| row.get(0),
            )
            .optional()?;
        match member {
            None => Err(StoreError::NoSuchDevice(device.to_string())),
            Some(Some(_)) => Err(StoreError::NotAService(device.to_string())),
            Some(None) => Ok(()),
        }
    }

    /// Marks a device and all its certificates revoked. Revoking twice is
    /// not an error.
    pub fn revoke_device(&mut self, device: &DeviceId) -> Result<(), StoreError> {
        let tx = self.conn_mut().transaction()?;
        let n = tx.execute(
            "UPDATE devices SET status = 'revoked' WHERE id = ?1",
            params![device.as_str()],
        )?;
        if n == 0 {
            return Err(StoreError::NoSuchDevice(device.to_string()));
        }
        tx.execute(
            "UPDATE certificates SET status = 'revoked' WHERE device_id = ?1",
            params![device.as_str()],
        )?;
        // A revoked browser's session secret stops working with its hash.
        tx.execute(
            "DELETE FROM browser_sessions WHERE device_id = ?1",
            params![device.as_str()],
        )?;
        // A revoked device is no longer the household's to share.
        tx.execute(
            "DELETE FROM bridged_devices WHERE device_id = ?1",
            params![device.as_str()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Lets the bridge carry an active device; returns whether it was new.
    pub fn bridge_enable(&self, device: &DeviceId, now: i64) -> Result<bool, StoreError> {
        let status: Option<String> = self
            .conn()
            .query_row(
                "SELECT status FROM devices WHERE id = ?1",
                params![device.as_str()],
                |row| row.get(0),
            )
            .optional()?;
        if status.as_deref() != Some("active") {
            return Err(StoreError::NoSuchDevice(device.to_string()));
        }
        let n = self.conn().execute(
            "INSERT INTO bridged_devices (device_id, enabled_at) VALUES (?1, ?2)
             ON CONFLICT DO NOTHING",
            params![device.as_str(), now],
        )?;
        Ok(n > 0)
    }

    /// Stops bridging a device; returns whether it was bridged.
    pub fn bridge_disable(&self, device: &DeviceId) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "DELETE FROM bridged_devices WHERE device_id = ?1",
            params![device.as_str()],
        )?;
        Ok(n > 0)
    }

    /// The devices the bridge may carry, by id.
    pub fn bridged_devices(&self) -> Result<Vec<DeviceId>, StoreError> {
        let mut stmt = self
            .conn()
            .prepare("SELECT device_id FROM bridged_devices ORDER BY device_id")?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
        rows.map(|row| {
            let id = row?;
            id.parse()
                .map_err(|_| StoreError::Corrupt(format!("bridged device id {id:?}")))
        })
        .collect()
    }

    /// Erases a device: revokes its certificates (keeping only their
    /// fingerprints) and deletes everything else about it — its row and
    /// label, grants, messages, receipts, references and audit rows (see
    /// `store/erase.rs`). The WAL is truncated after the commit.
    pub fn remove_device(&mut self, device: &DeviceId) -> Result<(), StoreError> {
        let tx = self.conn_mut().transaction()?;
        let exists: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM devices WHERE id = ?1)",
            params![device.as_str()],
            |row| row.get(0),
        )?;
        if !exists {
            return Err(StoreError::NoSuchDevice(device.to_string()));
        }
        erase::erase(&tx, &[device.as_str().to_owned()], None)?;
        tx.commit()?;
        self.mark_erased();
        self.settle()?;
        Ok(())
    }

    /// Every device of a member, whatever its status.
    pub fn member_device_ids(&self, name: &MemberName) -> Result<Vec<DeviceId>, StoreError> {
        if self.member_role(name)?.is_none() {
            return Err(StoreError::NoSuchMember(name.to_string()));
        }
        let mut stmt = self
            .conn()
            .prepare("SELECT id FROM devices WHERE member = ?1 ORDER BY created_at")?;
        let rows = stmt.query_map(params![name.as_str()], |row| row.get::<_, String>(0))?;
        rows.map(|row| parse(&row?)).collect()
    }

    /// Erases a member and all their devices as [`Store::remove_device`]
    /// does, and their contact rules; returns the devices.
    pub fn remove_member(&mut self, name: &MemberName) -> Result<Vec<DeviceId>, StoreError> {
        let tx = self.conn_mut().transaction()?;
        let exists: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM members WHERE name = ?1)",
            params![name.as_str()],
            |row| row.get(0),
        )?;
        if !exists {
            return Err(StoreError::NoSuchMember(name.to_string()));
        }
        let devices: Vec<String> = {
            let mut stmt = tx.prepare("SELECT id FROM devices WHERE member = ?1")?;
            let rows = stmt.query_map(params![name.as_str()], |row| row.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        erase::erase(&tx, &devices, Some(name.as_str()))?;
        tx.commit()?;
        self.mark_erased();
        self.settle()?;
        devices.iter().map(|id| parse(id)).collect()
    }

    /// Appends audit entries in one transaction.
    pub fn append_audit(&mut self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        let tx = self.conn_mut().transaction()?;
        {
            // A device's `last_seen` is its latest connect, written with
            // the audit batch rather than with a sync of its own on every
            // connection.
            // Day-granular: when a child's toy is used is not the hub's to keep.
            let mut seen = tx.prepare_cached("UPDATE devices SET last_seen = ?2 WHERE id = ?1")?;
            for e in entries.iter().filter(|e| e.event == "connect") {
                if let Some(device) = &e.device {
                    seen.execute(params![device.as_str(), day(e.at)])?;
                }
            }
            let mut stmt = tx.prepare_cached(
                "INSERT INTO audit (at, device, event, action, topic, reason, peer)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for e in entries {
                // Topics keep prefix and class only, peers only for
                // refusals (store/minimise.rs): what callers pass beyond
                // that never reaches the disk.
                stmt.execute(params![
                    e.at,
                    e.device.as_ref().map(|d| d.as_str().to_owned()),
                    e.event,
                    e.action,
                    e.topic.as_deref().map(audit_topic),
                    e.reason,
                    minimise::audit_peer(&e.event, e.peer.as_deref())
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Audit entries, oldest first, filtered.
    pub fn audit(
        &self,
        device: Option<&DeviceId>,
        since: Option<i64>,
        after_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT id, at, device, event, action, topic, reason, peer FROM audit
             WHERE (?1 IS NULL OR device = ?1) AND (?2 IS NULL OR at >= ?2) AND (?3 IS NULL OR id > ?3)
             ORDER BY id DESC LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![
                device.map(|d| d.as_str().to_owned()),
                since,
                after_id,
                limit
            ],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, Option<String>>(4)?,
                    row.get::<_, Option<String>>(5)?,
                    row.get::<_, Option<String>>(6)?,
                    row.get::<_, Option<String>>(7)?,
                ))
            },
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at, device, event, action, topic, reason, peer) = row?;
            out.push(AuditEntry {
                id,
                at,
                device: device.map(|d| parse(&d)).transpose()?,
                event,
                action,
                topic,
                reason,
                peer,
            });
        }
        out.reverse();
        Ok(out)
    }

    /// Deletes audit entries older than `before` (Unix seconds), and the
    /// `last_seen` of devices not seen since then.
    pub fn prune_audit(&mut self, before: i64) -> Result<usize, StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM audit WHERE at < ?1", params![before])?;
        self.conn().execute(
            "UPDATE devices SET last_seen = NULL WHERE last_seen < ?1",
            params![day(before)],
        )?;
        if n > 0 {
            self.mark_erased();
            self.settle()?;
        }
        Ok(n)
    }

    /// Every device, oldest first, with its newest active certificate.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>, StoreError> {
        let mut stmt = self.conn().prepare(
            "SELECT d.id, d.member, d.label, d.status, d.created_at, d.last_seen,
                    (SELECT c.sha256 FROM certificates c WHERE c.device_id = d.id
                     ORDER BY c.status = 'active' DESC, c.issued_at DESC LIMIT 1),
                    (SELECT c.not_after FROM certificates c WHERE c.device_id = d.id
                     ORDER BY c.status = 'active' DESC, c.issued_at DESC LIMIT 1),
                    d.kind
             FROM devices d ORDER BY d.created_at, d.id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, Option<String>>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, Option<i64>>(5)?,
                row.get::<_, Option<String>>(6)?,
                row.get::<_, Option<i64>>(7)?,
                row.get::<_, String>(8)?,
            ))
        })?;
        rows.map(|row| {
            let (id, member, label, status, created_at, last_seen, sha, not_after, kind) = row?;
            Ok(DeviceInfo {
                id: parse(&id)?,
                owner: owner(member)?,
                label: parse(&label)?,
                status: match status.as_str() {
                    "active" => DeviceStatus::Active,
                    _ => DeviceStatus::Revoked,
                },
                cert_sha256: sha.unwrap_or_default(),
                created_at,
                last_seen,
                cert_not_after: not_after,
                kind: match kind.as_str() {
                    "browser" => DeviceKind::Browser,
                    _ => DeviceKind::Device,
                },
            })
        })
        .collect()
    }
}

/// The start of the UTC day of a Unix time.
pub(crate) fn day(at: i64) -> i64 {
    at - at.rem_euclid(86_400)
}

fn parse<T: std::str::FromStr>(s: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e: T::Err| StoreError::Corrupt(format!("{s:?}: {e}")))
}

fn direction_str(direction: Direction) -> &'static str {
    match direction {
        Direction::Publish => "publish",
        Direction::Subscribe => "subscribe",
    }
}

fn owner(member: Option<String>) -> Result<Owner, StoreError> {
    Ok(match member {
        Some(name) => Owner::Member(parse(&name)?),
        None => Owner::Service,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_keeps_data_across_opens() {
        let tmp = tempfile::tempdir().unwrap();
        let ada: MemberName = "Ada".parse().unwrap();
        {
            let store = Store::open(tmp.path()).unwrap();
            store.add_member(&ada, Role::Child).unwrap();
        }
        let store = Store::open(tmp.path()).unwrap();
        assert_eq!(store.member_role(&ada).unwrap(), Some(Role::Child));
        assert!(matches!(
            store.add_member(&ada, Role::Parent),
            Err(StoreError::MemberExists(_))
        ));
        let mode = std::fs::metadata(tmp.path().join(DB_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "database readable by others: {mode:o}");
    }

    #[test]
    fn a_device_needs_an_existing_member() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(tmp.path()).unwrap();
        let owner = Owner::Member("Nobody".parse().unwrap());
        let label = "toy".parse().unwrap();
        let err = store
            .add_device(&NewDevice {
                id: DeviceId::from_entropy([1; 16]),
                owner: &owner,
                label: &label,
                sha256: [9; 32],
                serial_hex: "01",
                not_after: 0,
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::NoSuchMember(_)));
        assert!(store.active_certificates().unwrap().is_empty());
    }

    #[test]
    fn old_audit_entries_are_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(tmp.path()).unwrap();
        let entry = |at| AuditEntry {
            id: 0,
            at,
            device: None,
            event: "admin".into(),
            action: None,
            topic: None,
            reason: None,
            peer: None,
        };
        store
            .append_audit(&[entry(100), entry(200), entry(300)])
            .unwrap();
        assert_eq!(store.prune_audit(250).unwrap(), 2);
        let left = store.audit(None, None, None, 10).unwrap();
        assert_eq!(left.iter().map(|e| e.at).collect::<Vec<_>>(), vec![300]);
    }

    #[test]
    fn every_table_is_in_the_privacy_document() {
        // docs/PRIVACY.md tells a family what each table holds, why and
        // for how long: a table added without a row there fails here.
        const PRIVACY: &str = include_str!("../../docs/PRIVACY.md");
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let mut stmt = store
            .conn()
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .unwrap();
        let tables: Vec<String> = stmt
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(tables.len() >= 10, "{tables:?}");
        for table in tables {
            let row = format!("| `{table}` |");
            assert!(
                PRIVACY.lines().any(|l| l.starts_with(&row)),
                "table {table} has no row in docs/PRIVACY.md's table list"
            );
        }
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        drop(Store::open(tmp.path()).unwrap());
        let conn = Connection::open(tmp.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(matches!(
            Store::open(tmp.path()),
            Err(StoreError::TooNew(99))
        ));
    }
}
