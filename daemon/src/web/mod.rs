//! The family web app (docs/WEB.md): HTTPS with the hub's server
//! certificate, the embedded page, and a JSON API through which a signed-in
//! browser calls the same hub operations as the admin socket, judged by its
//! member's role; live updates by server-sent events.

mod api;
mod assets;
pub mod live;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::Hub;
use live::Live;

/// From TCP accept to a complete TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request (body included) may take, live updates excepted.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest body of a request other than a message.
const SMALL_BODY: usize = 16 * 1024;
/// Message bodies read at once (each up to `limits.max_payload`).
pub const LARGE_BODIES: usize = 4;
/// Web connections served at once, at most.
pub const MAX_CONNECTIONS: usize = 128;
/// Web connections from one address at once (a phone's tabs and their
/// live updates).
pub const MAX_PER_SOURCE: usize = 24;

/// The page's policy: its own scripts, styles and pictures only (photos
/// and voice notes are `blob:`/`data:` URLs the page makes), no inline
/// script, no framing, nothing from anywhere else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data: blob:; media-src 'self' data: blob:; \
     connect-src 'self'; manifest-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// What every handler shares.
#[derive(Debug)]
pub struct WebState {
    /// The household.
    pub hub: Arc<Hub>,
    /// The broker link for browsers.
    pub live: Arc<Live>,
    /// The largest request body (a photo message), as for MQTT.
    pub max_body: usize,
    /// Permits to read a message body ([`LARGE_BODIES`]).
    pub large_bodies: tokio::sync::Semaphore,
    /// The household as parents' pages last got it, and when it was made.
    pub household: std::sync::Mutex<Option<(std::time::Instant, Arc<str>)>>,
}

impl WebState {
    /// A browser not used this long is signed out (`web.idle_days`, as
    /// now in force: a reload changes it).
    pub fn idle(&self) -> Duration {
        idle(&self.hub.config.borrow())
    }

    /// What a message may carry now, for the page to fit photos to.
    pub fn message_limits(&self) -> MessageLimits {
        let config = self.hub.config.borrow();
        let limits = config.mailbox.within(config.limits.max_payload);
        MessageLimits {
            max_text_bytes: limits.max_text_bytes,
            max_image_bytes: limits.max_image_bytes,
            max_audio_bytes: limits.max_audio_bytes,
        }
    }
}

/// `web.idle_days` as a duration.
pub fn idle(config: &crate::config::Config) -> Duration {
    Duration::from_secs(u64::from(config.web.idle_days) * 86_400)
}

/// The mailbox's size limits, as the page needs them.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct MessageLimits {
    /// `mailbox.max_text_bytes`.
    pub max_text_bytes: usize,
    /// `mailbox.max_image_bytes`.
    pub max_image_bytes: usize,
    /// `mailbox.max_audio_bytes`.
    pub max_audio_bytes: usize,
}

/// Serves the web app until `stop`.
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    state: Arc<WebState>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    // Every body but a message's (api.rs) is small.
    let router = api::router(Arc::clone(&state))
        .layer(axum::middleware::from_fn(guard))
        .layer(axum::extract::DefaultBodyLimit::max(SMALL_BODY));
    let admission = crate::admission::Admission::new(MAX_PER_SOURCE, MAX_CONNECTIONS);
    while let Some((tcp, peer, ticket)) = admission.accept(&listener, "web", &stop).await {
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        let router = router.clone();
        let stop = stop.child_token();
        tracker.spawn(async move {
            let stream = tokio::select! {
                _ = ticket.evicted() => return,
                handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)) => match handshake {
                    Ok(Ok(stream)) => stream,
                    _ => return,
                },
            };
            let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(Peer(peer));
                let router = router.clone();
                async move {
                    use tower::ServiceExt;
                    router.oneshot(request.map(axum::body::Body::new)).await
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = ticket.evicted() => {}
                _ = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
        });
    }
}

/// The address a request came from.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Every answer carries the security headers; a state-changing request
/// must come from the hub's own page (its `Origin` names the host it was
/// sent to); every request but the live stream has a time limit.
async fn guard(request: Request, next: Next) -> Response {
    let changes = !matches!(*request.method(), Method::GET | Method::HEAD);
    if changes && !same_origin(&request) {
        let mut refused = api::ApiError::new(
            StatusCode::FORBIDDEN,
            "this request did not come from the hub's own page",
        )
        .into_response();
        secure_headers(&mut refused);
        return refused;
    }
    let live = request.uri().path() == "/api/events";
    let mut response = if live {
        next.run(request).await
    } else {
        match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
            Ok(response) => response,
            Err(_) => StatusCode::REQUEST_TIMEOUT.into_response(),
        }
    };
    secure_headers(&mut response);
    response
}

/// Whether the request's `Origin` is `https://` + its `Host`.
fn same_origin(request: &Request) -> bool {
    let headers = request.headers();
    let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    origin.strip_prefix("https://") == Some(host)
}

fn secure_headers(response: &mut Response) {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::HeaderName::from_static("permissions-policy"),
            "camera=(self), microphone=(self), geolocation=()",
        ),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(origin: Option<&str>, host: &str) -> Request {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri("/api/x")
            .header(header::HOST, host);
        if let Some(origin) = origin {
            builder = builder.header(header::ORIGIN, origin);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn only_the_hubs_own_origin_may_change_anything() {
        assert!(same_origin(&request(
            Some("https://192.168.1.5:8444"),
            "192.168.1.5:8444"
        )));
        assert!(!same_origin(&request(
            Some("http://192.168.1.5:8444"),
            "192.168.1.5:8444"
        )));
        assert!(!same_origin(&request(
            Some("https://evil.example"),
            "192.168.1.5:8444"
        )));
        assert!(!same_origin(&request(None, "192.168.1.5:8444")));
        assert!(!same_origin(&request(Some("null"), "192.168.1.5:8444")));
    }

    #[test]
    fn the_policy_allows_no_inline_script_nor_framing_nor_other_hosts() {
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-eval"));
        assert!(CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));
        assert!(CONTENT_SECURITY_POLICY.contains("default-src 'none'"));
        assert!(!CONTENT_SECURITY_POLICY.contains("http"));
    }
}
