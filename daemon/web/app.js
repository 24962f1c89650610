// Hearth's family page: signs the browser in with a join code, shows the household live (parents), and carries messages through the hub's mailbox.
"use strict";

const $ = (id) => document.getElementById(id);
let me = null;
let household = { members: [], devices: [], pairing: [] };
let contacts = [];
let peer = null;          // the member whose conversation is open
let pairing = null;       // the window this page opened
let events = null;
const STORE_PREFIX = "hearth.messages.";
let STORE_KEY = null;      // this browser's own, by its device id
const KEEP = 200;         // messages kept on this browser

// ---- the hub's API -------------------------------------------------------
async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    signedOut();
    throw new Error("signed out");
  }
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    throw new Error((data && data.error) || response.statusText);
  }
  return data;
}

function say(text) { $("status").textContent = text; }

// ---- screens -------------------------------------------------------------
function show(name) {
  say("");
  for (const s of document.querySelectorAll(".screen")) s.hidden = s.id !== "screen-" + name;
  for (const b of document.querySelectorAll("nav button")) {
    if (b.dataset.screen === name) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
  if (name === "messages") loadContacts();
  if (name === "privacy") loadPrivacy();
  if (name === "activity") loadActivity();
  if (name === "family") loadContactRules();
}

// Messages kept on this browser belong to the browser that received them:
// signed out (or revoked), they are erased, and one that joins again as
// someone else never sees them.
function forgetMessages(keep) {
  for (const key of Object.keys(localStorage)) {
    if (key.startsWith(STORE_PREFIX) && key !== keep) localStorage.removeItem(key);
  }
}

function signedOut() {
  me = null;
  STORE_KEY = null;
  membersShown = null;
  forgetMessages(null);
  if (events) { events.close(); events = null; }
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  show("signed-out");
}

async function start() {
  const join = new URLSearchParams(location.hash.slice(1)).get("join");
  if (join) {
    show("join");
    $("join-button").addEventListener("click", async () => {
      try {
        await api("POST", "/api/join", { code: join });
        history.replaceState(null, "", "/");
        await signedIn();
      } catch (e) { say(e.message); }
    });
    return;
  }
  try { await signedIn(); } catch (e) { if (me === null) signedOut(); }
}

async function signedIn() {
  me = await api("GET", "/api/me");
  STORE_KEY = STORE_PREFIX + me.device;
  forgetMessages(STORE_KEY);
  say("");
  document.body.classList.toggle("child", me.role !== "parent");
  $("nav").hidden = false;
  $("sign-out").hidden = false;
  listen();
  show(me.role === "parent" ? "home" : "messages");
}

// ---- live updates --------------------------------------------------------
function listen() {
  if (events) events.close();
  events = new EventSource("/api/events");
  events.addEventListener("household", (e) => { household = JSON.parse(e.data); renderHousehold(); });
  events.addEventListener("inbox", (e) => onInbox(JSON.parse(e.data)));
  events.addEventListener("signed-out", () => signedOut());
  events.onerror = async () => {
    // The stream ended: find out whether this browser is still signed in.
    try { await api("GET", "/api/me"); } catch (e) { /* signedOut() ran */ }
  };
}

// ---- home ----------------------------------------------------------------
function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  const d = Math.floor(Date.now() / 1000) - seconds;
  if (d < 86400) return "today";
  if (d < 2 * 86400) return "yesterday";
  return Math.floor(d / 86400) + " days ago";
}

// A telemetry value as people read it: a flat JSON object as "key value" pairs.
function readable(value) {
  try {
    const v = JSON.parse(value);
    if (v && typeof v === "object" && !Array.isArray(v)) {
      return Object.entries(v).map(([k, x]) => k.replace(/_/g, " ") + " " + (typeof x === "object" ? JSON.stringify(x) : x)).join(" · ");
    }
    return String(v);
  } catch (e) { return value; }
}

