//! Complete erasure of devices and members: every row that mentions them
//! goes, except the certificate fingerprints revocation needs (kept with
//! nothing else), and the other side of their pending mail hears it will
//! not be delivered.

use hearth_protocol::mailbox::{self, Inbox, Receipt, ReceiptStatus};
use rusqlite::{params, Transaction};

use super::StoreError;

/// Erases `devices` (ids) and, if given, the member `member` (a nickname)
/// inside `tx`. What is deleted, table by table:
///
/// - messages the devices sent (pending ones are not delivered), and their
///   deliveries; their deliveries as recipients, and any message left with
///   no recipient device, whose sender (if not erased) gets an `expired`
///   receipt;
/// - receipts waiting for them, and receipts for others that name them;
/// - their sent references; grants (by cascade); the device rows with
///   labels and `last_seen`;
/// - certificate rows keep only the fingerprint and `revoked` (so the
///   certificate stays refused); device id, serial and dates are blanked;
/// - audit rows of the devices, and any whose text names a device or the
///   member (deleted, not pseudonymised: nothing of them remains to link);
/// - the member row and its contact rules (by cascade).
pub(super) fn erase(
    tx: &Transaction<'_>,
    devices: &[String],
    member: Option<&str>,
) -> Result<(), StoreError> {
    for id in devices {
        tx.execute("DELETE FROM messages WHERE sender = ?1", params![id])?;
        tx.execute("DELETE FROM sent_refs WHERE sender = ?1", params![id])?;
        tx.execute("DELETE FROM deliveries WHERE device_id = ?1", params![id])?;
        tx.execute("DELETE FROM receipts WHERE device_id = ?1", params![id])?;
        tx.execute(
            "DELETE FROM receipts WHERE instr(envelope, ?1) > 0",
            params![id],
        )?;
        tx.execute(
            "UPDATE certificates SET status = 'revoked', device_id = '', serial = '',
                    issued_at = 0, not_after = 0, retire_at = NULL
             WHERE device_id = ?1",
            params![id],
        )?;
        tx.execute(
            "DELETE FROM audit WHERE device = ?1 OR instr(coalesce(topic, ''), ?1) > 0
                OR instr(coalesce(reason, ''), ?1) > 0 OR instr(coalesce(action, ''), ?1) > 0",
            params![id],
        )?;
        tx.execute("DELETE FROM devices WHERE id = ?1", params![id])?;
    }
    // Messages no device will ever receive now: the sender hears so.
    let orphans: Vec<(String, String, String, i64)> = {
        let mut stmt = tx.prepare(
            "DELETE FROM messages WHERE id NOT IN (SELECT message_id FROM deliveries)
             RETURNING id, sender, ref, expires_at",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    for (id, sender, reference, expires_at) in orphans {
        let receipt = Inbox::Receipt(Receipt {
            v: mailbox::VERSION,
            reference,
            id: Some(id),
            status: ReceiptStatus::Expired,
            device: None,
            reason: None,
        });
        let text = serde_json::to_string(&receipt)
            .map_err(|e| StoreError::Corrupt(format!("receipt: {e}")))?;
        tx.execute(
            "INSERT INTO receipts (device_id, envelope, expires_at) VALUES (?1, ?2, ?3)",
            params![sender, text, expires_at],
        )?;
    }
    if let Some(name) = member {
        tx.execute("DELETE FROM messages WHERE recipient = ?1", params![name])?;
        tx.execute(
            "DELETE FROM audit WHERE instr(coalesce(reason, ''), ?1) > 0
                OR instr(coalesce(action, ''), ?1) > 0 OR instr(coalesce(topic, ''), ?1) > 0",
            params![name],
        )?;
        tx.execute(
            "DELETE FROM contacts WHERE from_member = ?1 OR to_member = ?1",
            params![name],
        )?;
        tx.execute("DELETE FROM members WHERE name = ?1", params![name])?;
    }
    Ok(())
}
