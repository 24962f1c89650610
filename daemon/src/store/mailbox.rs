//! The mailbox's tables: sealed messages, one delivery row per recipient
//! device, sent references (for de-duplication, no content), receipts
//! waiting for their sender, and the household's contact rules.

use hearth_protocol::admin::{ContactRule, MailboxPending};
use hearth_protocol::{DeviceId, MemberName};
use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};

/// A message to store.
#[derive(Debug)]
pub struct NewMessage<'a> {
    /// Its id.
    pub id: &'a str,
    /// The sending device.
    pub sender: &'a DeviceId,
    /// The sender's reference.
    pub reference: &'a str,
    /// The `to` it was addressed to (member or device), bound into the seal.
    pub recipient: &'a str,
    /// Nonce and ciphertext of the content, under the message's data key.
    pub sealed: &'a [u8],
    /// The message's data key, wrapped by the mailbox key.
    pub wrapped_key: &'a [u8],
    /// Unix seconds.
    pub sent_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Every device it goes to.
    pub devices: &'a [DeviceId],
}

/// A pending delivery, with the sealed content.
#[derive(Debug)]
pub struct PendingDelivery {
    /// The message id.
    pub id: String,
    /// The sending device.
    pub sender: DeviceId,
    /// As addressed.
    pub recipient: String,
    /// Nonce and ciphertext.
    pub sealed: Vec<u8>,
    /// The data key wrapped by the mailbox key; `None` for a row sealed
    /// before crypto-erase, directly under the mailbox key.
    pub wrapped_key: Option<Vec<u8>>,
    /// Unix seconds.
    pub sent_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
}

/// A message that expired undelivered.
#[derive(Debug)]
pub struct ExpiredMessage {
    /// Its id.
    pub id: String,
    /// The sending device.
    pub sender: DeviceId,
    /// The sender's reference.
    pub reference: String,
}

fn parse_device(text: String) -> Result<DeviceId, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("device id {text:?}")))
}

