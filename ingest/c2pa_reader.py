"""C2PA content credentials read with ``c2pa-python``, for ``ingest.provenance``.

Contract: ``read_c2pa`` is called only after the container walk in ``ingest.provenance`` found an
embedded C2PA manifest store (JPEG APP11 / PNG ``caBX`` / WebP ``C2PA``) no larger than the configured
limit, so ordinary images never reach the native library. It reads the original bytes (the hard binding
is a hash over them: any re-encode breaks it), never fetches anything over the network, and never
raises: a library error becomes an ``unreadable`` finding.

Configuration (c2pa-python 0.38 ``Context``/``Settings``; the deprecated global ``load_settings`` is not
used): ``trust.trust_anchors`` holds the PEM roots and *replaces* the SDK's list, so "Trusted" means
"chains to an anchor this service was given"; without anchors the best state is "Valid".
``verify.remote_manifest_fetch`` and ``verify.ocsp_fetch`` are off, and ``core.allowed_network_hosts`` is
an empty allow-list as a second guard. ``core.max_decompressed_manifest_size_in_mb`` bounds compressed
manifests.

Thread safety: the library's objects are not shared between threads. Each thread keeps its own
``Context`` per configuration (``threading.local``), and every call makes and closes its own ``Reader``.

Policy for a manifest that fails validation (state "Invalid", e.g. ``assertion.dataHash.mismatch`` after
the pixels were changed): its AI claim still counts as ``declared_ai`` and an ``invalid`` finding records
why. A declaration of AI is accepted unsigned too (IPTC XMP, PNG text), so a broken signature makes it
no weaker than those; a forged claim of AI only gets the forger's own upload labelled. The state stays
"Invalid" on the record, so nobody reads it as verified.
"""

from __future__ import annotations

import io
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final

import c2pa

from ingest.provenance_fields import AI_SOURCE_TYPES, DST_PREFIX, clip
from ingest.signals import C2pa, C2paState, Finding

logger = logging.getLogger(__name__)

_STATES: Final[dict[str, C2paState]] = {"Invalid": "Invalid", "Valid": "Valid", "Trusted": "Trusted"}
_FIRST_ACTIONS: Final = ("c2pa.created", "c2pa.opened")
_MAX_CODES: Final = 16
_MAX_ACTIONS: Final = 256  # actions looked at per manifest; a real manifest has a handful
_MAX_CONTEXTS: Final = 4  # per thread: one per distinct configuration, normally exactly one

_local = threading.local()

Generator = Callable[[str], str | None]


def _settings(trust_anchors_pem: str | None, max_manifest_bytes: int) -> dict[str, Any]:
    trust: dict[str, Any] = {"trust_anchors": trust_anchors_pem} if trust_anchors_pem else {}
    return {
        "trust": trust,
        "verify": {
            "verify_after_reading": True,
            "verify_trust": True,
            "remote_manifest_fetch": False,
            "ocsp_fetch": False,
        },
        "core": {
            "allowed_network_hosts": [],
            "max_decompressed_manifest_size_in_mb": max(1, math.ceil(max_manifest_bytes / 2**20)),
        },
    }


def _context(trust_anchors_pem: str | None, max_manifest_bytes: int) -> Any:
    """This thread's ``Context`` for the configuration (built once per thread, reused for every read)."""
    cache: dict[tuple[str | None, int], Any] | None = getattr(_local, "contexts", None)
    if cache is None or getattr(_local, "pid", None) != os.getpid():
        # c2pa invalidates native handles in a forked child: a child builds its own.
        cache = _local.contexts = {}
        _local.pid = os.getpid()
    key = (trust_anchors_pem, max_manifest_bytes)
    ctx = cache.get(key)
    if ctx is None:
        if len(cache) >= _MAX_CONTEXTS:
            cache.clear()  # only a test that varies the settings gets here
        ctx = cache[key] = c2pa.Context.from_dict(_settings(trust_anchors_pem, max_manifest_bytes))
    return ctx


def read_c2pa(
    data: bytes,
    mime: str,
    *,
    trust_anchors_pem: str | None,
    max_manifest_bytes: int,
    generator: Generator,
) -> tuple[list[Finding], C2pa | None]:
    """Validate the embedded manifest store of ``data`` (a ``mime`` image); never raises."""
    try:
        ctx = _context(trust_anchors_pem, max_manifest_bytes)
        with c2pa.Reader(mime, io.BytesIO(data), context=ctx) as reader:
            state = reader.get_validation_state()
            results = reader.get_validation_results() or {}
            manifest = reader.get_active_manifest() or {}
        return _interpret(_STATES.get(str(state)), results, manifest, generator)
    except c2pa.C2paError as e:
        return [_unreadable(f"C2PA manifest unreadable: {e}")], None
    except Exception as e:  # the native library or its JSON surprised us: metadata never costs the image
        logger.warning("c2pa reader failed: %s: %s", type(e).__name__, e)
        return [_unreadable(f"C2PA reader failed: {type(e).__name__}")], None


