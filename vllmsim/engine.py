"""A model of vLLM's V1 engine: continuous batching, chunked prefill, paged KV cache with prefix caching.

Pure and clock-free: `step()` plans one engine iteration and returns its duration in model seconds; the
server sleeps that long (divided by the time scale) and then calls `finish_step()`. See README.md for the
equations and where the default numbers come from.
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
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    num_gpu_blocks: int = 26_700
    block_size: int = 16
    max_loras: int = 0
    #: step time = step_base + prefill tokens x prefill_per_token + decode seqs x decode_per_seq (seconds)
    step_base: float = 0.0048
    prefill_per_token: float = 1 / 16_000
    decode_per_seq: float = 0.00003


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
    computed: int = 0  # prompt tokens whose KV exists (cache hits + prefilled)
    cached: int = 0  # prompt tokens served from the prefix cache
    generated: int = 0
    blocks: int = 0  # blocks this sequence holds beyond its shared prefix blocks
    shared: list[int] = field(default_factory=list)  # prefix-cache block hashes it references
    first_token_step: bool = False
    done: bool = False

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prompt_tokens


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        #: prefix-cache blocks: hash → references by running sequences; unreferenced ones are evictable (LRU)
        self.refs: dict[int, int] = {}
        self.evictable: OrderedDict[int, None] = OrderedDict()
        self.private_blocks = 0
        self.ids = itertools.count()
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.preemptions = 0
        self._plan: list[tuple[Sequence, int]] = []

    # --- accounting ------------------------------------------------------------------------

    @property
    def used_blocks(self) -> int:
        return self.private_blocks + sum(1 for count in self.refs.values() if count > 0)

    @property
    def free_blocks(self) -> int:
        """Blocks not referenced by a running sequence (evictable cached blocks count as free)."""
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
        if sequence in self.running:
            self.running.remove(sequence)
            self._release(sequence)
        elif sequence in self.waiting:
            self.waiting.remove(sequence)
        sequence.done = True

    def _needed_blocks(self, tokens: int) -> int:
        return math.ceil(tokens / self.config.block_size)

    def _admit(self) -> None:
        config = self.config
        while self.waiting and len(self.running) < config.max_num_seqs:
            sequence = self.waiting[0]
            active = self.active_adapters()
            if sequence.adapter and sequence.adapter not in active and len(active) >= config.max_loras:
                break
            hit_blocks = 0
            for value in sequence.hashes:
                if value in self.refs:
                    hit_blocks += 1
                else:
                    break
            hit_blocks = min(hit_blocks, (sequence.prompt_tokens - 1) // config.block_size)
            new_private = self._needed_blocks(sequence.prompt_tokens + 1) - hit_blocks
            reclaimable = self.free_blocks - sum(1 for h in sequence.hashes[:hit_blocks] if self.refs.get(h) == 0)
            if new_private > reclaimable:
                break  # KV cache full: wait for running requests to finish
            self.waiting.popleft()
            self.prefix_queries += sequence.prompt_tokens
            self.prefix_hits += hit_blocks * config.block_size
            sequence.cached = sequence.computed = hit_blocks * config.block_size
            sequence.shared = sequence.hashes[:hit_blocks]
            for value in sequence.shared:
                self.refs[value] += 1
                self.evictable.pop(value, None)
            sequence.blocks = new_private
            self.private_blocks += new_private
            self._evict_to_fit()
            self.running.append(sequence)

    def _evict_to_fit(self) -> None:
        while self.used_blocks + len(self.evictable) > self.config.num_gpu_blocks and self.evictable:
            value, _ = self.evictable.popitem(last=False)
            del self.refs[value]

    def _release(self, sequence: Sequence) -> None:
        self.private_blocks -= sequence.blocks
        sequence.blocks = 0
        for value in sequence.shared:
            self.refs[value] -= 1
            if self.refs[value] == 0:
                self.evictable[value] = None
        sequence.shared = []
        # Full prompt blocks computed by this sequence join the cache (evictable once unreferenced).
        full = min(sequence.computed, sequence.prompt_tokens) // self.config.block_size
        for value in sequence.hashes[:full]:
            if value not in self.refs:
                self.refs[value] = 0
                self.evictable[value] = None
            elif self.refs[value] == 0:
                self.evictable.move_to_end(value)
        self._evict_to_fit()

    # --- stepping ------------------------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def step(self) -> float:
        """Plan one iteration; returns its duration in model seconds (0.0 when idle)."""
        self._admit()
        budget = self.config.max_num_batched_tokens
        plan: list[tuple[Sequence, int]] = []
        decodes = 0
        for sequence in self.running:
            if not sequence.prefilling and budget > 0:
                plan.append((sequence, 1))
                budget -= 1
                decodes += 1
        prefill = 0
        for sequence in self.running:
            if sequence.prefilling and budget > 0:
                chunk = min(sequence.prompt_tokens - sequence.computed, budget)
                plan.append((sequence, chunk))
                budget -= chunk
                prefill += chunk
        self._plan = plan
        if not plan:
            return 0.0
        config = self.config
        return config.step_base + prefill * config.prefill_per_token + decodes * config.decode_per_seq

    def finish_step(self) -> tuple[list[Sequence], list[Sequence]]:
        """Apply the planned iteration; returns (sequences that produced a token, sequences finished)."""
        produced: list[Sequence] = []
        finished: list[Sequence] = []
        for sequence, tokens in self._plan:
            if sequence.done or sequence not in self.running:
                continue
            if sequence.prefilling:
                sequence.computed += tokens
                self.prompt_tokens_total += tokens
                if sequence.prefilling:
                    continue
            # a decode step (or the last prefill chunk, which yields the first token)
            sequence.generated += 1
            self.generation_tokens_total += 1
            produced.append(sequence)
            total = sequence.prompt_tokens + sequence.generated
            if self._needed_blocks(total + 1) > sequence.blocks + len(sequence.shared):
                if self.free_blocks <= 0:
                    self._preempt_latest(exclude=sequence)
                sequence.blocks += 1
                self.private_blocks += 1
                self._evict_to_fit()
            if sequence.generated >= sequence.max_tokens:
                sequence.done = True
                self.running.remove(sequence)
                self._release(sequence)
                finished.append(sequence)
        self._plan = []
        return produced, finished

    def _preempt_latest(self, exclude: Sequence) -> None:
        """KV exhausted while decoding: send the newest running request back to waiting (recompute)."""
        for victim in reversed(self.running):
            if victim is not exclude:
                self.running.remove(victim)
                self._release(victim)
                victim.computed = victim.cached = 0
                self.waiting.appendleft(victim)
                self.preemptions += 1
                return
