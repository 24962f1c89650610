//! The family web app against the real hub over real TLS, as a browser
//! speaks to it (suite 1; the real browser runs in web_browser.rs): join
//! links, the session cookie, the security headers, what a child may
//! reach, revocation ending a page at once, and a message exchanged with a
//! real toy over MQTT.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hearth_protocol::admin::{AdminRequest, AdminResponse, DeviceKind};
use hearth_protocol::mailbox::{Inbox, ReceiptStatus};
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use crate::messaging::Mail;
use crate::support::*;

/// The web app's address.
pub(crate) fn web_addr(hub: &TestHub) -> SocketAddr {
    let Ok(AdminResponse::Status(status)) = admin_request(&hub.socket, &AdminRequest::Status)
    else {
        panic!("no status");
    };
    status
        .listeners
        .iter()
        .find(|l| l.name == "web")
        .expect("a web listener")
        .address
        .parse()
        .unwrap()
}

/// A join link's code and the link itself, from `hearth web-link`.
pub(crate) fn web_link(hub: &TestHub, member: &str) -> (String, String) {
    let out = hub.hearth_ok(&["--json", "web-link", "--member", member, "--label", "phone"]);
    let AdminResponse::WebLink(ticket) = serde_json::from_str(&out).unwrap() else {
        panic!("unexpected answer {out}");
    };
    let fragment = ticket.url.split("#join=").nth(1).expect("a code");
    let (code, ca) = fragment.split_once("&ca=").expect("the CA fingerprint");
    // The link carries the fingerprint the person compares.
    assert_eq!(ca, ticket.ca_sha256);
    (code.to_owned(), ticket.url.clone())
}

/// One request as a browser on the hub's page sends it.
struct Web {
    addr: SocketAddr,
    ca: Vec<u8>,
    cookie: Option<String>,
}

struct Answer {
    status: u16,
    /// Lower-cased, for matching.
    headers: String,
    /// As sent (cookie names are case-sensitive).
    raw_headers: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

impl Web {
    fn new(hub: &TestHub) -> Web {
        Web {
            addr: web_addr(hub),
            ca: std::fs::read(hub.data.join("ca.pem")).unwrap(),
            cookie: None,
        }
    }

    async fn connect(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        TlsConnector::from(client_config(&self.ca, None))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS with the web app")
    }

    fn head(&self, method: &str, path: &str, origin: Option<&str>, body: &str) -> String {
        let host = self.addr.to_string();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if let Some(origin) = origin {
            head.push_str(&format!("Origin: {origin}\r\n"));
        }
        if let Some(cookie) = &self.cookie {
            head.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        head.push_str("\r\n");
        head.push_str(body);
        head
    }

    async fn request_from(
        &self,
        method: &str,
        path: &str,
        origin: Option<&str>,
        body: &str,
    ) -> Answer {
        let mut stream = self.connect().await;
        stream
            .write_all(self.head(method, path, origin, body).as_bytes())
            .await
            .unwrap();
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await;
        let text = String::from_utf8_lossy(&raw).to_string();
        let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        Answer {
            status: headers
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            headers: headers.to_ascii_lowercase(),
            raw_headers: headers.to_owned(),
            body: body.to_owned(),
        }
    }

    /// A request from the hub's own page (its Origin).
    async fn request(&self, method: &str, path: &str, body: Value) -> Answer {
        let origin = format!("https://{}", self.addr);
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        self.request_from(method, path, Some(&origin), &body).await
    }

    /// Joins with a code; keeps the cookie.
    async fn join(&mut self, code: &str) -> Answer {
        let answer = self
            .request("POST", "/api/join", json!({ "code": code }))
            .await;
        if answer.status == 200 {
            let line = answer
                .raw_headers
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
                .expect("a cookie");
            let pair = line["set-cookie:".len()..]
                .trim()
                .split(';')
                .next()
                .unwrap();
            self.cookie = Some(pair.to_owned());
        }
        answer
    }

    /// The live event stream, as raw text arriving.
    async fn events(&self) -> tokio::sync::mpsc::UnboundedReceiver<String> {
        self.events_with_handle().await.0
    }

    /// The live event stream and the task reading it (abort it to close
    /// the connection, as a closed tab does).
    async fn events_with_handle(
        &self,
    ) -> (
        tokio::sync::mpsc::UnboundedReceiver<String>,
        tokio::task::JoinHandle<()>,
    ) {
        let mut stream = self.connect().await;
        stream
            .write_all(self.head("GET", "/api/events", None, "").as_bytes())
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 65536];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx
                            .send(String::from_utf8_lossy(&buf[..n]).to_string())
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        (rx, reader)
    }
}

/// A browser signed in as `member` (who must exist) with a fresh link from
/// `hearth web-link`, and its device id.
async fn signed_in(hub: &TestHub, member: &str) -> (Web, String) {
    let (code, _) = web_link(hub, member);
    let mut web = Web::new(hub);
    let joined = web.join(&code).await;
    assert_eq!(joined.status, 200, "{}", joined.body);
    let id = joined.json()["device"].as_str().unwrap().to_owned();
    (web, id)
}

/// Reads the stream until `needle` arrives (true) or it ends or times out.
async fn wait_for(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: &mut String,
    needle: &str,
    limit: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if seen.contains(needle) {
            return true;
        }
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(chunk)) => seen.push_str(&chunk),
            _ => return seen.contains(needle),
        }
    }
}

