"""An external AI agent written from docs/agent-api.md alone, in another language.

Usage:
  agent.py API AGENT KEYFILE token
      Requests a token; prints the answer as one JSON line (with "status").
  agent.py API AGENT KEYFILE propose TOKEN ACTION_JSON OUT_REQUEST
      Proposes ACTION_JSON with TOKEN; writes the signed request to OUT_REQUEST and prints
      the answer.
  agent.py API - - replay REQUEST_FILE
      Posts a signed request again, byte for byte; prints the answer.
  agent.py API AGENT - steal TOKEN ACTION_JSON
      A thief with the token but not the key: signs with a key of its own.

API is the base URL (http://127.0.0.1:PORT); KEYFILE holds the Ed25519 private key as 64
hex characters.
"""
import json
import os
import sys
import time
import urllib.error
import urllib.request

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def call(api, method, path, body=None):
    data = None if body is None else body.encode()
    req = urllib.request.Request(api + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def now_ms(api):
    for _ in range(100):
        status, answer = call(api, "GET", "/healthz")
        if status == 200:
            return answer["now_ms"]
        time.sleep(0.1)
    raise SystemExit("twinguard did not finish starting")


def load_key(path):
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(open(path).read().strip()))


def nonce():
    return os.urandom(16).hex()


def token(api, agent, key):
    created = now_ms(api)
    n = nonce()
    msg = b"twinguard/token-request/v1" + b"\x00" + agent.encode() + b"\x00" + str(created).encode() + b"\x00" + n.encode()
    body = json.dumps({"agent": agent, "created_ms": created, "nonce": n, "signature": key.sign(msg).hex()})
    return call(api, "POST", "/api/v1/agent/token", body)


def signed_proposal(api, agent, key, tok, action):
    proposal = json.dumps({
        "agent": agent,
        "action": action,
        "reason": "written from docs/agent-api.md",
        "inputs": [],
        "created_ms": now_ms(api),
        "nonce": nonce(),
    })
    msg = b"twinguard/proposal/v1" + b"\x00" + tok.encode() + b"\x00" + proposal.encode()
    return json.dumps({"body": proposal, "token": tok, "signature": key.sign(msg).hex()})


def main():
    api, agent, keyfile, verb = sys.argv[1:5]
    rest = sys.argv[5:]
    if verb == "token":
        status, answer = token(api, agent, load_key(keyfile))
    elif verb == "propose":
        tok, action, out = rest
        request = signed_proposal(api, agent, load_key(keyfile), tok, json.loads(action))
        open(out, "w").write(request)
        status, answer = call(api, "POST", "/api/v1/agent/proposals", request)
    elif verb == "replay":
        request = open(rest[0]).read()
        status, answer = call(api, "POST", "/api/v1/agent/proposals", request)
    elif verb == "steal":
        tok, action = rest
        request = signed_proposal(api, agent, Ed25519PrivateKey.generate(), tok, json.loads(action))
        status, answer = call(api, "POST", "/api/v1/agent/proposals", request)
    else:
        raise SystemExit(f"unknown verb {verb}")
    answer["status"] = status
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
