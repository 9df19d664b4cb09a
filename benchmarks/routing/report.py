"""Summaries, the markdown table and the PNG plots of the routing benchmark."""

from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from loadgen import Result


def percentile(values: list[float], q: float) -> float:
    clean = sorted(v for v in values if not math.isnan(v))
    if not clean:
        return math.nan
    return clean[min(len(clean) - 1, round(q / 100 * (len(clean) - 1)))]


def summarise(
    results: list[Result], wall: float, scale: float, servers: list[dict[str, float]], ports: list[int]
) -> dict[str, Any]:
    """Latencies and rates in model time (wall-clock x time scale), as the simulated GPUs would see them."""
    ok = [r for r in results if r.ok]
    per_server = Counter(r.served_by for r in ok)
    loads = [per_server.get(str(p), 0) for p in ports]
    model_wall = wall * scale
    queries = sum(s.get("vllm:prefix_cache_queries", 0.0) for s in servers)
    hits = sum(s.get("vllm:prefix_cache_hits", 0.0) for s in servers)
    sends = sorted(r.sent for r in results if not math.isnan(r.sent))
    dues = sorted(r.due for r in results)
    lags = [r.sent - r.due for r in results if not r.waited_for_dependency and not math.isnan(r.sent)]
    mean_load = sum(loads) / len(loads) if loads else 0.0
    least = min(loads) if loads else 0
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "share_max_min": (max(loads) / least if least else math.inf) if loads and max(loads) else math.nan,
        "error_statuses": dict(Counter(str(r.status) for r in results if not r.ok)),
        "ttft_p50": percentile([r.ttft for r in ok], 50) * scale,
        "ttft_p90": percentile([r.ttft for r in ok], 90) * scale,
        "ttft_p99": percentile([r.ttft for r in ok], 99) * scale,
        "e2e_p50": percentile([r.e2e for r in ok], 50) * scale,
        "e2e_p90": percentile([r.e2e for r in ok], 90) * scale,
        "throughput_rps": len(ok) / model_wall if model_wall else 0.0,
        "output_tokens_per_s": sum(r.completion_tokens for r in ok) / model_wall if model_wall else 0.0,
        "prefix_hit_rate": hits / queries if queries else math.nan,
        "server_hit_rates": [
            s.get("vllm:prefix_cache_hits", 0.0) / s["vllm:prefix_cache_queries"]
            if s.get("vllm:prefix_cache_queries")
            else math.nan
            for s in servers
        ],
        "preemptions": sum(s.get("vllm:num_preemptions", 0.0) for s in servers),
        "per_server": loads,
        "spread": max(loads) / mean_load if mean_load else math.nan,
        "offered_rate": (len(dues) - 1) / dues[-1] / scale if len(dues) > 1 and dues[-1] else math.nan,
        "achieved_rate": (len(sends) - 1) / (sends[-1] - sends[0]) / scale if len(sends) > 1 else math.nan,
        "send_lag_p99_ms": percentile(lags, 99) * 1e3,
        "wall_s": wall,
        "ttft_all": [r.ttft * scale for r in ok],
    }


def engine_summary(engine: list[float], written: list[float]) -> dict[str, float]:
    """The servers' own TTFT percentiles (model time): to the engine's first token, and to its chunk written out;
    and how many requests the engines saw finish."""
    found = {f"engine_ttft_p{q}": percentile(engine, q) for q in (50, 90, 99)}
    found.update({f"server_ttft_p{q}": percentile(written, q) for q in (50, 90, 99)})
    found["engine_ttft_count"] = float(len(engine))
    return found


#: the histogram of |predicted - observed| / observed TTFT that epp may export (its median is "pred err p50")
PREDICTION_ERROR = "inference_extension_ttft_prediction_error"

HEADER = (
    "| config | offered → sent req/s | failed | TTFT p50 | TTFT p90 | TTFT p99 | engine / server TTFT p50 | "
    "engine / server TTFT p90 | e2e p50 | "
    "e2e p90 | out tok/s | prefix hit | share max/min | per server | pred err p50 |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"
)


def _seconds(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.2f} s" if value >= 1 else f"{value * 1e3:.0f} ms"


def _ratio(value: float) -> str:
    return "∞" if math.isinf(value) else "-" if math.isnan(value) else f"{value:.2f}"


def row(r: dict[str, Any]) -> str:
    pred = r.get("pred_err_p50")
    return (
        f"| {r['config']} | {r['offered_rate']:.1f} → {r['achieved_rate']:.1f} | {r['errors']}/{r['requests']} | "
        f"{_seconds(r['ttft_p50'])} | {_seconds(r['ttft_p90'])} | {_seconds(r['ttft_p99'])} | "
        f"{_seconds(r.get('engine_ttft_p50', math.nan))} / {_seconds(r.get('server_ttft_p50', math.nan))} | "
        f"{_seconds(r.get('engine_ttft_p90', math.nan))} / {_seconds(r.get('server_ttft_p90', math.nan))} | "
        f"{_seconds(r['e2e_p50'])} | {_seconds(r['e2e_p90'])} | {r['output_tokens_per_s']:.0f} | "
        f"{r['prefix_hit_rate']:.1%} | {_ratio(r['share_max_min'])} | {r['per_server']} | "
        f"{'' if pred is None or math.isnan(pred) else f'{pred:.1%}'} |"
    )


