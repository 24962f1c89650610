//! Enrollment over HTTPS, the subset of EST (RFC 7030) devices need:
//! `GET cacerts`, `POST simpleenroll` (token as the HTTP Basic password,
//! only while a pairing window is open) and `POST simplereenroll`
//! (authenticated by the device's current certificate). Requests are
//! base64 PKCS#10, responses base64 certs-only PKCS#7, as the RFC says.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use hearth_protocol::{pki, DeviceId};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::Event;
use crate::ca::{fingerprint, pem_to_der};
use crate::hub::{Hub, HubError};

/// Largest request body: a PKCS#10 request in base64 is well under 4 KiB.
pub const MAX_BODY: usize = 16 * 1024;
/// From TCP accept to a complete TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Enrollment connections served at once, at most (the budget given to
/// [`serve`] may be smaller).
pub const MAX_CONNECTIONS: usize = 64;

const BASE: &str = "/.well-known/est/";

/// Serves enrollment until `stop`.
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    hub: Arc<Hub>,
    admission: Arc<crate::admission::Admission>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    // Per source and in total; a full budget closes the oldest socket of
    // the source holding the most, so idle sockets cannot keep the port to
    // themselves.
    while let Some((tcp, peer, ticket)) = admission.accept(&listener, "enrollment", &stop).await {
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        let hub = Arc::clone(&hub);
        let stop = stop.child_token();
        tracker.spawn(async move {
            let handshake = tokio::select! {
                _ = ticket.evicted() => return,
                handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)) => handshake,
            };
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    let (reason, device, _) = crate::edge::tls::refusal_reason(&e);
                    tracing::info!(peer = %peer, reason = %reason, "enrollment handshake refused");
                    hub.audit.record(Event {
                        device,
                        event: "handshake-refused",
                        action: Some("enroll".into()),
                        reason: Some(reason),
                        peer: Some(peer.to_string()),
                        ..Event::default()
                    });
                    return;
                }
                Err(_) => return,
            };
            let client_cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| fingerprint(c));
            let service = hyper::service::service_fn(move |request| {
                let hub = Arc::clone(&hub);
                async move {
                    Ok::<_, std::convert::Infallible>(
                        handle(&hub, peer, client_cert, request).await,
                    )
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
                // Made room for another source: dropped, not drained.
                _ = ticket.evicted() => {}
                _ = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
        });
    }
}

/// An HTTP answer and, for refusals, what the audit should say.
struct Answer {
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    challenge: bool,
}

impl Answer {
    fn pkcs7(certs: &[&[u8]]) -> Answer {
        let der = pki::certs_only(certs);
        let mut text = base64::engine::general_purpose::STANDARD.encode(der);
        text.push('\n');
        Answer {
            status: StatusCode::OK,
            content_type: "application/pkcs7-mime; smime-type=certs-only",
            body: Bytes::from(text),
            challenge: false,
        }
    }

    fn refuse(status: StatusCode, message: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from(format!("{message}\n")),
            challenge: status == StatusCode::UNAUTHORIZED,
        }
    }
}

async fn handle(
    hub: &Hub,
    peer: SocketAddr,
    client_cert: Option<[u8; 32]>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let answer = match (request.method(), path.strip_prefix(BASE)) {
        (&Method::GET, Some("cacerts")) => Answer::pkcs7(&[hub.ca.cert_der()]),
        (&Method::POST, Some("simpleenroll")) => simple_enroll(hub, peer.ip(), request).await,
        (&Method::POST, Some("simplereenroll")) => {
            simple_reenroll(hub, peer.ip(), client_cert, request).await
        }
        (_, Some("cacerts" | "simpleenroll" | "simplereenroll")) => {
            Answer::refuse(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => Answer::refuse(StatusCode::NOT_FOUND, "not an EST path this hub serves"),
    };
    let mut response = Response::new(Full::new(answer.body));
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(answer.content_type));
    if answer.status == StatusCode::OK && path.starts_with(BASE) {
        headers.insert(
            "content-transfer-encoding",
            HeaderValue::from_static("base64"),
        );
    }
    if answer.challenge {
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"hearth pairing\""),
        );
    }
    response
}

fn refused(
    hub: &Hub,
    ip: IpAddr,
    device: Option<DeviceId>,
    action: &str,
    status: StatusCode,
    reason: &str,
) -> Answer {
    hub.audit.record(Event {
        device,
        event: "enroll-refused",
        action: Some(action.to_owned()),
        reason: Some(reason.to_owned()),
        peer: Some(ip.to_string()),
        ..Event::default()
    });
    tracing::info!(peer = %ip, status = status.as_u16(), reason, "enrollment refused");
    Answer::refuse(status, reason)
}

