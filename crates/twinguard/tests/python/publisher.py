"""A device publisher written from docs/frame-format.md alone, in another language.

Usage: publisher.py HOST PORT USER PASSWORD KEYFILE DEVICE TOPIC SIGNAL UNIT VALUE TS_MS COUNT

With TG_CA, TG_CERT and TG_KEY set it connects over TLS with that CA and client certificate
(USER and PASSWORD "-" for none).

Publishes COUNT signed frames (seq 1..COUNT), each with one sample of SIGNAL at TS_MS,
then one unsigned frame and one frame with a flipped signature byte (both must be refused).
"""
import json
import struct
import sys

import paho.mqtt.publish as publish
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def envelope(topic, signer, body, key, magic=b"TGF1"):
    alg = 1 if key is not None else 0
    head = magic + bytes([1, alg, len(signer)]) + signer.encode() + struct.pack(">I", len(body)) + body
    if key is None:
        return head
    msg = b"twinguard/envelope/v1\x00" + topic.encode() + b"\x00" + head
    return head + key.sign(msg)


def main():
    host, port, user, password, keyfile, device, topic, signal, unit, value, ts, count = sys.argv[1:]
    port, value, ts, count = int(port), float(value), int(ts), int(count)
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(open(keyfile).read().strip()))
    msgs = []
    for seq in range(1, count + 1):
        body = json.dumps({"seq": seq, "ts_ms": ts, "samples": [
            {"signal": signal, "t_ms": ts, "value": value, "unit": unit}]}).encode()
        msgs.append({"topic": topic, "payload": envelope(topic, device, body, key), "qos": 1})
    body = json.dumps({"seq": count + 1, "ts_ms": ts, "samples": []}).encode()
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
