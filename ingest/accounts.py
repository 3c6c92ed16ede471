"""Platform API keys and moderator accounts, stored hashed in PostgreSQL.

- An API key is ``ck_<id>_<secret>`` with a 256-bit random secret, shown once at creation. Only the
  sha256 of the whole key is stored: a random key of that strength needs no slow KDF, and a lookup by
  hash keeps verification to one indexed query.
- A moderator password is hashed with scrypt (stdlib ``hashlib.scrypt``, N=2^14, r=8, p=1, 16-byte
  salt), stored as ``scrypt$N$r$p$salt$hash`` so that the cost can be raised later without breaking
  existing hashes. Verification of an unknown name still runs one scrypt, so timing does not reveal
  which names exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import TypeAlias

import psycopg2.extensions

KEY_PREFIX = "ck"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_DUMMY_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="

Conn: TypeAlias = psycopg2.extensions.connection


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(
            f"invalid name {name!r}: 1-64 of letters, digits, . _ @ -, starting with one of the first two"
        )
    return name


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(conn: Conn, name: str) -> tuple[ApiKey, str]:
    """Store a new key for ``name``; returns (record, the secret key: shown once, never stored)."""
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO api_keys (id, name, key_hash) VALUES (%s, %s, %s)",
            (key_id, check_name(name), hash_api_key(key)),
        )
    return ApiKey(key_id, name), key


def verify_api_key(conn: Conn, key: str) -> ApiKey | None:
    """The key's record when it exists and is not revoked."""
    if not key.startswith(KEY_PREFIX + "_") or len(key) > 200:
        return None
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, name FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL", (hash_api_key(key),)
        )
        row = cur.fetchone()
    return ApiKey(row[0], row[1]) if row else None


def revoke_api_key(conn: Conn, key_id: str) -> bool:
    with conn.cursor() as cur:
        cur.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL", (key_id,))
        return bool(cur.rowcount)


def list_api_keys(conn: Conn) -> list[tuple[str, str, str, str | None]]:
    with conn.cursor() as cur:
        cur.execute("SELECT id, name, created_at::text, revoked_at::text FROM api_keys ORDER BY created_at")
        return [(r[0], r[1], r[2], r[3]) for r in cur.fetchall()]


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(want)
        )
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


def generate_password() -> str:
    return secrets.token_urlsafe(12)


def set_moderator(conn: Conn, name: str, password: str, replace: bool = False) -> bool:
    """Create moderator ``name`` (or, with ``replace``, reset their password); False when it exists."""
    if len(password) < 8:
        raise ValueError("a password has at least 8 characters")
    action = "DO UPDATE SET password_hash = EXCLUDED.password_hash" if replace else "DO NOTHING"
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO moderators (name, password_hash) VALUES (%s, %s) ON CONFLICT (name) {action}",
            (check_name(name), hash_password(password)),
        )
        return bool(cur.rowcount)


def verify_moderator(conn: Conn, name: str, password: str) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT password_hash FROM moderators WHERE name = %s", (name,))
        row = cur.fetchone()
    ok = check_password(password, row[0] if row else _DUMMY_HASH)
    return ok and row is not None
