"""A device publisher written from docs/frame-format.md alone, in another language.

Usage: publisher.py HOST PORT USER PASSWORD KEYFILE DEVICE TOPIC SIGNAL UNIT VALUE TS_MS COUNT

With TG_CA, TG_CERT and TG_KEY set it connects over TLS with that CA and client certificate
(USER and PASSWORD "-" for none).

Publishes COUNT signed frames with JSON bodies (seq 1..COUNT), each with one sample of
SIGNAL at TS_MS; then COUNT signed frames with binary bodies (envelope version 2), each with
two samples of SIGNAL (at TS_MS - 500 and TS_MS); then one binary frame with a NaN sample
and a good one (the NaN must be refused, the other kept); then one unsigned frame and one
frame with a flipped signature byte (both must be refused).
"""
import json
import struct
import sys

import paho.mqtt.publish as publish
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def envelope(topic, signer, body, key, magic=b"TGF1", version=1):
    alg = 1 if key is not None else 0
    head = magic + bytes([version, alg, len(signer)]) + signer.encode() + struct.pack(">I", len(body)) + body
    if key is None:
        return head
    msg = b"twinguard/envelope/v1\x00" + topic.encode() + b"\x00" + head
    return head + key.sign(msg)


def binary_body(seq, ts_ms, samples):
    """samples: (signal, unit, t_ms, value); the table lists each (signal, unit) once."""
    table = []
    for signal, unit, _, _ in samples:
        if (signal, unit) not in table:
            table.append((signal, unit))
    out = struct.pack(">Qq", seq, ts_ms) + bytes([len(table)])
    for signal, unit in table:
        out += bytes([len(signal.encode())]) + signal.encode() + bytes([len(unit.encode())]) + unit.encode()
    out += struct.pack(">H", len(samples))
    for signal, unit, t_ms, value in samples:
        out += bytes([table.index((signal, unit))]) + struct.pack(">qd", t_ms, value)
    return out


def main():
    host, port, user, password, keyfile, device, topic, signal, unit, value, ts, count = sys.argv[1:]
    port, value, ts, count = int(port), float(value), int(ts), int(count)
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(open(keyfile).read().strip()))
    msgs = []
    for seq in range(1, count + 1):
        body = json.dumps({"seq": seq, "ts_ms": ts, "samples": [
            {"signal": signal, "t_ms": ts, "value": value, "unit": unit}]}).encode()
        msgs.append({"topic": topic, "payload": envelope(topic, device, body, key), "qos": 1})
    for seq in range(count + 1, 2 * count + 1):
        body = binary_body(seq, ts, [(signal, unit, ts - 500, value), (signal, unit, ts, value)])
        msgs.append({"topic": topic, "payload": envelope(topic, device, body, key, version=2), "qos": 1})
    body = binary_body(2 * count + 1, ts, [(signal, unit, ts, float("nan")), (signal, unit, ts, value)])
    msgs.append({"topic": topic, "payload": envelope(topic, device, body, key, version=2), "qos": 1})
    body = json.dumps({"seq": 2 * count + 2, "ts_ms": ts, "samples": []}).encode()
    msgs.append({"topic": topic, "payload": envelope(topic, device, body, None), "qos": 1})
    bad = bytearray(envelope(topic, device, body, key))
    bad[-1] ^= 1
    msgs.append({"topic": topic, "payload": bytes(bad), "qos": 1})
    import os
    auth = None if user == "-" else {"username": user, "password": password}
    tls = None
    if os.environ.get("TG_CA"):
        tls = {"ca_certs": os.environ["TG_CA"], "certfile": os.environ["TG_CERT"], "keyfile": os.environ["TG_KEY"]}
    publish.multiple(msgs, hostname=host, port=port, client_id="python-publisher", auth=auth, tls=tls)
    print(len(msgs))


if __name__ == "__main__":
    main()