// The list is drawn again whenever the household changes (telemetry: up to
// twice a second). What a person is doing in it survives: the control
// that had the focus gets it back (by its data-key), a confirmation stays
// open, a half-typed command stays typed.
function renderHousehold() {
  const list = $("devices");
  const focused = document.activeElement && list.contains(document.activeElement) ? document.activeElement.dataset.key : null;
  list.replaceChildren();
  for (const d of household.devices) {
    if (!d.active) continue;
    const li = document.createElement("li");
    li.dataset.device = d.id;
    const title = document.createElement("div");
    title.className = "title";
    title.textContent = d.label;
    const meta = document.createElement("div");
    meta.className = "meta";
    const state = document.createElement("span");
    state.className = d.online ? "online" : "offline";
    state.textContent = d.online ? "online" : "offline";
    const owner = d.owner ? d.owner + "'s " + (d.kind === "browser" ? "browser" : "device") : "service";
    meta.append(state, " · " + owner + " · last seen " + (d.online ? "now" : ago(d.last_seen)));
    li.append(title, meta);
    if (d.latest) {
      const values = document.createElement("ul");
      values.className = "values";
      for (const [topic, value] of Object.entries(d.latest)) {
        if (topic === "meta") continue;
        const v = document.createElement("li");
        v.append(topic.replace(/^tele\//, "") + ": ", readable(value));
        values.append(v);
      }
      li.append(values);
    }
    if (d.kind === "device" && d.owner !== null) li.append(commandBox(d));
    if (d.kind === "device" && household.bridge) li.append(bridgeToggle(d));
    if (d.id !== me.device) li.append(deviceActions(d));
    list.append(li);
  }
  if (focused) {
    const again = list.querySelector('[data-key="' + CSS.escape(focused) + '"]');
    if (again) {
      again.focus();
      if (again.tagName === "INPUT" && again.type !== "checkbox") again.setSelectionRange(again.value.length, again.value.length);
    }
  }
  fillMembers();
  if (pairing) {
    const arrived = household.devices.find((d) => d.label === pairing.label && d.owner === pairing.member && !pairing.before.has(d.id));
    if (arrived) {
      $("pair-wait").textContent = arrived.label + " is paired" + (arrived.online ? " and online." : ".");
      pairing = null;
    }
  }
}

// Commands a device declares in its description (meta), or a raw form.
const commandDrafts = {};
function commandBox(d) {
  const box = document.createElement("div");
  box.className = "commands";
  let declared = null;
  try { declared = JSON.parse((d.latest || {}).meta || "null"); } catch (e) { declared = null; }
  const send = async (name, payload) => {
    try { await api("POST", "/api/devices/" + d.id + "/command", { name, payload }); say(name + " sent to " + d.label + "."); } catch (e) { say(e.message); }
  };
  if (declared && Array.isArray(declared.commands) && declared.commands.length > 0) {
    for (const c of declared.commands) {
      const args = c.args || [];
      const inputs = args.map((a) => {
        const input = document.createElement("input");
        input.dataset.key = d.id + ":arg:" + c.name + ":" + a.name;
        input.value = commandDrafts[input.dataset.key] || "";
        input.addEventListener("input", () => { commandDrafts[input.dataset.key] = input.value; });
        input.placeholder = a.name + (a.unit ? " (" + a.unit + ")" : "");
        input.setAttribute("aria-label", c.name + " " + a.name);
        return [a, input];
      });
      const b = document.createElement("button");
      b.type = "button"; b.className = "quiet"; b.textContent = c.name;
      b.dataset.key = d.id + ":cmd:" + c.name;
      b.addEventListener("click", () => {
        const payload = {};
        for (const [a, input] of inputs) {
          const raw = input.value.trim();
          payload[a.name] = a.type === "number" || a.type === "integer" ? Number(raw) : a.type === "boolean" ? raw === "true" : raw;
        }
        send(c.name, payload);
      });
      box.append(...inputs.map(([, i]) => i), b);
    }
    return box;
  }
  const name = document.createElement("input");
  name.dataset.key = d.id + ":raw";
  name.placeholder = "command";
  name.setAttribute("aria-label", "Command for " + d.label);
  name.value = commandDrafts[d.id] || "";
  name.addEventListener("input", () => { commandDrafts[d.id] = name.value; });
  const b = document.createElement("button");
  b.type = "button"; b.className = "quiet"; b.textContent = "Send command";
  b.dataset.key = d.id + ":send";
  b.addEventListener("click", () => { if (name.value.trim()) send(name.value.trim(), null); });
  box.append(name, b);
  return box;
}

// Whether the bridge may carry this device to the other broker (Home
// Assistant): off unless a parent turns it on (docs/INTEGRATIONS.md).
function bridgeToggle(d) {
  const label = document.createElement("label");
  label.className = "toggle";
  const box = document.createElement("input");
  box.type = "checkbox";
  box.dataset.key = d.id + ":bridge";
  box.checked = d.bridged;
  box.addEventListener("change", async () => {
    try {
      await api("POST", "/api/devices/" + d.id + "/bridge", { enabled: box.checked });
      say(d.label + (box.checked ? " is shared with the bridge." : " is no longer shared."));
    } catch (e) { say(e.message); box.checked = !box.checked; }
  });
  label.append(box, " Share with the bridge (Home Assistant)");
  return label;
}

// A device card's actions; a revoke or remove asks first (kept in
// `confirming` across redraws).
const confirming = {};
function deviceActions(d) {
  const box = document.createElement("div");
  box.className = "actions";
  const act = (text, cls, key, fn) => {
    const b = document.createElement("button");
    b.type = "button"; b.className = cls; b.textContent = text;
    b.dataset.key = d.id + ":" + key;
    b.addEventListener("click", fn);
    return b;
  };
  const pending = confirming[d.id];
  if (pending) {
    box.append(
      document.createTextNode(pending.what + " " + d.label + "? "),
      act("Yes, " + pending.what.toLowerCase(), "danger", "yes", async () => {
        delete confirming[d.id];
        try { await api("POST", pending.path); say(d.label + ": done."); } catch (e) { say(e.message); }
      }),
      act("No", "quiet", "no", () => { delete confirming[d.id]; renderHousehold(); }),
    );
    return box;
  }
  const ask = (what, path) => () => { confirming[d.id] = { what, path }; renderHousehold(); };
  box.append(
    act("Rename", "quiet", "rename", async () => {
      const label = prompt("New name for " + d.label, d.label);
      if (!label) return;
      try { await api("POST", "/api/devices/" + d.id + "/label", { label }); } catch (e) { say(e.message); }
    }),
    act("Revoke", "quiet", "revoke", ask("Revoke", "/api/devices/" + d.id + "/revoke")),
    act("Remove", "danger", "remove", ask("Remove", "/api/devices/" + d.id + "/remove")),
  );
  return box;
}

// ---- members, pairing, join links ----------------------------------------
// Drawn again only when the members changed: the household arrives with
// every telemetry change, and an open drop-down or a half-done removal
// must not be swept away under the person using it.
let membersShown = null;
function fillMembers() {
  const key = JSON.stringify(household.members) + "|" + (me && me.member);
  if (key === membersShown) return;
  membersShown = key;
  for (const id of ["pair-member", "join-member"]) {
    const select = $(id);
    const chosen = select.value;
    select.replaceChildren(...household.members.map((m) => new Option(m.name, m.name)));
    if (chosen) select.value = chosen;
  }
  const list = $("members");
  list.replaceChildren();
  for (const m of household.members) {
    const li = document.createElement("li");
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = m.name;
    li.append(title, " · " + m.role);
    if (m.name !== me.member) {
      const b = document.createElement("button");
      b.type = "button"; b.className = "quiet"; b.textContent = "Remove";
      b.addEventListener("click", () => {
        const yes = document.createElement("button");
        yes.type = "button"; yes.className = "danger";
        yes.textContent = "Yes, remove " + m.name + " and all their devices";
        yes.addEventListener("click", async () => {
          try { await api("DELETE", "/api/members/" + encodeURIComponent(m.name)); } catch (e) { say(e.message); }
        });
        b.replaceWith(yes);
      });
      li.append(" ", b);
    }
    list.append(li);
  }
}

function svgImage(svg) {
  return "data:image/svg+xml;base64," + btoa(unescape(encodeURIComponent(svg)));
}

$("pair-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const member = $("pair-member").value;
  const label = $("pair-label").value.trim();
  try {
    const t = await api("POST", "/api/pairing", { member, label });
    pairing = { id: t.id, member, label, before: new Set(household.devices.map((d) => d.id)) };
    $("pair-qr").src = svgImage(t.qr_svg);
    $("pair-uri").textContent = t.uri;
    $("pair-wait").textContent = "Waiting for the device…";
    $("pair-ticket").hidden = false;
  } catch (err) { say(err.message); }
});

$("pair-cancel").addEventListener("click", async () => {
  if (!pairing) { $("pair-ticket").hidden = true; return; }
  try { await api("DELETE", "/api/pairing/" + pairing.id); } catch (e) { say(e.message); }
  pairing = null;
  $("pair-ticket").hidden = true;
});

$("member-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    await api("POST", "/api/members", { name: $("member-name").value.trim(), role: $("member-role").value });
    $("member-name").value = "";
    say("Added.");
  } catch (err) { say(err.message); }
});

