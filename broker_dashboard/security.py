"""Who may change what: read-only by default, the write token, CSRF, response headers.

A write (replay, purge) is refused, with a 403 answer and no change, unless all hold:

- the dashboard was started with ``allow_writes``;
- the request is a POST whose ``Origin``, when the browser sends one, is the dashboard's;
- its form carries the CSRF value of the browser's cookie (double submit: a page of
  another site can neither read the cookie nor, being cross-site, have it sent, since it
  is ``SameSite=Strict``);
- its form carries the write token, compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from starlette.datastructures import Headers

__all__ = [
    "CSRF_COOKIE",
    "SECURITY_HEADERS",
    "Refusal",
    "WritePolicy",
    "new_csrf_value",
]

CSRF_COOKIE = "broker_dashboard_csrf"

# Scripts and styles only from the dashboard's own static files: a payload that reached
# the page as markup still could not run (nor load anything, nor send a form elsewhere).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it, browsers send "Origin: null" on the dashboard's own forms.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def new_csrf_value() -> str:
    """A fresh CSRF value for a browser's cookie."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a write was refused, as the 403 page says it."""

    reason: str


@dataclass(frozen=True, slots=True)
class WritePolicy:
    """Whether writes are allowed, and the token they need."""

    allow_writes: bool
    token: str | None

    def __post_init__(self) -> None:
        if self.allow_writes and not self.token:
            raise ValueError("writes need a token")

    def check(
        self, headers: Headers, cookie: str | None, form_csrf: str, form_token: str, origin: str
    ) -> Refusal | None:
        """None if the write may go ahead, else why not; see the module docstring."""
        if not self.allow_writes:
            return Refusal("this dashboard is read-only: start it with --allow-writes")
        sent_origin = headers.get("origin")
        if sent_origin is not None and sent_origin != origin:
            return Refusal("the request comes from another site")
        if not cookie or not form_csrf or not hmac.compare_digest(cookie, form_csrf):
            return Refusal("the form is stale or forged (CSRF check): reload the page")
        assert self.token is not None  # __post_init__
        if not hmac.compare_digest(form_token.encode(), self.token.encode()):
            return Refusal("wrong or missing token")
        return None
