"""A model of vLLM's V1 engine: continuous batching, chunked prefill, paged KV cache with prefix caching.

Pure and clock-free: `step()` schedules one engine iteration and returns its duration in model seconds; the
caller waits that long (the server divides by its time scale) and then calls `finish_step()`. The scheduler
follows vLLM V1 (`vllm/v1/core/sched/scheduler.py`): one token budget per step shared by every request,
running requests first, waiting ones after; prefill and decode are the same thing (a request is scheduled
for the tokens it still lacks). Step time is a roofline: the larger of the time to stream the weights and
the attended KV from HBM and the time to compute the scheduled tokens. README.md has the equations and
where each default comes from.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import xxhash

CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class EngineConfig:
    """Defaults: Llama-3.1-8B-Instruct (BF16) with vLLM V1 on one A100-SXM4-40GB (see README.md)."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    num_gpu_blocks: int = 9_600
    block_size: int = 16
    max_loras: int = 0
    #: memory side of a step: read every weight once (plus fixed per-step costs), plus the KV each request attends
    weights_read_s: float = 0.0132
    kv_read_s_per_token: float = 1.095e-7
    #: compute side of a step: the linear layers per scheduled token ...
    compute_s_per_token: float = 7.35e-5
    #: ... and causal attention, per (query, key) pair, as a fraction of one token's linear-layer work
    attention_pair_ratio: float = 3.26e-5
    #: relative speed of this GPU: every step takes (roofline duration) / speed; 0.5 is a server half as fast
    speed: float = 1.0


