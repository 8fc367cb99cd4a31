"""Who may use a server: an access token, and loopback-only answering when there is none.

With a token every request needs it, as the `pspnet_token` cookie that `POST /login` sets (for the web
page), as `Authorization: Bearer TOKEN` (for scripts) or as the password of HTTP basic authentication (any
user name: what Label Studio sends to an ML backend). Without one, `loopback_only` servers answer
only loopback clients that name a loopback `Host` (which also stops DNS-rebinding pages). `pspnet serve`
and `pspnet playground` share this gate; the playground adds its cross-site checks on top.
"""

from __future__ import annotations

import base64
import hmac
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.middleware.base import BaseHTTPMiddleware

COOKIE = "pspnet_token"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "testserver", "testclient")
"""Loopback names (`testserver`/`testclient`: Starlette's test client)."""

LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>pspnet: sign in</title>
<style>body{font-family:system-ui,sans-serif;max-width:24rem;margin:4rem auto}input,button{font-size:1rem;padding:.4rem}</style>
</head><body><h1>pspnet</h1><!--error--><form method="post" action="login">
<label>Token <input name="token" type="password" autofocus required></label> <button>Sign in</button></form></body></html>
"""


class TokenGate(BaseHTTPMiddleware):
    """The token (or, without one, the loopback rule) in front of every route but `open_paths`."""

    def __init__(self, app: Any, token: str | None, loopback_only: bool, open_paths: tuple[str, ...] = ()):
        super().__init__(app)
        self.token = token
        self.loopback_only = loopback_only
        self.open_paths = ("/login", *open_paths)

    async def dispatch(self, request: Request, call_next: Any) -> Response:
        refused = self.refuse(request)
        return refused if refused is not None else await call_next(request)

    def refuse(self, request: Request) -> Response | None:
        """The answer to a request that may not pass, or None."""
        if self.token is None:
            client = request.client.host if request.client else ""
            if self.loopback_only and (request.url.hostname not in LOOPBACK_HOSTS or client not in LOOPBACK_HOSTS):
                return JSONResponse({"detail": "this server answers this machine only (it has no token)"}, 403)
            return None
        if request.url.path in self.open_paths or authorised(request, self.token):
            return None
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/login", 303)
        return JSONResponse({"detail": "a token is needed: Authorization: Bearer TOKEN"}, 401)


def authorised(request: Request, token: str) -> bool:
    """Whether the request carries `token` (bearer header, basic authentication's password, else the cookie)."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer":
        given = credentials
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(credentials, validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return False
    else:
        given = request.cookies.get(COOKIE, "")
    return hmac.compare_digest(given.encode(), token.encode())


def add_login(app: FastAPI, token: str | None) -> None:
    """`GET /login` (the form) and `POST /login` (sets the cookie, then back to the page)."""

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    async def login_page() -> str:
        return LOGIN_PAGE

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await request.form()
        given = str(form.get("token", ""))
        if token is None or not hmac.compare_digest(given.encode(), token.encode()):
            return HTMLResponse(LOGIN_PAGE.replace("<!--error-->", "<p>wrong token</p>"), 401)
        response = RedirectResponse("./", 303)
        response.set_cookie(COOKIE, given, httponly=True, samesite="strict")
        return response
