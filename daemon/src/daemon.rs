//! Starts and stops the hub: prepares the data dir, CA, database and
//! registry, binds every listener before serving anything, starts the
//! broker, and drains on shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_protocol::admin::ListenerInfo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::audit::Audit;
use crate::broker::{self, BrokerLimits};
use crate::ca::{HubCa, ServerNames};
use crate::config::Config;
use crate::discovery::Advertiser;
use crate::edge::tls::{server_config, ClientAuth, ServerCertificate};
use crate::edge::{self, Edge, EdgeLimits, ListenerKind};
use crate::enroll;
use crate::hub::retained::RetainLimits;
use crate::hub::sessions::{RetainedTopics, Sessions};
use crate::hub::{Hub, HubPorts, Retention};
use crate::mailbox::Mailbox;
use crate::pairing::PairingWindows;
use crate::registry::Registry;
use crate::store::StoreHandle;

/// How long shutdown waits for connections to close.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// How often the hub checks whether its addresses changed.
const ADDRESS_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// How often certificates past their renewal grace are retired.
const RETIRE_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The configuration or the data dir cannot be used.
    #[error("{0}")]
    Config(String),
    /// Something the hub needs did not start.
    #[error("{0}")]
    Startup(String),
    /// The broker stopped routing while the hub ran.
    #[error("{0}")]
    BrokerDead(String),
}

impl DaemonError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Config(_) => crate::exit::CONFIG,
            DaemonError::Startup(_) => crate::exit::STARTUP,
            DaemonError::BrokerDead(_) => crate::exit::BROKER_DEAD,
        }
    }
}

