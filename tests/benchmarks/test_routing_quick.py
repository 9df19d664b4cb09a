"""The routing benchmark end to end, small: `run.py --quick` on 2 simulated servers with epp's `random` config
(behind real Envoy) and one peer router, one workload. Skipped, with the reason, when the peer's binary is
not installed (it comes with the bench extra: EPP_EXTRAS=test,bench source scripts/venv.sh "")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROUTING = Path(__file__).resolve().parents[2] / "benchmarks" / "routing"
sys.path.insert(0, str(ROUTING))

from peers import executable  # noqa: E402

PEER = "vllm-router:cache_aware"

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(90)
@pytest.mark.skipif(
    executable(PEER.split(":")[0]) is None,
    reason=f"{PEER.split(':')[0]} is not installed: it comes with the bench extra (EPP_EXTRAS=test,bench)",
)
def test_quick_run_has_a_row_per_config_and_no_failures(tmp_path: Path) -> None:
    command = [
        sys.executable, str(ROUTING / "run.py"), "--quick", "--servers", "2", "--workloads", "unique",
        "--configs", f"random,{PEER}", "--results-dir", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=80)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [result] = tmp_path.glob("routing-*.json")
    rows = json.loads(result.read_text())
    assert [r["config"] for r in rows] == ["random", PEER], done.stdout[-3000:]
    for r in rows:
        assert (r["workload"], r["seed"], r["servers"], r["load"]) == ("unique", 1, 2, 1.0)
        assert r["requests"] == 24 and r["errors"] == 0, r["error_statuses"]
        assert sum(r["per_server"]) == 24
        # the engines' own TTFT: every request observed, and a first token cannot reach the client before the engine
        assert r["engine_ttft_count"] == 24
        assert 0 < r["engine_ttft_p50"] <= r["server_ttft_p50"] <= r["ttft_p99"], r
    assert "verdict (epp / best peer vllm-router:cache_aware" in done.stdout
