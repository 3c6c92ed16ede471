"""Signed session cookies and CSRF tokens for the review console.

The cookie holds ``base64(json) . base64(hmac-sha256)``: the moderator's name (or none before login),
an expiry and a CSRF token. Nothing secret is in it; the signature makes it unforgeable, the expiry
bounds a stolen cookie's life. Every form carries the session's CSRF token in a hidden field and every
POST is refused (403) unless the field matches the token of a valid session (synchronizer token
pattern); the cookie is ``HttpOnly`` and ``SameSite=Lax`` besides. Logging in issues a new token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

COOKIE = "cifake_session"


@dataclass(frozen=True)
class Session:
    moderator: str | None
    csrf: str
    expires: int


class SessionSigner:
    def __init__(self, secret: bytes, ttl_s: int) -> None:
        self._key = hashlib.sha256(b"cifake-session\0" + secret).digest()
        self.ttl_s = ttl_s

    def new(self, moderator: str | None) -> Session:
        return Session(moderator, secrets.token_urlsafe(24), int(time.time()) + self.ttl_s)

    def dumps(self, session: Session) -> str:
        body = json.dumps({"m": session.moderator, "c": session.csrf, "e": session.expires}).encode()
        payload = base64.urlsafe_b64encode(body).decode().rstrip("=")
        return f"{payload}.{self._sign(payload)}"

    def loads(self, value: str | None) -> Session | None:
        """The session in ``value`` when its signature is good and it has not expired, else None."""
        if not value or value.count(".") != 1 or len(value) > 4096:
            return None
        payload, sig = value.split(".")
        if not hmac.compare_digest(sig, self._sign(payload)):
            return None
        try:
            doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            session = Session(doc["m"], str(doc["c"]), int(doc["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires > time.time() else None

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def csrf_ok(session: Session | None, token: object) -> bool:
    return session is not None and isinstance(token, str) and hmac.compare_digest(token, session.csrf)
