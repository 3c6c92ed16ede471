"""``/review``: the moderators' console. Server-rendered HTML, one small script, no asset from elsewhere.

Every page but the login needs a session; every POST needs the session's CSRF token in the form (403
otherwise). A label upserts the moderator's ``feedback`` row and publishes a ``Feedback`` message in
one step: the row is written, the message is sent and flushed, then the transaction commits, so a
failed publish leaves no row behind (a failed commit after a publish only repeats a message that
consumers key on (image_id, moderator) anyway).
"""

from __future__ import annotations

import io
import json
import logging
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import jinja2
from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from ingest.accounts import verify_moderator
from ingest.api import queries
from ingest.api.images import ImageIdPath, explanation_location
from ingest.api.model_view import ModelRow, model_row
from ingest.api.sessions import COOKIE, Session, csrf_ok
from ingest.api.state import AppState, state
from ingest.contracts import Feedback, encode, parse_s3_ref, utcnow
from ingest.decode import decode_image
from ingest.errors import PermanentError

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/review", include_in_schema=False)
_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
PREVIEW_MAX = 512  # px; the browser enlarges small images itself, without smoothing


class LoginRequired(HTTPException):
    def __init__(self) -> None:
        super().__init__(303, "log in first", headers={"Location": "/review/login"})


def session_of(request: Request) -> Session | None:
    return state(request).signer.loads(request.cookies.get(COOKIE))


def moderator(request: Request) -> Session:
    s = session_of(request)
    if s is None or not s.moderator:
        raise LoginRequired()
    return s


Mod = Annotated[Session, Depends(moderator)]


def render(
    request: Request, template: str, status: int = 200, session: Session | None = None, **ctx: Any
) -> HTMLResponse:
    html = _env.get_template(template).render(session=session, path=request.url.path, **ctx)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def set_cookie(response: Response, st: AppState, s: Session | None) -> Response:
    if s is None:
        response.delete_cookie(COOKIE, path="/review")
    else:
        response.set_cookie(
            COOKIE,
            st.signer.dumps(s),
            max_age=st.settings.session_ttl_s,
            path="/review",
            httponly=True,
            samesite="lax",
            secure=st.settings.cookie_secure,
        )
    return response


def require_csrf(s: Session | None, token: str | None) -> None:
    if not csrf_ok(s, token):
        raise HTTPException(403, "missing or invalid CSRF token: reload the page and try again")


def parse_filters(
    label: str | None, model_version: str | None, since: str | None, until: str | None
) -> queries.Filters:
    def day(v: str | None) -> date | None:
        try:
            return date.fromisoformat(v) if v else None
        except ValueError:
            return None

    return queries.Filters(
        label=label if label in {"real", "fake", "uncertain"} else None,
        model_version=(model_version or None) and model_version[:64],
        since=day(since),
        until=day(until),
    )


def query_filters(
    label: Annotated[str | None, Query()] = None,
    model_version: Annotated[str | None, Query()] = None,
    since: Annotated[str | None, Query()] = None,
    until: Annotated[str | None, Query()] = None,
) -> queries.Filters:
    return parse_filters(label, model_version, since, until)


QFilters = Annotated[queries.Filters, Depends(query_filters)]


@router.get("/login")
async def login_page(request: Request) -> Response:
    st = state(request)
    s = session_of(request)
    if s is None:
        s = st.signer.new(None)
    return set_cookie(render(request, "login.html", session=s, error=None), st, s)


@router.post("/login")
async def login(
    request: Request,
    name: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    csrf: Annotated[str | None, Form()] = None,
) -> Response:
    st = state(request)
    s = session_of(request)
    require_csrf(s, csrf)

    def check() -> bool:
        with st.db.connection() as conn:
            return verify_moderator(conn, name[:64], password[:1024])

    if not await run_in_threadpool(check):
        logger.info("failed console login for %r", name[:64])
        return render(request, "login.html", status=401, session=s, error="Unknown name or wrong password.")
    logger.info("console login: %s", name)
    return set_cookie(RedirectResponse("/review", status_code=303), st, st.signer.new(name))


