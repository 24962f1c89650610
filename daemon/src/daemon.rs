//! Starts and stops the hub: prepares the data dir, CA, database and
//! registry, binds every listener before serving anything, starts the
//! broker, applies reloaded settings, and drains on shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hearth_protocol::admin::ListenerInfo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
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
use crate::edge::{self, Edge, ListenerKind};
use crate::enroll;
use crate::hub::retained::RetainLimits;
use crate::hub::sessions::{RetainedTopics, Sessions};
use crate::hub::{Hub, HubPorts};
use crate::mailbox::Mailbox;
use crate::pairing::PairingWindows;
use crate::registry::Registry;
use crate::reload::{ConfigSource, ConfigWatch, Loaded};
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

/// Runs the hub until `stop` is cancelled (or the broker dies). `config`
/// was read from `source`; each message on `reloads` (SIGHUP) reads it
/// again and applies what can change without a restart.
pub async fn run(
    (config, source): (Config, ConfigSource),
    data_dir: PathBuf,
    reloads: mpsc::Receiver<()>,
    stop: CancellationToken,
) -> Result<(), DaemonError> {
    let started = Instant::now();
    let loaded = Arc::new(Mutex::new(Loaded {
        file: source
            .file
            .as_ref()
            .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone())),
        at: crate::unix_now(),
        ..Loaded::default()
    }));
    let (config_tx, config_watch) = watch::channel(Arc::new(config.clone()));
    let config_error = |e: &dyn std::fmt::Display| DaemonError::Config(e.to_string());
    crate::datadir::prepare(&data_dir).map_err(|e| config_error(&e))?;
    tracing::info!(data_dir = %data_dir.display(), "state directory");
    // The bridge's files are checked before anything is served: a CA or
    // key that does not read is a config error (exit 78), not a bridge
    // that silently never connects.
    crate::bridge::link::check_files(&config.bridge, config.limits.max_payload)
        .map_err(|e| config_error(&e))?;
    // Bind everything before creating or serving anything: a failed bind
    // is a clear fatal error, not a half-started hub.
    let mqtt = bind("mqtt.listen", config.mqtt.listen).await?;
    let enroll_listener = bind("enroll.listen", config.enroll.listen).await?;
    let dev = match config.dev.listen {
        Some(addr) => Some(bind("dev.listen", addr).await?),
        None => None,
    };
    let web_listener = match config.web.enabled {
        true => Some(bind("web.listen", config.web.listen).await?),
        false => None,
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

    // The router and every device's connection run on the edge's thread;
    // it ends when `run` returns.
    let edge_thread = EdgeThread::start()?;
    let mut broker = edge_thread
        .runtime
        .spawn(broker::start(BrokerLimits {
            max_connections: config.limits.max_connections,
            max_payload: config.limits.max_payload,
            max_topics: config.limits.max_router_topics,
            max_queued_per_filter: config.limits.max_queued_bytes_per_filter,
            max_queued: config.limits.max_queued_bytes,
        }))
        .await
        .map_err(|e| DaemonError::Startup(format!("the broker did not start: {e}")))?
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
    let web_tls = tls_setup(ClientAuth::None)?;

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
    if let Some(web) = &web_listener {
        listeners.push(ListenerInfo {
            name: "web".into(),
            address: local_addr(web),
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
        config: config_watch.clone(),
        loaded,
        observations,
        check_limits: crate::hub::device_check::CheckLimits {
            telemetry_per_sec: crate::hub::device_check::TELEMETRY_PER_SEC,
        },
        metrics: Arc::default(),
        join_codes: Arc::default(),
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
        hub: Arc::clone(&hub),
        slots: Arc::new(Semaphore::new(config.limits.max_connections)),
        large_packets: Arc::new(Semaphore::new(config.limits.max_large_packet_bytes / 1024)),
        admission: crate::admission::Admission::new(
            config.limits.max_unauthenticated_per_source,
            config.limits.max_unauthenticated,
        ),
        inbox_watch: Some(inbox_watch.clone()),
    });

    // Each MQTT listener is served on the edge's thread.
    let serve_on_edge = |listener, kind| -> Result<(), DaemonError> {
        let listener = edge_thread.adopt(listener)?;
        let serve = edge::serve(
            listener,
            kind,
            Arc::clone(&edge),
            stop.child_token(),
            tracker.clone(),
        );
        tracker.spawn_on(serve, &edge_thread.runtime);
        Ok(())
    };
    serve_on_edge(mqtt, ListenerKind::MutualTls)?;
    if let Some(dev) = dev {
        tracing::warn!(
            address = %local_addr(&dev),
            "the plaintext development listener is on: any local client gets full access without a certificate"
        );
        serve_on_edge(dev, ListenerKind::Development)?;
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
    tracker.spawn(on_own_thread(
        "hearth-mailbox",
        mailbox.run(outbox, subscribed, config_watch.clone(), stop.child_token()),
    )?);
    if let (Some(listener), Some((link, link_rx))) = (web_listener, broker.web.take()) {
        let live = crate::web::live::Live::new(link, Some(inbox_watch));
        tracker.spawn(Arc::clone(&live).run(link_rx, stop.child_token()));
        let state = Arc::new(crate::web::WebState {
            hub: Arc::clone(&hub),
            live,
            max_body: config.limits.max_payload,
            large_bodies: tokio::sync::Semaphore::new(crate::web::LARGE_BODIES),
            household: std::sync::Mutex::default(),
        });
        tracker.spawn(crate::web::serve(
            listener,
            TlsAcceptor::from(web_tls),
            state,
            stop.child_token(),
            tracker.clone(),
        ));
    }
    tracker.spawn(retire_renewed(Arc::clone(&hub), stop.child_token()));
    if config.web.enabled {
        tracker.spawn(expire_idle_browsers(Arc::clone(&hub), stop.child_token()));
    }
    // The bridge task runs even while `[bridge] enabled` is off: it then
    // only waits (no connection, no subscription in the router), so a
    // reload that switches it on needs no restart. Reload sends new
    // settings on `bridge_settings`; it lives until the daemon ends.
    let (bridge_settings, bridge_watch) = tokio::sync::watch::channel(config.bridge.clone());
    tracker.spawn(follow_bridge_settings(
        config_watch.clone(),
        bridge_settings,
        stop.child_token(),
    ));
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
    let reload_hub = Arc::clone(&hub);
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
    tracker.spawn(advertise(
        advertiser,
        config_watch,
        (windows, ca.fingerprint(), ports),
        stop.child_token(),
    ));

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
    // Reloads only once the start's READY=1 is out, so systemd never sees
    // a reload's RELOADING=1/READY=1 before it (a SIGHUP during start
    // waits in the channel).
    tracker.spawn(follow_reloads(
        reloads,
        source,
        config_tx,
        reload_hub,
        // The broker was started with this limit; the edge's may go lower.
        config.limits.max_payload,
        stop.child_token(),
    ));

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
/// Every hour, signs out the browsers unused for longer than
/// `web.idle_days` (as now in force).
async fn expire_idle_browsers(hub: Arc<Hub>, stop: CancellationToken) {
    loop {
        let idle = crate::web::idle(&hub.config.borrow());
        match hub.expire_idle_browsers(idle).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "idle browsers signed out"),
            Err(e) => tracing::warn!(error = %e, "cannot sign out idle browsers"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

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

/// Hands the bridge its section of each reloaded configuration (it
/// reconnects when the section changed).
async fn follow_bridge_settings(
    mut config: ConfigWatch,
    bridge: watch::Sender<crate::config::BridgeSection>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = config.changed() => if changed.is_err() { return },
        }
        let section = config.borrow_and_update().bridge.clone();
        bridge.send_if_modified(|running| {
            let modified = *running != section;
            *running = section;
            modified
        });
    }
}

/// Reads the config again on each request (SIGHUP) and puts in force what
/// can change without a restart; see [`reload_once`].
async fn follow_reloads(
    mut requests: mpsc::Receiver<()>,
    source: ConfigSource,
    config: watch::Sender<Arc<Config>>,
    hub: Arc<Hub>,
    broker_max_payload: usize,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            request = requests.recv() => if request.is_none() { return },
        }
        // systemd (v253 on) takes RELOADING=1 only with the time it was
        // sent, to tell this reload from an earlier one.
        let mut reloading = vec![
            sd_notify::NotifyState::Reloading,
            sd_notify::NotifyState::Status("reloading the configuration"),
        ];
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            reloading.push(now);
        }
        notify_service_manager(&reloading);
        reload_once(&source, &config, &hub, broker_max_payload).await;
        if stop.is_cancelled() {
            // Stopping: STOPPING=1 was sent; a READY=1 now would undo it.
            return;
        }
        notify_service_manager(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("serving"),
        ]);
    }
}

