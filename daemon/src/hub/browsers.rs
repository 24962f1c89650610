//! Browsers in the household: a one-time join code makes a browser a
//! registry entry of its member's (kind `browser`), holding a random
//! session secret of which only the SHA-256 is stored. Join codes are
//! pairing windows of their own (single use, short-lived, wrong codes
//! lock a source out), kept in memory like pairing windows.

use std::net::IpAddr;
use std::time::Duration;

use hearth_protocol::admin::WebLinkTicket;
use hearth_protocol::{DeviceId, Label, MemberName};
use sha2::{Digest, Sha256};

use super::pairing::{bound, lan_host};
use super::{Hub, HubError};
use crate::store::BrowserSession;

/// How long a join code works.
pub const JOIN_TTL: Duration = Duration::from_secs(15 * 60);

/// A browser that just joined, and the secret its cookie will hold
/// (shown once, never stored).
#[derive(Debug)]
pub struct Joined {
    /// The new registry entry and whose it is.
    pub session: BrowserSession,
    /// The session secret, 256 random bits as hex.
    pub secret: String,
}

impl Hub {
    /// A join link for a browser of `member`'s, labelled `label`; the
    /// link names `host` or, by default, the address the web app is bound
    /// to (or the hub's LAN address when it listens on every address).
    pub fn web_link(
        &self,
        member: MemberName,
        label: Label,
        host: Option<String>,
    ) -> Result<WebLinkTicket, HubError> {
        let member = self.member_named(member);
        if self.store.with(|s| s.member_role(&member))?.is_none() {
            return Err(HubError::NoSuchMember(member));
        }
        let Some(web) = bound(&self.listeners, "web") else {
            return Err(HubError::WebOff);
        };
        let host = host.unwrap_or_else(|| {
            if web.ip().is_unspecified() {
                lan_host(&self.ca)
            } else {
                web.ip().to_string()
            }
        });
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        let (id, code, expires_at) = self.join_codes.open(member, label, JOIN_TTL);
        self.admin_audit("web-link", None, format!("join code {id}"));
        Ok(WebLinkTicket {
            // The CA's fingerprint rides along for the person to compare
            // (a page cannot see the certificate its connection used).
            url: format!(
                "https://{host}:{}/#join={code}&ca={}",
                web.port(),
                hex::encode(self.ca.fingerprint())
            ),
            ca_sha256: hex::encode(self.ca.fingerprint()),
            expires_at,
        })
    }

    /// Joins a browser with a join code from `ip`: a wrong code counts
    /// against the source as a wrong pairing token does.
    pub fn join_browser(&self, code: &str, ip: IpAddr) -> Result<Joined, HubError> {
        if self.join_codes.locked_out(ip) {
            return Err(HubError::JoinLocked);
        }
        let Some(window) = self.join_codes.check(code) else {
            let locked = self.join_codes.record_failure(ip);
            self.audit.record(crate::audit::Event {
                event: "join-refused",
                reason: Some(if locked { "locked-out" } else { "bad-code" }.into()),
                peer: Some(ip.to_string()),
                ..crate::audit::Event::default()
            });
            return Err(if locked {
                HubError::JoinLocked
            } else {
                HubError::BadJoinCode
            });
        };
        if !self.join_codes.consume(window.id) {
            return Err(HubError::BadJoinCode);
        }
        let device = DeviceId::from_entropy(crate::random_bytes());
        let secret = hex::encode(crate::random_bytes::<32>());
        let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let now = crate::unix_now();
        self.store
            .with(|s| s.add_browser(&device, &window.member, &window.label, &hash, now))?;
        let session = self
            .store
            .with(|s| s.browser_session(&hash))?
            .ok_or(HubError::BadJoinCode)?;
        self.admin_audit(
            "browser-join",
            Some(device),
            format!("join code {}", window.id),
        );
        Ok(Joined { session, secret })
    }

    /// The browser a session secret belongs to, if it is active and was
    /// used within `idle` (an idle one is revoked here and now).
    pub async fn browser(
        &self,
        secret: &str,
        idle: Duration,
    ) -> Result<Option<BrowserSession>, HubError> {
        let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let Some(session) = self.store.with(|s| s.browser_session(&hash))? else {
            return Ok(None);
        };
        let now = crate::unix_now();
        // `last_used` is kept to the hour: an hour of slack, never less.
        if now - session.last_used > idle.as_secs() as i64 + 3600 {
            self.revoke_quietly(&session.device).await?;
            self.admin_audit("browser-expired", Some(session.device), "idle".into());
            return Ok(None);
        }
        if now - session.last_used >= 3600 {
            self.store.with(|s| s.touch_browser(&session.device, now))?;
        }
        Ok(Some(session))
    }

