"""benchmarks/scheduler/run.py --recording keeps working: a few picks of each kind, every figure measured."""

from __future__ import annotations

from benchmarks.scheduler.run import time_recording


def test_recording_benchmark_measures_all_three_figures() -> None:
    plain, recorded, emitted = time_recording(endpoints=20, prompt_chars=300, picks=40, seed=1)
    assert plain > 0 and recorded > 0 and emitted > 0
