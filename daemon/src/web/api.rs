//! The web app's JSON API: who the browser is (its session cookie), and
//! the hub operations a member of its role may call. Children reach only
//! their messages and contacts; everything else answers 403, as the policy
//! refuses a child's device a parent's topics.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use hearth_protocol::admin::DeviceStatus;
use hearth_protocol::mailbox::{self, Kind, Outbox};
use hearth_protocol::policy::{self, Action, Decision, DeviceRole, Subject};
use hearth_protocol::{DeviceId, Label, MemberName, Owner, Role};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{assets, Peer, WebState};
use crate::hub::HubError;
use crate::store::BrowserSession;

/// The session cookie's name. `__Host-`: the browser keeps it to exactly
/// this origin's host, Secure, Path=/, and no other service on the host
/// can plant one of that name.
pub const COOKIE: &str = "__Host-hearth_session";
/// How long the browser keeps the cookie. The hub signs a browser out
/// after `web.idle_days` unused; the cookie itself outlives that, so a
/// browser used every day is never signed out by its cookie's age (400
/// days is the most browsers keep one).
const COOKIE_MAX_AGE: u64 = 400 * 86_400;
/// How often a parent's page is sent the household if it changed; also how
/// old the one shared view may be. Whatever the telemetry rate and the
/// number of pages, the household is read from the store at most this
/// often.
const HOUSEHOLD_TICK: Duration = Duration::from_millis(500);
/// A page that has not taken an event for this long is closed.
const STALLED_PAGE: Duration = Duration::from_secs(30);

type Shared = Arc<WebState>;

pub(super) fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/app.css", get(assets::style))
        .route("/manifest.webmanifest", get(assets::manifest))
        .route("/icon.svg", get(assets::icon))
        .route("/ca.pem", get(ca_pem))
        .route("/ca.crt", get(ca_der))
        .route("/api/join", post(join))
        .route("/api/me", get(me))
        .route("/api/signout", post(sign_out))
        .route("/api/contacts", get(contacts))
        .route(
            "/api/messages",
            post(send_message)
                .layer(axum::extract::DefaultBodyLimit::max(state.max_body))
                .layer(axum::middleware::from_fn_with_state(
                    Arc::clone(&state),
                    one_of_few_large_bodies,
                )),
        )
        .route("/api/messages/ack", post(ack_message))
        .route("/api/events", get(events))
        .route("/api/household", get(household))
        .route("/api/members", post(add_member))
        .route("/api/members/:name", delete(remove_member))
        .route("/api/pairing", post(open_pairing))
        .route("/api/pairing/:id", delete(cancel_pairing))
        .route("/api/join-codes", post(join_code))
        .route("/api/devices/:id/revoke", post(revoke_device))
        .route("/api/devices/:id/remove", post(remove_device))
        .route("/api/devices/:id/label", post(relabel_device))
        .route("/api/devices/:id/command", post(command))
        .route("/api/devices/:id/bridge", post(set_bridging))
        .route("/api/privacy", get(privacy))
        .route("/api/members/:name/export", get(export_member))
        .route("/api/activity", get(activity))
        .route(
            "/api/contact-rules",
            get(contact_rules).post(set_contact_rule),
        )
        .fallback(not_found)
        .with_state(state)
}

/// Message bodies (a photo, up to `limits.max_payload`) are read a few at
/// a time, so the web app's memory stays bounded whatever the number of
/// connections; the others wait their turn.
async fn one_of_few_large_bodies(
    State(state): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Ok(_permit) = state.large_bodies.acquire().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    next.run(request).await
}

