"""Progress of the long steps that are not training: the evaluation's judge and t-SNE, every attacker
and restart, the end-to-end corpus. Training prints a line an epoch; these print a line as each step
starts and one as it ends, counted ("[3/20]"), timed, with the time the rest should take at the pace
so far. Log lines, not bars: they read the same on a terminal, in `dvc repro`'s output and in a
Kubeflow task's log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("crypson.progress")


class Progress:
    """`total` steps of one job, reported through `log.info` (or `report`, for tests).

    Example:
        progress = Progress("attack", 20)
        with progress.step("keyed-modular: learned-inversion"):
            ...
    """

    def __init__(self, job: str, total: int, report: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        if total < 1:
            raise ValueError(f"{job}: a progress needs at least one step, got total={total}")
        self.job, self.total, self.done = job, total, 0
        self._report = report or log.info
        self._clock = clock
        self._started = clock()

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        """One step: a line as it starts, one as it ends with its time and the estimate for the rest."""
        if self.done >= self.total:
            raise ValueError(f"{self.job}: step {label!r} is one more than the {self.total} announced")
        number = self.done + 1
        self._report(f"{self.job} [{number}/{self.total}] {label} ...")
        began = self._clock()
        yield
        now = self._clock()
        self.done = number
        left = (now - self._started) / number * (self.total - number)
        rest = f", about {left:.0f} s left" if number < self.total else ", all done"
        self._report(f"{self.job} [{number}/{self.total}] {label}: {now - began:.1f} s{rest}")
