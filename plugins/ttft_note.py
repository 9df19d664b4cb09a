"""What the predicted-TTFT producer keeps with each pick until the response ends (plugins/latency.py)."""

from __future__ import annotations

from dataclasses import dataclass

from epp.scheduling.types import LLMRequest


@dataclass(slots=True)
class PickNote:
    """What one pick charged and predicted, kept on the result until the response ends."""

    slot: int
    epoch: float
    uncached: float
    queued: float
    decoding: float
    waiting: float
    predicted: float
    prompt_bytes: int
    kv_need: float
    #: how many times the endpoint's KV cache had to turn over before this request fit, as predicted
    full: float = 0.0
    #: seconds of the endpoint's step window not elapsed at the pick (plugins/step_phase.py)
    ahead: float = 0.0
    released: bool = False
    kv_released: bool = False
    ttft: float | None = None
    first_at: float = 0.0


def max_tokens(request: LLMRequest) -> float:
    body = request.body
    if body is None:
        return 0.0
    value = body.get("max_tokens") or body.get("max_completion_tokens") or body.get("max_output_tokens")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else 0.0