/// An error answer: a status and one sentence for the page.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    /// An answer with `status` saying `message`.
    pub fn new(status: StatusCode, message: &str) -> ApiError {
        ApiError(status, message.to_owned())
    }

    fn parents_only() -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "only a parent may do this")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> ApiError {
        if e.is_internal() {
            tracing::error!(error = %e, "web request failed");
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the hub could not do this just now; try again",
            );
        }
        let status = match e {
            HubError::BadJoinCode => StatusCode::FORBIDDEN,
            HubError::JoinLocked => StatusCode::TOO_MANY_REQUESTS,
            HubError::NoSuchMember(_) => StatusCode::NOT_FOUND,
            HubError::LastParent(_) | HubError::MemberExists(_) => StatusCode::CONFLICT,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError(status, e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The browser a request comes from, by its session cookie.
#[derive(Debug, Clone)]
pub struct Browser(pub BrowserSession);

/// A parent's browser: a child's gets 403, as the policy refuses a
/// child's device a parent's topics.
#[derive(Debug, Clone, Copy)]
pub struct Parent;

#[axum::async_trait]
impl FromRequestParts<Shared> for Parent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> ApiResult<Parent> {
        let Browser(session) = Browser::from_request_parts(parts, state).await?;
        match session.role {
            Role::Parent => Ok(Parent),
            Role::Child => Err(ApiError::parents_only()),
        }
    }
}

#[axum::async_trait]
impl FromRequestParts<Shared> for Browser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> ApiResult<Browser> {
        let secret = session_secret(&parts.headers).ok_or_else(signed_out)?;
        match state.hub.browser(secret, state.idle()).await? {
            Some(session) => Ok(Browser(session)),
            None => Err(signed_out()),
        }
    }
}

fn signed_out() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "this browser is not signed in; ask a parent for a join link",
    )
}

/// The session secret in the request's cookies, if any.
fn session_secret(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such page")
}

async fn ca_pem(State(state): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.hub.ca.cert_pem().to_owned(),
    )
        .into_response()
}

async fn ca_der(State(state): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-x509-ca-cert")],
        state.hub.ca.cert_der().to_vec(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct JoinRequest {
    code: String,
}

#[derive(Debug, Serialize)]
struct Me {
    device: DeviceId,
    member: MemberName,
    role: Role,
    limits: super::MessageLimits,
}

impl Me {
    fn new(s: &BrowserSession, state: &WebState) -> Me {
        Me {
            device: s.device,
            member: s.member.clone(),
            role: s.role,
            limits: state.message_limits(),
        }
    }
}

async fn join(
    State(state): State<Shared>,
    Extension(Peer(peer)): Extension<Peer>,
    Json(request): Json<JoinRequest>,
) -> ApiResult<Response> {
    let code = request.code.trim();
    let joined = state.hub.join_browser(code, peer.ip())?;
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={COOKIE_MAX_AGE}",
        joined.secret,
    );
    let mut response = Json(Me::new(&joined.session, &state)).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|_| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "cannot set the cookie")
        })?,
    );
    Ok(response)
}

async fn me(State(state): State<Shared>, browser: Browser) -> Json<Me> {
    Json(Me::new(&browser.0, &state))
}

/// Signing out revokes this browser: its secret stops working for good.
async fn sign_out(State(state): State<Shared>, browser: Browser) -> ApiResult<Response> {
    state.hub.revoke_device(&browser.0.device).await?;
    state.live.forget_browser(&browser.0.device);
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "hearth_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0",
        ),
    );
    Ok(response)
}

#[derive(Debug, Serialize)]
struct Contact {
    name: MemberName,
    role: Role,
}

/// The members this browser's member may message, by the mailbox's rule.
async fn contacts(State(state): State<Shared>, browser: Browser) -> ApiResult<Json<Vec<Contact>>> {
    let hub = &state.hub;
    let members = hub.members()?;
    let rules = hub.contact_rules()?;
    let me = &browser.0.member;
    let list = members
        .into_iter()
        .filter(|m| m.name != *me)
        .filter(|m| {
            let rule = rules
                .iter()
                .find(|r| r.from == *me && r.to == m.name)
                .map(|r| r.allowed);
            hearth_protocol::household::may_message(
                rule,
                me,
                Some(browser.0.role),
                &m.name,
                Some(m.role),
            )
        })
        .map(|m| Contact {
            name: m.name,
            role: m.role,
        })
        .collect();
    Ok(Json(list))
}