$("join-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    const t = await api("POST", "/api/join-codes", { member: $("join-member").value, label: $("join-label").value.trim() });
    $("join-qr").src = svgImage(t.qr_svg);
    $("join-url").textContent = t.url;
    $("join-ticket").hidden = false;
  } catch (err) { say(err.message); }
});

// ---- messages ------------------------------------------------------------
function stored() {
  if (!STORE_KEY) return [];
  try { return JSON.parse(localStorage.getItem(STORE_KEY)) || []; } catch (e) { return []; }
}

function keep(list) {
  if (!STORE_KEY) return;
  list = list.slice(-KEEP);
  for (;;) {
    try { localStorage.setItem(STORE_KEY, JSON.stringify(list)); return; } catch (e) {
      if (list.length === 0) return;
      list = list.slice(Math.ceil(list.length / 4)); // full: forget the oldest
    }
  }
}

async function loadContacts() {
  try { contacts = await api("GET", "/api/contacts"); } catch (e) { say(e.message); return; }
  const list = $("contacts");
  list.replaceChildren();
  for (const c of contacts) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = c.name;
    b.addEventListener("click", () => openConversation(c.name));
    li.append(b);
    list.append(li);
  }
  if (contacts.length === 0) list.textContent = "Nobody to message yet.";
}