def tokens_of(text: str) -> int:
    return max(1, len(text) // CHARS_PER_TOKEN)


def block_hashes(text: str, seed: str, block_size: int) -> list[int]:
    """Chained hashes of the prompt's full blocks (block_size tokens = block_size x 4 characters)."""
    chars = block_size * CHARS_PER_TOKEN
    previous = xxhash.xxh64_intdigest(seed.encode())
    hashes = []
    for start in range(0, len(text) - chars + 1, chars):
        previous = xxhash.xxh64_intdigest(text[start : start + chars].encode() + previous.to_bytes(8, "little"))
        hashes.append(previous)
    return hashes


@dataclass(eq=False)
class Sequence:
    request_id: int
    prompt_tokens: int
    max_tokens: int
    hashes: list[int]
    adapter: str = ""
    computed: int = 0  # tokens whose KV exists (prefix-cache hits + computed)
    cached: int = 0  # prompt tokens served from the prefix cache at the first admission
    generated: int = 0
    private: int = 0  # blocks held only by this request
    shared: list[int] = field(default_factory=list)  # prefix-cache block hashes it references
    published: int = 0  # prompt blocks (from the start) that are backed by the prefix cache
    admitted: bool = False
    is_running: bool = False
    done: bool = False

    @property
    def target(self) -> int:
        """Tokens whose KV must exist before the next token can be sampled."""
        return self.prompt_tokens + self.generated

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prompt_tokens

    @property
    def held_blocks(self) -> int:
        return self.private + len(self.shared)


@dataclass
class _Planned:
    sequence: Sequence
    tokens: int


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        #: the speed factor in force (starts at config.speed; a running server may change it, see set_speed)
        self.speed = 1.0
        self.set_speed(config.speed)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        #: prefix cache: block hash → references by running requests; unreferenced blocks are evictable (LRU)
        self.refs: dict[int, int] = {}
        self.evictable: OrderedDict[int, None] = OrderedDict()
        self.private_blocks = 0
        self.shared_in_use = 0
        self.ids = itertools.count()
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.preemptions = 0
        #: requests scheduled for the first time by the last step() (their queue time ends there)
        self.first_scheduled: list[Sequence] = []
        self._plan: list[_Planned] = []

    # --- accounting ------------------------------------------------------------------------

    @property
    def used_blocks(self) -> int:
        """Blocks referenced by running requests (vLLM's kv_cache_usage_perc numerator)."""
        return self.private_blocks + self.shared_in_use

    @property
    def free_blocks(self) -> int:
        """Blocks not referenced by a running request (evictable cached blocks count as free)."""
        return self.config.num_gpu_blocks - self.used_blocks

    @property
    def kv_usage(self) -> float:
        return self.used_blocks / self.config.num_gpu_blocks

    def active_adapters(self) -> set[str]:
        return {s.adapter for s in self.running if s.adapter}

    def waiting_adapters(self) -> set[str]:
        return {s.adapter for s in self.waiting if s.adapter} - self.active_adapters()

    # --- requests ------------------------------------------------------------------------------

    def add(self, prompt: str, max_tokens: int, seed: str, adapter: str = "") -> Sequence:
        tokens = tokens_of(prompt)
        hashes = block_hashes(prompt, seed, self.config.block_size)
        sequence = Sequence(next(self.ids), tokens, max(1, max_tokens), hashes, adapter)
        self.waiting.append(sequence)
        return sequence

    def abort(self, sequence: Sequence) -> None:
        if sequence.is_running:
            self.running.remove(sequence)
            sequence.is_running = False
            self._release(sequence)
        elif not sequence.done and sequence in self.waiting:
            self.waiting.remove(sequence)
        sequence.done = True

    # --- KV blocks -------------------------------------------------------------------------------

    def _allocate(self, sequence: Sequence, tokens: int) -> bool:
        """Give `sequence` enough blocks to hold `tokens` tokens; False when the free pool is too small."""
        needed = math.ceil(tokens / self.config.block_size) - sequence.held_blocks
        if needed <= 0:
            return True
        if needed > self.free_blocks:
            return False
        sequence.private += needed
        self.private_blocks += needed
        self._evict_to_fit()
        return True

    def _evict_to_fit(self) -> None:
        limit = self.config.num_gpu_blocks - self.used_blocks
        while len(self.evictable) > limit:
            value, _ = self.evictable.popitem(last=False)
            del self.refs[value]

    def _reference(self, value: int) -> None:
        count = self.refs[value]
        if count == 0:
            del self.evictable[value]
            self.shared_in_use += 1
        self.refs[value] = count + 1

    def _publish(self, sequence: Sequence) -> None:
        """Full prompt blocks this request has computed join the prefix cache at once (vLLM caches a block as
        soon as it is full, so a concurrent request with the same prefix hits it)."""
        full = min(sequence.computed, sequence.prompt_tokens) // self.config.block_size
        while sequence.published < min(full, len(sequence.hashes)):
            value = sequence.hashes[sequence.published]
            sequence.published += 1
            if value in self.refs:
                continue  # computed twice concurrently: this copy stays private, as in vLLM
            self.refs[value] = 1
            self.shared_in_use += 1
            sequence.shared.append(value)
            sequence.private -= 1
            self.private_blocks -= 1

    def _release(self, sequence: Sequence) -> None:
        self.private_blocks -= sequence.private
        sequence.private = 0
        # vLLM frees a request's blocks tail first, so its tail blocks are the first to be evicted
        for value in reversed(sequence.shared):
            count = self.refs[value] - 1
            self.refs[value] = count
            if count == 0:
                self.shared_in_use -= 1
                self.evictable[value] = None
        sequence.shared = []
        sequence.published = 0
        self._evict_to_fit()

    def set_speed(self, factor: float) -> None:
        """From the next step on, every step lasts its roofline duration divided by `factor` (> 0)."""
        if not factor > 0 or factor == float("inf"):
            raise ValueError(f"speed factor must be a positive finite number, got {factor}")
        self.speed = factor

    # --- scheduling ------------------------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def step(self) -> float:
        """Schedule one iteration; returns its duration in model seconds (0.0 when nothing can run)."""
        budget = self.config.max_num_batched_tokens
        plan: list[_Planned] = []
        self.first_scheduled = []
        preempted = False
        index = 0
        while index < len(self.running) and budget > 0:
            sequence = self.running[index]
            tokens = min(sequence.target - sequence.computed, budget)
            while not self._allocate(sequence, sequence.computed + tokens):
                victim = self.running[-1]
                self._preempt(victim)
                preempted = True
                if victim is sequence:
                    break
            if not sequence.is_running:
                continue  # preempted itself: the loop index now points at the next request
            plan.append(_Planned(sequence, tokens))
            budget -= tokens
            index += 1
        if not preempted:
            budget = self._admit(plan, budget)
        self._plan = plan
        return self._duration(plan)

    def _admit(self, plan: list[_Planned], budget: int) -> int:
        config = self.config
        adapters = {p.sequence.adapter for p in plan if p.sequence.adapter}
        skipped: list[Sequence] = []
        while self.waiting and budget > 0 and len(self.running) < config.max_num_seqs:
            sequence = self.waiting.popleft()
            if sequence.adapter and sequence.adapter not in adapters and len(adapters) >= config.max_loras:
                skipped.append(sequence)  # would exceed max_loras this step: vLLM skips it and goes on
                continue
            hit_blocks = 0
            if sequence.computed == 0:
                for value in sequence.hashes:
                    if value not in self.refs:
                        break
                    hit_blocks += 1
                # at least one token is always computed, so the last token's block is never a hit
                hit_blocks = min(hit_blocks, (sequence.target - 1) // config.block_size)
            for value in sequence.hashes[:hit_blocks]:
                self._reference(value)
            sequence.shared = sequence.hashes[:hit_blocks]
            sequence.published = hit_blocks
            sequence.computed = hit_blocks * config.block_size
            tokens = min(sequence.target - sequence.computed, budget)
            if not self._allocate(sequence, sequence.computed + tokens):
                self._release(sequence)  # KV full: put the references back and wait
                sequence.computed = 0
                self.waiting.appendleft(sequence)
                break
            self.prefix_queries += sequence.target
            self.prefix_hits += sequence.computed
            if not sequence.admitted:
                sequence.admitted = True
                sequence.cached = sequence.computed
                self.first_scheduled.append(sequence)
            if sequence.adapter:
                adapters.add(sequence.adapter)
            self.running.append(sequence)
            sequence.is_running = True
            plan.append(_Planned(sequence, tokens))
            budget -= tokens
        self.waiting.extendleft(reversed(skipped))
        return budget

    def _preempt(self, victim: Sequence) -> None:
        """KV exhausted: the lowest-priority running request (the last admitted) goes back to the front of the
        queue and will recompute its prompt and output so far (its full blocks stay in the prefix cache)."""
        self.running.remove(victim)
        victim.is_running = False
        self._release(victim)
        victim.computed = 0
        self.waiting.appendleft(victim)
        self.preemptions += 1

    def _duration(self, plan: list[_Planned]) -> float:
        if not plan:
            return 0.0
        config = self.config
        tokens = pairs = attended = 0
        for item in plan:
            start, count = item.sequence.computed, item.tokens
            tokens += count
            pairs += count * start + count * (count + 1) // 2
            attended += start + count
        compute = config.compute_s_per_token * (tokens + config.attention_pair_ratio * pairs)
        memory = config.weights_read_s + config.kv_read_s_per_token * attended
        return max(compute, memory) / self.speed

    def finish_step(self) -> tuple[list[Sequence], list[Sequence]]:
        """Apply the scheduled iteration; returns (requests that produced a token, requests finished)."""
        produced: list[Sequence] = []
        finished: list[Sequence] = []
        for item in self._plan:
            sequence = item.sequence
            if not sequence.is_running:
                continue
            sequence.computed += item.tokens
            if sequence.published * self.config.block_size < sequence.prompt_tokens:
                self._publish(sequence)
            if sequence.computed < sequence.target:
                continue  # a prefill chunk that does not reach the end of the prompt samples nothing
            if sequence.generated == 0:
                self.prompt_tokens_total += sequence.prompt_tokens
            sequence.generated += 1
            self.generation_tokens_total += 1
            produced.append(sequence)
            if sequence.generated >= sequence.max_tokens:
                sequence.done = True
                sequence.is_running = False
                self.running.remove(sequence)
                self._release(sequence)
                finished.append(sequence)
        self._plan = []
        return produced, finished