async fn simple_enroll(hub: &Hub, ip: IpAddr, request: Request<Incoming>) -> Answer {
    const ACTION: &str = "simpleenroll";
    let refuse = |status: StatusCode, reason: &str| refused(hub, ip, None, ACTION, status, reason);
    if hub.windows.locked_out(ip) {
        return refuse(StatusCode::TOO_MANY_REQUESTS, crate::pairing::LOCKED_OUT);
    }
    if !hub.windows.any_open() {
        return refuse(StatusCode::FORBIDDEN, "no pairing window is open");
    }
    let Some(token) = basic_password(&request) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "the pairing token goes in HTTP Basic authentication",
        );
    };
    let Some(window) = hub.windows.check(&token) else {
        let locked = hub.windows.record_failure(ip);
        let reason = if locked {
            "wrong pairing token; this address is now locked out for 10 minutes \
             (`hearth pair --unlock ADDRESS` lifts it)"
        } else {
            "wrong, used or expired pairing token"
        };
        return refuse(StatusCode::UNAUTHORIZED, reason);
    };
    let csr_pem = match read_csr(request).await {
        Ok(pem) => pem,
        Err(answer) => return refuse(answer.0, answer.1),
    };
    // A malformed request or a bad signature does not spend the token.
    if let Err(e) = hub.ca.check_request(&csr_pem) {
        return refuse(StatusCode::BAD_REQUEST, &e.to_string());
    }
    // Consume the window before issuing, so two requests with one token
    // cannot both enroll.
    if !hub.windows.consume(window.id) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "wrong, used or expired pairing token",
        );
    }
    let owner = hearth_protocol::Owner::Member(window.member.clone());
    match hub.issue_device(owner, window.label.clone(), &csr_pem) {
        Ok(issued) => {
            hub.audit.record(Event {
                device: Some(issued.device_id),
                event: "admin",
                action: Some("enroll".into()),
                reason: Some(format!("paired through window {}", window.id)),
                peer: Some(ip.to_string()),
                ..Event::default()
            });
            match pem_to_der(&issued.certificate_pem) {
                Some(der) => Answer::pkcs7(&[&der]),
                None => Answer::refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot encode the certificate",
                ),
            }
        }
        Err(e) => refuse(status_for(&e), &e.to_string()),
    }
}

async fn simple_reenroll(
    hub: &Hub,
    ip: IpAddr,
    client_cert: Option<[u8; 32]>,
    request: Request<Incoming>,
) -> Answer {
    const ACTION: &str = "simplereenroll";
    let Some((presented, identity)) =
        client_cert.and_then(|sha| Some((sha, hub.registry.lookup(&sha)?)))
    else {
        return refused(
            hub,
            ip,
            None,
            ACTION,
            StatusCode::UNAUTHORIZED,
            "renewal needs the device's current certificate",
        );
    };
    let csr_pem = match read_csr(request).await {
        Ok(pem) => pem,
        Err(answer) => return refused(hub, ip, Some(identity.device), ACTION, answer.0, answer.1),
    };
    match hub.renew_device(&presented, &csr_pem) {
        Ok((_, pem)) => match pem_to_der(&pem) {
            Some(der) => Answer::pkcs7(&[&der]),
            None => Answer::refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the certificate",
            ),
        },
        Err(e) => refused(
            hub,
            ip,
            Some(identity.device),
            ACTION,
            status_for(&e),
            &e.to_string(),
        ),
    }
}

/// The HTTP status for a hub error: the hub's own failure (its database,
/// its CA) is a 5xx the device may retry, never a 400 that blames the
/// request.
fn status_for(e: &HubError) -> StatusCode {
    match e {
        HubError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        HubError::Ca(_) => StatusCode::INTERNAL_SERVER_ERROR,
        HubError::NotAccepted => StatusCode::FORBIDDEN,
        HubError::Refused(_) | HubError::NoSuchMember(_) | HubError::MemberExists(_) => {
            StatusCode::CONFLICT
        }
        _ => StatusCode::BAD_REQUEST,
    }
}

/// The password of an HTTP Basic `Authorization` header.
fn basic_password(request: &Request<Incoming>) -> Option<String> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_user, password) = text.split_once(':')?;
    Some(password.to_owned())
}

/// Reads a base64 PKCS#10 body (line breaks allowed) and returns it as PEM.
async fn read_csr(request: Request<Incoming>) -> Result<String, (StatusCode, &'static str)> {
    let body = Limited::new(request.into_body(), MAX_BODY).collect();
    let body = tokio::time::timeout(BODY_TIMEOUT, body)
        .await
        .map_err(|_| {
            (
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            )
        })?
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                (StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
            } else {
                (StatusCode::BAD_REQUEST, "cannot read the request body")
            }
        })?
        .to_bytes();
    csr_pem_from_body(&body).map_err(|reason| (StatusCode::BAD_REQUEST, reason))
}

/// Turns a simpleenroll/simplereenroll body (base64 DER, line breaks and a
/// PEM armour allowed) into the PEM that [`crate::ca::HubCa::check_request`]
/// reads, or says why it is refused. Pure, so the fuzzer drives the same
/// path a request body takes (fuzz/fuzz_targets/est_csr.rs).
pub fn csr_pem_from_body(body: &[u8]) -> Result<String, &'static str> {
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    // Accept a PEM body too: some tools send one.
    let text = text
        .replace("-----BEGINCERTIFICATEREQUEST-----", "")
        .replace("-----ENDCERTIFICATEREQUEST-----", "");
    let der = base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|_| "the body is not a base64 PKCS#10 request")?;
    if der.is_empty() {
        return Err("empty request");
    }
    Ok(pki::pem("CERTIFICATE REQUEST", &der))
}

#[cfg(test)]
mod status_tests {
    use super::*;
    use crate::hub::testing::{csr, hub};
    use hearth_protocol::{Owner, Role};

    #[tokio::test]
    async fn a_database_failure_is_a_server_error_not_the_devices_fault() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path());
        let ada: hearth_protocol::MemberName = "Ada".parse().unwrap();
        hub.add_member(ada.clone(), Role::Child).unwrap();
        let other = rusqlite::Connection::open(dir.path().join(crate::store::DB_FILE)).unwrap();
        other.execute_batch("DROP TABLE certificates").unwrap();
        let err = hub
            .issue_device(Owner::Member(ada), "robot".parse().unwrap(), &csr())
            .unwrap_err();
        assert!(
            status_for(&err).is_server_error(),
            "{err}: {}",
            status_for(&err)
        );
        // A bad request stays the device's.
        let err = hub
            .issue_device(Owner::Service, "bridge".parse().unwrap(), "not a csr")
            .unwrap_err();
        assert_eq!(status_for(&err), StatusCode::BAD_REQUEST);
    }
}