/// One reload. A file that does not read, parse or check is refused with
/// the message a start with it prints, and nothing changes; otherwise its
/// live settings go in force (each part reads them from the watch), and
/// each restart-only key it changes is named in a warning.
async fn reload_once(
    source: &ConfigSource,
    config: &watch::Sender<Arc<Config>>,
    hub: &Hub,
    broker_max_payload: usize,
) {
    if source.file.is_none() {
        // Nothing to read again; not counted as a reload in `status`.
        tracing::info!("started on the built-in defaults (no --config file): nothing to reload");
        return;
    }
    let read = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || source.read()).await
    };
    let now = crate::unix_now();
    let new = match read {
        Ok(Ok(new)) => new,
        Ok(Err(e)) => {
            // Word for word what `hearthd` logs when it cannot start.
            tracing::error!("{e}");
            tracing::warn!("reload refused: the settings in force stay");
            crate::sync::lock(&hub.loaded).refused = Some((now, e.to_string()));
            hub.admin_audit("config-reload", None, "refused".into());
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "reload task failed; the settings in force stay");
            return;
        }
    };
    let running = config.borrow().clone();
    let (next, changes) = crate::reload::merge(&running, new, broker_max_payload);
    // The bridge's files (CA, certificate, key, password) must be usable
    // before its settings replace ones that work, as at start.
    if next.bridge != running.bridge {
        let (bridge, max_payload) = (next.bridge.clone(), next.limits.max_payload);
        let checked = tokio::task::spawn_blocking(move || {
            crate::bridge::link::check_files(&bridge, max_payload)
        })
        .await;
        if let Ok(Err(e)) = checked {
            tracing::error!("{e}");
            tracing::warn!("reload refused: the settings in force stay");
            crate::sync::lock(&hub.loaded).refused = Some((now, e.to_string()));
            hub.admin_audit("config-reload", None, "refused".into());
            return;
        }
    }
    for key in &changes.at_restart {
        tracing::warn!("{key} changes at restart; the running value stays until then");
    }
    if next != *running {
        hub.audit.set_limits(
            Duration::from_secs(u64::from(next.audit.retention_days) * 86_400),
            next.audit.max_unidentified_entries_per_minute,
        );
        let info_changed = next.hub_info() != running.hub_info();
        let info = serde_json::to_vec(&next.hub_info()).unwrap_or_default();
        // In force first, then announced: a device that reads the new
        // limits finds them applied.
        config.send_replace(Arc::new(next));
        if info_changed {
            // What devices read before they send: the limits as they are now.
            if let Err(e) =
                broker::publish_retained(&hub.broker, hearth_protocol::topic::HUB_INFO, &info).await
            {
                tracing::warn!(error = %e, "cannot publish the reloaded hub info");
            }
        }
    }
    {
        let mut loaded = crate::sync::lock(&hub.loaded);
        loaded.at = now;
        loaded.reloads += 1;
        loaded.refused = None;
    }
    tracing::info!(
        applied = %changes.applied.join(" "),
        at_restart = %changes.at_restart.join(" "),
        "configuration reloaded"
    );
    hub.admin_audit("config-reload", None, "applied".into());
}