def verdict(rows: list[dict[str, Any]]) -> str:
    """One line per group: the best peer (lowest TTFT p90) against each epp config, as epp / peer ratios
    (TTFT p90 below 1 and out tok/s above 1 favour epp)."""
    peers = [r for r in rows if ":" in r["config"] and not math.isnan(r["ttft_p90"])]
    epps = [r for r in rows if ":" not in r["config"]]
    if not peers or not epps:
        return "\nverdict: needs a peer and an epp config in the group"
    best = min(peers, key=lambda r: r["ttft_p90"])
    engine_peers = [r.get("engine_ttft_p90", math.nan) for r in peers]
    engine_best = min((v for v in engine_peers if not math.isnan(v)), default=math.nan)
    parts = [
        f"{r['config']} TTFT p90 {r['ttft_p90'] / best['ttft_p90']:.2f}\u00d7, "
        f"out tok/s {r['output_tokens_per_s'] / max(best['output_tokens_per_s'], 1e-9):.2f}\u00d7"
        + (
            f", engine TTFT p90 {r['engine_ttft_p90'] / engine_best:.2f}\u00d7 the best peer's"
            if engine_best > 0 and not math.isnan(r.get("engine_ttft_p90", math.nan))
            else ""
        )
        for r in epps
    ]
    return (
        f"\nverdict (epp / best peer {best['config']}: TTFT p90 {_seconds(best['ttft_p90'])}, "
        f"{best['output_tokens_per_s']:.0f} out tok/s): " + "; ".join(parts)
    )


def group_key(r: dict[str, Any]) -> str:
    """workload · load · fleet · seed, as the markdown groups rows (older result files lack the last three)."""
    parts = [str(r["workload"])]
    if "load" in r:
        parts.append(f"{r['load']:g}x")
    if "fleet" in r:
        parts.append(str(r["fleet"]))
    if "seed" in r:
        parts.append(f"seed {r['seed']}")
    return " · ".join(parts)


def plot(rows: list[dict[str, Any]], out: Path, stamp: str) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib not installed: no plots (EPP_EXTRAS=test,bench source scripts/venv.sh "")', file=sys.stderr)
        return []
    paths = []
    for index, name in enumerate(dict.fromkeys(group_key(r) for r in rows)):
        subset = [r for r in rows if group_key(r) == name]
        figure, (cdf, bars, hits) = plt.subplots(1, 3, figsize=(15, 4.2))
        for r in subset:
            values = sorted(v for v in r["ttft_all"] if not math.isnan(v))
            if values:
                cdf.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=r["config"])
        cdf.set_xscale("log")
        cdf.set_xlabel("TTFT (s, model time)")
        cdf.set_ylabel("fraction of requests")
        cdf.set_title(f"{name}: TTFT CDF")
        cdf.grid(True, which="both", alpha=0.3)
        cdf.legend()
        width = 0.8 / max(len(subset), 1)
        for i, r in enumerate(subset):
            positions = [j + i * width for j in range(len(r["per_server"]))]
            bars.bar(positions, r["per_server"], width, label=r["config"])
            hits.bar(positions, [h * 100 for h in r["server_hit_rates"]], width, label=r["config"])
        centres = [j + width * (len(subset) - 1) / 2 for j in range(max(len(r["per_server"]) for r in subset))]
        for axis in (bars, hits):
            axis.set_xticks(centres, [str(j) for j in range(len(centres))])
        bars.set_xlabel("server")
        bars.set_ylabel("requests served")
        bars.set_title(f"{name}: load per server")
        bars.legend(fontsize="small", loc="lower right", framealpha=0.9)
        hits.set_xlabel("server")
        hits.set_ylabel("prefix-cache hit rate (%)")
        hits.set_title(f"{name}: servers' own hit rate")
        figure.tight_layout()
        path = out / f"routing-{subset[0]['workload']}-{index}-{stamp}.png"
        figure.savefig(path, dpi=80)
        plt.close(figure)
        paths.append(path)
    paths.append(_summary(rows, out, stamp, plt))
    return paths


def _summary(rows: list[dict[str, Any]], out: Path, stamp: str, plt: Any) -> Path:
    """TTFT p90 and output throughput of every configuration, one group of bars per workload."""
    workloads = list(dict.fromkeys(group_key(r) for r in rows))
    configs = list(dict.fromkeys(r["config"] for r in rows))
    by_key = {(group_key(r), r["config"]): r for r in rows}
    figure, (ttft, throughput) = plt.subplots(1, 2, figsize=(max(12, 1.6 * len(workloads)), 4.2))
    width = 0.8 / len(configs)
    for i, config in enumerate(configs):
        positions = [w + i * width for w in range(len(workloads))]
        found = [by_key.get((w, config)) for w in workloads]
        ttft.bar(positions, [r["ttft_p90"] if r else 0 for r in found], width, label=config)
        throughput.bar(positions, [r["output_tokens_per_s"] if r else 0 for r in found], width, label=config)
    centres = [w + width * (len(configs) - 1) / 2 for w in range(len(workloads))]
    for axis in (ttft, throughput):
        axis.set_xticks(centres, [w.replace(" · ", "\n") for w in workloads], fontsize="small")
        axis.legend()
    ttft.set_yscale("log")
    ttft.set_ylabel("TTFT p90 (s, model time)")
    ttft.set_title("TTFT p90 by workload and configuration")
    throughput.set_ylabel("output tokens/s (model time)")
    throughput.set_title("throughput")
    figure.tight_layout()
    path = out / f"routing-summary-{stamp}.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
