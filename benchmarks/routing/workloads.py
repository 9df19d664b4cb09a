"""Request streams for the routing benchmark, shaped after the reference's benchmark profiles.

Token counts are approximate (the simulator counts ~4 characters per token); each "token" here is one
4-character word so lengths in tokens stay meaningful. Everything is seeded and deterministic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Request:
    body: dict[str, Any]
    path: str = "/v1/completions"
    headers: dict[str, str] = field(default_factory=dict)
    group: str = ""


def _words(rng: random.Random, tokens: int) -> str:
    return " ".join(f"{rng.randrange(36**3):03x}" for _ in range(tokens))


def shared_prefix(
    model: str,
    groups: int,
    prompts_per_group: int,
    system_tokens: int,
    question_tokens: int,
    output_tokens: int,
    seed: int = 1,
) -> list[Request]:
    """inference-perf's `shared_prefix`: `groups` system prompts, each followed by distinct questions;
    requests are shuffled so groups interleave."""
    rng = random.Random(seed)
    systems = [_words(rng, system_tokens) for _ in range(groups)]
    requests = [
        Request(
            {
                "model": model,
                "prompt": f"{systems[g]}\n{_words(rng, question_tokens)}",
                "max_tokens": output_tokens,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            group=f"g{g}",
        )
        for g in range(groups)
        for _ in range(prompts_per_group)
    ]
    rng.shuffle(requests)
    return requests


def multi_turn_chat(
    model: str, users: int, rounds: int, system_tokens: int, question_tokens: int, answer_tokens: int, seed: int = 2
) -> list[Request]:
    """Each user's conversation grows round by round (history re-sent); one system prompt is shared.
    Rounds of different users interleave; a user's round r comes after its round r-1 in the list."""
    rng = random.Random(seed)
    system = _words(rng, system_tokens)
    histories: list[list[dict[str, str]]] = [[{"role": "system", "content": system}] for _ in range(users)]
    requests = []
    for _ in range(rounds):
        order = list(range(users))
        rng.shuffle(order)
        for user in order:
            histories[user].append({"role": "user", "content": _words(rng, question_tokens)})
            messages = [dict(m) for m in histories[user]]
            requests.append(
                Request(
                    {
                        "model": model,
                        "messages": messages,
                        "max_tokens": answer_tokens,
                        "ignore_eos": True,
                        "stream": True,
                        "stream_options": {"include_usage": True},
                    },
                    path="/v1/chat/completions",
                    group=f"u{user}",
                )
            )
            histories[user].append({"role": "assistant", "content": _words(rng, answer_tokens)})
    return requests


def multi_lora(
    adapters: list[str], shares: list[float], count: int, prompt_tokens: int, output_tokens: int, seed: int = 3
) -> list[Request]:
    """Requests spread over LoRA adapters by traffic share (e.g. 60/30/10 % tiers)."""
    rng = random.Random(seed)
    requests = []
    for _ in range(count):
        adapter = rng.choices(adapters, weights=shares)[0]
        requests.append(
            Request(
                {
                    "model": adapter,
                    "prompt": _words(rng, prompt_tokens),
                    "max_tokens": output_tokens,
                    "ignore_eos": True,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                },
                group=adapter,
            )
        )
    return requests