#[derive(Debug, Deserialize)]
struct SendRequest {
    #[serde(rename = "ref")]
    reference: String,
    to: String,
    kind: Kind,
    body: Option<String>,
    data: Option<String>,
    content_type: Option<String>,
}

/// Sends through the browser's own outbox: the mailbox takes it exactly as
/// from a device (contacts, sizes, quotas) and answers on its inbox.
async fn send_message(
    State(state): State<Shared>,
    browser: Browser,
    Json(request): Json<SendRequest>,
) -> ApiResult<StatusCode> {
    let envelope = Outbox::Send(mailbox::Message {
        v: mailbox::VERSION,
        reference: request.reference,
        to: request.to,
        kind: request.kind,
        body: request.body,
        data: request.data,
        content_type: request.content_type,
    });
    publish(&state, &browser, &envelope)?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Debug, Deserialize)]
struct AckRequest {
    id: String,
}

async fn ack_message(
    State(state): State<Shared>,
    browser: Browser,
    Json(request): Json<AckRequest>,
) -> ApiResult<StatusCode> {
    let envelope = Outbox::Ack(mailbox::Ack {
        v: mailbox::VERSION,
        id: request.id,
    });
    publish(&state, &browser, &envelope)?;
    Ok(StatusCode::ACCEPTED)
}

fn publish(state: &WebState, browser: &Browser, envelope: &Outbox) -> ApiResult<()> {
    let bytes = serde_json::to_vec(envelope)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "cannot encode the message"))?;
    state
        .live
        .publish(hearth_protocol::topic::outbox(&browser.0.device), bytes)
        .map_err(|e| {
            tracing::error!(error = %e, "web: cannot reach the broker");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the hub is busy; try again",
            )
        })
}

/// Live updates: this browser's inbox (deliveries and receipts) and, for
/// a parent, the household whenever it changes. The stream is a session
/// of the browser's: revoking the browser ends it at once.
async fn events(State(state): State<Shared>, browser: Browser) -> ApiResult<Response> {
    let device = browser.0.device;
    let stop = tokio_util::sync::CancellationToken::new();
    let session = state
        .hub
        .sessions
        .register(Some(device), &format!("web-{device}"), stop.clone());
    // Checked again now that a revocation can reach the session: one that
    // came between the cookie's check and the registration is not missed.
    if !state.hub.browser_is_active(&device)? {
        return Err(signed_out());
    }
    let parent_page = (browser.0.role == Role::Parent).then(|| state.live.open_parent_page());
    let mut inbox = state.live.open_page(&device);
    let state = Arc::clone(&state);
    let stream = async_stream(move |tx| async move {
        let _session = session;
        let _parent_page = parent_page;
        // What the page was last sent of the household.
        let mut shown: Option<Arc<str>> = None;
        let mut tick = tokio::time::interval(HOUSEHOLD_TICK);
        loop {
            let event = tokio::select! {
                // The page went away: its session ends now, not at the
                // next event (a child's quiet page may have none for days).
                _ = tx.closed() => return,
                _ = stop.cancelled() => {
                    let _ = tx.send(Event::default().event("signed-out").data("{}")).await;
                    return;
                }
                envelope = inbox.rx.recv() => match envelope {
                    // Its bytes stay counted until the page has it.
                    Some(envelope) => (Event::default().event("inbox").data(&envelope.text), Some(envelope)),
                    None => return,
                },
                _ = tick.tick(), if _parent_page.is_some() => {
                    let Ok(now) = household_json(&state) else { continue };
                    if shown.as_ref() == Some(&now) {
                        continue;
                    }
                    shown = Some(Arc::clone(&now));
                    (Event::default().event("household").data(&*now), None)
                }
            };
            // A page that reads nothing for this long is closed.
            match tokio::time::timeout(STALLED_PAGE, tx.send(event.0)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    });
    Ok(Sse::new(stream)
        // Also how soon a closed page is noticed (a write fails).
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response())
}

/// A stream fed by a task through a small channel.
fn async_stream<F, Fut>(
    body: F,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // One event in the channel at a time: what waits for a slow page is
    // what its task holds, and that is counted.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(body(tx));
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(event), rx))
    })
}

