"""Where each endpoint's engine is in its current step, from the response chunks it streams (used by
plugins/latency.py).

A vLLM engine runs in steps: each step computes a batch (the running requests' next tokens and some prompt
tokens) and ends with the tokens it produced, which go out as response chunks at once. A request that arrives
mid-step waits for the step in progress to end before its own prefill is scheduled, so its first token comes
that much later. At low load the TTFT is a few steps and where in a step a request arrives is a large part of
it (the virtual fleet's mixed-speed pool at load 1: the exact time left in the step, added to the model's
prediction, took the median error from 15 to 2-3 % per server in-sample).

Every chunk of a streamed response marks the end of one of its endpoint's steps, so the time since the last
chunk from an endpoint says how far into the next step it is. The engine's step length varies (a prefill step
is longer than a decode step), so the feature is the part of a window of STEP_WINDOW seconds not yet elapsed
since the last chunk, max(STEP_WINDOW - since, 0) / STEP_WINDOW, in [0, 1]: 1 just after a chunk (a whole step
ahead), 0 once the window has passed (the step has ended, or the engine is idle and starts this one at once);
the TTFT model learns its seconds (plugins/fleet_model.py). Windows of 20, 30, 50, 100 and 200 ms were run on
the virtual fleet (8 servers, loads 1 and 2, seeds 1 and 2): the shorter ones, about one decode step of a busy
batch, predicted best on the mixed-speed and slowdown pools; 50, 100 and 200 ms each cost a routing row its output
tokens/s, and 30 ms met the error target in one row more than 20 ms (benchmarks/README.md, "Virtual fleet: the
engine's step in progress").

With --shared-state each replica sees only its own responses' chunks: the phase is then that of the last
chunk this replica saw (older, so smaller; not shared).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from epp.datastore.table import SlotArray

#: seconds after a chunk over which the step that follows it is counted as in progress
STEP_WINDOW = 0.03


class EngineStepPhase:
    """Per endpoint slot: when its last response chunk arrived, shifted by the window (so one subtraction
    gives the window's part still ahead)."""

    def __init__(self, capacity: int) -> None:
        #: time of the endpoint's last chunk + STEP_WINDOW (0: no chunk seen)
        self.window_ends = np.zeros(capacity)
        #: the latest of them: until then some endpoint may be in its window (after it none is, and a pick skips
        #: the arrays)
        self.latest = 0.0

    def reset(self, slot: int) -> None:
        self.window_ends[slot] = 0.0

    def chunk(self, slot: int, now: float) -> None:
        """A chunk from the endpoint at `slot` arrived at `now`."""
        end = now + STEP_WINDOW
        self.window_ends[slot] = end
        if end > self.latest:
            self.latest = end

    def ends(self, candidates: SlotArray, now: float) -> npt.NDArray[np.float64] | None:
        """Per candidate, the later of its window's end and `now`, so that minus `now` it is the part of the window
        not yet elapsed (the caller takes `now` off once, after scaling, rather than over every candidate); None
        when every endpoint's window has passed (nothing ahead anywhere)."""
        if now >= self.latest:
            return None
        ends = self.window_ends[candidates]
        np.maximum(ends, now, out=ends)
        return ends

    def ahead_one(self, slot: int, now: float) -> float:
        return max(self.window_ends.item(slot) - now, 0.0)