function openConversation(name) {
  peer = name;
  $("conversation-title").textContent = name;
  $("conversation").hidden = false;
  renderThread();
  $("send-text").focus();
}

function renderThread() {
  const thread = $("thread");
  thread.replaceChildren();
  for (const m of stored().filter((m) => m.peer === peer)) {
    const li = document.createElement("li");
    li.className = m.dir;
    li.dataset.ref = m.ref || "";
    if (m.kind === "text") li.append(document.createTextNode(m.body));
    if (m.kind === "image") {
      const img = document.createElement("img");
      img.src = m.data; img.alt = "photo from " + (m.dir === "in" ? m.peer : "you");
      li.append(img);
    }
    if (m.kind === "audio") {
      const a = document.createElement("audio");
      a.controls = true; a.src = m.data;
      li.append(a);
    }
    if (m.dir === "out") {
      const tick = document.createElement("span");
      tick.className = "tick";
      tick.textContent = m.status === "delivered" ? "✓✓" : m.status === "stored" ? "✓" : m.status === "refused" ? "✗" : "…";
      tick.setAttribute("aria-label", m.status || "sending");
      tick.title = m.status || "sending";
      li.append(tick);
      if (m.reason) {
        const r = document.createElement("span");
        r.className = "refused"; r.textContent = m.reason;
        li.append(r);
      }
    }
    thread.append(li);
  }
  thread.lastElementChild && thread.lastElementChild.scrollIntoView({ block: "end" });
}

function newRef() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function send(message) {
  const ref = newRef();
  const list = stored();
  list.push({ ref, dir: "out", peer, kind: message.kind, body: message.body,
              data: message.data ? "data:" + message.content_type + ";base64," + message.data : undefined,
              at: Date.now(), status: null });
  keep(list);
  renderThread();
  try { await api("POST", "/api/messages", { ref, to: peer, ...message }); } catch (e) { say(e.message); }
}