@router.post("/logout")
async def logout(request: Request, s: Mod, csrf: Annotated[str | None, Form()] = None) -> Response:
    require_csrf(s, csrf)
    return set_cookie(RedirectResponse("/review/login", status_code=303), state(request), None)


@router.get("")
async def queue_page(request: Request, s: Mod, filters: QFilters) -> Response:
    st = state(request)

    def load() -> tuple[list[queries.QueueItem], list[str]]:
        assert s.moderator
        with st.db.connection() as conn:
            items = queries.queue(
                conn, s.moderator, filters, st.settings.review_page_size, st.settings.skip_hours * 3600
            )
            return items, queries.model_versions(conn)

    items, versions = await run_in_threadpool(load)
    return render(
        request,
        "queue.html",
        session=s,
        items=items,
        filters=filters,
        versions=versions,
        qs=filters.query_string(),
    )


@router.get("/next")
async def next_item(request: Request, s: Mod, filters: QFilters) -> Response:
    st = state(request)

    def first() -> list[queries.QueueItem]:
        assert s.moderator
        with st.db.connection() as conn:
            return queries.queue(conn, s.moderator, filters, 1, st.settings.skip_hours * 3600)

    items = await run_in_threadpool(first)
    qs = filters.query_string()
    if not items:
        return RedirectResponse(f"/review{qs}{'&' if qs else '?'}done=1", status_code=303)
    return RedirectResponse(f"/review/item/{items[0].image_id}{qs}", status_code=303)


@router.get("/item/{image_id}")
async def item_page(request: Request, s: Mod, image_id: ImageIdPath, filters: QFilters) -> Response:
    st = state(request)

    def load() -> tuple[queries.Item | None, list[queries.QueueItem]]:
        assert s.moderator
        with st.db.connection() as conn:
            it = queries.item(conn, s.moderator, image_id, filters.model_version)
            upcoming = queries.queue(
                conn, s.moderator, filters, 1, st.settings.skip_hours * 3600, exclude=image_id
            )
        if it is not None and not it.evidence and "sidecar" in it.keys:
            it.evidence = _sidecar_numbers(st, it.keys["sidecar"])
        return it, upcoming

    it, upcoming = await run_in_threadpool(load)
    if it is None:
        raise HTTPException(404, f"no verdict for image {image_id}")
    return render(
        request,
        "item.html",
        session=s,
        it=it,
        filters=filters,
        qs=filters.query_string(),
        upcoming=upcoming[0] if upcoming else None,
        evidence=_flatten(it.evidence),
    )


@router.post("/item/{image_id}/label")
async def label_item(
    request: Request,
    image_id: ImageIdPath,
    s: Mod,
    label: Annotated[str, Form()],
    csrf: Annotated[str | None, Form()] = None,
    note: Annotated[str, Form(max_length=2000)] = "",
    f_label: Annotated[str | None, Form()] = None,
    f_model_version: Annotated[str | None, Form()] = None,
    f_since: Annotated[str | None, Form()] = None,
    f_until: Annotated[str | None, Form()] = None,
) -> Response:
    require_csrf(s, csrf)
    if label not in {"real", "fake", "skip"}:
        raise HTTPException(422, "label must be real, fake or skip")
    st = state(request)
    assert s.moderator
    mod = s.moderator

    def record() -> None:
        with st.db.connection() as conn:
            if label == "skip":
                queries.skip(conn, mod, image_id)
                return
            verdict: Literal["real", "fake"] = "real" if label == "real" else "fake"
            fb = Feedback(
                image_id=image_id, label=verdict, moderator=mod, note=note or None, labelled_at=utcnow()
            )
            queries.upsert_feedback(conn, fb)
            st.producer.send(st.settings.feedback_topic, key=image_id.encode(), value=encode(fb)).get(
                timeout=30
            )

    await run_in_threadpool(record)
    if label != "skip":
        st.metrics.feedback.labels(label).inc()
        logger.info("feedback %s on %s by %s", label, image_id, mod)
    filters = parse_filters(f_label, f_model_version, f_since, f_until)
    return RedirectResponse(f"/review/next{filters.query_string()}", status_code=303)


