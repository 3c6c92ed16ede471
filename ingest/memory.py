"""Process-wide memory settings for services that move large images through many threads."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

# glibc's mallopt parameter number for the arena limit (malloc.h: M_ARENA_MAX).
_M_ARENA_MAX = -8
DEFAULT_ARENAS = 2


def limit_malloc_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Cap glibc's malloc arenas, as ``MALLOC_ARENA_MAX`` would; call it before starting threads.

    glibc gives each thread that meets contention an arena of its own (up to 8 per core) and keeps memory
    freed there for reuse by that arena. A scorer's fetch and decode threads each pass multi-megabyte photos
    through, so every arena ends up holding its own few hundred megabytes: on 1,000 phone photos the
    scorer peaked about 200 MB higher with glibc's default than with two arenas, at the same throughput
    (``python -m harness.phone_photos --only stream``, then again with ``MALLOC_ARENA_MAX=16``, glibc's
    default on 2 cores). An operator's ``MALLOC_ARENA_MAX`` wins; other C libraries (musl, macOS) are left
    alone. Returns whether the limit was applied.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_ARENA_MAX, arenas))
    logger.debug("malloc arenas limited to %d: %s", arenas, ok)
    return ok