$("send-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const body = $("send-text").value;
  if (!body.trim() || !peer) return;
  $("send-text").value = "";
  send({ kind: "text", body });
});

// A photo is scaled in the page to fit the hub's limit before it is sent.
$("send-photo").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  e.target.value = "";
  if (!file || !peer) return;
  try {
    const bitmap = await createImageBitmap(file);
    const limit = (me.limits && me.limits.max_image_bytes) || 1048576;
    let side = 1600;
    let jpeg = null;
    for (let quality = 0.85; ; quality -= 0.15) {
      const scale = Math.min(1, side / Math.max(bitmap.width, bitmap.height));
      const canvas = document.createElement("canvas");
      canvas.width = Math.max(1, Math.round(bitmap.width * scale));
      canvas.height = Math.max(1, Math.round(bitmap.height * scale));
      canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      jpeg = canvas.toDataURL("image/jpeg", Math.max(quality, 0.4)).split(",")[1];
      if (jpeg.length * 3 / 4 <= limit || side < 200) break;
      side = Math.round(side * 0.75);
    }
    send({ kind: "image", data: jpeg, content_type: "image/jpeg" });
  } catch (err) { say("That picture could not be read."); }
});

// A voice note is recorded in the page (press to start, press to stop).
let recorder = null;
$("record").addEventListener("click", async () => {
  if (recorder) { recorder.stop(); return; }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = async () => {
      stream.getTracks().forEach((t) => t.stop());
      $("record").textContent = "Voice note";
      const blob = new Blob(chunks, { type: recorder.mimeType.split(";")[0] || "audio/webm" });
      recorder = null;
      const data = await new Promise((ok) => { const r = new FileReader(); r.onload = () => ok(r.result.split(",")[1]); r.readAsDataURL(blob); });
      send({ kind: "audio", data, content_type: blob.type });
    };
    recorder.start();
    $("record").textContent = "Stop and send";
  } catch (err) { say("The microphone is not available."); recorder = null; }
});

async function onInbox(envelope) {
  const list = stored();
  if (envelope.type === "delivery") {
    if (!list.some((m) => m.id === envelope.id)) {
      list.push({ id: envelope.id, dir: "in", peer: envelope.from.member, kind: envelope.kind, body: envelope.body,
                  data: envelope.data ? "data:" + envelope.content_type + ";base64," + envelope.data : undefined,
                  at: envelope.sent_at * 1000 });
      keep(list);
    }
    // Stored here now: the hub may forget it.
    api("POST", "/api/messages/ack", { id: envelope.id }).catch(() => {});
    if (!peer || peer !== envelope.from.member) say("New message from " + envelope.from.member);
  } else if (envelope.type === "receipt") {
    const m = list.find((m) => m.ref === envelope.ref && m.dir === "out");
    if (m && m.status !== "delivered") {
      m.status = envelope.status;
      if (envelope.reason) m.reason = envelope.reason;
      keep(list);
    }
  }
  if (peer) renderThread();
}

// ---- activity: the audit in plain words -------------------------------------
function deviceName(id) {
  if (!id) return null;
  const d = household.devices.find((x) => x.id === id);
  if (!d) return "a removed device";
  return d.owner ? d.owner + "'s " + d.label : d.label;
}

function worded(e) {
  const who = deviceName(e.device);
  const reason = e.reason ? " (" + e.reason + ")" : "";
  switch (e.event) {
    case "connect": return who + " connected";
    case "disconnect": return who + " disconnected";
    case "disconnected": return who + " was disconnected" + reason;
    case "handshake-refused": return who ? who + " was refused" + reason : "a device that is not ours tried to connect" + reason;
    case "connect-refused": return (who || "a device") + " was refused" + reason;
    case "denied": return (who || "a device") + " was refused a topic" + (e.action ? " to " + e.action.replace("-", " ") : "");
    case "join-refused": return "a wrong join code was tried";
    case "suppressed": return "more of the same were not written down";
    case "admin": {
      const a = e.action || "";
      const what = {
        "device-revoke": (who || "a device") + " was revoked",
        "device-remove": "a device was removed and erased",
        "device-relabel": (who || "a device") + " was renamed",
        "browser-join": (who || "a browser") + " joined",
        "browser-expired": (who || "a browser") + " was signed out after a long time unused",
        "web-link": "a join link was made",
        "pair-open": "a pairing window was opened",
        "pair-cancel": "a pairing window was closed",
        "contacts": "who may message whom was changed",
        "member-add": "a member was added",
        "member-remove": "a member was removed and erased",
      }[a];
      return what || "a parent: " + a.replace(/-/g, " ");
    }
    default: return (who ? who + ": " : "") + e.event.replace(/-/g, " ");
  }
}

