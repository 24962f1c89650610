//! `hearth device check`: what the hub observed of a device in its recent
//! sessions, judged line by line (pass, warn, fail, with the reason), so a
//! toy maker running a toy against a hub gets a checklist. The judging is
//! pure; the observations are made by the edge and the mailbox and kept in
//! memory only, a few sessions per device (docs/PRIVACY.md).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use hearth_protocol::admin::{CheckLine, Verdict};
use hearth_protocol::DeviceId;
use serde::{Deserialize, Serialize};

/// Sessions remembered per device.
pub const SESSIONS_KEPT: usize = 8;
/// A reconnection sooner than this (milliseconds) after the previous
/// session was lost is "at once".
pub const QUICK_RECONNECT_MS: i64 = 1000;
/// This many quick reconnections in a row fail the back-off check.
pub const QUICK_RECONNECTS_FAIL: usize = 3;
/// Telemetry messages a second above which the check warns: a home hub
/// is shared by every device of the household.
pub const TELEMETRY_PER_SEC: u32 = 50;
/// Warn when the certificate expires within this many days.
pub const RENEW_WARN_DAYS: i64 = 30;

/// What the hub saw of one session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSeen {
    /// When it began, Unix milliseconds.
    pub started_ms: i64,
    /// When it ended, Unix milliseconds; 0 while open.
    pub ended_ms: i64,
    /// "TLSv1_3", "TLSv1_2".
    pub tls: String,
    /// 4 (3.1.1) or 5.
    pub mqtt: u8,
    /// The keep-alive the device asked for, seconds.
    pub keep_alive: u16,
    /// Whether the device gave its id as client id (rather than empty).
    pub named_itself: bool,
    /// Subscribed to its own inbox.
    pub inbox: bool,
    /// Subscribed to its own commands.
    pub commands: bool,
    /// Its description: none, accepted, or refused with a reason.
    pub meta: MetaSeen,
    /// Telemetry messages published.
    pub telemetry: u64,
    /// The largest telemetry payload, bytes.
    pub telemetry_max_bytes: usize,
    /// The most telemetry messages in one second.
    pub telemetry_peak_per_sec: u32,
    /// Mailbox deliveries sent to it.
    pub deliveries: u64,
    /// Acknowledgements it sent.
    pub acks: u64,
    /// The device ended it with DISCONNECT (rather than losing it).
    pub said_goodbye: bool,
    /// Which session this is, hub-wide: a connection's end is recorded on
    /// its own session even when a newer one took over first.
    #[serde(skip)]
    pub number: u64,
}

/// A description, as the hub saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaSeen {
    /// None published.
    #[default]
    None,
    /// Published and valid.
    Valid,
    /// Refused, with the fixed reason.
    Refused(String),
}

/// The limits the report judges against. (No size limit: a packet over
/// `limits.max_payload` never gets past the edge to be counted.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckLimits {
    /// Telemetry messages a second above which the check warns.
    pub telemetry_per_sec: u32,
}