@router.get("/history")
async def history_page(request: Request, s: Mod) -> Response:
    st = state(request)

    def load() -> list[tuple[Any, ...]]:
        assert s.moderator
        with st.db.connection() as conn:
            return queries.history(conn, s.moderator, 500)

    return render(request, "history.html", session=s, rows=await run_in_threadpool(load))


@router.get("/models")
async def models_page(request: Request, s: Mod) -> Response:
    st = state(request)

    def load() -> list[ModelRow]:
        with st.db.connection() as conn:
            return [model_row(m) for m in queries.models(conn)]

    return render(request, "models.html", session=s, models=await run_in_threadpool(load))


@router.get("/img/{image_id}")
async def image_png(request: Request, image_id: ImageIdPath, s: Mod) -> Response:
    """The submitted image re-encoded as PNG (never the raw upload), at most PREVIEW_MAX px a side."""
    st = state(request)

    def load() -> bytes | None:
        with st.db.connection() as conn:
            ref = queries.image_ref(conn, image_id) or f"s3://{st.settings.images_bucket}/{image_id}"
        try:
            bucket, key = parse_s3_ref(ref)
            if bucket not in {st.settings.images_bucket, *st.settings.ref_buckets}:
                return None
            decoded = decode_image(
                st.store.get(bucket, key, st.settings.limits.max_bytes), st.settings.limits
            )
        except (ValueError, PermanentError):
            return None
        img = decoded.image.convert("RGB")
        img.thumbnail((PREVIEW_MAX, PREVIEW_MAX))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    return _png(await run_in_threadpool(load))


@router.get("/overlay/{image_id}")
async def overlay_png(
    request: Request,
    image_id: ImageIdPath,
    s: Mod,
    model_version: Annotated[str, Query(max_length=64)],
    method: Annotated[str, Query(max_length=128)],
    kind: Annotated[str, Query(pattern="^(overlay|map)$")] = "overlay",
) -> Response:
    st = state(request)

    def load() -> bytes | None:
        with st.db.connection() as conn:
            keys = queries.explanation_keys(conn, image_id, model_version, method)
        if kind not in keys:
            return None
        try:
            bucket, key = explanation_location(st, keys[kind])
            data = st.store.get(bucket, key, 8 * 1024 * 1024)
        except (ValueError, PermanentError):
            return None
        return data if data.startswith(b"\x89PNG\r\n\x1a\n") else None

    return _png(await run_in_threadpool(load))


def _png(data: bytes | None) -> Response:
    if data is None:
        raise HTTPException(404, "no such image")
    return Response(
        data,
        media_type="image/png",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=300"},
    )


def _sidecar_numbers(st: AppState, key: str) -> dict[str, Any]:
    try:
        bucket, obj = explanation_location(st, key)
        doc = json.loads(st.store.get(bucket, obj, 256 * 1024))
    except (ValueError, PermanentError):
        return {}
    return doc if isinstance(doc, dict) else {}


# Evidence keys that repeat what the page shows already, or describe the rendering rather than the model.
_NOT_EVIDENCE = frozenset(
    {"image_id", "model_version", "method", "p_fake", "verdict_p_fake", "overlay", "input_size"}
)


def _flatten(doc: dict[str, Any], prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """The evidence's numbers, nested keys joined with dots, for the item page."""
    out: list[tuple[str, str]] = []
    for k, v in sorted(doc.items()):
        if depth == 0 and k in _NOT_EVIDENCE:
            continue
        name = f"{prefix}{k}"
        if isinstance(v, bool):
            continue
        if isinstance(v, float):
            out.append((name, f"{v:.4g}"))
        elif isinstance(v, int):
            out.append((name, str(v)))
        elif isinstance(v, dict) and depth < 2:
            out.extend(_flatten(v, name + ".", depth + 1))
        elif isinstance(v, list) and 0 < len(v) <= 8 and all(isinstance(x, int | float) for x in v):
            out.append((name, ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v)))
    return out[:24]
