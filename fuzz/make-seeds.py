#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs into fuzz/corpus-raw/<target>/:
MQTT 3.1.1 and 5 packet streams as clients and the broker send them (per
the specifications' encodings), the messaging envelopes of
docs/PROTOCOL.md and variants, and PKCS#10 requests made with openssl.
`cargo fuzz cmin` then keeps what adds coverage (docs/FUZZING.md)."""
import base64
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(ROOT, "corpus-raw")


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            b |= 0x80
        out.append(b)
        if not n:
            return bytes(out)


def s(text):
    if isinstance(text, str):
        text = text.encode()
    return len(text).to_bytes(2, "big") + text


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def props(*items):
    body = b"".join(items)
    return varint(len(body)) + body


def p_byte(pid, v):
    return bytes([pid, v])


def p_u16(pid, v):
    return bytes([pid]) + v.to_bytes(2, "big")


def p_u32(pid, v):
    return bytes([pid]) + v.to_bytes(4, "big")


def p_str(pid, v):
    return bytes([pid]) + s(v)


def p_pair(k, v):
    return b"\x26" + s(k) + s(v)


DEV = "0jqs8adyj6jyjnsqmar523qbbd"
TELE = f"hearth/v1/dev/{DEV}/tele/temp"


def connect(v5, client_id=DEV, clean=True, will=None, keep_alive=30, login=False):
    flags = 0x02 if clean else 0
    payload = s(client_id)
    cprops = b""
    if v5:
        cprops = props(p_u32(0x11, 300), p_u16(0x21, 20), p_u32(0x27, 65536),
                       p_u16(0x22, 10), p_byte(0x19, 1), p_pair("k", "v"))
    if will:
        flags |= 0x04 | (1 << 3) | 0x20
        wprops = props(p_u32(0x18, 5), p_byte(0x01, 1), p_str(0x03, "text/plain"),
                       p_str(0x08, TELE), p_str(0x09, "corr"), p_u32(0x02, 60),
                       p_pair("a", "b")) if v5 else b""
        payload += wprops + s(will) + s(b"gone")
    if login:
        flags |= 0xc0
        payload += s("user") + s("password")
    body = s("MQTT") + bytes([5 if v5 else 4, flags]) + keep_alive.to_bytes(2, "big") + cprops + payload
    return packet(0x10, body)


def publish(v5, topic, qos=0, pid=1, payload=b"21.5", retain=False, dup=False, pprops=None):
    first = 0x30 | (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0)
    body = s(topic)
    if qos:
        body += pid.to_bytes(2, "big")
    if v5:
        body += pprops if pprops is not None else props()
    return packet(first, body + payload)


def subscribe(v5, filters, pid=2, sprops=None):
    body = pid.to_bytes(2, "big")
    if v5:
        body += sprops if sprops is not None else props()
    for f, o in filters:
        body += s(f) + bytes([o])
    return packet(0x82, body)


def unsubscribe(v5, filters, pid=3):
    body = pid.to_bytes(2, "big") + (props() if v5 else b"")
    for f in filters:
        body += s(f)
    return packet(0xa2, body)


def ack(kind, pid, v5, reason=None, flags=0):
    body = pid.to_bytes(2, "big")
    if v5 and reason is not None:
        body += bytes([reason]) + props()
    return packet((kind << 4) | flags, body)


PINGREQ = b"\xc0\x00"


def disconnect(v5, reason=0):
    return packet(0xe0, bytes([reason]) + props(p_u32(0x11, 0)) if v5 else b"")


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def edge():
    for v5 in (False, True):
        tag = "v5" if v5 else "v311"
        sel_client = bytes([1 if v5 else 0])
        all_props = props(p_byte(0x01, 1), p_u32(0x02, 60), p_str(0x03, "application/json"),
                          p_str(0x08, TELE + "/reply"), p_str(0x09, b"\x00\x01corr"),
                          p_u16(0x23, 4), p_pair("unit", "C"), p_pair("k", "v"))
        session = (connect(v5, will=TELE + "/will")
                   + subscribe(v5, [(f"hearth/v1/dev/{DEV}/inbox", 1),
                                    ("hearth/v1/dev/+/tele/#", 2),
                                    ("$share/g/hearth/v1/dev/+/tele/#", 0x15 if v5 else 0)],
                               sprops=props(varint(0x0b) + varint(7)) if v5 else None)
                   + publish(v5, TELE, 0)
                   + publish(v5, TELE, 1, pid=7, retain=True,
                             pprops=all_props if v5 else None)
                   + publish(v5, TELE, 2, pid=8, dup=True)
                   + ack(6, 8, v5, flags=2)
                   + ack(4, 9, v5, 0x10) + ack(5, 10, v5, 0x80) + ack(7, 10, v5)
                   + unsubscribe(v5, ["hearth/v1/dev/+/tele/#"])
                   + PINGREQ + disconnect(v5, 0x04))
        write("edge_frames", f"{tag}-session", sel_client + session)
        for role in (0, 1, 2):
            write("edge_frames", f"{tag}-role{role}-publishes",
                  bytes([(1 if v5 else 0) | role << 2])
                  + connect(v5, client_id="", login=True, keep_alive=0)
                  + publish(v5, f"hearth/v1/dev/{DEV}/outbox", 1, pid=3,
                            payload=b'{"v":1,"type":"send","ref":"r","to":"Ada","kind":"text","body":"hi"}')
                  + publish(v5, "hearth/v1/dev/0000000000000000000000000/tele/x", 0)
                  + subscribe(v5, [("#", 0), ("hearth/v1/dev/+/inbox", 1)]))
        if v5:
            # Topic alias: defined, then used with an empty topic.
            write("edge_frames", "v5-alias", sel_client
                  + publish(True, TELE, 0, pprops=props(p_u16(0x23, 1)))
                  + publish(True, "", 0, pprops=props(p_u16(0x23, 1))))
        write("edge_frames", f"{tag}-no-clean-empty-id", sel_client + connect(v5, client_id="", clean=False))
        # The broker's side: CONNACK, SUBACK, PUBLISH, acknowledgements.
        connack = packet(0x20, b"\x00\x00" + (props(p_u16(0x22, 10), p_u16(0x21, 100), p_byte(0x24, 1)) if v5 else b""))
        suback = packet(0x90, b"\x00\x02" + (props(p_pair("k", "v")) if v5 else b"") + b"\x01\x02\x80")
        write("edge_frames", f"{tag}-broker", bytes([(1 if v5 else 0) | 2]) + connack + suback
              + publish(v5, TELE, 1, pid=300, pprops=all_props if v5 else None)
              + ack(4, 5, v5, 0) + ack(5, 6, v5) + ack(6, 6, v5, flags=2) + ack(7, 6, v5)
              + packet(0xb0, b"\x00\x03" + (props() + b"\x00" if v5 else b""))
              + b"\xd0\x00")
    # Framing edge cases.
    write("edge_frames", "long-length", b"\x00\x30\xff\xff\xff\x7f")
    write("edge_frames", "bad-length", b"\x00\x30\xff\xff\xff\xff\x01")
    write("edge_frames", "mqtt31", b"\x00" + packet(0x10, s("MQIsdp") + b"\x03\x02\x00\x1e" + s("x")))


def envelopes():
    doc = open(os.path.join(ROOT, "..", "docs", "PROTOCOL.md")).read()
    n = 0
    for block in doc.split("```json")[1:]:
        text = block.split("```")[0]
        if "$schema" in text:
            continue
        write("envelope", f"doc-{n}", text.strip().encode())
        n += 1
    extra = [
        b'{"v":1,"type":"send","ref":"r1","to":"0jqs8adyj6jyjnsqmar523qbbd","kind":"image","content_type":"image/png","data":"iVBORw0KGgo="}',
        b'{"v":1,"type":"send","ref":"r2","to":"Ada","kind":"text","body":"\\u00e9\\ud83d\\ude00","from":"x","future":[1,{"a":null}]}',
        b'{"v":2,"type":"ack","id":"x","ref":"q"}',
        b'{"v":1,"type":"send","ref":"","to":"Ada","kind":"text","body":"x"}',
        b'{"v":1,"type":"send","ref":"r3","to":"Ada","kind":"audio","content_type":"audio/ogg","data":"!!"}',
        b'{"v":1e400,"type":"ack","id":"x"}',
        b'[{"v":1}]',
        b'{"v":1,"type":"delivery","id":"m","from":{"member":"Mum","device":"3fezn95qz6qxn0arzmvfyejk7a"},"kind":"image","data":"AA==","content_type":"image/png","sent_at":-1,"expires_at":9223372036854775807}',
        b"hearth/v1/dev/0jqs8adyj6jyjnsqmar523qbbd/outbox",
    ]
    for i, e in enumerate(extra):
        write("envelope", f"extra-{i}", e)


def csrs():
    with tempfile.TemporaryDirectory() as tmp:
        def run(*args):
            subprocess.run(args, cwd=tmp, check=True, capture_output=True)
        run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "p256.key")
        run("openssl", "genpkey", "-algorithm", "ed25519", "-out", "ed.key")
        run("openssl", "ecparam", "-name", "secp384r1", "-genkey", "-noout", "-out", "p384.key")
        for key in ("p256", "ed", "p384"):
            run("openssl", "req", "-new", "-key", f"{key}.key", "-subj", f"/CN=toy-{key}",
                "-addext", "subjectAltName=DNS:toy.local", "-out", f"{key}.csr")
            pem = open(os.path.join(tmp, f"{key}.csr"), "rb").read()
            b64 = b"".join(l for l in pem.splitlines() if not l.startswith(b"-----"))
            # As curl --data-binary @file sends it: base64 lines; and PEM.
            write("est_csr", f"{key}-base64", b"\r\n".join(re.findall(b".{1,76}", b64)) + b"\r\n")
            write("est_csr", f"{key}-pem", pem)
        # A certs-only PKCS#7, as an EST answer.
        run("openssl", "req", "-x509", "-key", "p256.key", "-subj", "/CN=hub", "-days", "1", "-out", "c.pem")
        run("openssl", "crl2pkcs7", "-nocrl", "-certfile", "c.pem", "-outform", "DER", "-out", "c.p7")
        write("est_csr", "certs-only-p7", open(os.path.join(tmp, "c.p7"), "rb").read())


if __name__ == "__main__":
    which = sys.argv[1:] or ["edge_frames", "envelope", "est_csr"]
    if "edge_frames" in which:
        edge()
    if "envelope" in which:
        envelopes()
    if "est_csr" in which:
        csrs()
    print(f"seeds written under {OUT}")
