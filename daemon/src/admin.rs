//! The admin socket: a Unix socket (mode 0660) taking one JSON request per
//! line from the `hearth` CLI and answering one JSON line.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hearth_protocol::admin::{
    AdminRequest, AdminResponse, ListenerInfo, MemberInfo, PairingTicket, StatusReport,
};
use hearth_protocol::pairing::PairingUri;
use hearth_protocol::policy::Direction;
use hearth_protocol::{DeviceId, Label, MemberName, Owner};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::Event;
use crate::ca::HubCa;
use crate::hub::household::GrantChange;
use crate::hub::{Hub, HubError, Retention, Revoked};

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
        })),
        AdminRequest::MemberAdd { name, role } => hub
            .add_member(name.clone(), role)
            .map(|()| AdminResponse::Member(MemberInfo { name, role }))
            .map_err(reply),
        AdminRequest::MemberList => hub
            .store
            .with(|s| s.members())
            .map(|members| AdminResponse::Members { members })
            .map_err(|e| e.to_string()),
        AdminRequest::DeviceIssue {
            owner,
            label,
            csr_pem,
        } => {
            let owner = match owner {
                Owner::Member(name) => Owner::Member(hub.member_named(name)),
                Owner::Service => Owner::Service,
            };
            hub.issue_device(owner, label, &csr_pem)
                .map(AdminResponse::DeviceIssued)
                .map_err(reply)
        }
        AdminRequest::DeviceList => hub
            .store
            .with(|s| s.devices())
            .map(|devices| AdminResponse::Devices { devices })
            .map_err(|e| e.to_string()),
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
        } => open_pairing(hub, hub.member_named(member), label, ttl_secs, host),
        AdminRequest::PairUnlock { address } => {
            if hub.windows.unlock(address) {
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
        AdminRequest::MailboxStatus => hub
            .store
            .with(|s| s.mailbox_pending())
            .map(|pending| AdminResponse::Mailbox { pending })
            .map_err(|e| e.to_string()),
        AdminRequest::ContactList => hub
            .store
            .with(|s| s.contact_rules())
            .map(|rules| AdminResponse::Contacts { rules })
            .map_err(|e| e.to_string()),
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
        } => {
            // What was recorded before the question is in the answer.
            hub.audit.flush().await;
            hub.store
                .with(|s| s.audit(device.as_ref(), since, after_id, limit.clamp(1, 10_000)))
                .map(|entries| AdminResponse::Audit { entries })
                .map_err(|e| e.to_string())
        }
        AdminRequest::PrivacyReport { member } => privacy_report(hub, member),
        AdminRequest::MemberExport { name } => member_export(hub, name),
        AdminRequest::Backup {
            passphrase,
            recipient,
        } => backup(hub, passphrase, recipient).await,
        _ => Err("this hearthd does not know that request".into()),
    };
    result.unwrap_or_else(error)
}

