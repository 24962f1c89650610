#!/usr/bin/env python3
"""hearth_toy.py: a complete Hearth toy in Python, to read and to copy.

It pairs with a hub by its pairing URI over EST (RFC 7030) with the hub CA
pinned, then speaks MQTT 5 over mutual TLS: it publishes its description
(meta, retained) and telemetry, obeys commands, receives family messages
(de-duplicated by id, stored, then acknowledged), sends messages, and
renews its certificate. See README.md beside it for the protocol map.

    python3 hearth_toy.py pair 'hearth://pair?v=1&...' --dir ./toy
    python3 hearth_toy.py run --dir ./toy
    python3 hearth_toy.py send --dir ./toy --to Mum 'Hello!'
    python3 hearth_toy.py renew --dir ./toy

Needs Python 3.8+, paho-mqtt 2.x and cryptography. The directory layout is
the Rust reference device's (hearth-device), so either can use it.
"""

import argparse
import base64
import hashlib
import http.client
import json
import os
import re
import secrets
import signal
import socket
import ssl
import sys
import threading
import time
from urllib.parse import parse_qsl

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

# --- What this toy is (its meta document) -----------------------------------

META = {
    "maker": "Example Toys",
    "model": "Python Bear",
    "firmware": "1.0.0",
    "telemetry": [
        {"name": "seq", "type": "integer"},
        {"name": "uptime_s", "type": "integer", "unit": "s"},
        {"name": "led", "type": "boolean"},
    ],
    "commands": [
        {"name": "led", "args": [{"name": "on", "type": "boolean"}]},
        {"name": "beep", "args": [{"name": "times", "type": "integer"}]},
    ],
}

# --- Files: the same layout as hearth-device's -------------------------------

SETTINGS = "device.toml"  # device_id, host, mqtt_port, enroll_port, ca_sha256
KEY = "device.key"  # the private key, made here, 0600
CERT = "device.pem"  # the device certificate, then the CA
CA = "ca.pem"  # the hub CA: the only root this toy trusts
SEEN = "seen.json"  # ids of messages already shown (de-duplication)
INBOX = "inbox"  # received pictures and voice notes, 0700

# --- Protocol constants --------------------------------------------------------

EST = "/.well-known/est/"
DEVICE_URI_PREFIX = "urn:hearth:device:"
MAX_EST_ANSWER = 64 * 1024  # a certificate or two in base64
MAX_INBOX_PAYLOAD = 16 * 1024 * 1024  # above the hub's own 8 MiB limit
KEEPALIVE_S = 30
ANSWER_TIMEOUT_S = 15
SEEN_KEPT = 1024  # the hub redelivers only unacknowledged messages
HUB_ID = re.compile(r"^[0-9a-f]{1,64}$")  # message ids are the hub's hex
DEVICE_ID = re.compile(r"^[0-9a-hjkmnp-tv-z]{26}$")


class ToyError(Exception):
    """A failure explained to the person running the toy."""


def topic(device_id, *rest):
    return "/".join(("hearth/v1/dev", device_id) + rest)


def printable(text):
    """Text that came over the network, safe for a terminal: control
    characters (escape sequences could retitle it or fake output) are shown
    escaped; line breaks are kept."""
    return "".join(
        c if c == "\n" or c.isprintable() else "\\u%04x" % ord(c) for c in str(text)
    )


def say(*parts):
    print(*parts, flush=True)


def warn(*parts):
    print(*parts, file=sys.stderr, flush=True)


# --- The device directory ---------------------------------------------------------


def private_dir(path):
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)  # tightened if it existed


def write_file(path, data, mode):
    """Writes atomically, with `mode` from the first byte (a key is never
    readable by others, not even while it is being written)."""
    if isinstance(data, str):
        data = data.encode()
    tmp = path + ".tmp"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def toml_settings(settings):
    lines = []
    for key in ("device_id", "host", "mqtt_port", "enroll_port", "ca_sha256"):
        value = settings[key]
        lines.append("%s = %s" % (key, value if isinstance(value, int) else json.dumps(value)))
    return "\n".join(lines) + "\n"