async fn household(
    State(state): State<Shared>,
    _parent: Parent,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(household_view(&state)?))
}

/// The household view as JSON, shared by every parent's page: made again
/// only once it is older than [`HOUSEHOLD_TICK`].
fn household_json(state: &WebState) -> ApiResult<Arc<str>> {
    let mut cached = crate::sync::lock(&state.household);
    if let Some((made, json)) = &*cached {
        if made.elapsed() < HOUSEHOLD_TICK {
            return Ok(Arc::clone(json));
        }
    }
    let json: Arc<str> = household_view(state)?.to_string().into();
    *cached = Some((std::time::Instant::now(), Arc::clone(&json)));
    Ok(json)
}

/// What a parent's home screen shows: members, devices with their owner,
/// label, online state, last seen and latest values, and open pairing
/// windows. Revoked devices are listed (inactive) so the activity screen
/// can still name them.
fn household_view(state: &WebState) -> ApiResult<serde_json::Value> {
    let hub = &state.hub;
    let members = hub.members()?;
    let online: HashSet<DeviceId> = hub.sessions.connected_devices().into_iter().collect();
    let all = hub.devices()?;
    let active: HashSet<DeviceId> = all
        .iter()
        .filter(|d| d.status == DeviceStatus::Active)
        .map(|d| d.id)
        .collect();
    let latest = state.live.latest(&active);
    let bridged: HashSet<DeviceId> = hub.bridged_devices()?.into_iter().collect();
    let bridge_on = hub.config.borrow().bridge.enabled;
    let devices: Vec<serde_json::Value> = all
        .into_iter()
        .map(|d| {
            json!({
                "active": d.status == DeviceStatus::Active,
                "id": d.id,
                "owner": match &d.owner { Owner::Member(m) => Some(m.as_str()), Owner::Service => None },
                "label": d.label,
                "kind": d.kind,
                "online": online.contains(&d.id),
                "last_seen": d.last_seen,
                "latest": latest.get(&d.id),
                "bridged": bridged.contains(&d.id),
            })
        })
        .collect();
    let pairing = hub.windows.list();
    Ok(json!({
        "members": members,
        "devices": devices,
        "pairing": pairing,
        "bridge": bridge_on,
    }))
}

#[derive(Debug, Deserialize)]
struct NewMember {
    name: MemberName,
    role: Role,
}

async fn add_member(
    State(state): State<Shared>,
    _parent: Parent,
    Json(request): Json<NewMember>,
) -> ApiResult<StatusCode> {
    state.hub.add_member(request.name, request.role)?;
    Ok(StatusCode::CREATED)
}