/// What the hub holds, per kind, with how long each is kept.
fn privacy_report(hub: &Hub, member: Option<MemberName>) -> Result<AdminResponse, String> {
    use hearth_protocol::admin::PrivacyReport;
    let Retention {
        audit_days,
        message_secs,
    } = hub.retention;
    let message_time = if message_secs % 86_400 == 0 {
        format!("{} days", message_secs / 86_400)
    } else {
        format!("{message_secs} seconds")
    };
    let kept = |kind: &str| -> String {
        match kind {
            "members" | "contact rules" => "until the member is removed".into(),
            "devices (id, label, owner, day last seen)" => format!(
                "until the device is removed; the day last seen is dropped after {audit_days} days"
            ),
            "certificates (fingerprints)" => {
                "while the device exists; after removal only the fingerprint, so it stays refused"
                    .into()
            }
            "audit entries" => format!("{audit_days} days"),
            _ => format!("until delivered, at most {message_time}"),
        }
    };
    if let Some(name) = &member {
        if hub
            .store
            .with(|s| s.member_role(name))
            .map_err(|e| e.to_string())?
            .is_none()
        {
            return Err(format!("no member named {name:?}"));
        }
    }
    let items = hub
        .store
        .with(|s| s.privacy_items(member.as_ref(), &kept))
        .map_err(|e| e.to_string())?;
    Ok(AdminResponse::Privacy(PrivacyReport {
        member,
        items,
        never_stored: [
            "delivered messages: deleted, and their key destroyed, when the last device confirms",
            "passwords, birthdates, addresses or photos of people (never asked for)",
            "device private keys (made on the device, never sent)",
            "what devices publish besides messages (telemetry, commands): passed on, never stored",
            "message text in the audit or the logs",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect(),
    }))
}

/// Everything the hub holds about a member (GDPR Art. 15/20): the member,
/// their devices, contact rules, audit entries of their devices, and the
/// messages waiting for them or sent by them, opened (attachments apart).
fn member_export(hub: &Hub, name: MemberName) -> Result<AdminResponse, String> {
    use serde_json::{json, Value};
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let (data, attachments) = hub.store.with(|store| -> Result<_, String> {
        let role = store
            .member_role(&name)
            .map_err(|e| err(&e))?
            .ok_or_else(|| format!("no member named {name:?}"))?;
        let owner = Owner::Member(name.clone());
        let devices: Vec<_> = store
            .devices()
            .map_err(|e| err(&e))?
            .into_iter()
            .filter(|d| d.owner == owner)
            .collect();
        let contacts: Vec<_> = store
            .contact_rules()
            .map_err(|e| err(&e))?
            .into_iter()
            .filter(|r| r.from == name || r.to == name)
            .collect();
        let mut audit = Vec::new();
        for d in &devices {
            audit.extend(
                store
                    .audit(Some(&d.id), None, None, 100_000)
                    .map_err(|e| err(&e))?,
            );
        }
        // The key is loaded only to open; it is never made here.
        let key = crate::mailbox::seal::MailboxKey::load(&hub.data_dir, 1).map_err(|e| err(&e))?;
        let mut attachments = Vec::new();
        let mut open = |id: &str, direction: &str| -> Result<Option<Value>, String> {
            let Some(m) = store.message(id).map_err(|e| err(&e))? else {
                return Ok(None);
            };
            let plain = key
                .open(&m.id, &m.recipient, m.wrapped_key.as_deref(), &m.sealed)
                .ok_or_else(|| format!("message {} does not open", m.id))?;
            let mut content: Value = serde_json::from_slice(&plain).map_err(|e| err(&e))?;
            if let Some(data) = content.get("data").and_then(Value::as_str) {
                let ext = content
                    .get("content_type")
                    .and_then(Value::as_str)
                    .and_then(|t| t.split('/').nth(1))
                    .filter(|e| e.chars().all(|c| c.is_ascii_alphanumeric()))
                    .unwrap_or("bin");
                let file = format!("{}.{ext}", m.id);
                attachments.push((file.clone(), data.to_owned()));
                content["data"] = Value::String(format!("attachments/{file}"));
            }
            Ok(Some(json!({
                "id": m.id, "direction": direction, "from_device": m.sender,
                "to": m.recipient, "sent_at": m.sent_at, "expires_at": m.expires_at,
                "content": content,
            })))
        };
        let mut messages = Vec::new();
        for d in &devices {
            for id in store.pending_ids(&d.id).map_err(|e| err(&e))? {
                messages.extend(open(&id, "waiting for this member")?);
            }
            for id in store.messages_sent_by(&d.id).map_err(|e| err(&e))? {
                messages.extend(open(&id, "sent by this member, not yet delivered")?);
            }
        }
        let data = json!({
            "format": "hearth-member-export-v1",
            "exported_at": crate::unix_now(),
            "member": {"name": name, "role": role},
            "devices": devices,
            "contact_rules": contacts,
            "messages": messages,
            "audit": audit,
        });
        Ok((data, attachments))
    })?;
    // Only the export is audited, not whose.
    hub.admin_audit("member-export", None, "exported".into());
    Ok(AdminResponse::MemberExport { data, attachments })
}

/// One encrypted backup: the snapshot and the keys read under the store
/// lock (so they belong together), encrypted after it is released, on a
/// blocking thread.
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
    let file = hub
        .store
        .with(|s| crate::backup::create(s, &hub.data_dir, &key))
        .map_err(|e| e.to_string())?;
    hub.admin_audit("backup", None, "encrypted backup made".into());
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

fn open_pairing(
    hub: &Hub,
    member: hearth_protocol::MemberName,
    label: Label,
    ttl_secs: u64,
    host: Option<String>,
) -> Result<AdminResponse, String> {
    if hub
        .store
        .with(|s| s.member_role(&member))
        .map_err(|e| e.to_string())?
        .is_none()
    {
        return Err(HubError::NoSuchMember(member).to_string());
    }
    if ttl_secs == 0 || ttl_secs > crate::pairing::MAX_TTL.as_secs() {
        return Err("the window must stay open between 1 second and 24 hours".into());
    }
    let explicit = host.is_some();
    let host = host
        .or_else(|| default_host(&hub.listeners))
        .unwrap_or_else(|| lan_host(&hub.ca));
    check_pairing_host(
        &host,
        explicit,
        &hub.listeners,
        &crate::ca::ServerNames::discover(&crate::ca::instance_name(&hub.ca.fingerprint())),
    )?;
    let (id, token, expires_at) = hub.windows.open(
        member.clone(),
        label,
        std::time::Duration::from_secs(ttl_secs),
    );
    let uri = PairingUri {
        host,
        port: hub.ports.enroll,
        mqtt_port: hub.ports.mqtt,
        ca_sha256: hex::encode(hub.ca.fingerprint()),
        token: token.clone(),
    }
    .to_string();
    if let Err(e) = uri.parse::<PairingUri>() {
        hub.windows.cancel(Some(id));
        return Err(format!("cannot build the pairing URI: {e}"));
    }
    hub.admin_audit("pair-open", None, format!("window {id}, {ttl_secs}s"));
    Ok(AdminResponse::PairOpened(PairingTicket {
        id,
        token,
        uri,
        expires_at,
    }))
}

/// Refuses a pairing host that devices could not reach the hub at: an
/// address neither the enrollment nor the MQTT listener is bound to (the
/// hub listening on loopback only, say), with what to do about it. A name
/// other than this machine's is taken on trust: checking it needs DNS.
fn check_pairing_host(
    host: &str,
    explicit: bool,
    listeners: &[ListenerInfo],
    machine: &crate::ca::ServerNames,
) -> Result<(), String> {
    let bound = |name: &str| {
        listeners
            .iter()
            .find(|l| l.name == name)
            .and_then(|l| l.address.parse::<std::net::SocketAddr>().ok())
    };
    let (Some(enroll), Some(mqtt)) = (bound("enroll"), bound("mqtt")) else {
        return Ok(());
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let lower = bare.to_ascii_lowercase();
    let candidates: Vec<std::net::IpAddr> = if let Ok(ip) = bare.parse() {
        vec![ip]
    } else if lower == "localhost" {
        vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()]
    } else if machine.dns.contains(&lower) || lower.ends_with(".local") {
        // This machine by name, or an mDNS name (ours): its LAN addresses.
        machine
            .ips
            .iter()
            .copied()
            .filter(|ip| !ip.is_loopback())
            .collect()
    } else {
        return Ok(());
    };
    let local = |ip: &std::net::IpAddr| ip.is_loopback() || machine.ips.contains(ip);
    let serves = |listener: std::net::SocketAddr, ip: &std::net::IpAddr| match listener.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => ip.is_ipv4() && local(ip),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => local(ip),
        bound => bound == *ip,
    };
    if candidates
        .iter()
        .any(|ip| serves(enroll, ip) && serves(mqtt, ip))
    {
        return Ok(());
    }
    let chosen = if explicit {
        format!("the host given, {host},")
    } else {
        format!("this machine's network address ({host})")
    };
    let loopback_only = enroll.ip().is_loopback() || mqtt.ip().is_loopback();
    let fix = if loopback_only {
        format!(
            "To pair devices on the home network, set `listen = \"0.0.0.0:{}\"` under [enroll] \
             and `listen = \"0.0.0.0:{}\"` under [mqtt] in hearthd's config and restart it; to \
             pair a device on this machine, pass --host {}",
            enroll.port(),
            mqtt.port(),
            enroll.ip()
        )
    } else {
        format!(
            "Pass --host with an address the hub listens on ({}), or change [enroll] listen and \
             [mqtt] listen in hearthd's config",
            enroll.ip()
        )
    };
    Err(format!(
        "no pairing window opened: devices could not reach the hub at {chosen} because it \
         listens for enrollment on {enroll} and for MQTT on {mqtt}. {fix}"
    ))
}

