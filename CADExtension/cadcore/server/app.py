"""The HTTP routes of ``cad serve``: the token check in front of everything, errors as ``{"error": one line}``.

Uploads are streamed to the session's folder under a cap; every computing route reads its JSON under the same cap,
then runs its handler in a worker thread (the one-job lock is inside the handlers), so ``/health`` answers while a
network runs. No route echoes a traceback: an unexpected failure is one line and HTTP 500.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from cadcore.errors import CadError
from cadcore.io.images import read_volume
from cadcore.server import handlers
from cadcore.server.handlers import ServerContext
from cadcore.server.payloads import ApiError, bad_request, read_json, receive_body, suffix_from_name
from cadcore.server.security import token_matches
from cadcore.server.sessions import Sweeper


class TokenGate:
    """Pure ASGI middleware: a request without ``Authorization: Bearer <token>`` gets 401 before any route (or body
    reading) runs; unknown paths too, so nothing is learnt about the API without the token."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((value.decode("latin-1") for key, value in scope.get("headers", [])
                       if key == b"authorization"), None)
        if not token_matches(header, self.token):
            body = json.dumps({"error": "cad serve: error: missing or wrong token (send Authorization: Bearer "
                                        "<the server's token>)"}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"www-authenticate", b"Bearer")]
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def error_response(status: int, line: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(line.split())}, status_code=status)


def create_app(ctx: ServerContext, token: str, sweep_period: float = 30.0) -> Any:
    """The ASGI application (the FastAPI app behind :class:`TokenGate`); its lifespan runs the expiry sweep and
    removes every session folder at shutdown."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        sweeper = Sweeper(ctx.store, sweep_period)
        sweeper.start()
        try:
            yield
        finally:
            sweeper.stop()
            ctx.store.close()

    app = FastAPI(title="cad serve", version=ctx.version, docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.line)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:  # unknown path, wrong method
        return error_response(exc.status_code, f"cad serve: error: {exc.detail}")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, f"cad serve: error: request: {exc.errors()[0].get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return error_response(500, f"cad serve: internal error: {type(exc).__name__}: {first}")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return handlers.health(ctx)

    @app.get("/models")
    async def models() -> dict[str, Any]:
        return await run_in_threadpool(handlers.models)

    @app.post("/sessions", status_code=201)
    async def create_session(request: Request, name: str | None = None) -> dict[str, Any]:
        suffix = suffix_from_name(name, "serve")
        session = ctx.store.reserve()  # 429 before a byte of the body is read
        try:
            session.input = session.folder / f"input{suffix}"
            gzipped = request.headers.get("content-encoding", "identity").lower() == "gzip"
            with open(session.input, "wb") as sink:
                await receive_body(request.stream(), request.headers.get("content-length"), ctx.cap, sink, gzipped,
                                   "the upload")
            try:
                session.image = await run_in_threadpool(read_volume, session.input)
            except CadError as exc:
                raise bad_request("serve", str(exc)) from exc
            return handlers.describe_session(ctx, session)
        except BaseException:
            ctx.store.remove(session.id)
            raise
        finally:
            ctx.store.release(session)

    @app.delete("/sessions/{session_id}", status_code=204)
    async def delete_session(session_id: str) -> Response:
        if not ctx.store.remove(session_id):
            raise ApiError(404, f"cad serve: error: session {session_id[:64]}: unknown or expired session")
        return Response(status_code=204)

    def job_route(path: str, command: str, handler: Callable[[ServerContext, Any, dict[str, Any]], dict[str, Any]]):
        async def route(session_id: str, request: Request) -> dict[str, Any]:
            with ctx.store.using(session_id) as session:
                body = await read_json(request.stream(), request.headers.get("content-length"), ctx.cap, command)
                return await run_in_threadpool(handler, ctx, session, body)

        app.post(path, name=command)(route)

    job_route("/sessions/{session_id}/interact", "interact", handlers.interact)
    job_route("/sessions/{session_id}/segment", "segment", handlers.segment)
    job_route("/sessions/{session_id}/classify", "classify", handlers.classify)
    return TokenGate(app, token)
