"""Request streams for the routing benchmark, shaped after the reference's benchmark profiles.

Token counts are exact for the simulator (4 characters per token): each "token" here is one 4-character
word. Everything is seeded and deterministic. A request may name an earlier request it must wait for
(`after`): a chat user's next round is sent only once the previous answer has arrived.
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
    after: int | None = None  # index of the request whose completion this one waits for

    @property
    def prompt_text(self) -> str:
        if "prompt" in self.body:
            return str(self.body["prompt"])
        return "".join(f"<|{m['role']}|>{m['content']}" for m in self.body["messages"])


def words(rng: random.Random, tokens: int) -> str:
    """`tokens` simulator tokens: 4-character words that start with a space."""
    return "".join(f" {rng.randrange(36**3):03x}" for _ in range(tokens))


def _streaming(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


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
    systems = [words(rng, system_tokens) for _ in range(groups)]
    requests = []
    for g in range(groups):
        for _ in range(prompts_per_group):
            body = {"model": model, "prompt": systems[g] + words(rng, question_tokens), "max_tokens": output_tokens}
            requests.append(Request(_streaming(body), group=f"g{g}"))
    rng.shuffle(requests)
    return requests


def multi_turn_chat(
    model: str, users: int, rounds: int, system_tokens: int, question_tokens: int, answer_tokens: int, seed: int = 2
) -> list[Request]:
    """production-stack's multi-round QA: one shared system prompt, each user's history re-sent and growing
    by a question and an answer per round. Rounds of different users interleave; a user's round r waits for
    the answer to its round r-1."""
    rng = random.Random(seed)
    system = words(rng, system_tokens)
    histories: list[list[dict[str, str]]] = [[{"role": "system", "content": system}] for _ in range(users)]
    last: list[int | None] = [None] * users
    requests: list[Request] = []
    for _ in range(rounds):
        order = list(range(users))
        rng.shuffle(order)
        for user in order:
            histories[user].append({"role": "user", "content": words(rng, question_tokens)})
            body = {"model": model, "messages": [dict(m) for m in histories[user]], "max_tokens": answer_tokens}
            requests.append(Request(_streaming(body), "/v1/chat/completions", group=f"u{user}", after=last[user]))
            last[user] = len(requests) - 1
            histories[user].append({"role": "assistant", "content": words(rng, answer_tokens)})
    return requests


def multi_lora(
    adapters: list[str], shares: list[float], count: int, prompt_tokens: int, output_tokens: int, seed: int = 3
) -> list[Request]:
    """Requests spread over LoRA adapters by traffic share (e.g. 60/30/10 % tiers), unique prompts."""
    rng = random.Random(seed)
    requests = []
    for _ in range(count):
        adapter = rng.choices(adapters, weights=shares)[0]
        body = {"model": adapter, "prompt": words(rng, prompt_tokens), "max_tokens": output_tokens}
        requests.append(Request(_streaming(body), group=adapter))
    return requests


SYSTEM_MESSAGE = "You are a helpful assistant."


def unique_chat(model: str, count: int, question_tokens: int, output_tokens: int, seed: int = 4) -> list[Request]:
    """Chat completions with nothing shared but what real clients send anyway: the short system message
    "You are a helpful assistant." and the chat format; every question is distinct."""
    rng = random.Random(seed)
    requests = []
    for i in range(count):
        messages = [
            {"role": "system", "content": SYSTEM_MESSAGE},
            {"role": "user", "content": words(rng, question_tokens)},
        ]
        body = {"model": model, "messages": messages, "max_tokens": output_tokens}
        requests.append(Request(_streaming(body), "/v1/chat/completions", group=f"q{i}"))
    return requests


def shared_system_chat(
    model: str, count: int, system_tokens: int, question_tokens: int, output_tokens: int, seed: int = 6
) -> list[Request]:
    """Single-turn chat completions of one application: one long shared system prompt, a distinct question each."""
    rng = random.Random(seed)
    system = words(rng, system_tokens)
    requests = []
    for i in range(count):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": words(rng, question_tokens)}]
        body = {"model": model, "messages": messages, "max_tokens": output_tokens}
        requests.append(Request(_streaming(body), "/v1/chat/completions", group=f"q{i}"))
    return requests