/// The host a pairing URI names by default when enrollment is bound to one
/// LAN address (else the caller falls back to [`lan_host`]).
fn default_host(listeners: &[ListenerInfo]) -> Option<String> {
    listeners
        .iter()
        .find(|l| l.name == "enroll")
        .and_then(|l| l.address.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
        .map(|ip| ip.to_string())
}

/// The address a device on the LAN most likely reaches the hub by: the
/// first IPv4 address of a non-loopback interface, else the hub's mDNS name.
fn lan_host(ca: &HubCa) -> String {
    let names = crate::ca::ServerNames::discover(&crate::ca::instance_name(&ca.fingerprint()));
    names
        .ips
        .iter()
        .find(|ip| match ip {
            std::net::IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
            std::net::IpAddr::V6(_) => false,
        })
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| format!("{}.local", names.host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listening(enroll: &str, mqtt: &str) -> Vec<ListenerInfo> {
        vec![
            ListenerInfo {
                name: "mqtt".into(),
                address: mqtt.into(),
            },
            ListenerInfo {
                name: "enroll".into(),
                address: enroll.into(),
            },
        ]
    }

    fn machine() -> crate::ca::ServerNames {
        crate::ca::ServerNames {
            host: "den".into(),
            dns: ["den", "den.local", "localhost"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ips: ["127.0.0.1", "::1", "192.0.2.10", "2001:db8::10"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
        }
    }

    #[test]
    fn a_wildcard_listener_serves_every_address_of_the_machine() {
        let all = listening("0.0.0.0:8443", "0.0.0.0:8883");
        for host in ["192.0.2.10", "127.0.0.1", "localhost", "den.local", "den"] {
            assert!(
                check_pairing_host(host, true, &all, &machine()).is_ok(),
                "{host}"
            );
        }
        // Not this machine's address; IPv6 on an IPv4-only wildcard.
        assert!(check_pairing_host("192.0.2.99", true, &all, &machine()).is_err());
        assert!(check_pairing_host("[2001:db8::10]", true, &all, &machine()).is_err());
        let dual = listening("[::]:8443", "[::]:8883");
        assert!(check_pairing_host("[2001:db8::10]", true, &dual, &machine()).is_ok());
        // Another machine's name cannot be checked without DNS: trusted.
        assert!(check_pairing_host("hub.example", true, &all, &machine()).is_ok());
    }

    #[test]
    fn a_loopback_hub_refuses_the_lan_address_and_says_what_to_change() {
        let lo = listening("127.0.0.1:8443", "127.0.0.1:8883");
        let err = check_pairing_host("192.0.2.10", false, &lo, &machine()).unwrap_err();
        assert!(err.contains("listen = \"0.0.0.0:8443\""), "{err}");
        assert!(err.contains("listen = \"0.0.0.0:8883\""), "{err}");
        assert!(err.contains("--host 127.0.0.1"), "{err}");
        assert!(check_pairing_host("den.local", false, &lo, &machine()).is_err());
        assert!(check_pairing_host("127.0.0.1", true, &lo, &machine()).is_ok());
        // Both listeners must be reachable at the host.
        let split = listening("0.0.0.0:8443", "127.0.0.1:8883");
        assert!(check_pairing_host("192.0.2.10", true, &split, &machine()).is_err());
    }

    #[test]
    fn the_default_host_is_the_one_lan_address_enrollment_is_bound_to() {
        assert_eq!(
            default_host(&listening("192.0.2.10:8443", "192.0.2.10:8883")).as_deref(),
            Some("192.0.2.10")
        );
        assert_eq!(
            default_host(&listening("127.0.0.1:8443", "127.0.0.1:8883")),
            None
        );
    }
}
