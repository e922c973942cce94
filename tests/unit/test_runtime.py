"""The gate's latency figure counts the graph's own CPU time, not time spent waiting for a core.

A fake session advances two fake clocks, so the test asserts which clock each figure reads, not
how fast this machine happens to be."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipeline.contracts.runtime import compute_ms, latency_ms


class Descheduled:
    """A session whose every run waits 2 ms for a core and computes for 0.01 ms (a loaded
    machine): ``wall`` and ``cpu`` are its clocks, in seconds."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def run(self, _outputs: object, _feed: object) -> list[np.ndarray]:
        self.wall += 0.002 + 0.00001
        self.cpu += 0.00001
        return []


def test_wall_time_counts_waiting_and_the_gates_compute_time_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    X = np.zeros((3, 4), np.float32)
    sess = Descheduled()
    wall = latency_ms(sess, X, repeats=30, warmup=2, clock=lambda: sess.wall)
    assert wall["p50_ms"] == pytest.approx(2.01) and wall["p99_ms"] == pytest.approx(2.01)
    # The gate's figure reads this thread's CPU clock: the waiting is not the model's cost.
    monkeypatch.setattr(time, "thread_time", lambda: sess.cpu)
    gate = compute_ms(sess, X)
    assert gate["p50_ms"] == pytest.approx(0.01) and gate["p99_ms"] == pytest.approx(0.01)