async fn remove_member(
    State(state): State<Shared>,
    _parent: Parent,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let name: MemberName = name
        .parse()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "not a nickname"))?;
    let removed = state.hub.remove_member(&name).await?;
    for device in removed {
        state.live.forget_browser(&device);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct NewWindow {
    member: MemberName,
    label: Label,
    #[serde(default = "ten_minutes")]
    ttl_secs: u64,
}

fn ten_minutes() -> u64 {
    600
}

async fn open_pairing(
    State(state): State<Shared>,
    _parent: Parent,
    headers: HeaderMap,
    Json(request): Json<NewWindow>,
) -> ApiResult<Json<serde_json::Value>> {
    let hub = &state.hub;
    // The page was reached at this host: so can the toy, most likely.
    let host = request_host(&headers);
    let member = hub.member_named(request.member);
    let ttl = request.ttl_secs;
    let ticket = match hub.open_pairing(member.clone(), request.label.clone(), ttl, host) {
        // The page's host is not one toys can pair at (a name the hub does
        // not listen on): the hub's own default then.
        Err(HubError::PairingHost(_)) => hub.open_pairing(member, request.label, ttl, None),
        other => other,
    }?;
    Ok(Json(json!({
        "id": ticket.id,
        "uri": ticket.uri,
        "expires_at": ticket.expires_at,
        "qr_svg": qr_svg(&ticket.uri),
    })))
}

/// The host (without port) the page was reached at.
fn request_host(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let bare = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    Some(bare.to_owned())
}

fn qr_svg(text: &str) -> String {
    qrcode::QrCode::new(text.as_bytes())
        .map(|code| {
            code.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(220, 220)
                .quiet_zone(true)
                .build()
        })
        .unwrap_or_default()
}

async fn cancel_pairing(
    State(state): State<Shared>,
    _parent: Parent,
    Path(id): Path<u32>,
) -> ApiResult<StatusCode> {
    state.hub.windows.cancel(Some(id));
    state
        .hub
        .admin_audit("pair-cancel", None, format!("window {id}"));
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct NewJoinCode {
    member: MemberName,
    label: Label,
}

async fn join_code(
    State(state): State<Shared>,
    _parent: Parent,
    headers: HeaderMap,
    Json(request): Json<NewJoinCode>,
) -> ApiResult<Json<serde_json::Value>> {
    let ticket = state
        .hub
        .web_link(request.member, request.label, request_host(&headers))?;
    Ok(Json(json!({
        "url": ticket.url,
        "ca_sha256": ticket.ca_sha256,
        "expires_at": ticket.expires_at,
        "qr_svg": qr_svg(&ticket.url),
    })))
}

fn device_id(text: &str) -> ApiResult<DeviceId> {
    text.parse()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "not a device id"))
}

async fn revoke_device(
    State(state): State<Shared>,
    _parent: Parent,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = device_id(&id)?;
    state.hub.revoke_device(&id).await?;
    state.live.forget_browser(&id);
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_device(
    State(state): State<Shared>,
    _parent: Parent,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = device_id(&id)?;
    state.hub.remove_device(&id).await?;
    state.live.forget_browser(&id);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct NewLabel {
    label: Label,
}

async fn relabel_device(
    State(state): State<Shared>,
    _parent: Parent,
    Path(id): Path<String>,
    Json(request): Json<NewLabel>,
) -> ApiResult<StatusCode> {
    state.hub.relabel(&device_id(&id)?, &request.label)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn privacy(
    State(state): State<Shared>,
    _parent: Parent,
) -> ApiResult<Json<serde_json::Value>> {
    let report = state.hub.privacy_report(None)?;
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}

#[derive(Debug, Deserialize)]
struct BridgingRequest {
    enabled: bool,
}

/// A parent lets the bridge carry a device (or stops it), as `hearth
/// bridge enable|disable` does.
async fn set_bridging(
    State(state): State<Shared>,
    _parent: Parent,
    Path(id): Path<String>,
    Json(request): Json<BridgingRequest>,
) -> ApiResult<StatusCode> {
    let id = device_id(&id)?;
    if request.enabled {
        state.hub.bridge_enable(&id)?;
    } else {
        state.hub.bridge_disable(&id)?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct CommandRequest {
    /// The level under `cmd/` (a command the device declares, or any for
    /// the raw form).
    name: String,
    /// Its arguments, as the device expects them.
    #[serde(default)]
    payload: serde_json::Value,
}

/// Sends a device a command, judged by the household policy exactly as a
/// publish from this browser's member's device would be.
async fn command(
    State(state): State<Shared>,
    browser: Browser,
    Path(id): Path<String>,
    Json(request): Json<CommandRequest>,
) -> ApiResult<StatusCode> {
    let id = device_id(&id)?;
    let name = request.name.trim();
    if name.is_empty() || name.contains(['+', '#', '/']) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a command name is one topic level",
        ));
    }
    let topic = hearth_protocol::topic::cmd(&id, name);
    let role = match browser.0.role {
        Role::Parent => DeviceRole::Parent,
        Role::Child => DeviceRole::Child,
    };
    let subject = Subject {
        device: &browser.0.device,
        role,
        grants: &[],
    };
    let action = Action::Publish { retain: false };
    if let Decision::Deny(reason) = policy::decide(&subject, action, &topic) {
        state.hub.metrics.denial(action.name());
        state.hub.audit.record(crate::audit::Event {
            device: Some(browser.0.device),
            event: "denied",
            action: Some(action.name().to_owned()),
            topic: Some(topic),
            reason: Some(reason.to_string()),
            ..crate::audit::Event::default()
        });
        return Err(ApiError::new(StatusCode::FORBIDDEN, &reason.to_string()));
    }
    let payload = match request.payload {
        serde_json::Value::Null => Vec::new(),
        value => serde_json::to_vec(&value).unwrap_or_default(),
    };
    state.live.publish(topic, payload).map_err(|e| {
        tracing::error!(error = %e, "web: cannot reach the broker");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the hub is busy; try again",
        )
    })?;
    Ok(StatusCode::ACCEPTED)
}

/// Everything held about a member, as `hearth member export` writes it.
async fn export_member(
    State(state): State<Shared>,
    _parent: Parent,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let name: MemberName = name
        .parse()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "not a nickname"))?;
    let export = state
        .hub
        .member_export(&state.hub.member_named(name.clone()))?;
    let body = serde_json::to_vec_pretty(&export).unwrap_or_default();
    let disposition = format!("attachment; filename=\"hearth-{}.json\"", name.as_str());
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
struct ActivityQuery {
    device: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
}

