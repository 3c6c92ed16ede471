"""Time arguments of the operators' commands (``--since``)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from ingest.contracts import utcnow

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> datetime:
    """``30m``, ``2h``, ``1d`` (before now) or an ISO timestamp with a time zone; ``ValueError`` otherwise."""
    m = _DURATION.match(text.strip())
    if m:
        return utcnow() - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError(f"timestamp {text!r} needs a time zone")
    return when
