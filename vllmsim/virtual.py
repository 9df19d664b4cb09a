"""Drive an Engine in virtual time (no sockets, no sleeping): the calibration sweep and capacity estimates.

A `Client` list is replayed against one engine: each request has an arrival time (open loop) or is sent when
the previous request of its slot finishes (closed loop, like `vllm bench serve --max-concurrency C
--request-rate inf`). Times are model seconds, measured at step boundaries as the real server reports them.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

from vllmsim.engine import Engine, EngineConfig, Sequence


@dataclass(frozen=True)
class Job:
    prompt: str
    max_tokens: int
    seed: str = "m"
    adapter: str = ""


@dataclass
class Outcome:
    job: Job
    sent: float
    first_token: float = float("nan")
    finished: float = float("nan")
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0

    @property
    def ttft(self) -> float:
        return self.first_token - self.sent

    @property
    def e2e(self) -> float:
        return self.finished - self.sent

    @property
    def tpot(self) -> float:
        """Time per output token after the first (vllm bench serve's TPOT)."""
        if self.output_tokens < 2:
            return float("nan")
        return (self.finished - self.first_token) / (self.output_tokens - 1)


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    duration: float = 0.0
    steps: int = 0
    engine: Engine | None = None

    @property
    def output_tokens_per_s(self) -> float:
        return sum(o.output_tokens for o in self.outcomes) / self.duration if self.duration else 0.0


def _settle(engine: Engine, clock: float, live: dict[int, Outcome], done: list[Outcome]) -> None:
    produced, finished = engine.finish_step()
    for sequence in produced:
        outcome = live[sequence.request_id]
        if outcome.output_tokens == 0:
            outcome.first_token = clock
        outcome.output_tokens += 1
    for sequence in finished:
        outcome = live.pop(sequence.request_id)
        outcome.finished = clock
        outcome.prompt_tokens = sequence.prompt_tokens
        outcome.cached_tokens = sequence.cached
        done.append(outcome)


def _submit(engine: Engine, job: Job, clock: float, live: dict[int, Outcome]) -> Sequence:
    sequence = engine.add(job.prompt, job.max_tokens, job.seed, job.adapter)
    live[sequence.request_id] = Outcome(job, clock)
    return sequence


def closed_loop(config: EngineConfig, jobs: Iterable[Job], concurrency: int, max_steps: int = 5_000_000) -> Run:
    """`concurrency` clients, each sending its next job as soon as the previous one finished."""
    engine = Engine(config)
    queue = list(jobs)
    queue.reverse()
    live: dict[int, Outcome] = {}
    done: list[Outcome] = []
    clock = 0.0
    for _ in range(min(concurrency, len(queue))):
        _submit(engine, queue.pop(), clock, live)
    steps = 0
    while engine.has_work() and steps < max_steps:
        duration = engine.step()
        if duration == 0.0:
            break  # nothing schedulable and nothing will change: a configuration error
        clock += duration
        steps += 1
        before = len(done)
        _settle(engine, clock, live, done)
        for _ in range(len(done) - before):
            if queue:
                _submit(engine, queue.pop(), clock, live)
    return Run(done, clock, steps, engine)


def open_loop(config: EngineConfig, arrivals: Iterable[tuple[float, Job]], max_steps: int = 5_000_000) -> Run:
    """Jobs arrive at the given model times whatever the engine is doing (Poisson or any schedule)."""
    engine = Engine(config)
    pending = [(at, i, job) for i, (at, job) in enumerate(arrivals)]
    heapq.heapify(pending)
    live: dict[int, Outcome] = {}
    done: list[Outcome] = []
    clock = 0.0
    steps = 0
    while (pending or engine.has_work()) and steps < max_steps:
        while pending and pending[0][0] <= clock:
            at, _, job = heapq.heappop(pending)
            _submit(engine, job, at, live)
        duration = engine.step() if engine.has_work() else 0.0
        if duration == 0.0:
            if not pending:
                break
            clock = pending[0][0]  # idle until the next arrival
            continue
        clock += duration
        steps += 1
        _settle(engine, clock, live, done)
    return Run(done, clock, steps, engine)
