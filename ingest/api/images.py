"""``/v1/images``: hand an image in, read its verdicts back. Every route needs an ``X-API-Key``."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.types import Message

from ingest.accounts import ApiKey, verify_api_key
from ingest.api.state import AppState, state
from ingest.contracts import Metadata, parse_s3_ref
from ingest.errors import PermanentError
from ingest.intake import HTTP_STATUS_FOR_CODE, Accepted
from ingest.signals import Signals, reasons

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["images"])
api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="a key from `python -m ingest keys create`"
)

ImageIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small text fields around the file


class ApiError(HTTPException):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, message)
        self.code = code


class BodyTooLarge(Exception):
    pass


class RefIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ref: str = Field(description="s3://bucket/key in a bucket the intake reads from", max_length=1100)
    metadata: Metadata = Field(default_factory=dict)


class AcceptedOut(BaseModel):
    image_id: str
    duplicate: bool = Field(description="true when these bytes had been submitted before")
    status_url: str
    format: str
    width: int
    height: int
    bytes: int


class ErrorOut(BaseModel):
    error: dict[str, Any]


ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorOut} for s in (401, 413, 415, 422)}
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "metadata": {"type": "string", "description": "JSON object of string values"},
                    },
                }
            },
            "application/json": {"schema": RefIn.model_json_schema()},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


async def require_api_key(request: Request, key: Annotated[str | None, Depends(api_key_header)]) -> ApiKey:
    st = state(request)
    if not key:
        raise ApiError(401, "missing_api_key", "send a key in the X-API-Key header")

    def check() -> ApiKey | None:
        with st.db.connection() as conn:
            return verify_api_key(conn, key)

    found = await run_in_threadpool(check)
    if found is None:
        raise ApiError(401, "invalid_api_key", "unknown or revoked API key")
    return found


def _capped(receive: Callable[[], Awaitable[Message]], limit: int) -> Callable[[], Awaitable[Message]]:
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge
        return message

    return wrapped


async def _read_upload(request: Request, st: AppState) -> tuple[str, bytes | None, dict[str, str]]:
    """(kind, bytes or None for a reference, metadata); the reference itself comes back as bytes' text."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=4, max_part_size=FORM_OVERHEAD)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(422, "missing_file", "the multipart body has no file field named 'file'")
            data = await upload.read(st.settings.limits.max_bytes + 1)
            raw_meta = form.get("metadata")
            meta = _parse_metadata(raw_meta if isinstance(raw_meta, str) else None)
        finally:
            await form.close()
        return "upload", data, meta
    if ctype == "application/json":
        try:
            ref = RefIn.model_validate_json(await request.body())
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(map(str, x['loc'])) or 'body'}: {x['msg']}" for x in e.errors()[:5]
            )
            raise ApiError(422, "invalid_request", problems) from None
        return "ref", ref.ref.encode(), dict(ref.metadata)
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return "upload", await request.body(), {}
    raise ApiError(
        415, "unsupported_media_type", "send multipart/form-data, application/json or image/* bodies"
    )