/// Judges the sessions seen (oldest first) and the current certificate's
/// end of validity, at `now`.
pub fn judge(
    sessions: &[SessionSeen],
    cert_not_after: Option<i64>,
    limits: CheckLimits,
    now: i64,
) -> Vec<CheckLine> {
    let mut lines = Vec::new();
    let mut line = |item: &str, verdict: Verdict, reason: String| {
        lines.push(CheckLine {
            item: item.to_owned(),
            verdict,
            reason,
        })
    };
    let Some(last) = sessions.last() else {
        line(
            "session",
            Verdict::Fail,
            "no session seen since the hub started: connect the device and check again".into(),
        );
        return lines;
    };
    match last.tls.as_str() {
        "TLSv1_3" => line("TLS", Verdict::Pass, "TLS 1.3".into()),
        other => line(
            "TLS",
            Verdict::Warn,
            format!("{other}: works, but TLS 1.3 is faster and keeps the certificate private"),
        ),
    }
    line(
        "MQTT",
        Verdict::Pass,
        if last.mqtt == 5 {
            "MQTT 5"
        } else {
            "MQTT 3.1.1"
        }
        .into(),
    );
    match last.keep_alive {
        0 => line(
            "keep-alive",
            Verdict::Warn,
            "none: a dead connection is noticed only by TCP, minutes later; use 30-60 s".into(),
        ),
        k if k > 300 => line(
            "keep-alive",
            Verdict::Warn,
            format!("{k} s: a lost connection is noticed late; use 30-60 s"),
        ),
        k => line("keep-alive", Verdict::Pass, format!("{k} s")),
    }
    line(
        "client id",
        Verdict::Pass,
        if last.named_itself {
            "the device id, as its certificate names it"
        } else {
            "empty: the hub used the device id"
        }
        .into(),
    );
    // A subscription made in any recent session counts.
    for (item, subscribed, yes, no) in [
        (
            "inbox",
            sessions.iter().any(|s| s.inbox),
            "subscribed to its own inbox",
            "never subscribed to its inbox: it receives no family messages",
        ),
        (
            "commands",
            sessions.iter().any(|s| s.commands),
            "subscribed to its own cmd topics",
            "never subscribed to its cmd topics: parents cannot command it",
        ),
    ] {
        match subscribed {
            true => line(item, Verdict::Pass, yes.into()),
            false => line(item, Verdict::Warn, no.into()),
        }
    }
    let (deliveries, acks) = sessions
        .iter()
        .fold((0, 0), |(d, a), s| (d + s.deliveries, a + s.acks));
    if deliveries == 0 {
        line(
            "acknowledgements",
            Verdict::Pass,
            "no message was delivered to it yet".into(),
        );
    } else if acks == 0 {
        line(
            "acknowledgements",
            Verdict::Fail,
            format!(
                "{deliveries} deliveries and no ack: the hub resends each until it expires; \
                 publish {{\"v\":1,\"type\":\"ack\",\"id\":...}} to the outbox"
            ),
        );
    } else {
        line(
            "acknowledgements",
            Verdict::Pass,
            format!("{acks} acks for {deliveries} deliveries"),
        );
    }
    match sessions
        .iter()
        .rev()
        .map(|s| &s.meta)
        .find(|m| **m != MetaSeen::None)
    {
        Some(MetaSeen::Valid) => line(
            "description",
            Verdict::Pass,
            "meta published and valid".into(),
        ),
        Some(MetaSeen::Refused(why)) => line(
            "description",
            Verdict::Fail,
            format!("meta refused: {why} (docs/schema/meta-v1.json)"),
        ),
        _ => line(
            "description",
            Verdict::Warn,
            "no meta published: parents see raw telemetry and no command buttons".into(),
        ),
    }
    let biggest = sessions
        .iter()
        .map(|s| s.telemetry_max_bytes)
        .max()
        .unwrap_or(0);
    let peak = sessions
        .iter()
        .map(|s| s.telemetry_peak_per_sec)
        .max()
        .unwrap_or(0);
    if sessions.iter().all(|s| s.telemetry == 0) {
        line("telemetry", Verdict::Warn, "none published".into());
    } else if peak > limits.telemetry_per_sec {
        line(
            "telemetry",
            Verdict::Warn,
            format!(
                "{peak} messages in one second: a home hub is shared; keep it under {}",
                limits.telemetry_per_sec
            ),
        );
    } else {
        line(
            "telemetry",
            Verdict::Pass,
            format!("at most {biggest} bytes and {peak} a second"),
        );
    }
    let quick = quick_reconnects(sessions);
    if quick >= QUICK_RECONNECTS_FAIL {
        line(
            "reconnect back-off",
            Verdict::Fail,
            format!(
                "reconnected at once {quick} times in a row: wait 1 s, 2 s, 4 s... up to a minute"
            ),
        );
    } else {
        line(
            "reconnect back-off",
            Verdict::Pass,
            "no reconnection storm seen".into(),
        );
    }
    match cert_not_after {
        None => line(
            "certificate",
            Verdict::Fail,
            "no current certificate".into(),
        ),
        Some(end) if end <= now => line(
            "certificate",
            Verdict::Fail,
            "expired: the device must be paired again".into(),
        ),
        Some(end) if end - now < RENEW_WARN_DAYS * 86_400 => line(
            "certificate",
            Verdict::Warn,
            format!(
                "expires in {} days: renew it (EST simplereenroll)",
                (end - now) / 86_400
            ),
        ),
        Some(end) => line(
            "certificate",
            Verdict::Pass,
            format!("valid for {} more days", (end - now) / 86_400),
        ),
    }
    lines
}

impl super::Hub {
    /// The report on `device`: what the hub saw of its last sessions and
    /// its certificate, judged now.
    pub fn device_check(&self, device: &DeviceId) -> Result<Vec<CheckLine>, super::HubError> {
        let known = self
            .store
            .with(|s| s.devices())?
            .into_iter()
            .find(|d| d.id == *device)
            .ok_or(super::HubError::Refused(
                crate::store::StoreError::NoSuchDevice(device.to_string()),
            ))?;
        Ok(judge(
            &self.observations.sessions(device),
            known.cert_not_after,
            self.check_limits,
            crate::unix_now(),
        ))
    }
}

