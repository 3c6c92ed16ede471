"""Walk the inputs of ``python -m ingest submit``: image files, folders (recursive) and zip archives.

``collect`` looks at names and sizes only (no image bytes are read) and returns the entries to submit
plus one readable problem per input that yields nothing or per member that is not an image: a missing
path, an empty folder, a zip member whose name is not an image's, a zip member too large to inflate.
Each entry reads its bytes lazily, so a large folder is never held in memory at once.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})


@dataclass(frozen=True)
class Entry:
    name: str  # a file path, or "archive.zip!member"
    read: Callable[[], bytes]


@dataclass
class Collected:
    entries: list[Entry]
    problems: list[str]


def _zip_reader(path: Path, member: str) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            with zipfile.ZipFile(path) as zf:
                return zf.read(member)
        # A member can lie about its size (bad CRC), be encrypted (RuntimeError), use an unknown method
        # (NotImplementedError) or hold a corrupt stream: each is this member's problem, reported as an
        # unreadable file (OSError), never the end of the whole run.
        except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as e:
            raise OSError(f"unreadable zip member: {type(e).__name__}: {e}") from e

    return read


def _zip_entries(path: Path, max_bytes: int, out: Collected) -> int:
    found = 0
    with zipfile.ZipFile(path) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir():
                continue
            name = f"{path}!{info.filename}"
            if Path(info.filename).suffix.lower() not in IMAGE_SUFFIXES:
                out.problems.append(f"{name}: skipped, not an image file (by its name)")
                continue
            if info.file_size > max_bytes:  # refused before inflating: zip bombs stay packed
                out.problems.append(
                    f"{name}: skipped, {info.file_size} bytes uncompressed (limit {max_bytes})"
                )
                continue
            out.entries.append(Entry(name, _zip_reader(path, info.filename)))
            found += 1
    return found


def collect(paths: Sequence[str | Path], max_bytes: int) -> Collected:
    out = Collected([], [])
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = sorted(q for q in p.rglob("*") if q.is_file())
            images = [q for q in files if q.suffix.lower() in IMAGE_SUFFIXES]
            if not images:
                what = f"{len(files)} files, none an image" if files else "empty folder"
                out.problems.append(f"{p}: no images found ({what})")
            elif len(images) < len(files):
                out.problems.append(
                    f"{p}: skipped {len(files) - len(images)} files that are not images (by name)"
                )
            out.entries.extend(Entry(str(q), q.read_bytes) for q in images)
        elif p.is_file() and p.suffix.lower() == ".zip":
            try:
                if _zip_entries(p, max_bytes, out) == 0:
                    out.problems.append(f"{p}: no images found in the archive")
            except zipfile.BadZipFile as e:
                out.problems.append(f"{p}: not a readable zip archive ({e})")
        elif p.is_file():
            out.entries.append(Entry(str(p), p.read_bytes))
        elif p.exists():
            out.problems.append(f"{p}: not a file, folder or zip archive")
        else:
            out.problems.append(f"{p}: no such file or folder")
    return out
