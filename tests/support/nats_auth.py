"""NATS NKeys and JWT credentials made on the spot, for tests (not a test module).

``nkey_user()`` is a user key pair for a server's ``authorization { users: [{nkey: …}] }``;
``Operator`` signs an account and users the way ``nsc`` does, so a nats-server in
operator mode (``operator:`` + ``resolver: MEMORY``) accepts a ``.creds`` file. Keys come
from the ``nkeys`` package (nats-py's extra), the JWTs are written here: a header, the
claims and an ed25519 signature, each base64url without padding.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import nkeys
import orjson

__all__ = ["KeyPair", "new_key", "Operator", "creds_file", "seed_file"]

KeyPair = nkeys.KeyPair


def new_key(prefix: int) -> tuple[bytes, KeyPair]:
    """A fresh ``(seed, key pair)`` of one kind (``nkeys.PREFIX_BYTE_USER``, …)."""
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return bytes(seed), nkeys.from_seed(bytearray(seed))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _jwt(issuer: KeyPair, subject: str, name: str, nats: dict[str, Any]) -> str:
    header = _b64(orjson.dumps({"typ": "JWT", "alg": "ed25519-nkey"}))
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public_key.decode(), "name": name,
                              "sub": subject, "nats": {**nats, "version": 2}}
    claims["jti"] = base64.b32encode(hashlib.sha256(orjson.dumps(claims)).digest()).decode().rstrip("=")
    body = _b64(orjson.dumps(claims))
    return f"{header}.{body}.{_b64(issuer.sign(f'{header}.{body}'.encode()))}"


_UNLIMITED = {"subs": -1, "data": -1, "payload": -1}


class Operator:
    """An operator with one account (JetStream on, no limits) that signs users."""

    def __init__(self) -> None:
        _, self.key = new_key(nkeys.PREFIX_BYTE_OPERATOR)
        _, self.account = new_key(nkeys.PREFIX_BYTE_ACCOUNT)
        self.jwt = _jwt(self.key, self.key.public_key.decode(), "test-operator", {"type": "operator"})
        # JetStream needs the server's own (system) account too.
        _, self.system = new_key(nkeys.PREFIX_BYTE_ACCOUNT)
        self.system_jwt = _jwt(self.key, self.system.public_key.decode(), "SYS", {"type": "account", "limits": _UNLIMITED})
        self.account_jwt = _jwt(self.key, self.account.public_key.decode(), "PROCSTREAM", {
            "type": "account",
            "limits": {**_UNLIMITED, "conn": -1, "leaf": -1, "imports": -1, "exports": -1, "wildcards": True,
                       "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1},
        })

    def server_config(self) -> str:
        """A nats-server config in operator mode that knows the account (JetStream
        itself is on from the command line, see ``NatsServer``)."""
        account, system = self.account.public_key.decode(), self.system.public_key.decode()
        return (f'operator: "{self.jwt}"\nsystem_account: {system}\nresolver: MEMORY\n'
                f'resolver_preload: {{ {account}: "{self.account_jwt}", {system}: "{self.system_jwt}" }}\n')

    def user_creds(self, name: str) -> str:
        """The text of a ``.creds`` file for a new user of the account."""
        seed, user = new_key(nkeys.PREFIX_BYTE_USER)
        token = _jwt(self.account, user.public_key.decode(), name, {"type": "user", "pub": {}, "sub": {}, **_UNLIMITED})
        return creds_file(token, seed)


def creds_file(token: str, seed: bytes) -> str:
    return (f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n")


def seed_file(path: Path, seed: bytes) -> Path:
    path.write_bytes(seed + b"\n")
    path.chmod(0o600)
    return path
