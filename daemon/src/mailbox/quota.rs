//! Byte quotas on what the mailbox stores: per sender per day, per
//! recipient device, in total, and a floor of free space on the data dir's
//! filesystem, so no device (or set of them) can fill the hub's disk. Kept
//! apart from sealing: only sizes and ids pass through here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hearth_protocol::DeviceId;

use super::rules::{Class, Refusal};
use crate::config::MailboxSection;
use crate::store::{Store, StoreError};

/// How old a byte count read from the database may be before it is read
/// again; in between, what was stored since is added to it.
const RECOUNT: Duration = Duration::from_secs(1);
/// The window of the per-sender quota.
const DAY: Duration = Duration::from_secs(86_400);
/// Senders whose day is remembered; beyond, the oldest days are forgotten.
const SENDERS_MAX: usize = 4096;

/// The byte quotas and what counts against them.
#[derive(Debug)]
pub struct Quotas {
    limits: MailboxSection,
    data_dir: PathBuf,
    /// Per sender: when its day started and what it sent since. In memory:
    /// a restart (an administrator's act) starts every day afresh.
    sent_today: HashMap<DeviceId, (Instant, u64)>,
    /// Per recipient device: bytes waiting, and when that was counted.
    pending: HashMap<DeviceId, (u64, Instant)>,
    /// Bytes of every stored message, and when that was counted.
    total: Option<(u64, Instant)>,
}

impl Quotas {
    /// Quotas from `[mailbox]`, the free-space floor measured on `data_dir`.
    pub fn new(limits: MailboxSection, data_dir: PathBuf) -> Quotas {
        Quotas {
            limits,
            data_dir,
            sent_today: HashMap::new(),
            pending: HashMap::new(),
            total: None,
        }
    }

    /// Replaces the limits (a reload); what was counted stays counted.
    pub fn set_limits(&mut self, limits: MailboxSection) {
        self.limits = limits;
    }

    /// Whether `size` more bytes from `sender` to `devices` fit; the
    /// refusal names the quota that does not (its key, for the receipt,
    /// and its class, for the audit).
    pub fn check(
        &mut self,
        store: &Store,
        sender: &DeviceId,
        devices: &[DeviceId],
        size: u64,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let now = Instant::now();
        let limits = &self.limits;
        let sent = match self.sent_today.get(sender) {
            Some((start, bytes)) if now.duration_since(*start) < DAY => *bytes,
            _ => 0,
        };
        if sent.saturating_add(size) > limits.max_sender_bytes_per_day {
            return Ok(Err(Refusal::new(
                Class::SenderQuota,
                format!(
                    "quota mailbox.max_sender_bytes_per_day reached ({} bytes a day)",
                    limits.max_sender_bytes_per_day
                ),
            )));
        }
        for device in devices {
            let pending = match self.pending.get(device) {
                Some((bytes, at)) if now.duration_since(*at) < RECOUNT => *bytes,
                _ => {
                    let bytes = store.pending_bytes(device)?;
                    self.pending.insert(*device, (bytes, now));
                    bytes
                }
            };
            if pending.saturating_add(size) > limits.max_pending_bytes_per_device {
                return Ok(Err(Refusal::new(
                    Class::PendingBytesQuota,
                    format!(
                        "quota mailbox.max_pending_bytes_per_device reached ({} bytes)",
                        limits.max_pending_bytes_per_device
                    ),
                )));
            }
        }
        let total = match self.total {
            Some((bytes, at)) if now.duration_since(at) < RECOUNT => bytes,
            _ => {
                let bytes = store.stored_bytes()?;
                self.total = Some((bytes, now));
                bytes
            }
        };
        if total.saturating_add(size) > limits.max_total_bytes {
            return Ok(Err(Refusal::new(
                Class::TotalQuota,
                format!(
                    "quota mailbox.max_total_bytes reached ({} bytes)",
                    limits.max_total_bytes
                ),
            )));
        }
        // Unknown free space (the call failed) counts as too little: fail
        // closed rather than risk the disk.
        let free = free_bytes(&self.data_dir).unwrap_or(0);
        if free.saturating_sub(size) < limits.min_free_bytes {
            return Ok(Err(Refusal::new(
                Class::FreeSpace,
                format!(
                    "quota mailbox.min_free_bytes reached (less than {} bytes free on the hub)",
                    limits.min_free_bytes
                ),
            )));
        }
        Ok(Ok(()))
    }

    /// A message of `size` bytes from `sender` to `devices` was stored.
    pub fn stored(&mut self, sender: &DeviceId, devices: &[DeviceId], size: u64) {
        let now = Instant::now();
        if self.sent_today.len() >= SENDERS_MAX && !self.sent_today.contains_key(sender) {
            self.sent_today
                .retain(|_, (start, _)| now.duration_since(*start) < DAY);
            if self.sent_today.len() >= SENDERS_MAX {
                self.sent_today.clear();
            }
        }
        let day = self.sent_today.entry(*sender).or_insert((now, 0));
        if now.duration_since(day.0) >= DAY {
            *day = (now, 0);
        }
        day.1 = day.1.saturating_add(size);
        for device in devices {
            if let Some((bytes, _)) = self.pending.get_mut(device) {
                *bytes = bytes.saturating_add(size);
            }
        }
        if let Some((bytes, _)) = &mut self.total {
            *bytes = bytes.saturating_add(size);
        }
    }

    /// Forgets counts that are stale anyway, and all of them after a
    /// transaction was lost.
    pub fn forget_counts(&mut self) {
        self.pending.clear();
        self.total = None;
    }
}

/// Bytes an unprivileged writer may still use on the filesystem of `dir`.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_quota_refuses_with_its_own_key_and_audit_class() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let sender: DeviceId = "0jqs8adyj6jyjnsqmar523qbbd".parse().unwrap();
        let to: DeviceId = "1jqs8adyj6jyjnsqmar523qbbd".parse().unwrap();
        let roomy = MailboxSection {
            min_free_bytes: 0,
            ..MailboxSection::default()
        };
        let cases = [
            (
                MailboxSection {
                    max_sender_bytes_per_day: 10,
                    ..roomy.clone()
                },
                "quota mailbox.max_sender_bytes_per_day",
            ),
            (
                MailboxSection {
                    max_pending_bytes_per_device: 10,
                    ..roomy.clone()
                },
                "quota mailbox.max_pending_bytes_per_device",
            ),
            (
                MailboxSection {
                    max_total_bytes: 10,
                    ..roomy.clone()
                },
                "quota mailbox.max_total_bytes",
            ),
            (
                MailboxSection {
                    min_free_bytes: u64::MAX,
                    ..roomy.clone()
                },
                "quota mailbox.min_free_bytes",
            ),
        ];
        for (limits, class) in cases {
            let mut quotas = Quotas::new(limits, dir.path().to_owned());
            // Up to a byte limit is within it (no disk has u64::MAX free).
            if !class.ends_with("min_free_bytes") {
                assert_eq!(quotas.check(&store, &sender, &[to], 10).unwrap(), Ok(()));
            }
            let refusal = quotas
                .check(&store, &sender, &[to], 11)
                .unwrap()
                .expect_err(class);
            assert_eq!(refusal.class.as_str(), class);
            assert!(refusal.reason.starts_with(class), "{}", refusal.reason);
        }
    }

    #[test]
    fn the_data_dir_has_measurable_free_space() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
    }
}