def read_settings(directory):
    """device.toml, flat `key = value` lines (a TOML subset: enough for the
    five fields, without a TOML library)."""
    path = os.path.join(directory, SETTINGS)
    try:
        text = open(path, encoding="utf-8").read()
        finish_renewal(directory)
    except FileNotFoundError:
        raise ToyError("%s is not paired (no %s): run `pair` first" % (directory, SETTINGS))
    settings = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        settings[key] = json.loads(value) if value.startswith('"') else int(value)
    for key in ("device_id", "host", "mqtt_port", "enroll_port", "ca_sha256"):
        if key not in settings:
            raise ToyError("%s lacks %s" % (path, key))
    return settings


class Seen:
    """Ids of the messages already shown, kept on disk so a restart between
    storing a message and acknowledging it does not show it twice."""

    def __init__(self, directory):
        self.path = os.path.join(directory, SEEN)
        try:
            self.ids = json.load(open(self.path))[-SEEN_KEPT:]
        except (FileNotFoundError, ValueError):
            self.ids = []

    def first_time(self, message_id):
        return message_id not in self.ids

    def remember(self, message_id):
        self.ids = (self.ids + [message_id])[-SEEN_KEPT:]
        write_file(self.path, json.dumps(self.ids), 0o600)


# --- Pairing URI, EST and certificates ---------------------------------------------


def parse_pairing_uri(uri):
    """hearth://pair?v=1&host=…&port=…&mqtt=…&ca=…&token=…"""
    prefix = "hearth://pair?"
    if not uri.strip().startswith(prefix):
        raise ToyError("a pairing URI starts with " + prefix)
    fields = dict(parse_qsl(uri.strip()[len(prefix):], keep_blank_values=True))
    if fields.get("v") != "1":
        raise ToyError("pairing URI version %r is not supported" % fields.get("v"))
    try:
        host = fields["host"].strip("[]")
        port, mqtt_port = int(fields["port"]), int(fields["mqtt"])
        ca, token = fields["ca"].lower(), fields["token"]
    except (KeyError, ValueError) as e:
        raise ToyError("the pairing URI lacks or has a bad %s" % e)
    if not re.fullmatch(r"[0-9a-f]{64}", ca):
        raise ToyError("the pairing URI has a bad ca (64 hex digits expected)")
    if not re.fullmatch(r"[A-Za-z0-9.:-]+", host):
        raise ToyError("the pairing URI has a bad host")
    if not re.fullmatch(r"[A-Za-z0-9]{32,}", token):
        raise ToyError("the pairing URI has a bad token")
    return {"host": host, "port": port, "mqtt": mqtt_port, "ca": ca, "token": token}


def tls_context(ca_pem=None, cert=None, key=None, pinned_later=False):
    """The one TLS configuration the toy uses: TLS 1.2+, the hub CA as the
    only root, the server name checked. `pinned_later` is for the single
    `cacerts` request made before the toy has the CA: the answer is then
    believed only if it matches the fingerprint from the pairing URI, and
    nothing secret is sent on that connection."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if pinned_later:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=ca_pem)  # no system roots
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def est(host, port, ctx, operation, body=None, authorization=None, peer=None):
    """One EST request over its own TLS connection; returns the certificates
    (DER) of the base64 certs-only PKCS#7 answer. With a `peer` list, the
    server's own certificate (DER) is appended to it."""
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=ANSWER_TIMEOUT_S)
    headers = {}
    if body is not None:
        headers["Content-Type"] = "application/pkcs10"
        headers["Content-Transfer-Encoding"] = "base64"
    if authorization:
        headers["Authorization"] = authorization
    try:
        conn.request("POST" if body is not None else "GET", EST + operation, body, headers)
        answer = conn.getresponse()
        if peer is not None:
            peer.append(conn.sock.getpeercert(binary_form=True))
        data = answer.read(MAX_EST_ANSWER + 1)
    except (OSError, http.client.HTTPException) as e:
        raise ToyError("%s: cannot reach the hub at %s:%s: %s" % (operation, host, port, e))
    finally:
        conn.close()
    if len(data) > MAX_EST_ANSWER:
        raise ToyError("%s: the hub's answer is too large" % operation)
    if answer.status != 200:
        reason = printable(data.decode("utf-8", "replace").strip())
        raise ToyError("%s: the hub answered %s: %s" % (operation, answer.status, reason))
    try:
        der = base64.b64decode(b"".join(data.split()), validate=True)
        certs = pkcs7.load_der_pkcs7_certificates(der)
    except ValueError:
        raise ToyError("%s: the hub's answer is not a certificate" % operation)
    return [c.public_bytes(serialization.Encoding.DER) for c in certs]