/// The longest run of sessions, at the end, each begun within
/// [`QUICK_RECONNECT_MS`] of the loss of the previous one. A session
/// the device ended itself (DISCONNECT) is no loss: a toy run again at
/// once is not a reconnection storm.
fn quick_reconnects(sessions: &[SessionSeen]) -> usize {
    sessions
        .windows(2)
        .rev()
        .take_while(|w| {
            w[0].ended_ms > 0
                && !w[0].said_goodbye
                && w[1].started_ms - w[0].ended_ms < QUICK_RECONNECT_MS
        })
        .count()
}

/// The sessions seen per device, in memory, [`SESSIONS_KEPT`] each.
#[derive(Debug, Default)]
pub struct Observations {
    by_device: Mutex<HashMap<DeviceId, VecDeque<SessionSeen>>>,
    next: std::sync::atomic::AtomicU64,
}

impl Observations {
    /// Records a new session of `device`, forgetting its oldest beyond
    /// [`SESSIONS_KEPT`]; returns its number, for [`Observations::ended`].
    pub fn begin(&self, device: DeviceId, mut session: SessionSeen) -> u64 {
        let number = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        session.number = number;
        let mut map = crate::sync::lock(&self.by_device);
        // One session's room, not four, for a device seen once.
        let seen = map
            .entry(device)
            .or_insert_with(|| VecDeque::with_capacity(1));
        if seen.len() == SESSIONS_KEPT {
            seen.pop_front();
        }
        seen.push_back(session);
        number
    }

    /// Updates the device's latest session.
    pub fn update(&self, device: &DeviceId, f: impl FnOnce(&mut SessionSeen)) {
        if let Some(last) = crate::sync::lock(&self.by_device)
            .get_mut(device)
            .and_then(VecDeque::back_mut)
        {
            f(last);
        }
    }

    /// Records when session `number` of `device` ended (Unix ms).
    pub fn ended(&self, device: &DeviceId, number: u64, at_ms: i64) {
        if let Some(session) = crate::sync::lock(&self.by_device)
            .get_mut(device)
            .and_then(|s| s.iter_mut().find(|s| s.number == number))
        {
            session.ended_ms = at_ms;
        }
    }

