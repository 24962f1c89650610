//! The admin socket: a Unix socket (mode 0660) taking one JSON request per
//! line from the `hearth` CLI and answering one JSON line.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hearth_protocol::admin::{
    AdminRequest, AdminResponse, IssuedDevice, ListenerInfo, MemberInfo, StatusReport,
};
use hearth_protocol::{DeviceId, Label, Owner};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ca::HubCa;
use crate::edge::sessions::Sessions;
use crate::registry::{DeviceIdentity, Registry};
use crate::store::{NewDevice, Store};

/// Largest request line; a CSR is a few hundred bytes.
const MAX_REQUEST: u64 = 64 * 1024;
/// Admin requests served at once.
const CONCURRENT_REQUESTS: usize = 8;

/// The admin socket could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("admin socket {path}: {message}")]
pub struct AdminSocketError {
    /// The socket path.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// What the admin handlers act on.
#[derive(Debug)]
pub struct Hub {
    /// The database.
    pub store: Arc<Mutex<Store>>,
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
}

/// Binds the admin socket, replacing a stale one but never a live one.
pub fn bind(path: &Path) -> Result<UnixListener, AdminSocketError> {
    let fail = |message: String| AdminSocketError {
        path: path.to_owned(),
        message,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(fail("another hearthd is serving it".into()));
        }
        std::fs::remove_file(path).map_err(|e| fail(format!("cannot remove stale socket: {e}")))?;
    }
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() && !parent.exists() {
            return Err(fail(format!(
                "directory {} does not exist",
                parent.display()
            )));
        }
    }
    let listener = UnixListener::bind(path).map_err(|e| fail(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| fail(format!("cannot set mode 0660: {e}")))?;
    Ok(listener)
}

/// Serves admin requests until `stop`.
pub async fn serve(
    listener: UnixListener,
    hub: Arc<Hub>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let limit = Arc::new(Semaphore::new(CONCURRENT_REQUESTS));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            permit = Arc::clone(&limit).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
        };
        let hub = Arc::clone(&hub);
        tracker.spawn(async move {
            let _permit = permit;
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read.take(MAX_REQUEST));
            let response = match reader.read_line(&mut line).await {
                Ok(0) => return,
                Ok(_) => match serde_json::from_str::<AdminRequest>(&line) {
                    Ok(request) => {
                        let hub = Arc::clone(&hub);
                        tokio::task::spawn_blocking(move || apply(&hub, request))
                            .await
                            .unwrap_or_else(|e| error(format!("internal error: {e}")))
                    }
                    Err(e) => error(format!("bad request: {e}")),
                },
                Err(e) => error(format!("bad request: {e}")),
            };
            let mut out = serde_json::to_vec(&response).unwrap_or_default();
            out.push(b'\n');
            let _ = write.write_all(&out).await;
        });
    }
}

fn error(message: String) -> AdminResponse {
    AdminResponse::Error { message }
}

/// Carries out one request.
pub fn apply(hub: &Hub, request: AdminRequest) -> AdminResponse {
    match request {
        AdminRequest::Status => AdminResponse::Status(StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: hub.started.elapsed().as_secs(),
            listeners: hub.listeners.clone(),
            connected: hub.sessions.connected_devices(),
        }),
        AdminRequest::MemberAdd { name, role } => match hub.store().add_member(&name, role) {
            Ok(()) => {
                tracing::info!(role = %role, "member added");
                AdminResponse::Member(MemberInfo { name, role })
            }
            Err(e) => error(e.to_string()),
        },
        AdminRequest::MemberList => match hub.store().members() {
            Ok(members) => AdminResponse::Members { members },
            Err(e) => error(e.to_string()),
        },
        AdminRequest::DeviceIssue {
            owner,
            label,
            csr_pem,
        } => match issue_device(hub, owner, label, &csr_pem) {
            Ok(issued) => AdminResponse::DeviceIssued(issued),
            Err(message) => error(message),
        },
        AdminRequest::DeviceList => match hub.store().devices() {
            Ok(devices) => AdminResponse::Devices { devices },
            Err(e) => error(e.to_string()),
        },
        _ => error("this hearthd does not know that request".into()),
    }
}

fn issue_device(
    hub: &Hub,
    owner: Owner,
    label: Label,
    csr_pem: &str,
) -> Result<IssuedDevice, String> {
    let mut store = hub.store();
    if let Owner::Member(name) = &owner {
        if store
            .member_role(name)
            .map_err(|e| e.to_string())?
            .is_none()
        {
            return Err(format!(
                "no member named {:?}; add it with `hearth member add`",
                name.as_str()
            ));
        }
    }
    let device = DeviceId::from_entropy(crate::random_bytes());
    let issued = hub
        .ca
        .issue_device(csr_pem, &device)
        .map_err(|e| e.to_string())?;
    store
        .add_device(&NewDevice {
            id: device,
            owner: &owner,
            label: &label,
            sha256: issued.sha256,
            serial_hex: &issued.serial_hex,
            not_after: issued.not_after,
        })
        .map_err(|e| e.to_string())?;
    hub.registry
        .insert(issued.sha256, DeviceIdentity { device, owner });
    tracing::info!(device = %device, "device certificate issued");
    Ok(IssuedDevice {
        device_id: device,
        certificate_pem: issued.pem,
        ca_pem: hub.ca.cert_pem().to_owned(),
    })
}

impl Hub {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}