/// Runs the mDNS advertisement (when `[discovery]` enables it) and starts
/// it again, on its new interfaces, when a reload changes `[discovery]`.
/// Pairing windows live in the hub, not here: a restarted advertisement
/// announces the open ones at once.
async fn advertise(
    first: Option<Advertiser>,
    mut config: ConfigWatch,
    (windows, fingerprint, ports): (Arc<PairingWindows>, [u8; 32], HubPorts),
    stop: CancellationToken,
) {
    let mut section = config.borrow_and_update().discovery.clone();
    let mut current = first;
    loop {
        let round = stop.child_token();
        let running = current
            .take()
            .map(|advertiser| tokio::spawn(advertiser.run(Arc::clone(&windows), round.clone())));
        let changed = loop {
            tokio::select! {
                _ = stop.cancelled() => break None,
                changed = config.changed() => {
                    if changed.is_err() {
                        // No more reloads (their task ended): advertise
                        // as now until the hub stops.
                        stop.cancelled().await;
                        break None;
                    }
                    let now = config.borrow_and_update().discovery.clone();
                    if now != section {
                        break Some(now);
                    }
                }
            }
        };
        // Withdraw the old records before announcing new ones: two
        // responders would answer for one name.
        round.cancel();
        if let Some(running) = running {
            let _ = running.await;
        }
        let Some(now) = changed else { return };
        section = now;
        if section.enabled {
            match Advertiser::start(&section, &fingerprint, ports) {
                Ok(advertiser) => {
                    tracing::info!("discovery restarted with the reloaded settings");
                    current = Some(advertiser);
                }
                Err(e) => {
                    tracing::error!(error = %e, "discovery did not restart; the hub is not advertised until the next reload or restart")
                }
            }
        } else {
            tracing::info!("discovery turned off by a reload");
        }
    }
}

