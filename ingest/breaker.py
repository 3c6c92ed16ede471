"""The consumer loop's circuit breaker: a bad deploy must not drain a topic into its dead-letter topic.

An exception that is neither transient (back off, retry) nor a ``PermanentError`` (bad input, dead-letter)
is a bug or a mismatch between the code and its dependencies (an ``AttributeError``, a ``ProgrammingError``
after a migration). Isolating it record by record and dead-lettering it is right for one poison record and
wrong for a broken release, which fails every record the same way. The breaker tells them apart by batches:
a batch of at least ``min_records`` in which every record failed with an unexpected error counts; after
``threshold`` such batches in a row the breaker opens, and the loop neither dead-letters nor commits that
batch: it rewinds, reports itself unhealthy (``<app>_circuit_open`` 1, the ``CircuitOpen`` alert) and
retries the same records every ``probe_s`` seconds. The first batch that is not wholly failed closes it.
So a broken release costs at most ``threshold - 1`` batches of dead letters (redrive them with
``python -m ingest dlq redrive``), and resumes by itself once the fault clears or the fix is deployed.

Small batches never count: one or two poison records arriving at a quiet time must not stop a service.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ingest.batch import UNEXPECTED_PREFIX, Batch

logger = logging.getLogger(__name__)


@dataclass
class Breaker:
    threshold: int = 2
    min_records: int = 8
    streak: int = 0
    is_open: bool = False

    def hold(self, batch: Batch, probe_s: float = 0.0) -> bool:
        """Account for a handled batch; True when the breaker is (now) open and the batch must be held.
        Logs the transitions (once each, not per probe)."""
        was_open = self.is_open
        if self._wholly_unexpected(batch):
            self.streak += 1
            self.is_open = self.streak >= self.threshold
        else:
            self.streak = 0
            self.is_open = False
        if self.is_open and not was_open:
            f = next(iter(batch.failures.values()))
            logger.error(
                "circuit open: %d batches in a row failed on every record with unexpected errors (last: "
                "%s: %s); holding the batch: nothing dead-lettered or committed, retrying every %.0fs",
                self.streak,
                f.error_class,
                f.reason,
                probe_s,
            )
        elif was_open and not self.is_open:
            logger.warning("circuit closed: a batch went through; consuming again")
        return self.is_open

    def close(self) -> None:
        """A probe went through: consume again."""
        if self.is_open:
            logger.warning("circuit closed: a probe went through; consuming again")
        self.streak = 0
        self.is_open = False

    def _wholly_unexpected(self, batch: Batch) -> bool:
        n = len(batch.records)
        return (
            n >= self.min_records
            and len(batch.failures) == n
            and all(f.code.startswith(UNEXPECTED_PREFIX) for f in batch.failures.values())
        )