def _parse_metadata(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    try:

        class _M(BaseModel):
            metadata: Metadata

        return dict(_M.model_validate({"metadata": json.loads(raw)}).metadata)
    except (ValueError, ValidationError) as e:
        raise ApiError(
            422, "invalid_metadata", f"metadata must be a JSON object of short strings: {e}"
        ) from None


@router.post(
    "/images",
    status_code=202,
    response_model=AcceptedOut,
    responses=ERRORS,
    openapi_extra=UPLOAD_BODY,
    summary="Submit an image (upload or s3 reference) for screening",
)
async def submit_image(request: Request, key: Annotated[ApiKey, Depends(require_api_key)]) -> JSONResponse:
    st = state(request)
    limit = st.settings.limits.max_bytes + FORM_OVERHEAD
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        st.metrics.images.labels("too_large").inc()
        raise ApiError(
            413, "too_large", f"the body is {length} bytes; images may be {st.settings.limits.max_bytes}"
        )
    capped = Request(request.scope, _capped(request.receive, limit))
    try:
        kind, payload, meta = await _read_upload(capped, st)
        assert payload is not None
        if kind == "ref":
            result: Accepted = await run_in_threadpool(st.intake.accept_ref, payload.decode(), key.name, meta)
        else:
            result = await run_in_threadpool(st.intake.accept, payload, key.name, meta)
    except BodyTooLarge:
        st.metrics.images.labels("too_large").inc()
        raise ApiError(
            413, "too_large", f"images may be at most {st.settings.limits.max_bytes} bytes"
        ) from None
    except PermanentError as e:
        st.metrics.images.labels(e.code).inc()
        raise ApiError(HTTP_STATUS_FOR_CODE.get(e.code, 422), e.code, e.reason) from None
    st.metrics.images.labels("duplicate" if result.duplicate else "accepted").inc()
    body = AcceptedOut(
        image_id=result.image_id,
        duplicate=result.duplicate,
        status_url=f"/v1/images/{result.image_id}",
        format=result.format,
        width=result.size[0],
        height=result.size[1],
        bytes=result.bytes,
    )
    return JSONResponse(body.model_dump(), status_code=202)


class ExplanationOut(BaseModel):
    method: str
    links: dict[str, str] = Field(description="presigned GET URLs, valid for link_ttl_s seconds")
    evidence: dict[str, Any]
    created_at: str


class VerdictOut(BaseModel):
    model_version: str
    p_fake: float
    label: str
    threshold: float
    scored_at: str
    original_size: list[int] | None
    original_format: str | None
    signals: dict[str, Any] | None = Field(
        description="known-content match, provenance and what decided the label (ingest/signals.py)"
    )
    reasons: list[str] = Field(description="the signals in words, as the review console shows them")
    explanations: list[ExplanationOut]


class ImageOut(BaseModel):
    image_id: str
    status: str = Field(description="queued (no verdict yet) | scored")
    source: str | None
    submitted_at: str | None
    verdicts: list[VerdictOut]


def image_report(st: AppState, image_id: str) -> ImageOut | None:
    with st.db.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT source, submitted_at FROM images WHERE id = %s", (image_id,))
        img = cur.fetchone()
        cur.execute(
            "SELECT model_version, p_fake, label, threshold, scored_at, original_size, original_format,"
            " signals FROM verdicts WHERE image_id = %s ORDER BY scored_at",
            (image_id,),
        )
        verdicts = cur.fetchall()
        cur.execute(
            "SELECT model_version, method, keys, evidence, created_at FROM explanations WHERE image_id = %s"
            " ORDER BY created_at",
            (image_id,),
        )
        expl = cur.fetchall()
    if img is None and not verdicts:
        return None
    out = []
    for mv, p, label, thr, scored, size, fmt, signals in verdicts:
        links = [
            ExplanationOut(
                method=m, links=presign_keys(st, k or {}), evidence=ev or {}, created_at=c.isoformat()
            )
            for (emv, m, k, ev, c) in expl
            if emv == mv
        ]
        out.append(
            VerdictOut(
                model_version=mv,
                p_fake=p,
                label=label,
                threshold=thr,
                scored_at=scored.isoformat(),
                original_size=list(size) if size else None,
                original_format=fmt,
                signals=signals,
                reasons=reasons(_signals(signals)),
                explanations=links,
            )
        )
    return ImageOut(
        image_id=image_id,
        status="scored" if verdicts else "queued",
        source=img[0] if img else None,
        submitted_at=img[1].isoformat() if img and img[1] else None,
        verdicts=out,
    )


def _signals(raw: dict[str, Any] | None) -> Signals | None:
    """The stored block, or None when absent or of a version this build does not read."""
    if not raw:
        return None
    try:
        return Signals.model_validate(raw)
    except ValidationError:
        return None


def explanation_location(st: AppState, key: str) -> tuple[str, str]:
    """(bucket, key) of an explanation artefact: a bare key lives in the explanations bucket.

    ``ValueError`` for a key outside that bucket or with relative segments: links and previews are
    handed out for explanation artefacts only, whatever a row in ``explanations`` says.
    """
    bucket, obj = parse_s3_ref(
        key if key.startswith("s3://") else f"s3://{st.settings.explanations_bucket}/{key}"
    )
    if bucket != st.settings.explanations_bucket:
        raise ValueError(f"bucket {bucket!r} does not hold explanations")
    return bucket, obj


def presign_keys(st: AppState, keys: dict[str, str]) -> dict[str, str]:
    ttl = timedelta(seconds=st.settings.link_ttl_s)
    out = {}
    for kind, key in sorted(keys.items()):
        try:
            bucket, obj = explanation_location(st, str(key))
        except ValueError:
            continue
        out[kind] = st.store.client.presigned_get_object(bucket, obj, expires=ttl)
    return out


@router.get(
    "/images/{image_id}",
    response_model=ImageOut,
    responses={401: {"model": ErrorOut}, 404: {"model": ErrorOut}},
    summary="Status, verdicts per model version and explanation links of one image",
)
async def get_image(
    request: Request, image_id: ImageIdPath, key: Annotated[ApiKey, Depends(require_api_key)]
) -> ImageOut:
    st = state(request)
    report = await run_in_threadpool(image_report, st, image_id)
    if report is None:
        raise ApiError(404, "not_found", f"no image {image_id}")
    return report