    /// The device's sessions, oldest first.
    pub fn sessions(&self, device: &DeviceId) -> Vec<SessionSeen> {
        crate::sync::lock(&self.by_device)
            .get(device)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets a removed device.
    pub fn forget(&self, device: &DeviceId) {
        crate::sync::lock(&self.by_device).remove(device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: CheckLimits = CheckLimits {
        telemetry_per_sec: 50,
    };
    const NOW: i64 = 1_800_000_000;
    const YEAR: i64 = 365 * 86_400;

    fn good() -> SessionSeen {
        SessionSeen {
            started_ms: (NOW - 100) * 1000,
            ended_ms: 0,
            tls: "TLSv1_3".into(),
            mqtt: 5,
            keep_alive: 30,
            named_itself: true,
            inbox: true,
            commands: true,
            meta: MetaSeen::Valid,
            telemetry: 10,
            telemetry_max_bytes: 200,
            telemetry_peak_per_sec: 1,
            deliveries: 2,
            acks: 2,
            said_goodbye: false,
            number: 0,
        }
    }

    fn verdict(lines: &[CheckLine], item: &str) -> Verdict {
        lines.iter().find(|l| l.item == item).unwrap().verdict
    }

    #[test]
    fn a_well_behaved_device_passes_every_line() {
        let lines = judge(&[good()], Some(NOW + YEAR), LIMITS, NOW);
        let failing: Vec<_> = lines
            .iter()
            .filter(|l| l.verdict != Verdict::Pass)
            .collect();
        assert!(failing.is_empty(), "{failing:?}");
        assert_eq!(lines.len(), 11);
    }

    #[test]
    fn a_device_that_never_acknowledges_fails_and_is_told_how() {
        let lines = judge(
            &[SessionSeen { acks: 0, ..good() }],
            Some(NOW + YEAR),
            LIMITS,
            NOW,
        );
        assert_eq!(verdict(&lines, "acknowledgements"), Verdict::Fail);
        let reason = &lines
            .iter()
            .find(|l| l.item == "acknowledgements")
            .unwrap()
            .reason;
        assert!(reason.contains("\"type\":\"ack\""), "{reason}");
    }

    #[test]
    fn reconnecting_at_once_three_times_fails_the_back_off_check_and_twice_does_not() {
        // Times in seconds, kept in milliseconds.
        let session = |started: i64, ended: i64| SessionSeen {
            started_ms: started * 1000,
            ended_ms: ended * 1000,
            ..good()
        };
        let storm = [
            session(NOW - 10, NOW - 9),
            session(NOW - 9, NOW - 8),
            session(NOW - 8, NOW - 7),
            session(NOW - 7, 0),
        ];
        let lines = judge(&storm, Some(NOW + YEAR), LIMITS, NOW);
        assert_eq!(verdict(&lines, "reconnect back-off"), Verdict::Fail);
        let lines = judge(&storm[1..], Some(NOW + YEAR), LIMITS, NOW);
        assert_eq!(verdict(&lines, "reconnect back-off"), Verdict::Pass);
        // Sessions the device ended itself, run again at once, are no storm.
        let polite: Vec<SessionSeen> = storm
            .iter()
            .map(|s| SessionSeen {
                said_goodbye: true,
                ..s.clone()
            })
            .collect();
        let lines = judge(&polite, Some(NOW + YEAR), LIMITS, NOW);
        assert_eq!(verdict(&lines, "reconnect back-off"), Verdict::Pass);
        // Waiting between attempts passes however often it reconnects.
        let patient = [
            session(NOW - 100, NOW - 90),
            session(NOW - 88, NOW - 80),
            session(NOW - 76, NOW - 60),
            session(NOW - 52, 0),
        ];
        let lines = judge(&patient, Some(NOW + YEAR), LIMITS, NOW);
        assert_eq!(verdict(&lines, "reconnect back-off"), Verdict::Pass);
    }

    #[test]
    fn the_lines_warn_or_fail_each_for_its_own_reason() {
        let lines = judge(
            &[SessionSeen {
                tls: "TLSv1_2".into(),
                keep_alive: 0,
                inbox: false,
                commands: false,
                meta: MetaSeen::Refused("a unit empty or longer than 16 characters".into()),
                telemetry_peak_per_sec: 200,
                ..good()
            }],
            Some(NOW + 10 * 86_400),
            LIMITS,
            NOW,
        );
        for (item, expected) in [
            ("TLS", Verdict::Warn),
            ("keep-alive", Verdict::Warn),
            ("inbox", Verdict::Warn),
            ("commands", Verdict::Warn),
            ("description", Verdict::Fail),
            ("telemetry", Verdict::Warn),
            ("certificate", Verdict::Warn),
        ] {
            assert_eq!(verdict(&lines, item), expected, "{item}");
        }
        assert_eq!(
            verdict(&judge(&[good()], Some(NOW - 1), LIMITS, NOW), "certificate"),
            Verdict::Fail
        );
        let none = judge(&[], Some(NOW + YEAR), LIMITS, NOW);
        assert_eq!(none.len(), 1);
        assert_eq!(none[0].verdict, Verdict::Fail);
    }

    #[test]
    fn the_hub_keeps_a_few_sessions_per_device_and_forgets_a_removed_one() {
        let seen = Observations::default();
        let device = DeviceId::from_entropy([1; 16]);
        for i in 0..20 {
            seen.begin(
                device,
                SessionSeen {
                    started_ms: i,
                    ..SessionSeen::default()
                },
            );
        }
        seen.update(&device, |s| s.telemetry += 1);
        // A connection taken over ends after its successor began: its end
        // is recorded on its own session.
        let older = seen.begin(device, SessionSeen::default());
        let newer = seen.begin(device, SessionSeen::default());
        seen.ended(&device, older, 99);
        let sessions = seen.sessions(&device);
        assert_eq!(sessions[SESSIONS_KEPT - 2].ended_ms, 99);
        assert_eq!(sessions[SESSIONS_KEPT - 1].ended_ms, 0);
        assert_eq!(sessions[SESSIONS_KEPT - 1].number, newer);
        let sessions: Vec<SessionSeen> = sessions[..SESSIONS_KEPT - 2].to_vec();
        assert_eq!(sessions[0].started_ms, 22 - SESSIONS_KEPT as i64);
        assert_eq!(sessions.last().unwrap().telemetry, 1);
        seen.forget(&device);
        assert!(seen.sessions(&device).is_empty());
    }
}