/// The thread the broker core runs on: rumqttd's router and every
/// client connection of the MQTT listeners (their accept loops, TLS, the
/// edge's policy, the router link), on a current-thread runtime of its
/// own. The hub's own links to the router (mailbox, web app, bridge,
/// liveness probe) stay where their services run. The rest of the
/// hub (the web app, the admin socket, pairing and enrollment, reload)
/// stays on the shared multi-threaded runtime, where a wait for SQLite is
/// a `block_in_place`.
///
/// Why (issue 20, docs/adr/0004-broker-core-thread.md): at a home's load each
/// message is a wake-up of its own, and what it costs is mostly the code
/// and memory it touches, not the instructions it runs. The
/// multi-threaded scheduler's own machinery (its queues, the LIFO slot,
/// the shared I/O driver, atomics) ran for each wake-up; on a
/// current-thread runtime it is gone (home CPU per message −11 %,
/// instruction-cache misses −9 % under callgrind's cache model), and
/// every task a message crosses (device, router, subscriber) is polled
/// on one thread in the order it was woken.
///
/// Nothing on this thread may wait for the disk: the one store write a
/// connection can cause (retiring a renewed certificate's predecessors)
/// is handed to a blocking thread.
struct EdgeThread {
    runtime: tokio::runtime::Handle,
    /// Dropped with this value: the thread's runtime then shuts down, and
    /// whatever is still spawned on it is dropped (at shutdown after the
    /// drain, as the shared runtime's own shutdown did before).
    _running: tokio::sync::oneshot::Sender<()>,
}

impl EdgeThread {
    fn start() -> Result<EdgeThread, DaemonError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DaemonError::Startup(format!("cannot start the edge runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let (running, ended) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("hearth-edge".to_owned())
            .spawn(move || {
                crate::store::never_wait_on_this_thread();
                runtime.block_on(async {
                    let _ = ended.await;
                });
            })
            .map_err(|e| DaemonError::Startup(format!("cannot start the edge thread: {e}")))?;
        Ok(EdgeThread {
            runtime: handle,
            _running: running,
        })
    }

    /// Moves a listener bound on the shared runtime to this thread's I/O
    /// driver, so that a client's connection wakes this thread directly.
    fn adopt(&self, listener: TcpListener) -> Result<TcpListener, DaemonError> {
        let moved = |e: std::io::Error| {
            DaemonError::Startup(format!("cannot move a listener to the edge's thread: {e}"))
        };
        let listener = listener.into_std().map_err(moved)?;
        let _on_edge = self.runtime.enter();
        TcpListener::from_std(listener).map_err(moved)
    }
}

/// Runs `work` on a thread of its own, with a runtime of its own; the
/// returned future ends when it does.
///
/// For a service that waits for SQLite in line (the mailbox commits with
/// an fsync several times a second under a home's load): on the shared
/// runtime every such wait is a `block_in_place`, which moves the worker
/// and every connection's task to another thread; measured in the home
/// benchmark that move, not the commit, cost a third of the hub's CPU per
/// message (issue 20). On its own current-thread runtime the service
/// waits for the disk alone.
fn on_own_thread<F>(
    name: &str,
    work: F,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, DaemonError>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DaemonError::Startup(format!("cannot start the {name} runtime: {e}")))?;
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            runtime.block_on(work);
            let _ = done.send(());
        })
        .map_err(|e| DaemonError::Startup(format!("cannot start the {name} thread: {e}")))?;
    Ok(async move {
        let _ = finished.await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_edge_thread_never_waits_for_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreHandle::open(dir.path()).unwrap();
        let edge_thread = EdgeThread::start().unwrap();
        let on_edge = store.clone();
        let reached = edge_thread
            .runtime
            .spawn(async move { on_edge.with(|s| s.members().is_ok()) })
            .await;
        if cfg!(debug_assertions) {
            assert!(
                reached.unwrap_err().is_panic(),
                "the edge's thread reached the store"
            );
        } else {
            assert!(reached.unwrap(), "release builds only pay for the wait");
        }
        // Its blocking threads may: that is where a connection's store work goes.
        let blocking = edge_thread
            .runtime
            .spawn(async move {
                tokio::task::spawn_blocking(move || store.with(|s| s.members().is_ok())).await
            })
            .await;
        assert!(blocking.unwrap().unwrap());
    }
}
