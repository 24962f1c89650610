//! The SQLite database: schema migrations by `user_version`, household
//! members, devices and the certificates issued to them.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hearth_protocol::admin::{DeviceInfo, DeviceStatus, MemberInfo};
use hearth_protocol::{DeviceId, Label, MemberName, Owner, Role};
use rusqlite::{params, Connection, OptionalExtension};

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
    /// A stored value does not parse: the file was edited or is damaged.
    #[error("database holds an invalid value: {0}")]
    Corrupt(String),
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
    conn: Connection,
}

impl Store {
    /// Opens (creating 0600 if needed) and migrates the database.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
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
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = Store { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version > MIGRATIONS.len() as i64 {
            return Err(StoreError::TooNew(version));
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (index + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Adds a member.
    pub fn add_member(&self, name: &MemberName, role: Role) -> Result<(), StoreError> {
        let inserted = self.conn.execute(
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
            .conn
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
            .conn
            .query_row(
                "SELECT role FROM members WHERE name = ?1",
                params![name.as_str()],
                |row| row.get(0),
            )
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
        let tx = self.conn.transaction()?;
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
    /// active devices.
    pub fn active_certificates(&self) -> Result<Vec<ActiveCertificate>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT c.sha256, d.id, d.member FROM certificates c
             JOIN devices d ON d.id = c.device_id
             WHERE c.status = 'active' AND d.status = 'active'",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<String>>(2)?,
            ))
        })?;
        rows.map(|row| {
            let (sha, id, member) = row?;
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(&sha, &mut sha256)
                .map_err(|_| StoreError::Corrupt(format!("fingerprint {sha:?}")))?;
            Ok(ActiveCertificate {
                sha256,
                device: parse(&id)?,
                owner: owner(member)?,
            })
        })
        .collect()
    }

    /// Every device, oldest first, with its newest active certificate.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT d.id, d.member, d.label, d.status, d.created_at, d.last_seen,
                    (SELECT c.sha256 FROM certificates c WHERE c.device_id = d.id
                     ORDER BY c.status = 'active' DESC, c.issued_at DESC LIMIT 1)
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
            ))
        })?;
        rows.map(|row| {
            let (id, member, label, status, created_at, last_seen, sha) = row?;
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
            })
        })
        .collect()
    }

    /// Records that a device connected now.
    pub fn touch_device(&self, id: &DeviceId) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE devices SET last_seen = ?2 WHERE id = ?1",
            params![id.as_str(), crate::unix_now()],
        )?;
        Ok(())
    }
}

fn parse<T: std::str::FromStr>(s: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e: T::Err| StoreError::Corrupt(format!("{s:?}: {e}")))
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