#[tokio::test]
async fn a_join_link_signs_a_browser_in_once_with_a_strict_cookie_whose_secret_is_not_stored() {
    let hub = TestHub::start();
    hub.hearth_ok(&["member", "add", "mum", "--role", "parent"]);
    let (code, url) = web_link(&hub, "mum");
    let addr = web_addr(&hub);
    assert!(
        url.starts_with(&format!("https://{}/#join=", addr)),
        "{url}"
    );

    let mut web = Web::new(&hub);
    assert_eq!(web.request("GET", "/api/me", Value::Null).await.status, 401);
    let joined = web.join(&code).await;
    assert_eq!(joined.status, 200, "{}", joined.body);
    let cookie_line = joined
        .headers
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap();
    assert!(
        joined
            .raw_headers
            .contains("Set-Cookie: __Host-hearth_session=")
            || joined
                .raw_headers
                .contains("set-cookie: __Host-hearth_session="),
        "{}",
        joined.raw_headers
    );
    for flag in ["httponly", "secure", "samesite=strict", "path=/"] {
        assert!(cookie_line.contains(flag), "{flag} missing: {cookie_line}");
    }
    let me = web.request("GET", "/api/me", Value::Null).await.json();
    assert_eq!(
        (me["member"].as_str(), me["role"].as_str()),
        (Some("mum"), Some("parent"))
    );

    // Single use: the same code again is refused.
    let mut again = Web::new(&hub);
    assert_eq!(again.join(&code).await.status, 403);

    // The browser is a registry entry like a device.
    let out = hub.hearth_ok(&["--json", "device", "list"]);
    let AdminResponse::Devices { devices } = serde_json::from_str(&out).unwrap() else {
        panic!("{out}");
    };
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].kind, DeviceKind::Browser);
    assert_eq!(devices[0].id.as_str(), me["device"].as_str().unwrap());

    // Only the secret's hash is on disk.
    let secret = web
        .cookie
        .as_ref()
        .unwrap()
        .split('=')
        .nth(1)
        .unwrap()
        .to_owned();
    hub.hearth_ok(&["audit"]);
    for file in ["hearth.db", "hearth.db-wal"] {
        if let Ok(bytes) = std::fs::read(hub.data.join(file)) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains(&secret),
                "secret in {file}"
            );
        }
    }
    // The code is not in the audit nor the log either.
    assert!(!hub.log().contains(&code));
}