def new_key_and_csr():
    """A P-256 key made here; only the signing request leaves the toy."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hearth toy")]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, base64.b64encode(csr.public_bytes(serialization.Encoding.DER))


def device_id_of(der):
    """The id the hub gave this toy: its certificate's urn:hearth:device: SAN."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(DEVICE_URI_PREFIX) and DEVICE_ID.match(uri[len(DEVICE_URI_PREFIX):]):
            return uri[len(DEVICE_URI_PREFIX):]
    return None


def pem(der):
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()


def pair(uri, directory, force=False):
    target = parse_pairing_uri(uri)
    if os.path.exists(os.path.join(directory, SETTINGS)) and not force:
        raise ToyError("%s is paired already (--force to pair again)" % directory)
    host, port = target["host"], target["port"]
    # 1. The hub CA, pinned by the fingerprint the URI carries.
    peer = []
    cas = est(host, port, tls_context(pinned_later=True), "cacerts", peer=peer)
    ca = next((c for c in cas if hashlib.sha256(c).hexdigest() == target["ca"]), None)
    if ca is None:
        raise ToyError("the hub's CA does not match the pairing URI: not our hub")
    # The server that answered holds a certificate of that CA too (the
    # handshake proved it has the key), so not even the CA list came from
    # a stranger. Everything after this is verified by the TLS library.
    try:
        x509.load_der_x509_certificate(peer[0]).verify_directly_issued_by(
            x509.load_der_x509_certificate(ca)
        )
    except (IndexError, TypeError, ValueError, InvalidSignature):
        raise ToyError("the hub's TLS certificate is not signed by the pinned CA")
    ca_pem = pem(ca)
    # 2. Enroll with the one-time token, over TLS verified against that CA.
    key_pem, csr = new_key_and_csr()
    basic = base64.b64encode(("device:" + target["token"]).encode()).decode()
    issued = est(host, port, tls_context(ca_pem), "simpleenroll", csr, "Basic " + basic)
    device_id = device_id_of(issued[0])
    if device_id is None:
        raise ToyError("the hub's certificate names no device id")
    # 3. Store: key 0600 in a 0700 directory, device.toml last so a
    #    half-written pairing never looks complete.
    private_dir(directory)
    write_file(os.path.join(directory, KEY), key_pem, 0o600)
    write_file(os.path.join(directory, CERT), pem(issued[0]) + ca_pem, 0o644)
    write_file(os.path.join(directory, CA), ca_pem, 0o644)
    settings = {
        "device_id": device_id,
        "host": host,
        "mqtt_port": target["mqtt"],
        "enroll_port": port,
        "ca_sha256": target["ca"],
    }
    write_file(os.path.join(directory, SETTINGS), toml_settings(settings), 0o644)
    return device_id


def renew(directory):
    """A new key and certificate; the current certificate authenticates the
    request (EST simplereenroll). The hub accepts the old certificate until
    the new one has been used once."""
    s = read_settings(directory)
    ca_pem = open(os.path.join(directory, CA)).read()
    ctx = tls_context(ca_pem, os.path.join(directory, CERT), os.path.join(directory, KEY))
    key_pem, csr = new_key_and_csr()
    issued = est(s["host"], s["enroll_port"], ctx, "simplereenroll", csr)
    if device_id_of(issued[0]) != s["device_id"]:
        raise ToyError("the renewed certificate names another device")
    # Both written beside the old ones (the certificate last: it marks the
    # pair complete), then moved; `finish_renewal` completes a renewal a
    # crash cut short, so key and certificate always match.
    write_file(os.path.join(directory, KEY + ".new"), key_pem, 0o600)
    write_file(os.path.join(directory, CERT + ".new"), pem(issued[0]) + ca_pem, 0o644)
    finish_renewal(directory)
    return s["device_id"]


def finish_renewal(directory):
    """Moves a renewal's files into place: a new certificate means the hub
    issued it for the new key; a new key alone means no certificate came.
    The same files and rule as hearth-device, so either completes the other's."""
    key_new, cert_new = os.path.join(directory, KEY + ".new"), os.path.join(directory, CERT + ".new")
    if os.path.exists(cert_new):
        if os.path.exists(key_new):
            os.replace(key_new, os.path.join(directory, KEY))
        os.replace(cert_new, os.path.join(directory, CERT))
    elif os.path.exists(key_new):
        os.unlink(key_new)