/// Runs the hub until `stop` is cancelled (or the broker dies).
pub async fn run(
    config: Config,
    data_dir: PathBuf,
    stop: CancellationToken,
) -> Result<(), DaemonError> {
    let started = Instant::now();
    let config_error = |e: &dyn std::fmt::Display| DaemonError::Config(e.to_string());
    crate::datadir::prepare(&data_dir).map_err(|e| config_error(&e))?;
    tracing::info!(data_dir = %data_dir.display(), "state directory");
    // Bind everything before creating or serving anything: a failed bind
    // is a clear fatal error, not a half-started hub.
    let mqtt = bind("mqtt.listen", config.mqtt.listen).await?;
    let enroll_listener = bind("enroll.listen", config.enroll.listen).await?;
    let dev = match config.dev.listen {
        Some(addr) => Some(bind("dev.listen", addr).await?),
        None => None,
    };
    let metrics = match config.metrics.enabled {
        true => Some(bind("metrics.listen", config.metrics.listen).await?),
        false => None,
    };
    let store = StoreHandle::open(&data_dir)
        .map_err(|e| DaemonError::Config(format!("data dir {}: {e}", data_dir.display())))?;
    let new_hub = !data_dir.join("ca.pem").exists() && !data_dir.join("ca.key").exists();
    let ca = Arc::new(HubCa::load_or_create(&data_dir).map_err(|e| config_error(&e))?);
    if new_hub {
        // Said loudly: a hub started on the wrong directory is a new
        // household to every device, and the family only sees refusals.
        tracing::warn!(
            data_dir = %data_dir.display(),
            "NEW HUB: no CA was in this state directory, so a new hub CA was made. Devices \
             paired with any other hub (another state directory) are refused here and must be \
             paired again. If this hub already had devices, stop it and start it with \
             --data-dir pointing at its state directory."
        );
    }
    let alias = crate::ca::host_name(&ca.fingerprint());
    // `[hub] name` may rename the hub; `hearth-<8 hex>.local` stays a
    // server name either way (devices may rely on it).
    let hub_name = config
        .hub
        .name
        .clone()
        .unwrap_or_else(|| crate::ca::instance_name(&ca.fingerprint()));
    let names = ServerNames::discover(&hub_name).with_alias(alias.clone());
    let identity = ca
        .server_identity(&data_dir, &names)
        .map_err(|e| config_error(&e))?;
    let registry = Arc::new(Registry::new(
        store
            .with(|s| s.active_certificates())
            .map_err(|e| config_error(&e))?,
        store
            .with(|s| s.revoked_fingerprints())
            .map_err(|e| config_error(&e))?,
    ));

    let admin_path = config.resolved_admin_socket(&data_dir);
    let admin_listener = admin::bind(&admin_path).map_err(|e| config_error(&e))?;

    let mut broker = broker::start(BrokerLimits {
        max_connections: config.limits.max_connections,
        max_payload: config.limits.max_payload,
        max_topics: config.limits.max_router_topics,
        max_queued_per_filter: config.limits.max_queued_bytes_per_filter,
        max_queued: config.limits.max_queued_bytes,
    })
    .await
    .map_err(|e| DaemonError::Startup(e.to_string()))?;
    // What every device may read before it sends: the limits it must keep.
    let hub_info = serde_json::to_vec(&config.hub_info()).unwrap_or_default();
    broker::publish_retained(
        &broker.endpoint,
        hearth_protocol::topic::HUB_INFO,
        &hub_info,
    )
    .await
    .map_err(|e| DaemonError::Startup(e.to_string()))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certificate = Arc::new(
        ServerCertificate::new(Arc::clone(&provider), identity)
            .map_err(|e| DaemonError::Startup(e.to_string()))?,
    );
    let tls_setup = |client_auth| {
        server_config(
            Arc::clone(&provider),
            ca.cert_der(),
            Arc::clone(&registry),
            Arc::clone(&certificate),
            client_auth,
        )
        .map_err(|e| DaemonError::Startup(e.to_string()))
    };
    let tls = tls_setup(ClientAuth::Required)?;
    let enroll_tls = tls_setup(ClientAuth::Optional)?;

    let tracker = TaskTracker::new();
    // The audit writer stops last, after the sessions it records have
    // ended, so their last entries are written.
    let audit_stop = CancellationToken::new();
    let audit_tracker = TaskTracker::new();
    let audit = Audit::start(
        store.clone(),
        Duration::from_secs(u64::from(config.audit.retention_days) * 86_400),
        config.audit.max_unidentified_entries_per_minute,
        audit_stop.clone(),
        &audit_tracker,
    );
    let retained = Arc::new(RetainedTopics::new(RetainLimits {
        per_device: config.limits.max_retained_per_device,
        per_device_bytes: config.limits.max_retained_bytes_per_device,
        total: config.limits.max_retained,
        total_bytes: config.limits.max_retained_bytes,
    }));
    let sessions = Arc::new(Sessions::default());
    let (mailbox_link, outbox) = broker
        .mailbox
        .take()
        .ok_or_else(|| DaemonError::Startup("the broker gave no mailbox link".into()))?;
    let observations = Arc::new(crate::hub::device_check::Observations::default());
    let (mailbox, inbox_watch, subscribed) = Mailbox::new(
        &data_dir,
        store.clone(),
        (Arc::clone(&sessions), Arc::clone(&observations)),
        audit.clone(),
        config.mailbox.within(config.limits.max_payload),
        mailbox_link,
    )
    .map_err(|e| config_error(&e))?;
    let mut listeners = vec![ListenerInfo {
        name: "mqtt".into(),
        address: local_addr(&mqtt),
    }];
    listeners.push(ListenerInfo {
        name: "enroll".into(),
        address: local_addr(&enroll_listener),
    });
    if let Some(dev) = &dev {
        listeners.push(ListenerInfo {
            name: "dev".into(),
            address: local_addr(dev),
        });
    }
    if let Some(metrics) = &metrics {
        listeners.push(ListenerInfo {
            name: "metrics".into(),
            address: local_addr(metrics),
        });
    }
    listeners.push(ListenerInfo {
        name: "admin".into(),
        address: admin_path.display().to_string(),
    });
    let ports = HubPorts {
        mqtt: port_of(&mqtt),
        enroll: port_of(&enroll_listener),
    };
    let windows = Arc::new(PairingWindows::default());
    // Discovery starts last among the fallible steps: nothing is announced
    // for a hub that then fails to start.
    let advertiser = if config.discovery.enabled {
        Some(
            Advertiser::start(&config.discovery, &ca.fingerprint(), ports)
                .map_err(|e| DaemonError::Startup(e.to_string()))?,
        )
    } else {
        None
    };
    let hub = Arc::new(Hub {
        store: store.clone(),
        ca: Arc::clone(&ca),
        registry,
        sessions,
        listeners: listeners.clone(),
        started: Instant::now(),
        audit,
        retained,
        broker: broker.endpoint.clone(),
        windows: Arc::clone(&windows),
        ports,
        data_dir: data_dir.clone(),
        retention: Retention {
            audit_days: config.audit.retention_days,
            message_secs: config.mailbox.expiry_secs,
        },
        observations,
        check_limits: crate::hub::device_check::CheckLimits {
            telemetry_per_sec: crate::hub::device_check::TELEMETRY_PER_SEC,
        },
        metrics: Arc::default(),
        bridged: tokio::sync::watch::Sender::new(
            store
                .with(|s| s.bridged_devices())
                .map_err(|e| config_error(&e))?
                .into_iter()
                .collect(),
        ),
    });

    let edge = Arc::new(Edge {
        tls: TlsAcceptor::from(tls),
        limits: EdgeLimits {
            max_packet: config.limits.max_payload,
            handshake_timeout: config.limits.handshake_timeout(),
            max_subscriptions: config.limits.max_subscriptions_per_client,
            max_session_expiry: Duration::from_secs(config.limits.max_session_expiry_secs),
            // Validated to 1..=100.
            max_inflight: u16::try_from(config.limits.max_inflight).unwrap_or(100),
        },
        hub: Arc::clone(&hub),
        slots: Arc::new(Semaphore::new(config.limits.max_connections)),
        large_packets: Arc::new(Semaphore::new(config.limits.max_large_packet_bytes / 1024)),
        admission: crate::admission::Admission::new(
            config.limits.max_unauthenticated_per_source,
            config.limits.max_unauthenticated,
        ),
        inbox_watch: Some(inbox_watch),
    });

    tracker.spawn(edge::serve(
        mqtt,
        ListenerKind::MutualTls,
        Arc::clone(&edge),
        stop.child_token(),
        tracker.clone(),
    ));
    if let Some(dev) = dev {
        tracing::warn!(
            address = %local_addr(&dev),
            "the plaintext development listener is on: any local client gets full access without a certificate"
        );
        tracker.spawn(edge::serve(
            dev,
            ListenerKind::Development,
            Arc::clone(&edge),
            stop.child_token(),
            tracker.clone(),
        ));
    }
    tracker.spawn(enroll::serve(
        enroll_listener,
        TlsAcceptor::from(enroll_tls),
        Arc::clone(&hub),
        // Its own budget: every EST client is unauthenticated while it is
        // connected, and the MQTT listener's handshakes must not starve it.
        crate::admission::Admission::new(
            config.limits.max_unauthenticated_per_source,
            config
                .limits
                .max_unauthenticated
                .min(enroll::MAX_CONNECTIONS),
        ),
        stop.child_token(),
        tracker.clone(),
    ));
    tracker.spawn(mailbox.run(outbox, subscribed, stop.child_token()));
    tracker.spawn(retire_renewed(Arc::clone(&hub), stop.child_token()));
    // The bridge task runs even while `[bridge] enabled` is off: it then
    // only waits (no connection, no subscription in the router), so a
    // reload that switches it on needs no restart. Reload sends new
    // settings on `bridge_settings`; it lives until the daemon ends.
    let (bridge_settings, bridge_watch) = tokio::sync::watch::channel(config.bridge.clone());
    let bridge_link = broker
        .bridge
        .take()
        .ok_or_else(|| DaemonError::Startup("the broker gave no bridge link".into()))?;
    tracker.spawn(crate::bridge::run(
        Arc::clone(&hub),
        bridge_link,
        bridge_watch,
        config.limits.max_payload,
        stop.child_token(),
    ));
    if let Some(metrics) = metrics {
        tracker.spawn(crate::scrape::serve(
            metrics,
            Arc::clone(&hub),
            stop.child_token(),
            tracker.clone(),
        ));
    }
    tracker.spawn(admin::serve(
        admin_listener,
        hub,
        stop.child_token(),
        tracker.clone(),
    ));
    tracker.spawn(follow_addresses(
        Arc::clone(&ca),
        data_dir.clone(),
        names,
        alias,
        certificate,
        stop.child_token(),
    ));
    if let Some(advertiser) = advertiser {
        tracker.spawn(advertiser.run(windows, stop.child_token()));
    }

    let summary: Vec<String> = listeners
        .iter()
        .map(|l| format!("{}={}", l.name, l.address))
        .collect();
    tracing::info!(
        listeners = %summary.join(" "),
        startup_ms = started.elapsed().as_millis() as u64,
        "hearthd ready"
    );
    notify_service_manager(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);

    let outcome = tokio::select! {
        _ = stop.cancelled() => Ok(()),
        watched = broker.watch(stop.child_token()) => match watched {
            Ok(()) => Ok(()),
            Err(e) => Err(DaemonError::BrokerDead(e.to_string())),
        },
    };
    if let Err(e) = &outcome {
        tracing::error!(error = %e, "the broker stopped routing");
    }
    tracing::info!("shutting down");
    notify_service_manager(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("draining connections"),
    ]);
    stop.cancel();
    tracker.close();
    if tokio::time::timeout(DRAIN_LIMIT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections did not close within {DRAIN_LIMIT:?}; exiting anyway");
    }
    audit_stop.cancel();
    audit_tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), audit_tracker.wait()).await;
    let _ = std::fs::remove_file(&admin_path);
    drop(bridge_settings);
    drop(store);
    outcome
}

