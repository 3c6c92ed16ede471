"""``python -m ingest serve``: the FastAPI application, its shared state, metrics and the uvicorn server.

``create_app`` builds everything from settings (no module-level clients): the object store, one Kafka
producer, a bounded PostgreSQL connection pool, the session signer and an explicit Prometheus registry.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ingest.api import images, review
from ingest.api.sessions import SessionSigner
from ingest.api.state import AppState, HttpMetrics, error_body
from ingest.db import Database
from ingest.errors import classify
from ingest.intake import Intake, IntakeSettings
from ingest.kafka import make_producer
from ingest.metrics import new_registry
from ingest.settings import StackSettings, describe
from ingest.storage import S3Store

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent


def create_app(
    stack: StackSettings, settings: IntakeSettings, registry: CollectorRegistry | None = None
) -> FastAPI:

    registry = registry or new_registry()
    store = S3Store(stack.s3)
    producer = make_producer(stack.kafka, max_block_ms=10_000)
    db = Database(stack.pg, settings.db_pool_max)
    if settings.session_secret is None:
        logger.warning("no CIFAKE_INTAKE_SESSION_SECRET: console sessions end when this process restarts")
    secret = settings.session_secret.get_secret_value().encode() if settings.session_secret else None
    st = AppState(
        stack=stack,
        settings=settings,
        store=store,
        producer=producer,
        db=db,
        intake=Intake(settings, store, producer, db.connection),
        signer=SessionSigner(secret or secrets.token_bytes(32), settings.session_ttl_s),
        registry=registry,
        metrics=HttpMetrics.create(registry),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        producer.close(timeout=10)
        db.close()

    app = FastAPI(
        title="cifake-screen intake",
        version="1",
        summary="Hand in images for AI-generated-image screening and read the verdicts back.",
        lifespan=lifespan,
    )
    app.state.cifake = st
    app.include_router(images.router)
    app.include_router(review.router)
    app.mount("/review/static", StaticFiles(directory=HERE / "static"), name="static")
    _add_common_routes(app, st)
    return app


def _add_common_routes(app: FastAPI, st: AppState) -> None:
    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", None) or (
            "/review/static" if request.url.path.startswith("/review/static") else "other"
        )
        st.metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        st.metrics.duration.labels(path).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = getattr(exc, "code", None) or {401: "unauthorized", 403: "forbidden", 404: "not_found"}.get(
            exc.status_code, "error"
        )
        resp = error_body(exc.status_code, code, str(exc.detail))
        for k, v in (exc.headers or {}).items():
            resp.headers[k] = v
        return resp

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()[:5]
        )
        return error_body(422, "invalid_request", problems)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("%s %s failed", request.method, request.url.path)
        kind = classify(exc)  # the consumer loop's classification: a fault the loop retries, the client may
        if kind == "transient":  # every write here is idempotent, so a retry is safe
            return error_body(503, "unavailable", f"temporarily unavailable ({type(exc).__name__}); retry")
        if kind == "permanent":
            return error_body(422, getattr(exc, "code", "permanent"), str(getattr(exc, "reason", exc)))
        return error_body(500, "internal_error", "internal error (logged)")

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> JSONResponse:
        def check() -> dict[str, str]:
            out: dict[str, str] = {}
            try:
                with st.db.connection() as conn, conn.cursor() as cur:
                    cur.execute("SELECT 1")
                out["postgres"] = "ok"
            except Exception as e:
                out["postgres"] = f"down: {type(e).__name__}"
            try:  # cached metadata after the first call; a fresh process asks the broker (max_block_ms)
                st.producer.partitions_for(st.settings.topic)
                out["kafka"] = "ok"
            except Exception as e:
                out["kafka"] = f"down: {type(e).__name__}"
            return out

        checks = await run_in_threadpool(check)
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "degraded", "checks": checks}, status_code=200 if ok else 503
        )

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(generate_latest(st.registry), media_type=CONTENT_TYPE_LATEST)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), so callers know the port before the server starts."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def make_server(app: FastAPI, **kw: Any) -> uvicorn.Server:
    config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=10, **kw)
    return uvicorn.Server(config)


def serve(stack: StackSettings, settings: IntakeSettings) -> int:
    """Run the service in the foreground until SIGTERM/SIGINT (uvicorn drains open requests first)."""
    logger.info("intake starting: stack=%s settings=%s", describe(stack), describe(settings))
    sock = bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    logger.info("intake on http://%s:%d (console /review, docs /docs)", settings.host, port)
    server = make_server(create_app(stack, settings))
    server.run(sockets=[sock])
    return 0
