//! The admin socket: a Unix socket (mode 0660) taking one JSON request per
//! line from the `hearth` CLI and answering one JSON line.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hearth_protocol::admin::{AdminRequest, AdminResponse, MemberInfo, StatusReport};
use hearth_protocol::policy::Direction;
use hearth_protocol::{DeviceId, Owner};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::Event;
use crate::hub::household::GrantChange;
use crate::hub::{Hub, HubError, Revoked};

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
                    Ok(request) => apply(&hub, request).await,
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
pub async fn apply(hub: &Hub, request: AdminRequest) -> AdminResponse {
    let result = match request {
        AdminRequest::Status => Ok(AdminResponse::Status(StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: hub.started.elapsed().as_secs(),
            listeners: hub.listeners.clone(),
            connected: hub.sessions.connected_devices(),
            config: Some(config_loaded(hub)),
        })),
        AdminRequest::MemberAdd { name, role } => hub
            .add_member(name.clone(), role)
            .map(|()| AdminResponse::Member(MemberInfo { name, role }))
            .map_err(reply),
        AdminRequest::MemberList => hub
            .members()
            .map(|members| AdminResponse::Members { members })
            .map_err(reply),
        AdminRequest::DeviceIssue {
            owner,
            label,
            csr_pem,
            host,
        } => {
            let owner = match owner {
                Owner::Member(name) => Owner::Member(hub.member_named(name)),
                Owner::Service => Owner::Service,
            };
            // The host is checked first: a refused one issues nothing.
            hub.issue_host(host)
                .and_then(|host| {
                    let mut issued = hub.issue_device(owner, label, &csr_pem)?;
                    issued.settings = Some(hub.device_settings(issued.device_id, host));
                    Ok(issued)
                })
                .map(AdminResponse::DeviceIssued)
                .map_err(reply)
        }
        AdminRequest::DeviceList => hub
            .devices()
            .map(|devices| AdminResponse::Devices { devices })
            .map_err(reply),
        AdminRequest::DeviceRevoke { id } => match hub.revoke_device(&id).await {
            Ok(Revoked::Now) => Ok(done(format!("revoked {id}"))),
            Ok(Revoked::Already) => Ok(done(format!("{id} was already revoked; nothing changed"))),
            Err(e) => Err(reply(e)),
        },
        AdminRequest::DeviceRemove { id } => hub
            .remove_device(&id)
            .await
            .map(|()| {
                done(format!(
                    "removed {id} and erased what the hub held about it"
                ))
            })
            .map_err(reply),
        AdminRequest::DeviceCheck { id } => hub
            .device_check(&id)
            .map(|lines| AdminResponse::DeviceChecked { id, lines })
            .map_err(reply),
        AdminRequest::MemberRemove { name } => {
            let name = hub.member_named(name);
            hub.remove_member(&name)
                .await
                .map(|devices| {
                    done(format!(
                        "removed {name} and {} device(s), and erased what the hub held about them",
                        devices.len()
                    ))
                })
                .map_err(reply)
        }
        AdminRequest::Grant {
            id,
            filter,
            direction,
        } => change_grant(hub, id, &filter, direction, true)
            .await
            .map_err(reply),
        AdminRequest::RevokeGrant {
            id,
            filter,
            direction,
        } => change_grant(hub, id, &filter, direction, false)
            .await
            .map_err(reply),
        AdminRequest::PairOpen {
            member,
            label,
            ttl_secs,
            host,
        } => hub
            .open_pairing(hub.member_named(member), label, ttl_secs, host)
            .map(AdminResponse::PairOpened)
            .map_err(reply),
        AdminRequest::WebLink {
            member,
            label,
            host,
        } => hub
            .web_link(member, label, host)
            .map(AdminResponse::WebLink)
            .map_err(reply),
        AdminRequest::PairUnlock { address } => {
            // One lockout rule for pairing tokens and web join codes: lift both.
            if hub.windows.unlock(address) | hub.join_codes.unlock(address) {
                hub.audit.record(Event {
                    event: "admin",
                    action: Some("pair-unlock".into()),
                    reason: Some("lockout lifted".into()),
                    peer: Some(address.to_string()),
                    ..Event::default()
                });
                Ok(done(format!(
                    "{address} may try pairing tokens again (the lockout is lifted)"
                )))
            } else {
                Err(format!(
                    "{address} is not locked out; nothing changed (an address is locked out \
                     for {} minutes after {} wrong pairing tokens)",
                    crate::pairing::LOCKOUT.as_secs() / 60,
                    crate::pairing::MAX_FAILURES
                ))
            }
        }
        AdminRequest::BridgeEnable { id } => hub
            .bridge_enable(&id)
            .map(|new| {
                let off = hub.metrics.bridge_enabled.get() == 0;
                let note = if off {
                    " (the bridge itself is off: set enabled = true under [bridge] in hearth.toml)"
                } else {
                    ""
                };
                match new {
                    true => done(format!("{id} is bridged{note}")),
                    false => done(format!("{id} was already bridged; nothing changed{note}")),
                }
            })
            .map_err(reply),
        AdminRequest::BridgeDisable { id } => hub
            .bridge_disable(&id)
            .map(|was| match was {
                true => done(format!(
                    "{id} is no longer bridged: nothing more about it goes out, and its entries on \
                     the other broker are taken back while the bridge is connected"
                )),
                false => done(format!("{id} was not bridged; nothing changed")),
            })
            .map_err(reply),
        AdminRequest::BridgeList => hub
            .bridged_devices()
            .map(|devices| AdminResponse::Bridged {
                devices,
                enabled: hub.metrics.bridge_enabled.get() == 1,
                connected: hub.metrics.bridge_connected.get() == 1,
            })
            .map_err(reply),
        AdminRequest::MailboxStatus => hub
            .mailbox_pending()
            .map(|pending| AdminResponse::Mailbox { pending })
            .map_err(reply),
        AdminRequest::ContactList => hub
            .contact_rules()
            .map(|rules| AdminResponse::Contacts { rules })
            .map_err(reply),
        AdminRequest::ContactSet { a, b, allowed } => {
            let (a, b) = (hub.member_named(a), hub.member_named(b));
            hub.set_contact(&a, &b, allowed).map_err(reply).map(|()| {
                done(format!(
                    "{a} and {b} {} message each other",
                    if allowed { "may" } else { "may not" }
                ))
            })
        }
        AdminRequest::PairList => Ok(AdminResponse::PairWindows {
            windows: hub.windows.list(),
        }),
        AdminRequest::PairCancel { id } => {
            let closed = hub.windows.cancel(id);
            match (closed, id) {
                // A script closing one window wants to know it was not open.
                (0, Some(id)) => Err(format!(
                    "no pairing window {id} is open (it closed, was used or never existed); \
                     nothing changed. `hearth pair --list` shows the open ones"
                )),
                (0, None) => Ok(done("no pairing window was open; nothing changed".into())),
                _ => {
                    hub.admin_audit("pair-cancel", None, format!("{closed} window(s) closed"));
                    Ok(done(format!("{closed} pairing window(s) closed")))
                }
            }
        }
        AdminRequest::Audit {
            device,
            since,
            after_id,
            limit,
        } => hub
            .audit_entries(device.as_ref(), since, after_id, limit)
            .await
            .map(|entries| AdminResponse::Audit { entries })
            .map_err(reply),
        AdminRequest::PrivacyReport { member } => hub
            .privacy_report(member.map(|m| hub.member_named(m)))
            .map(AdminResponse::Privacy)
            .map_err(reply),
        AdminRequest::MemberExport { name } => hub
            .member_export(&hub.member_named(name))
            .map(|(data, attachments)| AdminResponse::MemberExport { data, attachments })
            .map_err(reply),
        AdminRequest::Backup {
            passphrase,
            recipient,
        } => backup(hub, passphrase, recipient).await,
        _ => Err("this hearthd does not know that request".into()),
    };
    result.unwrap_or_else(error)
}