/// The audit, newest last; the page words it (ids only are stored).
async fn activity(
    State(state): State<Shared>,
    _parent: Parent,
    axum::extract::Query(query): axum::extract::Query<ActivityQuery>,
) -> ApiResult<Json<Vec<hearth_protocol::admin::AuditEntry>>> {
    let device = match query.device.as_deref() {
        Some("") | None => None,
        Some(id) => Some(device_id(id)?),
    };
    let entries = state
        .hub
        .audit_entries(device.as_ref(), None, None, query.limit.unwrap_or(200))
        .await?;
    Ok(Json(entries))
}

async fn contact_rules(
    State(state): State<Shared>,
    _parent: Parent,
) -> ApiResult<Json<Vec<hearth_protocol::admin::ContactRule>>> {
    Ok(Json(state.hub.contact_rules()?))
}

#[derive(Debug, Deserialize)]
struct ContactRuleRequest {
    a: MemberName,
    b: MemberName,
    allowed: bool,
}

async fn set_contact_rule(
    State(state): State<Shared>,
    _parent: Parent,
    Json(request): Json<ContactRuleRequest>,
) -> ApiResult<StatusCode> {
    let hub = &state.hub;
    hub.set_contact(
        &hub.member_named(request.a),
        &hub.member_named(request.b),
        request.allowed,
    )?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others_and_must_look_like_one() {
        let secret = "ab".repeat(32);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=1; {COOKIE}={secret}; b=2")).unwrap(),
        );
        assert_eq!(session_secret(&headers), Some(secret.as_str()));
        let mut bad = HeaderMap::new();
        bad.insert(
            header::COOKIE,
            HeaderValue::from_static("hearth_session=short"),
        );
        assert_eq!(session_secret(&bad), None);
        assert_eq!(session_secret(&HeaderMap::new()), None);
    }

    #[test]
    fn the_request_host_loses_its_port() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("192.168.1.5:8444"));
        assert_eq!(request_host(&headers).as_deref(), Some("192.168.1.5"));
        headers.insert(header::HOST, HeaderValue::from_static("[fd00::5]:8444"));
        assert_eq!(request_host(&headers).as_deref(), Some("[fd00::5]"));
        headers.insert(header::HOST, HeaderValue::from_static("hub.local"));
        assert_eq!(request_host(&headers).as_deref(), Some("hub.local"));
    }
}