    /// Whether a browser is still signed in: checked again once its page's
    /// session is registered, so a revocation in between is not missed.
    pub fn browser_is_active(&self, device: &DeviceId) -> Result<bool, HubError> {
        Ok(self.store.with(|s| s.browser_is_active(device))?)
    }

    /// Signs out (revokes) every browser unused for longer than `idle`, so
    /// a lost tablet does not stay a recipient for ever; returns how many.
    pub async fn expire_idle_browsers(&self, idle: Duration) -> Result<usize, HubError> {
        // `last_used` is kept to the hour: an hour of slack, never less.
        let before = crate::unix_now() - idle.as_secs() as i64 - 3600;
        let idle_ones = self.store.with(|s| s.idle_browsers(before))?;
        for device in &idle_ones {
            self.revoke_quietly(device).await?;
            self.admin_audit("browser-expired", Some(*device), "idle".into());
        }
        Ok(idle_ones.len())
    }

    /// Renames a device or browser.
    pub fn relabel(&self, device: &DeviceId, label: &Label) -> Result<(), HubError> {
        self.store.with(|s| s.relabel_device(device, label))?;
        self.admin_audit("device-relabel", Some(*device), "label changed".into());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::Role;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_join_code_works_once_and_an_idle_browser_is_signed_out_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let mut hub = super::super::testing::hub(dir.path());
        hub.listeners.push(hearth_protocol::admin::ListenerInfo {
            name: "web".into(),
            address: "127.0.0.1:8444".into(),
        });
        let mum: MemberName = "mum".parse().unwrap();
        hub.add_member(mum.clone(), Role::Parent).unwrap();
        let ticket = hub.web_link(mum, "phone".parse().unwrap(), None).unwrap();
        assert!(
            ticket.url.starts_with("https://127.0.0.1:8444/#join="),
            "{}",
            ticket.url
        );
        let code = ticket
            .url
            .split("#join=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        let ip: IpAddr = [127, 0, 0, 1].into();
        let joined = hub.join_browser(code, ip).unwrap();
        assert!(matches!(
            hub.join_browser(code, ip),
            Err(HubError::BadJoinCode)
        ));

        let idle = Duration::from_secs(30 * 86_400);
        let found = hub.browser(&joined.secret, idle).await.unwrap().unwrap();
        assert_eq!(found.device, joined.session.device);
        assert!(hub.browser(&"0".repeat(64), idle).await.unwrap().is_none());

        // The hourly sweep leaves a browser used within `idle` alone.
        assert_eq!(hub.expire_idle_browsers(idle).await.unwrap(), 0);
        // Unused for longer than `idle` (and the hour of slack): signed
        // out, and the browser is revoked, so the secret never works again.
        let long_ago = crate::unix_now() - idle.as_secs() as i64 - 2 * 3600;
        hub.store
            .with(|s| s.backdate_browser(&joined.session.device, long_ago))
            .unwrap();
        assert!(hub.browser(&joined.secret, idle).await.unwrap().is_none());
        assert!(!hub.browser_is_active(&joined.session.device).unwrap());
        let devices = hub.devices().unwrap();
        assert_eq!(
            devices[0].status,
            hearth_protocol::admin::DeviceStatus::Revoked
        );
        assert!(hub.browser(&joined.secret, idle).await.unwrap().is_none());

        // A browser nobody uses any more is swept without being asked.
        let again = hub
            .web_link("mum".parse().unwrap(), "tablet".parse().unwrap(), None)
            .unwrap();
        let code = again
            .url
            .split("#join=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        let tablet = hub.join_browser(code, ip).unwrap();
        assert!(hub.browser_is_active(&tablet.session.device).unwrap());
        hub.store
            .with(|s| s.backdate_browser(&tablet.session.device, long_ago))
            .unwrap();
        assert_eq!(hub.expire_idle_browsers(idle).await.unwrap(), 1);
        assert!(!hub.browser_is_active(&tablet.session.device).unwrap());
    }
}
