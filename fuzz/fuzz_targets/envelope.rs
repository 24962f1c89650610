//! Fuzz target: a payload on a device's outbox topic, read as the mailbox
//! reads it (protocol's `parse_outbox`, then daemon's content checks and
//! recipient parsing), and a payload on an inbox topic as a device reads
//! it (`Inbox`). A parsed envelope must survive its own serialisation.
#![no_main]

use hearth_daemon::config::MailboxSection;
use hearth_daemon::mailbox::{check_send, outbox_sender};
use hearth_protocol::mailbox::{parse_outbox, Inbox, Outbox};
use hearth_protocol::{DeviceId, MemberName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The topic a payload came on is the device's input too.
    if let Ok(topic) = std::str::from_utf8(data) {
        let _ = outbox_sender(topic);
    }
    match parse_outbox(data) {
        Ok(envelope) => {
            let json = serde_json::to_vec(&envelope).expect("an envelope serialises");
            assert_eq!(
                parse_outbox(&json).expect("a serialised envelope parses"),
                envelope
            );
            if let Outbox::Send(send) = &envelope {
                assert!(!send.reference.is_empty() && send.reference.len() <= 128);
                // The daemon's limits, and small ones so sizes are refused.
                let limits = MailboxSection::default();
                let _ = check_send(&limits, send);
                let small = MailboxSection {
                    max_text_bytes: 8,
                    max_image_bytes: 8,
                    max_audio_bytes: 8,
                    ..MailboxSection::default()
                };
                let _ = check_send(&small.within(4100), send);
                if send.to.parse::<DeviceId>().is_err() {
                    let _ = send.to.parse::<MemberName>();
                }
            }
        }
        Err(bad) => {
            // A refusal carries the reference back only when it is a string.
            let _ = bad.reference.map(|r| r.len());
        }
    }
    if let Ok(inbox) = serde_json::from_slice::<Inbox>(data) {
        let json = serde_json::to_vec(&inbox).expect("an inbox envelope serialises");
        assert_eq!(
            serde_json::from_slice::<Inbox>(&json).expect("it parses back"),
            inbox
        );
    }
});