/// Tells systemd (Type=notify) how the hub is doing. Does nothing when
/// `$NOTIFY_SOCKET` is unset (not started by systemd, or in tests); a
/// failure is logged, not fatal: the hub serves either way.
fn notify_service_manager(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager ($NOTIFY_SOCKET)");
    }
}

async fn bind(key: &str, addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| DaemonError::Config(format!("{key} = {addr}: cannot listen: {e}")))
}

fn port_of(listener: &TcpListener) -> u16 {
    listener.local_addr().map(|a| a.port()).unwrap_or_default()
}

/// Retires certificates whose renewal grace ended without the successor
/// being used (the device renewed, then never came back with it).
async fn retire_renewed(hub: Arc<Hub>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RETIRE_CHECK_INTERVAL) => {}
        }
        match hub.retire_due(crate::unix_now()) {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "renewal grace over; previous certificates retired"),
            Err(e) => tracing::warn!(error = %e, "cannot retire renewed certificates"),
        }
    }
}

fn local_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// Re-issues the server certificate when the hub's names or addresses
/// change (a DHCP lease, a new interface), without a restart.
async fn follow_addresses(
    ca: Arc<HubCa>,
    data_dir: PathBuf,
    mut names: ServerNames,
    alias: String,
    certificate: Arc<ServerCertificate>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(ADDRESS_CHECK_INTERVAL) => {}
        }
        let now = ServerNames::discover(&names.host).with_alias(alias.clone());
        if now == names {
            continue;
        }
        let ca = Arc::clone(&ca);
        let dir = data_dir.clone();
        let next = now.clone();
        let issued = tokio::task::spawn_blocking(move || ca.server_identity(&dir, &next)).await;
        match issued {
            Ok(Ok(identity)) => match certificate.replace(identity) {
                Ok(()) => {
                    tracing::info!("addresses changed; server certificate re-issued");
                    names = now;
                }
                Err(e) => tracing::warn!(error = %e, "cannot use the re-issued certificate"),
            },
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot re-issue the server certificate"),
            Err(e) => tracing::warn!(error = %e, "re-issue task failed"),
        }
    }
}
