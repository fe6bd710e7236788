"""``optimize_latent(clock=...)``: an iteration's seconds and the ``max_seconds`` budget are read
from the clock given (``time.process_time`` for CPU time on a shared machine)."""

from __future__ import annotations

import itertools

from shortcut_diffusion.tasks.latent.optimize import optimize_latent


def test_seconds_and_budget_come_from_the_clock(tiny):
    ticks = itertools.count()
    result = optimize_latent(tiny, lambda images, labels: images.mean((1, 2, 3)), [1], steps=2, iters=10, lr=0.05,
                             seed=0, progress=False, max_seconds=2.5, clock=lambda: float(next(ticks)))
    assert [row["seconds"] for row in result.history] == [1.0, 1.0, 1.0]  # read twice an iteration
    assert [row["wall_clock"] for row in result.history] == [1.0, 2.0, 3.0]