/// One encrypted backup, to the passphrase or the recipient given.
async fn backup(
    hub: &Hub,
    passphrase: Option<String>,
    recipient: Option<String>,
) -> Result<AdminResponse, String> {
    use base64::Engine;
    let key = match (passphrase, recipient) {
        (Some(p), None) if !p.is_empty() => crate::backup::BackupKey::Passphrase(p),
        (None, Some(r)) => crate::backup::BackupKey::Recipient(r),
        _ => return Err("give a passphrase or a recipient, not both".into()),
    };
    let file = hub.backup(key).await.map_err(reply)?;
    Ok(AdminResponse::Backup {
        age_base64: base64::engine::general_purpose::STANDARD.encode(file),
    })
}

fn done(message: String) -> AdminResponse {
    AdminResponse::Done { message }
}

/// The admin reply for a hub error: its text, which says what to do.
fn reply(e: HubError) -> String {
    e.to_string()
}

/// Adds or takes back a grant, in the words the CLI prints.
async fn change_grant(
    hub: &Hub,
    id: DeviceId,
    filter: &str,
    direction: Direction,
    add: bool,
) -> Result<AdminResponse, HubError> {
    let change = hub.change_grant(&id, filter, direction, add).await?;
    if change == GrantChange::Unchanged {
        return Ok(done(format!(
            "{id} already had that grant; nothing changed"
        )));
    }
    let what = if add { "grant" } else { "revoke-grant" };
    let direction = match direction {
        Direction::Publish => "publish",
        Direction::Subscribe => "subscribe",
    };
    Ok(done(format!("{what} {direction} {filter} for {id}")))
}

/// Where and when the settings in force were read, for `status`.
fn config_loaded(hub: &Hub) -> hearth_protocol::admin::ConfigLoaded {
    let loaded = crate::sync::lock(&hub.loaded).clone();
    hearth_protocol::admin::ConfigLoaded {
        file: loaded.file.map(|f| f.display().to_string()),
        loaded_at: loaded.at,
        reloads: loaded.reloads,
        refused: loaded
            .refused
            .map(|(at, message)| hearth_protocol::admin::RefusedReload { at, message }),
    }
}
