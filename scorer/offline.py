"""``python -m scorer score PATH...``: the streaming scorer's model and decoding on local files, no services.

Inputs are image files, folders (walked recursively, sorted) and zip archives (their image members).
Each input yields one JSON line: a verdict, or the same error code the streaming path would dead-letter
with. A summary table (counts per label) goes to stderr at the end. Verdicts carry the same ``signals``
block as the streaming path: provenance from the bytes, the PDQ hash, and, with ``--known LIST.csv`` (an
exported known-content list), the match that decided the label.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm import tqdm

from ingest.decode import DecodeLimits, decode_image, to_rgb_array
from ingest.errors import PermanentError
from ingest.known_csv import parse_csv
from scorer.engine import ServingModel, label_for
from scorer.known_index import Entry, KnownIndex
from scorer.pdq import from_hex
from scorer.runtime import RUNTIMES
from scorer.signals import ImageSignals, SignalReader, SignalSettings, decide, lookup

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


@dataclass(frozen=True)
class Source:
    name: str  # file path, or "archive.zip!member"
    data: bytes
    refused: tuple[str, str] | None = None  # (code, reason) when the bytes were not even read


def _not_an_image(name: str) -> Source:
    suffix = Path(name).suffix.lower() or "no suffix"
    reason = f"not read: {suffix} is not an image file name ({', '.join(sorted(IMAGE_SUFFIXES))})"
    return Source(name, b"", ("skipped_suffix", reason))


def iter_sources(paths: Sequence[str | Path], limits: DecodeLimits) -> Iterator[Source]:
    """Every input as a Source, in order: files that are not read (by their name, or too large to inflate
    from a zip) come back refused with a reason, so that the output has a line for every input."""
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    yield Source(str(f), f.read_bytes())
                else:
                    yield _not_an_image(str(f))
        elif p.is_file() and zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as zf:
                for info in sorted(zf.infolist(), key=lambda i: i.filename):
                    name = f"{p}!{info.filename}"
                    if info.is_dir():
                        continue
                    if Path(info.filename).suffix.lower() not in IMAGE_SUFFIXES:
                        yield _not_an_image(name)
                    elif info.file_size > limits.max_bytes:  # refuse before inflating (zip bombs)
                        reason = f"larger than {limits.max_bytes} bytes: {info.file_size} bytes uncompressed"
                        yield Source(name, b"", ("too_large", reason))
                    else:
                        yield Source(name, zf.read(info))
        elif p.is_file():
            yield Source(str(p), p.read_bytes())
        else:
            raise FileNotFoundError(f"no such file, folder or zip: {p}")


BatchHook = Callable[[np.ndarray, list[dict[str, Any]]], None]


def score_sources(
    sources: Iterator[Source],
    model: ServingModel,
    limits: DecodeLimits,
    band: float,
    batch_size: int = 256,
    on_batch: BatchHook | None = None,
    signals: SignalSettings | None = None,
    index: KnownIndex | None = None,
) -> Iterator[dict[str, Any]]:
    """One result dict per source, in input order. ``on_batch`` sees each scored batch (uint8 NHWC arrays
    and their rows, before they are yielded) and may add fields to the rows. ``signals`` None: the model
    alone decides and rows carry no ``signals``."""
    pending: list[tuple[ImageSignals, dict[str, Any], np.ndarray]] = []
    reader = SignalReader(signals) if signals is not None else None

    def flush() -> Iterator[dict[str, Any]]:
        if not pending:
            return
        arrays = np.stack([a for _, _, a in pending])
        p_fake = model.predict(arrays)
        found = [f for f, _, _ in pending]
        matches = lookup(index, found, signals.min_quality) if signals is not None else [None] * len(found)
        for (f, row, _arr), p, match in zip(pending, p_fake, matches, strict=True):
            label = label_for(float(p), model.meta.threshold, band)
            if signals is not None:
                label, sig = decide(label, f, match, signals.provenance_decides)
                row["signals"] = sig.model_dump(mode="json", exclude_none=True)
            row.update(
                p_fake=round(float(p), 6),
                label=label,
                threshold=model.meta.threshold,
                model_version=model.version,
            )
        if on_batch is not None:
            on_batch(arrays, [row for _, row, _ in pending])
        for _f, row, _arr in pending:
            yield row
        pending.clear()

    for src in sources:
        row: dict[str, Any] = {"path": src.name, "image_id": hashlib.sha256(src.data).hexdigest()}
        try:
            if src.refused:
                raise PermanentError(src.refused[1], code=src.refused[0])
            found = ImageSignals(provenance=reader.provenance(src.data) if reader else None)
            decoded = decode_image(src.data, limits, target_size=model.input_size)
            arr = to_rgb_array(decoded, model.input_size)
            if reader is not None:
                reader.hash(arr, found)
        except PermanentError as e:
            yield from flush()  # keep output in input order
            yield {**row, "error": getattr(e, "code", "permanent"), "reason": e.reason}
            continue
        row.update(original_size=list(decoded.size), original_format=decoded.format)
        pending.append((found, row, arr))
        if len(pending) >= batch_size:
            yield from flush()
    yield from flush()


def summary_table(counts: Counter[str]) -> str:
    total = sum(counts.values())
    lines = [f"{'label':<22}{'count':>8}{'share':>9}", "-" * 39]
    for label, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"{label:<22}{n:>8}{n / total:>9.1%}")
    lines += ["-" * 39, f"{'total':<22}{total:>8}"]
    return "\n".join(lines)


def load_known_csv(path: str, max_distance: int) -> KnownIndex:
    """An index over an exported known-content list (``pdq,label,note``); entries are numbered by row."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = parse_csv(f)
    index = KnownIndex(max_distance=max_distance)
    index.apply(
        Entry(n, from_hex(r.pdq).tobytes(), r.label, True, source="import") for n, r in enumerate(rows, 1)
    )
    return index