# --- MQTT over mutual TLS ------------------------------------------------------------


def mqtt_client(directory, settings):
    """MQTT 5 as this device: client id = device id (the hub refuses any
    other, and a second connection with the same id takes over the first),
    the device certificate, the hub CA as the only root, keep-alive 30 s."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=settings["device_id"],
        protocol=mqtt.MQTTv5,
    )
    client.tls_set_context(
        tls_context(
            open(os.path.join(directory, CA)).read(),
            os.path.join(directory, CERT),
            os.path.join(directory, KEY),
        )
    )
    client.reconnect_delay_set(min_delay=1, max_delay=60)
    client.max_inflight_messages_set(16)
    client.max_queued_messages_set(256)  # bounded while offline
    return client


def connect_properties():
    """Tells the hub the largest packet this toy takes (above the hub's own
    limit, so no message is lost, but bounded); session expiry stays 0: a
    clean session each time, see `Toy.on_connect`."""
    properties = Properties(PacketTypes.CONNECT)
    properties.MaximumPacketSize = MAX_INBOX_PAYLOAD
    return properties


# Refusals that no retry mends: this toy was revoked or removed.
FINAL_REFUSALS = {"Not authorized", "Bad user name or password", "Banned"}
# Attempts in a row that end before CONNACK before the toy asks why.
ATTEMPTS_BEFORE_DIAGNOSIS = 3


def hub_refuses_certificate(directory, settings):
    """Whether the hub refuses this toy's certificate in the TLS handshake
    (the toy was revoked or removed). paho only sees the connection drop and
    would retry forever, so one plain handshake looks at the alert: under
    TLS 1.3 it comes with the first read, while an accepting hub would wait
    for CONNECT."""
    host, port = settings["host"], settings["mqtt_port"]
    ctx = tls_context(
        open(os.path.join(directory, CA)).read(),
        os.path.join(directory, CERT),
        os.path.join(directory, KEY),
    )
    try:
        with socket.create_connection((host, port), timeout=ANSWER_TIMEOUT_S) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                tls.settimeout(2)
                tls.recv(1)
    except ssl.SSLError as e:
        reason = str(e.reason or "").upper()
        return "ALERT" in reason and "CERTIFICATE" in reason
    except OSError:
        pass  # unreachable or silent: worth retrying
    return False


class Toy:
    """The running toy: meta, telemetry, commands and the inbox."""

    def __init__(self, directory, interval, count):
        self.directory = directory
        self.settings = read_settings(directory)
        self.id = self.settings["device_id"]
        self.interval = interval
        self.count = count
        self.seen = Seen(directory)
        self.led = False
        self.started = time.monotonic()
        self.connected = threading.Event()
        self.stop = threading.Event()
        self.failure = None
        self.meta_mid = None
        self.failed_attempts = 0
        self.client = mqtt_client(directory, self.settings)
        self.client.on_connect = self.on_connect
        self.client.on_connect_fail = self.on_connect_fail
        self.client.on_disconnect = self.on_disconnect
        self.client.on_message = self.on_message
        self.client.on_publish = self.on_publish

    def on_connect(self, client, userdata, flags, reason, properties):
        if reason.is_failure:
            warn("the hub refused the connection: %s" % reason)
            if str(reason) in FINAL_REFUSALS:
                self.failure = "this toy is not allowed on the hub (%s): revoked or removed?" % reason
                self.stop.set()
            return
        self.failed_attempts = 0
        say("connected to %s:%s as %s" % (self.settings["host"], self.settings["mqtt_port"], self.id))
        # A clean session each time: subscriptions are made again here, and
        # the hub redelivers every unacknowledged message on subscribe.
        client.subscribe(
            [(topic(self.id, "cmd", "#"), 1), (topic(self.id, "inbox"), 1)]
        )
        info = client.publish(topic(self.id, "meta"), json.dumps(META), qos=1, retain=True)
        self.meta_mid = info.mid
        self.connected.set()

    def on_disconnect(self, client, userdata, flags, reason, properties):
        if not self.connected.is_set() and not self.stop.is_set():
            self.on_connect_fail(client, userdata)  # dropped before CONNACK
        self.connected.clear()
        if not self.stop.is_set():
            warn("connection lost: %s; retrying" % reason)

    def on_connect_fail(self, client, userdata):
        self.failed_attempts += 1
        if self.failed_attempts % ATTEMPTS_BEFORE_DIAGNOSIS == 0 and hub_refuses_certificate(
            self.directory, self.settings
        ):
            self.failure = (
                "the hub refuses this toy's certificate: it was revoked or removed "
                "(pair it again to use it)"
            )
            self.stop.set()

    def on_publish(self, client, userdata, mid, reason, properties):
        if mid == self.meta_mid:
            if reason.is_failure:
                warn("the hub refused meta: %s" % reason)
            else:
                say("meta published")

    def on_message(self, client, userdata, message):
        # Nothing from the network may crash the toy: bad input is logged
        # and dropped.
        try:
            if message.topic == topic(self.id, "inbox"):
                self.on_inbox(message.payload)
            elif message.topic.startswith(topic(self.id, "cmd", "")):
                self.on_command(message.topic[len(topic(self.id, "cmd", "")):], message.payload)
        except Exception as e:  # noqa: BLE001 - one bad message must not stop the toy
            warn("ignoring a message on %s: %s" % (printable(message.topic), printable(e)))

    def on_command(self, name, payload):
        args = json.loads(payload) if payload else {}
        if not isinstance(args, dict):
            raise ValueError("command arguments are a JSON object")
        if name == "led":
            self.led = bool(args.get("on", not self.led))
            say("cmd led on=%s" % str(self.led).lower())
        elif name == "beep":
            times = min(max(int(args.get("times", 1)), 0), 10)
            say("cmd beep times=%d" % times)
        else:
            say("cmd %s ignored (unknown)" % printable(name))
            return
        # The visible effect: the state that changed, at once.
        self.publish_telemetry("led", {"led": self.led, "cmd": name})

    def on_inbox(self, payload):
        if len(payload) > MAX_INBOX_PAYLOAD:
            raise ValueError("inbox message too large")
        envelope = json.loads(payload)
        kind = envelope.get("type")
        if kind == "receipt":
            line = "receipt %s %s" % (printable(envelope.get("ref", "")), printable(envelope.get("status", "")))
            if envelope.get("device"):
                line += " to " + printable(envelope["device"])
            say(line)
            return
        if kind != "delivery":
            return
        message_id = envelope.get("id", "")
        if not isinstance(message_id, str) or not HUB_ID.match(message_id):
            warn("ignoring a delivery with a malformed id")
            return  # not acknowledged: the id is not the hub's
        if self.seen.first_time(message_id):
            self.show(message_id, envelope)
            self.seen.remember(message_id)  # stored before the ack goes out
        else:
            say("message %s again (acknowledged again, not shown)" % message_id)
        # Acknowledged every time, again for a redelivery: the first ack may
        # have been lost.
        ack = {"v": 1, "type": "ack", "id": message_id}
        self.client.publish(topic(self.id, "outbox"), json.dumps(ack), qos=1)

    def show(self, message_id, envelope):
        sender = envelope.get("from") or {}
        who = "%s (%s)" % (printable(sender.get("member", "?")), printable(sender.get("device", "?")))
        if envelope.get("body") is not None:
            say("message %s from %s: %s" % (message_id, who, printable(envelope["body"])))
        elif envelope.get("data") is not None:
            data = base64.b64decode(envelope["data"], validate=True)
            subtype = str(envelope.get("content_type", "")).partition("/")[2]
            ext = subtype if re.fullmatch(r"[a-z0-9]{1,8}", subtype) else "bin"
            inbox = os.path.join(self.directory, INBOX)
            private_dir(inbox)
            # The file name comes from the hub's hex id, never from the sender.
            path = os.path.join(inbox, "%s.%s" % (message_id, ext))
            write_file(path, data, 0o600)
            say("%s %s from %s: saved %s (%d bytes)" % (
                printable(envelope.get("kind", "")), message_id, who, path, len(data)))
        else:
            say("message %s from %s (empty)" % (message_id, who))

    def publish_telemetry(self, sub, reading):
        return self.client.publish(topic(self.id, "tele", sub), json.dumps(reading), qos=1)

    def run(self):
        self.client.connect_async(
            self.settings["host"], self.settings["mqtt_port"], KEEPALIVE_S,
            properties=connect_properties(),
        )
        self.client.loop_start()  # the network thread: reconnects with back-off
        sent = 0
        try:
            while not self.stop.is_set():
                if not self.connected.wait(timeout=0.5):
                    continue
                sent += 1
                info = self.publish_telemetry("status", {
                    "seq": sent,
                    "uptime_s": int(time.monotonic() - self.started),
                    "led": self.led,
                })
                say("telemetry %d" % sent)
                if self.count is not None and sent >= self.count:
                    info.wait_for_publish(timeout=ANSWER_TIMEOUT_S)
                    break
                self.stop.wait(self.interval)
        finally:
            self.stop.set()
            self.client.disconnect()
            self.client.loop_stop()
        if self.failure:
            raise ToyError(self.failure)


def send(directory, to, text, reference=None):
    """Sends a text through the hub's mailbox and waits for the hub to say
    it stored it. The same `reference` makes a retry idempotent."""
    settings = read_settings(directory)
    me = settings["device_id"]
    reference = reference or secrets.token_hex(8)
    receipt = {}
    done = threading.Event()
    subscribed = threading.Event()
    client = mqtt_client(directory, settings)

    def on_connect(client, userdata, flags, reason, properties):
        if reason.is_failure:
            receipt.update(status="refused", reason="connection refused: %s" % reason)
            done.set()
        else:
            # Subscribed first, so the receipt cannot be missed.
            client.subscribe(topic(me, "inbox"), qos=1)

    def on_subscribe(client, userdata, mid, reasons, properties):
        subscribed.set()

    def on_message(client, userdata, message):
        try:
            envelope = json.loads(message.payload)
        except ValueError:
            return
        # Deliveries are left unacknowledged here: `run` shows and acks them.
        if envelope.get("type") == "receipt" and envelope.get("ref") == reference:
            receipt.update(envelope)
            done.set()

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    try:
        client.connect(
            settings["host"], settings["mqtt_port"], KEEPALIVE_S, properties=connect_properties()
        )
    except (OSError, ssl.SSLError) as e:
        raise ToyError("cannot reach the hub: %s" % e)
    client.loop_start()
    try:
        if not subscribed.wait(ANSWER_TIMEOUT_S) and not done.is_set():
            raise ToyError("the hub did not answer within %d s" % ANSWER_TIMEOUT_S)
        if not done.is_set():
            envelope = {"v": 1, "type": "send", "ref": reference, "to": to, "kind": "text", "body": text}
            client.publish(topic(me, "outbox"), json.dumps(envelope), qos=1)
        if not done.wait(ANSWER_TIMEOUT_S):
            raise ToyError("no receipt within %d s; send again with --ref %s" % (ANSWER_TIMEOUT_S, reference))
    finally:
        client.disconnect()
        client.loop_stop()
    if receipt.get("status") != "stored":
        raise ToyError("refused: %s" % printable(receipt.get("reason", "no reason given")))
    return receipt.get("id", "")


# --- Command line ---------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description="A Hearth toy in Python.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pair", help="pair with a hub by its pairing URI")
    p.add_argument("uri")
    p.add_argument("--dir", required=True)
    p.add_argument("--force", action="store_true", help="replace an existing pairing")
    r = commands.add_parser("run", help="publish meta and telemetry, obey commands, receive messages")
    r.add_argument("--dir", required=True)
    r.add_argument("--interval", type=float, default=10.0, help="seconds between telemetry")
    r.add_argument("--count", type=int, help="stop after this many telemetry messages")
    s = commands.add_parser("send", help="send a text message to a member or device id")
    s.add_argument("--dir", required=True)
    s.add_argument("--to", required=True)
    s.add_argument("--ref", help="a reference, to retry a send without sending twice")
    s.add_argument("text")
    n = commands.add_parser("renew", help="renew the certificate with a new key")
    n.add_argument("--dir", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "pair":
            say(pair(args.uri, args.dir, args.force))
        elif args.command == "run":
            toy = Toy(args.dir, max(args.interval, 0.05), args.count)
            # SIGTERM ends the toy like Ctrl-C: a clean DISCONNECT.
            signal.signal(signal.SIGTERM, lambda *_: toy.stop.set())
            signal.signal(signal.SIGINT, lambda *_: toy.stop.set())
            toy.run()
        elif args.command == "send":
            say("stored %s" % send(args.dir, args.to, args.text, args.ref))
        elif args.command == "renew":
            say("renewed %s" % renew(args.dir))
    except (ToyError, OSError) as e:
        warn("error: %s" % e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
