//! The optional Prometheus endpoint (`[metrics] enabled`): `GET /metrics`
//! over plain HTTP on its own listener (loopback by default), answered
//! from the hub's counters and a snapshot read at the request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::Hub;
use crate::metrics::Snapshot;

/// Scrapes served at once; a scraper needs one.
const CONCURRENT: usize = 4;
/// A request's headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves scrapes until `stop`.
pub async fn serve(
    listener: TcpListener,
    hub: Arc<Hub>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENT));
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Busy: the scraper tries again at its next interval.
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let hub = Arc::clone(&hub);
        let stop = stop.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request| {
                let hub = Arc::clone(&hub);
                async move { Ok::<_, std::convert::Infallible>(answer(&hub, &request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            // A scrape in flight is answered before the connection closes.
            let _ = tokio::time::timeout(HEADER_TIMEOUT, connection).await;
        });
    }
}

async fn answer<B>(hub: &Hub, request: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "only /metrics here\n".into());
    }
    if request.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    // What was recorded before the scrape is in its audit count.
    hub.audit.flush().await;
    let mut response = reply(StatusCode::OK, hub.metrics.encode(snapshot(hub)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// What is read at a scrape. A figure the hub cannot read is reported as
/// 0 and logged, rather than failing the scrape.
fn snapshot(hub: &Hub) -> Snapshot {
    let (mailbox_messages, mailbox_bytes, oldest) =
        hub.store.with(|s| s.mailbox_totals()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "metrics: cannot read the mailbox totals");
            (0, 0, None)
        });
    let audit_rows = hub.store.with(|s| s.audit_rows()).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "metrics: cannot count the audit");
        0
    });
    Snapshot {
        connected_devices: hub.sessions.connected_devices().len() as u64,
        mailbox_messages,
        mailbox_bytes,
        mailbox_oldest_secs: oldest.map_or(0, |at| (crate::unix_now() - at).max(0) as u64),
        audit_rows,
        rss_bytes: rss_bytes().unwrap_or(0),
        open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
    }
}

/// Resident memory from `/proc/self/status` (`VmRSS`, in kB whatever the
/// page size: a Raspberry Pi 5's kernel uses 16 KiB pages).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