def run_score(args: argparse.Namespace, make_hook: Callable[[ServingModel], BatchHook] | None = None) -> int:
    """``scorer score``; ``make_hook`` builds an ``on_batch`` hook for the loaded model (``python -m explainer
    score --explain DIR`` passes one that writes Grad-CAM files)."""
    limits = DecodeLimits()
    model = ServingModel.load(args.weights, args.device, runtime=args.runtime)
    signals = None if args.no_signals else SignalSettings()
    index = None
    if args.known and signals is not None:
        try:
            index = load_known_csv(args.known, signals.match_distance)
        except (OSError, ValueError, UnicodeDecodeError) as e:
            print(f"scorer score: --known {args.known}: {e}", file=sys.stderr)
            return 2
    out: IO[str] = open(args.out, "w") if args.out else sys.stdout  # noqa: SIM115 - closed below
    counts: Counter[str] = Counter()
    on_batch = make_hook(model) if make_hook is not None else None
    try:
        results = score_sources(
            iter_sources(args.paths, limits),
            model,
            limits,
            args.uncertain_band,
            args.batch,
            on_batch,
            signals,
            index,
        )
        for row in tqdm(results, desc="scoring", unit="img", file=sys.stderr, disable=args.quiet):
            counts[row.get("label") or f"error:{row['error']}"] += 1
            out.write(json.dumps(row) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    if not counts:
        print("no images found in the given paths", file=sys.stderr)
        return 1
    print(summary_table(counts), file=sys.stderr)
    if args.out:
        print(f"results: {args.out}", file=sys.stderr)
    return 0


def add_score_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", help="image files, folders, or zip archives")
    p.add_argument("--out", help="write JSON lines here (default: stdout)")
    p.add_argument("--weights", default="default", help="weights file or 'default'")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--runtime", default="auto", choices=RUNTIMES, help="auto: ONNX Runtime on CPU, PyTorch on CUDA"
    )
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--uncertain-band", type=float, default=0.1)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--known",
        metavar="LIST.csv",
        help="match against a known-content list (pdq,label,note: `retrainer known export`)",
    )
    p.add_argument("--no-signals", action="store_true", help="model only: no provenance, PDQ or matching")


def add_score_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> Callable[[argparse.Namespace], int]:
    p = sub.add_parser("score", help="score image files, folders or zips offline (no services needed)")
    add_score_arguments(p)
    return run_score
