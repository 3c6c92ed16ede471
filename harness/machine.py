"""What a benchmark result file records about where it ran."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
        return (
            out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def machine_info(
    packages: tuple[str, ...] = ("torch", "onnxruntime", "pdqhash", "faiss-cpu", "c2pa-python"),
) -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in packages},
        "commit": _commit(),
    }


def write_json(
    path: str | Path, doc: dict[str, Any], indent: int = 2, default: Callable[[Any], Any] | None = None
) -> None:
    """Write ``doc`` to ``path`` whole or not at all (a temporary file renamed over it): a run stopped
    while writing must not leave a truncated result where the docs link one."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(doc, indent=indent, default=default) + "\n")
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are published results
    os.replace(tmp, out)


def write_result(out: str | Path | None, result: dict[str, Any], command: str) -> None:
    """The result file the docs quote: ``result`` with where it ran and the ``command`` that wrote it.
    Nothing is written when ``out`` is empty."""
    if out:
        write_json(out, {"machine": machine_info(), "command": command, **result})


def publish(out: str | Path | None, result: dict[str, Any], module: str, shown: Any = None) -> int:
    """The end of a bench's ``main``: write ``result`` (``write_result``, with the command line that ran
    ``python -m module``), print ``shown`` (default: the result) as one JSON line, return exit status 0."""
    write_result(out, result, f"python -m {module} " + " ".join(sys.argv[1:]))
    print(json.dumps(result if shown is None else shown), flush=True)
    return 0
