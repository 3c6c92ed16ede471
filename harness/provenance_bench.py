"""Provenance signals: what is detected, what must not be, and what reading costs per image.

    python -m harness.provenance_bench [--data cifake-train.zip] [--out benchmarks/known_content]

- every declared-AI fixture (C2PA-signed with a throwaway CA registered as trust anchor, IPTC
  DigitalSourceType in its three XMP forms, Automatic1111/ComfyUI/InvokeAI/NovelAI PNG text, EXIF Software
  and UserComment: built by ``tests/provenance_fixtures.py``, nothing downloaded) must be declared AI;
- every camera-style fixture (EXIF Make/Model/Software of phones, cameras and editors) and every CIFAKE
  training image (all 100,000, when the archive is there) must not be;
- the hostile fixtures (bombs, garbage, oversized boxes) must give a result, never an exception;
- CPU per image of ``read_provenance`` on plain CIFAKE JPEGs and on a signed C2PA JPEG.

Writes ``provenance.json`` and prints it as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from harness.known_bench_common import DEFAULT_DATA, DEFAULT_OUT, write
from harness.machine import machine_info
from ingest.provenance import ProvenanceSettings, read_provenance
from tests import provenance_fixtures as fx
from tests import provenance_hostile as hostile


def _settings() -> ProvenanceSettings:
    return ProvenanceSettings(trust_anchors_pem=fx.signing_ca().ca_pem)


def _hostile() -> dict[str, bytes]:
    return {
        "ztxt_bomb_50MB": hostile.text_bomb(),
        "5000_text_chunks": hostile.many_text_chunks(),
        "xmp_4MB": hostile.huge_xmp_png(),
        "xmp_billion_laughs": hostile.billion_laughs_xmp(),
        "xmp_30000_deep": hostile.deep_xmp_png(),
        "garbage_text_chunks": hostile.garbage_text_chunks(),
        "text_bad_crc": hostile.png_bad_text_crc(),
        "chunk_length_past_end": hostile.png_length_past_end(),
        "malformed_jumbf": hostile.malformed_jumbf_jpeg(),
        "oversized_jumbf": hostile.oversized_jumbf_jpeg(),
    }


def _cpu_per_image(data: bytes, settings: ProvenanceSettings, reps: int) -> float:
    t = time.process_time()
    for _ in range(reps):
        read_provenance(data, settings)
    return (time.process_time() - t) / reps * 1e3


def _cifake(path: Path, settings: ProvenanceSettings) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    declared, n, cpu = [], 0, 0.0
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if not name.lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            data = zf.read(name)
            t = time.process_time()
            prov = read_provenance(data, settings)
            cpu += time.process_time() - t
            n += 1
            statuses.update(f.status for f in prov.findings)
            if prov.declared_ai:
                declared.append(name)
    return {
        "images": n,
        "declared_ai": len(declared),
        "declared_ai_examples": declared[:10],
        "findings_by_status": dict(statuses),
        "cpu_ms_per_image": round(cpu / max(n, 1) * 1e3, 4),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = _settings()
    ai = {name: read_provenance(data, settings) for name, data in fx.declared_ai_fixtures().items()}
    camera = {name: read_provenance(data, settings) for name, data in fx.camera_fixtures().items()}
    hostile = {name: read_provenance(data, settings) for name, data in _hostile().items()}
    signed = fx.c2pa_fixture()
    result: dict[str, Any] = {
        "benchmark": "known_content.provenance",
        "command": "python -m harness.provenance_bench " + " ".join(sys.argv[1:]),
        "declared_ai_fixtures": len(ai),
        "declared_ai_detected": sum(p.declared_ai for p in ai.values()),
        "missed": sorted(k for k, p in ai.items() if not p.declared_ai),
        "detected_by_kind": dict(
            Counter(f.kind for p in ai.values() for f in p.findings if f.status == "declared_ai")
        ),
        "c2pa_states": dict(Counter(str(p.c2pa.validation_state) for p in ai.values() if p.c2pa is not None)),
        "camera_fixtures": len(camera),
        "camera_declared_ai": sorted(k for k, p in camera.items() if p.declared_ai),
        "hostile_fixtures": len(hostile),
        "hostile_outcomes": {
            k: sorted({f"{f.kind}:{f.status}" for f in p.findings}) for k, p in hostile.items()
        },
        "cpu_ms_per_image_signed_c2pa_jpeg": round(_cpu_per_image(signed, settings, 50), 3),
        "machine": machine_info(),
    }
    data = Path(args.data) if args.data else DEFAULT_DATA
    if data.exists():
        result["cifake"] = _cifake(data, settings)
    else:
        result["cifake"] = f"not measured: no archive at {data} (pass --data)"
    write(Path(args.out), "provenance.json", result)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--data", help="cifake-train.zip (default: ../shared/datasets/cifake-train.zip if present)"
    )
    p.add_argument("--out", default=str(DEFAULT_OUT))
    print(json.dumps(run(p.parse_args())), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