const KINDS = {
  connections: ["connect", "disconnect", "disconnected"],
  refusals: ["handshake-refused", "connect-refused", "denied", "join-refused", "suppressed"],
  changes: ["admin"],
};

async function loadActivity() {
  const select = $("activity-device");
  const chosen = select.value;
  select.replaceChildren(new Option("every device", ""), ...household.devices.map((d) => new Option(deviceName(d.id) + (d.active ? "" : " (revoked)"), d.id)));
  select.value = chosen;
  const path = "/api/activity" + (chosen ? "?device=" + encodeURIComponent(chosen) : "");
  let entries;
  try { entries = await api("GET", path); } catch (e) { say(e.message); return; }
  const kind = $("activity-kind").value;
  const list = $("activity");
  list.replaceChildren();
  for (const e of entries.reverse()) {
    if (kind && !KINDS[kind].includes(e.event)) continue;
    const li = document.createElement("li");
    const time = document.createElement("time");
    time.dateTime = new Date(e.at * 1000).toISOString();
    time.textContent = new Date(e.at * 1000).toLocaleString();
    li.append(worded(e), time);
    list.append(li);
  }
  if (!list.firstChild) list.textContent = "Nothing yet.";
}
$("activity-device").addEventListener("change", loadActivity);
$("activity-kind").addEventListener("change", loadActivity);

// ---- contact rules ------------------------------------------------------------
async function loadContactRules() {
  for (const id of ["contact-a", "contact-b"]) {
    const select = $(id);
    const chosen = select.value;
    select.replaceChildren(...household.members.map((m) => new Option(m.name, m.name)));
    if (chosen) select.value = chosen;
  }
  let rules;
  try { rules = await api("GET", "/api/contact-rules"); } catch (e) { say(e.message); return; }
  const seen = new Set();
  $("contact-rules").replaceChildren(...rules.filter((r) => {
    const key = [r.from, r.to].sort().join("\u0000");
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  }).map((r) => {
    const li = document.createElement("li");
    li.textContent = r.from + " and " + r.to + ": " + (r.allowed ? "may message each other" : "may not message each other");
    return li;
  }));
}

$("contact-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const allowed = e.submitter && e.submitter.value === "true";
  try {
    await api("POST", "/api/contact-rules", { a: $("contact-a").value, b: $("contact-b").value, allowed });
    say("Saved.");
    loadContactRules();
  } catch (err) { say(err.message); }
});

// ---- privacy -------------------------------------------------------------
async function loadPrivacy() {
  try {
    const report = await api("GET", "/api/privacy");
    const body = $("privacy-table").tBodies[0];
    body.replaceChildren();
    for (const item of report.items) {
      const tr = body.insertRow();
      tr.insertCell().textContent = item.kind;
      tr.insertCell().textContent = item.count;
      tr.insertCell().textContent = item.kept;
    }
    $("never-stored").replaceChildren(...report.never_stored.map((t) => { const li = document.createElement("li"); li.textContent = t; return li; }));
    $("exports").replaceChildren(...household.members.map((m) => {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = "/api/members/" + encodeURIComponent(m.name) + "/export";
      a.download = "hearth-" + m.name + ".json";
      a.textContent = "Download everything about " + m.name;
      li.append(a);
      return li;
    }));
  } catch (e) { say(e.message); }
}

// ---- wiring ---------------------------------------------------------------
for (const b of document.querySelectorAll("nav button")) b.addEventListener("click", () => show(b.dataset.screen));
$("sign-out").addEventListener("click", async () => {
  try { await api("POST", "/api/signout"); } catch (e) { /* signed out either way */ }
  signedOut();
});
start();
