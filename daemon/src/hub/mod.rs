//! The domain core: the [`Hub`] owns the household's state (the store, the
//! live registry, the live sessions, the audit, the CA and the pairing
//! windows) and its invariants. Every way in (admin socket, EST, the edge,
//! the mailbox) calls its operations in [`devices`] and [`household`] and
//! maps [`HubError`] to its own protocol.

pub mod bridging;
pub mod browsers;
pub mod device_check;
pub mod devices;
pub mod household;
pub mod pairing;
pub mod reports;
pub mod retained;
pub mod sessions;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use hearth_protocol::admin::ListenerInfo;
use hearth_protocol::policy::GrantError;
use hearth_protocol::{DeviceId, MemberName};

use crate::audit::{Audit, Event};
use crate::broker::{self, BrokerEndpoint};
use crate::ca::{CaError, HubCa};
use crate::hub::sessions::{RetainedTopics, Sessions};
use crate::pairing::PairingWindows;
use crate::registry::Registry;
use crate::store::{StoreError, StoreHandle};

pub use devices::{Revoked, RENEWAL_GRACE};

/// The household's state and what acts on it.
#[derive(Debug)]
pub struct Hub {
    /// The database, reached off the async runtime. Written only through
    /// the hub's operations.
    pub store: StoreHandle,
    /// The CA that signs device certificates.
    pub ca: Arc<HubCa>,
    /// Accepted certificates.
    pub registry: Arc<Registry>,
    /// Live sessions.
    pub sessions: Arc<Sessions>,
    /// Bound listeners, for `status`.
    pub listeners: Vec<ListenerInfo>,
    /// When the daemon started.
    pub started: Instant,
    /// The audit log.
    pub audit: Audit,
    /// Retained topics per device, cleared on revocation.
    pub retained: Arc<RetainedTopics>,
    /// The broker, for purging sessions and retained messages.
    pub broker: BrokerEndpoint,
    /// Open pairing windows.
    pub windows: Arc<PairingWindows>,
    /// The bound MQTT and enrollment ports, for pairing URIs.
    pub ports: HubPorts,
    /// The data dir (backups read the key files there).
    pub data_dir: PathBuf,
    /// The settings in force, as the last reload left them (the privacy
    /// report reads the retention from them, the edge its limits).
    pub config: crate::reload::ConfigWatch,
    /// Where and when the settings in force were read, for `status`.
    pub loaded: Arc<std::sync::Mutex<crate::reload::Loaded>>,
    /// What the edge and the mailbox saw of each device's last sessions,
    /// for `hearth device check`; in memory only.
    pub observations: Arc<device_check::Observations>,
    /// The limits `hearth device check` judges against.
    pub check_limits: device_check::CheckLimits,
    /// Counters for the Prometheus endpoint.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Open join codes for browsers (`hearth web-link`), with their own
    /// wrong-code lockouts.
    pub join_codes: Arc<PairingWindows>,
    /// The devices a parent let the bridge carry ([`bridging`]); the
    /// bridge watches it.
    pub bridged: tokio::sync::watch::Sender<std::collections::BTreeSet<DeviceId>>,
}

/// How long data is kept, as configured.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// `audit.retention_days`.
    pub audit_days: u32,
    /// `mailbox.expiry_secs`.
    pub message_secs: u64,
    /// `web.idle_days`.
    pub browser_idle_days: u32,
}

/// The ports a device needs to know.
#[derive(Debug, Clone, Copy)]
pub struct HubPorts {
    /// Mutual-TLS MQTT.
    pub mqtt: u16,
    /// EST enrollment.
    pub enroll: u16,
}

/// Why a hub operation did not happen. Adapters map it: the admin socket
/// answers its text, EST an HTTP status (a failure of the hub itself is a
/// 5xx, never the client's fault), the edge logs it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The database failed (I/O, a full disk, a damaged file): the hub's
    /// fault, and worth a retry later.
    #[error(transparent)]
    Store(StoreError),
    /// The request does not fit what the database holds (no such device,
    /// not a service device, a renewal pending...): the caller's to fix.
    #[error(transparent)]
    Refused(StoreError),
    /// The certificate request is not acceptable.
    #[error(transparent)]
    BadRequest(CaError),
    /// The CA could not sign (its files, the signer): the hub's fault.
    #[error(transparent)]
    Ca(CaError),
    /// No member has that nickname.
    #[error("no member named {:?}; add it with `hearth member add`", .0.as_str())]
    NoSuchMember(MemberName),
    /// A member of that nickname exists, whatever its case.
    #[error(
        "a member named {:?} already exists (nicknames are unique whatever their case)",
        .0.as_str()
    )]
    MemberExists(MemberName),
    /// The household's last parent, with other members left.
    #[error(
        "{0} is the household's last parent, and the others would have no parent to message \
         or to look after their devices; add another parent first \
         (`hearth member add NAME --role parent`)"
    )]
    LastParent(MemberName),
    /// The certificate presented is not (or no longer) accepted.
    #[error("the certificate presented is no longer accepted")]
    NotAccepted,
    /// The grant is not valid.
    #[error(transparent)]
    BadGrant(#[from] GrantError),
    /// Taking back a grant the device does not have.
    #[error("{0} has no such grant; nothing changed")]
    NoSuchGrant(DeviceId),
    /// A pairing window's time is out of range.
    #[error(
        "the window must stay open between 1 second and {} hours",
        crate::pairing::MAX_TTL.as_secs() / 3600
    )]
    PairingTime,
    /// Devices could not reach the hub at the pairing URI's host; the text
    /// says what to change.
    #[error("{0}")]
    PairingHost(String),
    /// The join code is wrong, used or expired.
    #[error(
        "this join link is not valid (wrong, already used or expired); ask a parent for a new one"
    )]
    BadJoinCode,
    /// Too many wrong join codes from this address.
    #[error("too many wrong join codes from this address: try again in 10 minutes")]
    JoinLocked,
    /// The web app is off (`[web] enabled = false`).
    #[error("the web app is off; set `enabled = true` under [web] and restart hearthd")]
    WebOff,
    /// A backup's passphrase or recipient key is not usable.
    #[error("backup key: {0}")]
    BadBackupKey(String),
    /// Something the hub stored does not read back (a damaged file, a key
    /// that does not open a message): the hub's fault.
    #[error("{0}")]
    Unreadable(String),
}