#[tokio::test]
async fn every_answer_carries_the_security_headers_and_the_page_has_no_inline_script() {
    let hub = TestHub::start();
    let web = Web::new(&hub);
    for path in ["/", "/app.js", "/app.css", "/api/me", "/nothing-here"] {
        let answer = web.request("GET", path, Value::Null).await;
        let csp = answer
            .headers
            .lines()
            .find(|l| l.starts_with("content-security-policy:"))
            .unwrap_or_else(|| panic!("no CSP on {path}"));
        assert!(
            csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline"));
        assert!(
            answer.headers.contains("x-content-type-options: nosniff"),
            "{path}"
        );
        assert!(answer.headers.contains("x-frame-options: deny"), "{path}");
    }
    let page = web.request("GET", "/", Value::Null).await.body;
    assert!(page.contains("<script src=\"/app.js\""));
    assert_eq!(
        page.matches("<script").count(),
        page.matches("<script src=").count()
    );
    // Bodies are bounded: a join request is small.
    let big = json!({ "code": "a".repeat(20 * 1024) });
    assert_eq!(web.request("POST", "/api/join", big).await.status, 413);
    // The CA a phone is told to compare is served.
    let ca = web.request("GET", "/ca.pem", Value::Null).await.body;
    assert_eq!(
        ca,
        std::fs::read_to_string(hub.data.join("ca.pem")).unwrap()
    );
}

#[tokio::test]
async fn a_change_from_another_origin_is_refused_and_wrong_codes_lock_the_source_out() {
    let hub = TestHub::start();
    hub.hearth_ok(&["member", "add", "mum", "--role", "parent"]);
    let (web, _) = signed_in(&hub, "mum").await;
    let body = json!({"name": "intruder", "role": "parent"}).to_string();
    for origin in [Some("https://evil.example"), None] {
        let answer = web
            .request_from("POST", "/api/members", origin, &body)
            .await;
        assert_eq!(answer.status, 403, "{origin:?}");
    }
    let out = hub.hearth_ok(&["member", "list"]);
    assert!(!out.contains("intruder"), "{out}");

    let (good, _) = web_link(&hub, "mum");
    let mut guesser = Web::new(&hub);
    let wrong = "0".repeat(40);
    for _ in 0..4 {
        assert_eq!(guesser.join(&wrong).await.status, 403);
    }
    // The fifth wrong code within ten minutes locks the address out.
    assert_eq!(guesser.join(&wrong).await.status, 429);
    assert_eq!(
        guesser.join(&good).await.status,
        429,
        "locked out, even with a good code"
    );
    assert!(wait_audit(&hub, |e| e.event == "join-refused").is_some());
}

#[tokio::test]
async fn a_childs_browser_reaches_only_its_messages_and_allowed_contacts() {
    let hub = TestHub::start();
    hub.hearth_ok(&["member", "add", "mum", "--role", "parent"]);
    hub.hearth_ok(&["member", "add", "ada", "--role", "child"]);
    hub.hearth_ok(&["member", "add", "bob", "--role", "child"]);
    let (mum, _) = signed_in(&hub, "mum").await;
    // A parent makes the child's join code from the page.
    let ticket = mum
        .request(
            "POST",
            "/api/join-codes",
            json!({"member": "ada", "label": "tablet"}),
        )
        .await
        .json();
    let child_code = ticket["url"]
        .as_str()
        .unwrap()
        .split("#join=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let mut ada = Web::new(&hub);
    assert_eq!(ada.join(&child_code).await.status, 200);

    let contacts = ada
        .request("GET", "/api/contacts", Value::Null)
        .await
        .json();
    let names: Vec<&str> = contacts
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["mum"],
        "a child messages its parents, not its brother"
    );

    for (method, path, body) in [
        ("GET", "/api/household", Value::Null),
        ("GET", "/api/privacy", Value::Null),
        (
            "POST",
            "/api/members",
            json!({"name": "eve", "role": "parent"}),
        ),
        (
            "POST",
            "/api/pairing",
            json!({"member": "ada", "label": "robot"}),
        ),
        (
            "POST",
            "/api/join-codes",
            json!({"member": "ada", "label": "phone"}),
        ),
    ] {
        let answer = ada.request(method, path, body).await;
        assert_eq!(answer.status, 403, "{method} {path}: {}", answer.body);
    }
    assert_eq!(
        mum.request("GET", "/api/household", Value::Null)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn revoking_a_browser_from_another_parents_page_ends_its_page_at_once() {
    let hub = TestHub::start();
    hub.hearth_ok(&["member", "add", "mum", "--role", "parent"]);
    hub.hearth_ok(&["member", "add", "dad", "--role", "parent"]);
    let (mum, _) = signed_in(&hub, "mum").await;
    let (dad, dad_id) = signed_in(&hub, "dad").await;

    let mut stream = dad.events().await;
    let mut seen = String::new();
    assert!(
        wait_for(
            &mut stream,
            &mut seen,
            "event: household",
            Duration::from_secs(5)
        )
        .await,
        "{seen}"
    );
    // Dad's own page shows him online.
    assert!(seen.contains(&dad_id));

    let revoked = mum
        .request(
            "POST",
            &format!("/api/devices/{dad_id}/revoke"),
            Value::Null,
        )
        .await;
    assert_eq!(revoked.status, 204, "{}", revoked.body);
    let start = Instant::now();
    assert!(
        wait_for(
            &mut stream,
            &mut seen,
            "event: signed-out",
            Duration::from_secs(2)
        )
        .await,
        "the page was not ended: {seen}"
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(dad.request("GET", "/api/me", Value::Null).await.status, 401);
}

#[tokio::test]
async fn a_parent_messages_a_childs_toy_and_sees_its_reply_and_delivery_live() {
    let hub = TestHub::start();
    hub.hearth_ok(&["member", "add", "mum", "--role", "parent"]);
    let toy = hub.device("ada", "child");
    let mut toy_mail = Mail::connect(&hub, &toy).await;
    let (mum, _) = signed_in(&hub, "mum").await;
    let mut stream = mum.events().await;
    let mut seen = String::new();
    assert!(
        wait_for(
            &mut stream,
            &mut seen,
            "event: household",
            Duration::from_secs(5)
        )
        .await
    );

    let sent = mum
        .request(
            "POST",
            "/api/messages",
            json!({"ref": "r1", "to": "ada", "kind": "text", "body": "dinner is ready"}),
        )
        .await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    let delivery = toy_mail
        .delivery(Duration::from_secs(10))
        .await
        .expect("the toy receives it");
    assert_eq!(delivery.body.as_deref(), Some("dinner is ready"));
    assert_eq!(delivery.from.member.as_str(), "mum");
    toy_mail.ack(&delivery.id).await;
    assert!(
        wait_for(
            &mut stream,
            &mut seen,
            "\"status\":\"delivered\"",
            Duration::from_secs(10)
        )
        .await,
        "no delivered receipt on the page: {seen}"
    );

    toy_mail
        .send(json!({"v": 1, "type": "send", "ref": "t1", "to": "mum", "kind": "text", "body": "coming!"}))
        .await;
    assert!(
        wait_for(&mut stream, &mut seen, "coming!", Duration::from_secs(10)).await,
        "the reply did not arrive live: {seen}"
    );
    let id = seen
        .split("event: inbox")
        .filter_map(|e| e.split("data: ").nth(1))
        .filter_map(|d| serde_json::from_str::<Inbox>(d.lines().next().unwrap_or("")).ok())
        .find_map(|e| match e {
            Inbox::Delivery(d) => Some(d.id),
            _ => None,
        })
        .expect("a delivery");
    assert_eq!(
        mum.request("POST", "/api/messages/ack", json!({ "id": id }))
            .await
            .status,
        202
    );
    let _ = toy_mail.receipt("t1", ReceiptStatus::Delivered).await;
}

#[tokio::test]
async fn commands_from_a_page_follow_the_policy_and_the_parents_tools_are_theirs_alone() {
    let hub = TestHub::start();
    hub.hearth_ok(&["member", "add", "mum", "--role", "parent"]);
    hub.hearth_ok(&["member", "add", "ada", "--role", "child"]);
    let toy = hub.device("bob", "child");
    let (client, mut events) = rumqttc::AsyncClient::new(mqtt_v4(&hub, &toy, &toy.id), 16);
    v4_connected(&mut events).await.expect("the toy connects");
    client
        .subscribe(
            format!("hearth/v1/dev/{}/cmd/#", toy.id),
            rumqttc::QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    v4_wait_suback(&mut events).await;

    let (mum, _) = signed_in(&hub, "mum").await;
    let (ada, ada_id) = signed_in(&hub, "ada").await;

    // A parent's command reaches the toy's cmd topic with its arguments.
    let path = format!("/api/devices/{}/command", toy.id);
    let sent = mum
        .request(
            "POST",
            &path,
            json!({"name": "beep", "payload": {"times": 2}}),
        )
        .await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    let publish = v4_next_publish(&mut events, Duration::from_secs(5))
        .await
        .expect("the command arrives");
    assert_eq!(publish.topic, format!("hearth/v1/dev/{}/cmd/beep", toy.id));
    assert_eq!(
        serde_json::from_slice::<Value>(&publish.payload).unwrap(),
        json!({"times": 2})
    );
    for bad in ["a/b", "#", ""] {
        let answer = mum.request("POST", &path, json!({ "name": bad })).await;
        assert_eq!(answer.status, 400, "{bad:?}");
    }

    // A child's browser is refused another child's toy, as its device
    // would be, and the refusal is audited by id.
    let refused = ada.request("POST", &path, json!({"name": "beep"})).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("another device"));
    assert!(wait_audit(&hub, |e| e.event == "denied"
        && e.device.as_ref().map(|d| d.as_str()) == Some(ada_id.as_str()))
    .is_some());
    assert!(v4_next_publish(&mut events, Duration::from_millis(500))
        .await
        .is_none());

    // The audit, contact rules and exports are a parent's.
    for path in [
        "/api/activity",
        "/api/contact-rules",
        "/api/members/ada/export",
    ] {
        assert_eq!(
            ada.request("GET", path, Value::Null).await.status,
            403,
            "{path}"
        );
    }
    let activity = mum
        .request("GET", "/api/activity", Value::Null)
        .await
        .json();
    assert!(activity
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event"] == "denied"));

    // A parent lets ada message bob: ada's contacts show it.
    let contacts = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        contacts(
            ada.request("GET", "/api/contacts", Value::Null)
                .await
                .json()
        ),
        ["mum"]
    );
    let set = mum
        .request(
            "POST",
            "/api/contact-rules",
            json!({"a": "ada", "b": "bob", "allowed": true}),
        )
        .await;
    assert_eq!(set.status, 204, "{}", set.body);
    let now = contacts(
        ada.request("GET", "/api/contacts", Value::Null)
            .await
            .json(),
    );
    assert!(now.contains(&"bob".to_owned()), "{now:?}");

    // Sharing a device with the bridge is a parent's choice, as `hearth
    // bridge enable` is.
    let share = format!("/api/devices/{}/bridge", toy.id);
    let on = json!({"enabled": true});
    assert_eq!(ada.request("POST", &share, on.clone()).await.status, 403);
    assert_eq!(mum.request("POST", &share, on).await.status, 204);
    assert!(hub.hearth_ok(&["bridge", "list"]).contains(&toy.id));
    let view = mum
        .request("GET", "/api/household", Value::Null)
        .await
        .json();
    let card = view["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == toy.id.as_str())
        .unwrap()
        .clone();
    assert_eq!(card["bridged"], true);
    let off = json!({"enabled": false});
    assert_eq!(mum.request("POST", &share, off).await.status, 204);
    assert!(!hub.hearth_ok(&["bridge", "list"]).contains(&toy.id));

    let export = mum
        .request("GET", "/api/members/ada/export", Value::Null)
        .await;
    assert_eq!(export.status, 200);
    assert!(export.headers.contains("content-disposition: attachment"));
    assert!(export.body.contains("\"ada\""), "{}", export.body);
}

#[tokio::test]
async fn a_closed_page_stops_counting_as_connected() {
    let hub = TestHub::start();
    hub.hearth_ok(&["member", "add", "ada", "--role", "child"]);
    let (ada, id) = signed_in(&hub, "ada").await;
    let connected = || {
        let Ok(AdminResponse::Status(status)) = admin_request(&hub.socket, &AdminRequest::Status)
        else {
            panic!("no status");
        };
        status.connected.iter().any(|d| d.as_str() == id)
    };
    assert!(!connected());
    let (_events, reader) = ada.events_with_handle().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !connected() {
        assert!(
            Instant::now() < deadline,
            "an open page counts as connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The tab closes: a child's page has no events to send, so the hub
    // notices at its next keep-alive at the latest.
    reader.abort();
    let deadline = Instant::now() + Duration::from_secs(15);
    while connected() {
        assert!(
            Instant::now() < deadline,
            "a closed page still counts as connected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
