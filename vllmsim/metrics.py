"""The /metrics page with vLLM V1's names, types and labels (the families the EPP and dashboards read,
plus request histograms so the page has a realistic size)."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)


@dataclass
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def render(self, name: str, labels: str) -> list[str]:
        lines, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else repr(float(bound))
            lines.append(f'{name}_bucket{{{labels},le="{le}"}} {running}.0')
        lines.append(f"{name}_count{{{labels}}} {running}.0")
        lines.append(f"{name}_sum{{{labels}}} {self.total}")
        return lines


@dataclass
class RequestHistograms:
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    queue: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    prompt_tokens: Histogram = field(default_factory=lambda: Histogram(tuple(map(float, TOKEN_BUCKETS))))
    generation_tokens: Histogram = field(default_factory=lambda: Histogram(tuple(map(float, TOKEN_BUCKETS))))
    success: int = 0


def render(
    model: str,
    waiting: int,
    running: int,
    kv_usage: float,
    block_size: int,
    num_gpu_blocks: int,
    prefix_queries: int,
    prefix_hits: int,
    prompt_tokens: int,
    generation_tokens: int,
    preemptions: int,
    histograms: RequestHistograms,
    lora: tuple[int, list[str], list[str], float] | None,
) -> str:
    labels = f'engine="0",model_name="{model}"'
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{labels}}} {float(running)}",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{labels}}} {float(waiting)}",
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f"vllm:kv_cache_usage_perc{{{labels}}} {kv_usage}",
        "# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.",
        "# TYPE vllm:prefix_cache_queries_total counter",
        f"vllm:prefix_cache_queries_total{{{labels}}} {float(prefix_queries)}",
        "# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.",
        "# TYPE vllm:prefix_cache_hits_total counter",
        f"vllm:prefix_cache_hits_total{{{labels}}} {float(prefix_hits)}",
        "# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.",
        "# TYPE vllm:num_preemptions_total counter",
        f"vllm:num_preemptions_total{{{labels}}} {float(preemptions)}",
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{{{labels}}} {float(prompt_tokens)}",
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{{{labels}}} {float(generation_tokens)}",
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
        f'vllm:request_success_total{{{labels},finished_reason="length"}} {float(histograms.success)}',
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
        "# TYPE vllm:cache_config_info gauge",
        f'vllm:cache_config_info{{block_size="{block_size}",cache_dtype="auto",enable_prefix_caching="True",'
        f'engine="0",gpu_memory_utilization="0.9",num_cpu_blocks="0",num_gpu_blocks="{num_gpu_blocks}",'
        f'prefix_caching_hash_algo="sha256"}} 1.0',
    ]
    for name, histogram, help_text in (
        ("vllm:time_to_first_token_seconds", histograms.ttft, "Histogram of time to first token in seconds."),
        ("vllm:e2e_request_latency_seconds", histograms.e2e, "Histogram of e2e request latency in seconds."),
        ("vllm:request_queue_time_seconds", histograms.queue, "Histogram of time spent in WAITING phase."),
        ("vllm:request_prompt_tokens", histograms.prompt_tokens, "Number of prefill tokens processed."),
        ("vllm:request_generation_tokens", histograms.generation_tokens, "Number of generation tokens processed."),
    ):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram", *histogram.render(name, labels)]
    if lora is not None:
        max_lora, running_adapters, waiting_adapters, stamp = lora
        lines += [
            "# HELP vllm:lora_requests_info Running stats on lora requests.",
            "# TYPE vllm:lora_requests_info gauge",
            f'vllm:lora_requests_info{{max_lora="{max_lora}",running_lora_adapters="{",".join(running_adapters)}",'
            f'waiting_lora_adapters="{",".join(waiting_adapters)}"}} {stamp}',
        ]
    return "\n".join(lines) + "\n"