impl HubError {
    /// Whether the hub itself failed (as opposed to the request): a
    /// database or CA failure, which the caller may retry later.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            HubError::Store(_) | HubError::Ca(_) | HubError::Unreadable(_)
        )
    }
}

impl From<StoreError> for HubError {
    fn from(e: StoreError) -> HubError {
        match e {
            StoreError::MemberExists(_)
            | StoreError::NoSuchMember(_)
            | StoreError::NoSuchDevice(_)
            | StoreError::NotAService(_)
            | StoreError::RenewalPending(_) => HubError::Refused(e),
            _ => HubError::Store(e),
        }
    }
}

impl From<CaError> for HubError {
    fn from(e: CaError) -> HubError {
        match e {
            CaError::BadRequest(_) => HubError::BadRequest(e),
            _ => HubError::Ca(e),
        }
    }
}

impl Hub {
    /// How long data is kept, as the settings in force say.
    pub fn retention(&self) -> Retention {
        let config = self.config.borrow();
        Retention {
            audit_days: config.audit.retention_days,
            message_secs: config.mailbox.expiry_secs,
            browser_idle_days: config.web.idle_days,
        }
    }

    /// Records an administrative action; ids only, never names or labels.
    pub fn admin_audit(&self, action: &str, device: Option<DeviceId>, detail: String) {
        self.audit.record(Event {
            device,
            event: "admin",
            action: Some(action.to_owned()),
            reason: Some(detail),
            ..Event::default()
        });
    }

    /// The member `name` names, in its stored case ("mum" is "Mum");
    /// `name` itself when there is none, so the caller's "no member named"
    /// error names what was asked.
    pub fn member_named(&self, name: MemberName) -> MemberName {
        let members = self.store.with(|s| s.members()).unwrap_or_default();
        hearth_protocol::reference::find_member(&name, members.iter().map(|m| &m.name))
            .cloned()
            .unwrap_or(name)
    }

    /// Ends everything a device has once the registry no longer accepts
    /// it: its connections close now, the broker forgets its session and
    /// the retained messages it left.
    async fn cut_off(&self, device: &DeviceId) {
        // The store dropped its bridging with the revocation.
        self.refresh_bridged();
        let closed = self.sessions.disconnect(device);
        tracing::info!(device = %device, connections = closed, "device cut off");
        self.purge(device).await;
        let topics = self.retained.take(device);
        if let Err(e) = broker::clear_retained(&self.broker, &topics).await {
            tracing::warn!(error = %e, "cannot clear retained messages");
        }
    }

    /// Makes the broker forget the device's session, once the edge's own
    /// connection for it has closed.
    async fn purge(&self, device: &DeviceId) {
        let turn = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.sessions.broker_turn(device.as_str()),
        )
        .await;
        if turn.is_err() {
            tracing::warn!(device = %device, "old connection still open; purging anyway");
        }
        self.sessions.reset_session(device.as_str());
        if let Err(e) = broker::purge_session(&self.broker, device.as_str()).await {
            tracing::warn!(error = %e, "cannot purge the broker session");
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A hub over a real SQLite file and a real CA in a temp dir, with no
    //! broker behind it (purges fail fast and are only logged).
    use super::*;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    pub(crate) fn hub(dir: &std::path::Path) -> Hub {
        let store = StoreHandle::open(dir).unwrap();
        let registry = Arc::new(Registry::new(
            store.with(|s| s.active_certificates()).unwrap(),
            store.with(|s| s.revoked_fingerprints()).unwrap(),
        ));
        let audit = Audit::start(
            store.clone(),
            std::time::Duration::from_secs(86_400),
            60,
            CancellationToken::new(),
            &TaskTracker::new(),
        );
        Hub {
            store,
            ca: Arc::new(HubCa::load_or_create(dir).unwrap()),
            registry,
            sessions: Arc::new(Sessions::default()),
            listeners: Vec::new(),
            started: Instant::now(),
            audit,
            retained: Arc::new(RetainedTopics::new(Default::default())),
            // No broker: a purge is refused at once.
            broker: BrokerEndpoint::default(),
            join_codes: Arc::default(),
            windows: Arc::new(PairingWindows::default()),
            ports: HubPorts { mqtt: 0, enroll: 0 },
            data_dir: dir.to_owned(),
            config: {
                let mut config = crate::config::Config::default();
                config.audit.retention_days = 1;
                config.mailbox.expiry_secs = 60;
                // The sender goes: the receiver keeps the last value.
                tokio::sync::watch::channel(Arc::new(config)).1
            },
            loaded: Arc::default(),
            observations: Arc::default(),
            check_limits: device_check::CheckLimits {
                telemetry_per_sec: 50,
            },
            metrics: Arc::default(),
            bridged: tokio::sync::watch::Sender::new(Default::default()),
        }
    }

    /// A PEM certificate request for a fresh P-256 key.
    pub(crate) fn csr() -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    }
}
