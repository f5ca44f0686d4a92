"""An OPC UA server written with FreeOpcUa's asyncua, as a plant's PLC would run one.

It is the foreign peer of twinguard's OPC UA tests: nobody here wrote its stack. It offers
SignAndEncrypt with Basic256Sha256 (and, with --allow-none, security mode None), accepts
one user name and password, serves a small node tree of the reference bottling line whose
values change every 100 ms, and has a writable setpoint; every write to it is printed as
`WRITE <node> <value>` so that the test can see actuation arrive.

Usage: opcua_server.py --port P --dir D --password-file F [--allow-none]
Prints `READY <server certificate SHA-1 thumbprint>` once it listens.
"""

import argparse
import asyncio
import hashlib
import ipaddress
import math
import sys
import time
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

APP_URI = "urn:example:plc:line1"


class OnePassword(UserManager):
    def __init__(self, user, password):
        self.user = user
        self.password = password

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username == self.user and password == self.password:
            return User(role=UserRole.User)
        return None


async def make_certificate(d: Path):
    key_file, cert_file = d / "server-key.pem", d / "server-cert.der"
    if key_file.exists() and cert_file.exists():
        der = cert_file.read_bytes()
        return key_file, cert_file, hashlib.sha1(der).hexdigest()
    key = cert_gen.generate_private_key()
    key_file.write_bytes(cert_gen.dump_private_key_as_pem(key))
    names = [
        x509.UniformResourceIdentifier(APP_URI),
        x509.DNSName("127.0.0.1"),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        "line1 PLC (asyncua)",
        {"commonName": "line1 PLC (asyncua)"},
        names,
        extended=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=30,
    )
    der = cert.public_bytes(encoding=Encoding.DER)
    cert_file.write_bytes(der)
    return key_file, cert_file, hashlib.sha1(der).hexdigest()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--password-file", type=Path, required=True)
    p.add_argument("--allow-none", action="store_true")
    a = p.parse_args()
    a.dir.mkdir(parents=True, exist_ok=True)
    key_file, cert_file, thumb = await make_certificate(a.dir)
    password = a.password_file.read_text().strip()

    server = Server(user_manager=OnePassword("twinguard", password))
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{a.port}/")
    server.set_server_name("line1 PLC (asyncua)")
    await server.set_application_uri(APP_URI)
    policies = [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
    if a.allow_none:
        policies.append(ua.SecurityPolicyType.NoSecurity)
    server.set_security_policy(policies)
    server.set_identity_tokens([ua.UserNameIdentityToken])
    await server.load_certificate(str(cert_file))
    await server.load_private_key(str(key_file))

    ns = await server.register_namespace("urn:example:plc")
    objects = server.nodes.objects
    line = await objects.add_object(ua.NodeId("line1", ns), ua.QualifiedName("line1", ns))
    tank = await line.add_object(ua.NodeId("tank", ns), ua.QualifiedName("tank", ns))
    pump = await line.add_object(ua.NodeId("pump", ns), ua.QualifiedName("pump", ns))
    level = await tank.add_variable(
        ua.NodeId("tank.level", ns), ua.QualifiedName("tank.level", ns), 1.5, ua.VariantType.Double
    )
    speed = await pump.add_variable(
        ua.NodeId("pump.speed", ns), ua.QualifiedName("pump.speed", ns), 1600.0, ua.VariantType.Double
    )
    speed_sp = await pump.add_variable(
        ua.NodeId("pump.speed_sp", ns),
        ua.QualifiedName("pump.speed_sp", ns),
        1600.0,
        ua.VariantType.Double,
    )
    await speed_sp.set_writable()

    async def stop_line(parent):
        print("CALL StopLine", flush=True)
        return []

    await line.add_method(
        ua.NodeId("line1.StopLine", ns), ua.QualifiedName("StopLine", ns), stop_line, [], []
    )

    async with server:
        print(f"READY {thumb}", flush=True)
        last_sp = await speed_sp.read_value()
        t0 = time.time()
        while True:
            t = time.time() - t0
            await level.write_value(1.5 + 0.05 * math.sin(t))
            await speed.write_value(last_sp + 2.0 * math.sin(3 * t))
            sp = await speed_sp.read_value()
            if sp != last_sp:
                print(f"WRITE pump.speed_sp {sp}", flush=True)
                last_sp = sp
            await asyncio.sleep(0.1)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