impl Store {
    /// The id already stored for `(sender, reference)`, if any.
    pub fn sent_reference(
        &self,
        sender: &DeviceId,
        reference: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .prepare_cached("SELECT message_id FROM sent_refs WHERE sender = ?1 AND ref = ?2")?
            .query_row(params![sender.as_str(), reference], |row| row.get(0))
            .optional()?)
    }

    /// Deliveries pending for a device.
    pub fn pending_count(&self, device: &DeviceId) -> Result<u64, StoreError> {
        let count: i64 = self
            .conn()
            .prepare_cached("SELECT count(*) FROM deliveries WHERE device_id = ?1")?
            .query_row(params![device.as_str()], |row| row.get(0))?;
        Ok(count.max(0) as u64)
    }

    /// Bytes of the sealed messages waiting for a device (quota).
    pub fn pending_bytes(&self, device: &DeviceId) -> Result<u64, StoreError> {
        let bytes: i64 = self
            .conn()
            .prepare_cached(
                "SELECT COALESCE(SUM(length(m.sealed)), 0) FROM deliveries d
                 JOIN messages m ON m.id = d.message_id WHERE d.device_id = ?1",
            )?
            .query_row(params![device.as_str()], |row| row.get(0))?;
        Ok(bytes.max(0) as u64)
    }

    /// Bytes of every sealed message stored (quota).
    pub fn stored_bytes(&self) -> Result<u64, StoreError> {
        let bytes: i64 = self
            .conn()
            .prepare_cached("SELECT COALESCE(SUM(length(sealed)), 0) FROM messages")?
            .query_row([], |row| row.get(0))?;
        Ok(bytes.max(0) as u64)
    }

    /// Stores a message and its deliveries, all or nothing: committed with
    /// full sync before this returns, or with the [`Store::batch`] it is in.
    pub fn store_message(&mut self, message: &NewMessage<'_>) -> Result<(), StoreError> {
        let tx = self.conn_mut().savepoint()?;
        tx.prepare_cached(
            "INSERT INTO messages (id, sender, ref, recipient, sealed, wrapped_key, sent_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            message.id,
            message.sender.as_str(),
            message.reference,
            message.recipient,
            message.sealed,
            message.wrapped_key,
            message.sent_at,
            message.expires_at
        ])?;
        for device in message.devices {
            tx.prepare_cached("INSERT INTO deliveries (message_id, device_id) VALUES (?1, ?2)")?
                .execute(params![message.id, device.as_str()])?;
        }
        tx.prepare_cached(
            "INSERT INTO sent_refs (sender, ref, message_id, expires_at) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            message.sender.as_str(),
            message.reference,
            message.id,
            message.expires_at
        ])?;
        tx.commit()?;
        Ok(())
    }

    /// Ids of a device's pending deliveries, oldest first (in order per
    /// sender). No content: the caller fetches only what it will send.
    pub fn pending_ids(&self, device: &DeviceId) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn()
            .prepare("SELECT message_id FROM deliveries WHERE device_id = ?1 ORDER BY seq")?;
        let rows = stmt.query_map(params![device.as_str()], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A device's pending deliveries, oldest first, each with its sealed
    /// size: the mailbox plans a round against its hub-wide byte bound
    /// before it reads any content.
    pub fn pending_sizes(&self, device: &DeviceId) -> Result<Vec<(String, usize)>, StoreError> {
        let mut stmt = self.conn().prepare(
            "SELECT d.message_id, length(m.sealed) FROM deliveries d
             JOIN messages m ON m.id = d.message_id
             WHERE d.device_id = ?1 ORDER BY d.seq",
        )?;
        let rows = stmt.query_map(params![device.as_str()], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?;
        rows.map(|r| {
            r.map(|(id, n)| (id, usize::try_from(n).unwrap_or(usize::MAX)))
                .map_err(StoreError::from)
        })
        .collect()
    }

    /// One stored message, sealed.
    pub fn message(&self, id: &str) -> Result<Option<PendingDelivery>, StoreError> {
        let row = self
            .conn()
            .query_row(
                "SELECT id, sender, recipient, sealed, wrapped_key, sent_at, expires_at
                 FROM messages WHERE id = ?1",
                params![id],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, Vec<u8>>(3)?,
                        row.get::<_, Option<Vec<u8>>>(4)?,
                        row.get::<_, i64>(5)?,
                        row.get::<_, i64>(6)?,
                    ))
                },
            )
            .optional()?;
        row.map(
            |(id, sender, recipient, sealed, wrapped_key, sent_at, expires_at)| {
                Ok(PendingDelivery {
                    id,
                    sender: parse_device(sender)?,
                    recipient,
                    sealed,
                    wrapped_key,
                    sent_at,
                    expires_at,
                })
            },
        )
        .transpose()
    }

    /// How many messages are stored (sealed), delivered or not.
    pub fn message_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT count(*) FROM messages", [], |row| row.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// Ids of messages sealed before crypto-erase (no wrapped key).
    pub fn messages_without_data_key(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn()
            .prepare("SELECT id FROM messages WHERE wrapped_key IS NULL")?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Replaces a message's sealed content and wrapped key (re-sealing an
    /// old row under its own data key). The old ciphertext's space is
    /// zeroed by `secure_delete`; the WAL is truncated after the commit.
    pub fn reseal_message(
        &mut self,
        id: &str,
        sealed: &[u8],
        wrapped_key: &[u8],
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE messages SET sealed = ?2, wrapped_key = ?3 WHERE id = ?1",
            params![id, sealed, wrapped_key],
        )?;
        self.mark_erased();
        Ok(())
    }

    /// Records a device's acknowledgement. Returns the sender and reference
    /// if a pending delivery was closed, and whether the message is gone
    /// (every recipient device acknowledged).
    pub fn acknowledge(
        &mut self,
        device: &DeviceId,
        id: &str,
    ) -> Result<Option<(DeviceId, String, bool)>, StoreError> {
        let tx = self.conn_mut().savepoint()?;
        let closed = tx.execute(
            "DELETE FROM deliveries WHERE message_id = ?1 AND device_id = ?2",
            params![id, device.as_str()],
        )?;
        if closed == 0 {
            return Ok(None);
        }
        let (sender, reference): (String, String) = tx.query_row(
            "SELECT sender, ref FROM messages WHERE id = ?1",
            params![id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let remaining: i64 = tx.query_row(
            "SELECT count(*) FROM deliveries WHERE message_id = ?1",
            params![id],
            |row| row.get(0),
        )?;
        if remaining == 0 {
            tx.execute("DELETE FROM messages WHERE id = ?1", params![id])?;
            // Who sent what is not kept once it is delivered. (A retry
            // after a lost receipt is then stored again: the price.)
            tx.execute("DELETE FROM sent_refs WHERE message_id = ?1", params![id])?;
        }
        tx.commit()?;
        if remaining == 0 {
            // The row held the only copy of the message's data key.
            self.mark_erased();
            self.settle()?;
        }
        Ok(Some((parse_device(sender)?, reference, remaining == 0)))
    }

    /// Deletes messages past their expiry (and deliveries to devices no
    /// longer active, which can never be acknowledged). Returns the expired
    /// messages for their receipts.
    pub fn expire_messages(
        &mut self,
        now: i64,
        sweep_inactive: bool,
    ) -> Result<Vec<ExpiredMessage>, StoreError> {
        let tx = self.conn_mut().transaction()?;
        if sweep_inactive {
            tx.execute(
                "DELETE FROM deliveries WHERE device_id NOT IN
                    (SELECT id FROM devices WHERE status = 'active')",
                [],
            )?;
        }
        let expired = {
            // Cached, as the two below: this runs twice a second.
            let mut stmt = tx.prepare_cached(
                "DELETE FROM messages WHERE expires_at <= ?1
                    OR (?2 AND id NOT IN (SELECT message_id FROM deliveries))
                 RETURNING id, sender, ref, expires_at <= ?1",
            )?;
            let rows = stmt.query_map(params![now, sweep_inactive], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, bool>(3)?,
                ))
            })?;
            let mut expired = Vec::new();
            // Timed out, or no recipient device left (revoked or removed):
            // either way the sender hears it was not delivered.
            for row in rows {
                let (id, sender, reference, _timed_out) = row?;
                expired.push(ExpiredMessage {
                    id,
                    sender: parse_device(sender)?,
                    reference,
                });
            }
            expired
        };
        if sweep_inactive {
            tx.execute(
                "DELETE FROM deliveries WHERE message_id NOT IN (SELECT id FROM messages)",
                [],
            )?;
        }
        tx.prepare_cached("DELETE FROM sent_refs WHERE expires_at <= ?1")?
            .execute(params![now])?;
        let receipts = tx
            .prepare_cached("DELETE FROM receipts WHERE expires_at <= ?1")?
            .execute(params![now])?;
        tx.commit()?;
        if receipts > 0 {
            self.mark_erased();
            self.settle()?;
        }
        if !expired.is_empty() {
            self.mark_erased();
            self.settle()?;
        }
        Ok(expired)
    }

    /// Queues a receipt (JSON, no content) for a sender device, kept until
    /// it is taken or `expires_at`.
    pub fn queue_receipt(
        &self,
        device: &DeviceId,
        envelope: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO receipts (device_id, envelope, expires_at) VALUES (?1, ?2, ?3)",
            params![device.as_str(), envelope, expires_at],
        )?;
        Ok(())
    }

    /// Deletes the queued receipts that expired by `now`; returns how many.
    pub fn expire_receipts(&self, now: i64) -> Result<usize, StoreError> {
        Ok(self
            .conn()
            .prepare_cached("DELETE FROM receipts WHERE expires_at <= ?1")?
            .execute(params![now])?)
    }

    /// Applies the mailbox retention to what is already stored: no
    /// message, reference or receipt is kept longer than `expiry_secs`
    /// from when it was made (from `now` for receipts without a time).
    pub fn apply_retention(&mut self, now: i64, expiry_secs: i64) -> Result<(), StoreError> {
        let tx = self.conn_mut().transaction()?;
        tx.execute(
            "UPDATE messages SET expires_at = sent_at + ?1 WHERE expires_at > sent_at + ?1",
            params![expiry_secs],
        )?;
        tx.execute(
            "UPDATE sent_refs SET expires_at = coalesce(
                (SELECT m.expires_at FROM messages m WHERE m.id = sent_refs.message_id), ?1)
             WHERE expires_at > coalesce(
                (SELECT m.expires_at FROM messages m WHERE m.id = sent_refs.message_id), ?1)",
            params![now + expiry_secs],
        )?;
        tx.execute(
            "UPDATE receipts SET expires_at = ?1 WHERE expires_at IS NULL OR expires_at > ?1",
            params![now + expiry_secs],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Takes the receipts waiting for a device.
    pub fn take_receipts(&mut self, device: &DeviceId) -> Result<Vec<String>, StoreError> {
        let tx = self.conn_mut().savepoint()?;
        let envelopes = {
            let mut stmt =
                tx.prepare("DELETE FROM receipts WHERE device_id = ?1 RETURNING seq, envelope")?;
            let mut rows: Vec<(i64, String)> = stmt
                .query_map(params![device.as_str()], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            rows.sort_by_key(|(seq, _)| *seq);
            rows.into_iter().map(|(_, e)| e).collect()
        };
        tx.commit()?;
        Ok(envelopes)
    }

    /// Active devices of a member.
    pub fn member_devices(&self, member: &MemberName) -> Result<Vec<DeviceId>, StoreError> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT id FROM devices WHERE member = ?1 AND status = 'active' ORDER BY created_at",
        )?;
        let rows = stmt.query_map(params![member.as_str()], |row| row.get::<_, String>(0))?;
        rows.map(|r| parse_device(r?)).collect()
    }

    /// The member owning an active device.
    pub fn device_member(&self, device: &DeviceId) -> Result<Option<MemberName>, StoreError> {
        let name: Option<Option<String>> = self
            .conn()
            .prepare_cached("SELECT member FROM devices WHERE id = ?1 AND status = 'active'")?
            .query_row(params![device.as_str()], |row| row.get(0))
            .optional()?;
        match name.flatten() {
            Some(name) => {
                Ok(Some(name.parse().map_err(|_| {
                    StoreError::Corrupt(format!("member {name:?}"))
                })?))
            }
            None => Ok(None),
        }
    }

    /// Whether a device is not (or no longer) active: revoked or removed,
    /// told apart from a service device for the refusal.
    pub fn device_revoked(&self, device: &DeviceId) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM devices WHERE id = ?1 AND status = 'active'")?
            .query_row(params![device.as_str()], |_| Ok(()))
            .optional()?
            .is_none())
    }

    /// The explicit rule for `from` messaging `to`, if an administrator set one.
    pub fn contact_rule(
        &self,
        from: &MemberName,
        to: &MemberName,
    ) -> Result<Option<bool>, StoreError> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT allowed FROM contacts WHERE from_member = ?1 AND to_member = ?2",
            )?
            .query_row(params![from.as_str(), to.as_str()], |row| row.get(0))
            .optional()?)
    }

    /// Sets the rule both ways between two members.
    pub fn set_contact(
        &mut self,
        a: &MemberName,
        b: &MemberName,
        allowed: bool,
    ) -> Result<(), StoreError> {
        let tx = self.conn_mut().transaction()?;
        for name in [a, b] {
            let exists: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM members WHERE name = ?1)",
                params![name.as_str()],
                |row| row.get(0),
            )?;
            if !exists {
                return Err(StoreError::NoSuchMember(name.to_string()));
            }
        }
        for (from, to) in [(a, b), (b, a)] {
            tx.execute(
                "INSERT INTO contacts (from_member, to_member, allowed) VALUES (?1, ?2, ?3)
                 ON CONFLICT (from_member, to_member) DO UPDATE SET allowed = excluded.allowed",
                params![from.as_str(), to.as_str(), allowed],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every explicit contact rule.
    pub fn contact_rules(&self) -> Result<Vec<ContactRule>, StoreError> {
        let mut stmt = self.conn().prepare(
            "SELECT from_member, to_member, allowed FROM contacts ORDER BY from_member, to_member",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, bool>(2)?,
            ))
        })?;
        rows.map(|row| {
            let (from, to, allowed) = row?;
            let parse = |n: String| {
                n.parse::<MemberName>()
                    .map_err(|_| StoreError::Corrupt(format!("member {n:?}")))
            };
            Ok(ContactRule {
                from: parse(from)?,
                to: parse(to)?,
                allowed,
            })
        })
        .collect()
    }

    /// What is pending per recipient device: count and oldest, no content.
    pub fn mailbox_pending(&self) -> Result<Vec<MailboxPending>, StoreError> {
        let mut stmt = self.conn().prepare(
            "SELECT d.device_id, count(*), min(m.sent_at), min(m.expires_at)
             FROM deliveries d JOIN messages m ON m.id = d.message_id
             GROUP BY d.device_id ORDER BY d.device_id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
            ))
        })?;
        rows.map(|row| {
            let (device, count, oldest, next_expiry) = row?;
            Ok(MailboxPending {
                device: parse_device(device)?,
                count: count.max(0) as u64,
                oldest_sent_at: oldest,
                next_expiry,
            })
        })
        .collect()
    }

    /// Everything the mailbox holds, for the metrics: messages stored,
    /// their sealed bytes, and when the oldest was sent (None if empty).
    pub fn mailbox_totals(&self) -> Result<(u64, u64, Option<i64>), StoreError> {
        let (count, bytes, oldest) = self.conn().query_row(
            "SELECT count(*), coalesce(sum(length(sealed)), 0), min(sent_at) FROM messages",
            [],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, Option<i64>>(2)?,
                ))
            },
        )?;
        Ok((count.max(0) as u64, bytes.max(0) as u64, oldest))
    }

    /// Rows in the audit, for the metrics.
    pub fn audit_rows(&self) -> Result<u64, StoreError> {
        let rows: i64 = self
            .conn()
            .query_row("SELECT count(*) FROM audit", [], |row| row.get(0))?;
        Ok(rows.max(0) as u64)
    }
}