def _unreadable(detail: str) -> Finding:
    return Finding(kind="c2pa", status="unreadable", detail=clip(detail, 300))


def _interpret(
    state: C2paState | None, results: dict[str, Any], manifest: dict[str, Any], generator: Generator
) -> tuple[list[Finding], C2pa]:
    failures = _status_list(results, "failure")
    record = C2pa(
        validation_state=state,
        digital_source_type=_source_type(manifest),
        claim_generator=_claim_generator(manifest),
        signer=_signer(manifest),
        codes=_codes(results),
    )
    findings = [_claim_finding(record, failures, generator)]
    if state == "Invalid":
        reason = "; ".join(f"{code} ({text})" if text else code for code, text in failures[:3])
        findings.append(
            Finding(
                kind="c2pa",
                status="invalid",
                detail=clip(f"C2PA Invalid: {reason or 'no failure code given'}", 300),
            )
        )
    return findings, record


def _claim_finding(record: C2pa, failures: list[tuple[str, str]], generator: Generator) -> Finding:
    """What the manifest says made the image, with who signed it and how far it validated."""
    signed = f"signed by {record.signer}" if record.signer else "signer unknown"
    state: str = record.validation_state or "unvalidated"
    if state == "Invalid" and failures:
        state = f"Invalid ({failures[0][0]})"
    code = _source_code(record.digital_source_type)
    named = generator(record.claim_generator or "")
    if code in AI_SOURCE_TYPES:
        return Finding(
            kind="c2pa", status="declared_ai", detail=clip(f"C2PA: {code}, {signed}, {state}", 300)
        )
    if named:
        text = f"C2PA: claim_generator names {named}, {signed}, {state}"
        return Finding(kind="c2pa", status="declared_ai", detail=clip(text, 300))
    if code:
        return Finding(
            kind="c2pa", status="declared_other", detail=clip(f"C2PA: {code}, {signed}, {state}", 300)
        )
    by = f" from {record.claim_generator}" if record.claim_generator else ""
    return Finding(kind="c2pa", status="present", detail=clip(f"C2PA manifest{by}, {signed}, {state}", 300))


def _source_code(url: str | None) -> str | None:
    if not url:
        return None
    return url[len(DST_PREFIX) :] if url.startswith(DST_PREFIX) else url.rsplit("/", 1)[-1]


def _actions(manifest: dict[str, Any]) -> Iterable[dict[str, Any]]:
    n = 0
    for assertion in _list(manifest.get("assertions")):
        label = str(assertion.get("label", ""))
        if not label.startswith("c2pa.actions"):
            continue
        data = assertion.get("data")
        for action in _list(data.get("actions") if isinstance(data, dict) else None):
            n += 1
            if n > _MAX_ACTIONS:
                return
            yield action


def _source_type(manifest: dict[str, Any]) -> str | None:
    """The digital source type of the created/opened action; else the first AI one of any action.

    An edit that adds generated content (e.g. generative fill) declares AI on a later action.
    """
    first: str | None = None
    for action in _actions(manifest):
        dst = action.get("digitalSourceType")
        if not isinstance(dst, str) or not dst:
            continue
        if _source_code(dst) in AI_SOURCE_TYPES:
            return clip(dst, 200)
        if first is None and action.get("action") in _FIRST_ACTIONS:
            first = clip(dst, 200)
    return first


def _claim_generator(manifest: dict[str, Any]) -> str | None:
    info = _list(manifest.get("claim_generator_info"))
    if info:
        name, version = info[0].get("name"), info[0].get("version")
        if isinstance(name, str) and name:
            return clip(f"{name} {version}" if isinstance(version, str) and version else name, 200)
    legacy = manifest.get("claim_generator")
    return clip(legacy, 200) if isinstance(legacy, str) and legacy else None


def _signer(manifest: dict[str, Any]) -> str | None:
    sig = manifest.get("signature_info")
    if not isinstance(sig, dict):
        return None
    cn, issuer = sig.get("common_name"), sig.get("issuer")
    cn = cn if isinstance(cn, str) and cn else None
    issuer = issuer if isinstance(issuer, str) and issuer else None
    if cn and issuer and issuer != cn:
        return clip(f"{cn} ({issuer})", 200)
    name = cn or issuer
    return clip(name, 200) if name else None


def _status_list(results: dict[str, Any], which: str) -> list[tuple[str, str]]:
    active = results.get("activeManifest")
    entries = _list(active.get(which)) if isinstance(active, dict) else []
    return [(str(e.get("code", "")), str(e.get("explanation", ""))) for e in entries[:64] if e.get("code")]


def _codes(results: dict[str, Any]) -> tuple[str, ...]:
    """Failure codes first, then informational ones, then the trust verdict from the successes."""
    successes = [c for c in _status_list(results, "success") if c[0].startswith("signingCredential.")]
    seen: dict[str, None] = {}
    for code, _ in [*_status_list(results, "failure"), *_status_list(results, "informational"), *successes]:
        seen.setdefault(clip(code, 100), None)
    return tuple(seen)[:_MAX_CODES]


def _list(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
