from __future__ import annotations

import pytest

from epp.datalayer.extract import extract
from epp.datalayer.params import BUILTIN_ENGINES, CoreMetricsExtractorParams

from .conftest import fixture_page


@pytest.mark.parametrize(
    ("page", "engine", "want"),
    [
        ("vllm.txt", "vllm", (3.0, 12.0, 0.4321, 16.0, 27713.0)),
        ("sglang.txt", "sglang", (5.0, 7.0, 0.27, 1.0, 189432.0)),
        ("trtllm.txt", "trtllm-serve", (4.0, 9.0, 0.55, 32.0, 4096.0)),
        ("triton.txt", "triton-tensorrt-llm", (2.0, 6.0, 0.125, 64.0, 800.0)),
    ],
)
def test_builtin_engines(page: str, engine: str, want: tuple[float, ...]) -> None:
    ex = extract(fixture_page(page), BUILTIN_ENGINES[engine])
    assert (ex.waiting, ex.running, ex.kv_usage, ex.block_size, ex.num_blocks) == want


def test_full_size_vllm_page_and_lora_newest_by_value() -> None:
    page = fixture_page("vllm.txt")
    assert len(page) > 38_000
    ex = extract(page, BUILTIN_ENGINES["vllm"], {})
    # three series; the middle one has the greatest value (the newest), not the last or first
    assert ex.lora == (frozenset({"sql-lora", "tweet-lora"}), frozenset({"chat-lora"}), 4.0)


def test_hints_find_families_after_the_page_shifts() -> None:
    page = fixture_page("vllm.txt")
    hints: dict[bytes, int] = {}
    extract(page, BUILTIN_ENGINES["vllm"], hints)
    shifted = b"# padding\n" * 900 + page.replace(b"vllm:num_requests_waiting{", b'vllm:num_requests_waiting{x="1",')
    ex = extract(shifted, BUILTIN_ENGINES["vllm"], hints)
    assert (ex.waiting, ex.num_blocks) == (3.0, 27713.0)


def test_pre_0_11_vllm_kv_name() -> None:
    page = fixture_page("vllm.txt").replace(b"vllm:kv_cache_usage_perc", b"vllm:gpu_cache_usage_perc")
    assert extract(page, BUILTIN_ENGINES["vllm"]).kv_usage == 0.4321


def test_prefix_family_is_not_confused() -> None:
    page = (
        b'vllm:num_requests_waiting_by_reason{reason="capacity"} 9\n'
        b"vllm:num_requests_waiting 2\n"
        b"vllm:num_requests_running 1\n"
    )
    ex = extract(page, BUILTIN_ENGINES["vllm"])
    assert (ex.waiting, ex.running, ex.kv_usage, ex.lora) == (2.0, 1.0, None, None)


def test_missing_and_garbled_are_per_field() -> None:
    page = b'vllm:num_requests_waiting{a="b"} notanumber\nvllm:num_requests_running 4\n'
    ex = extract(page, BUILTIN_ENGINES["vllm"])
    assert ex.waiting is None and ex.running == 4.0 and ex.any()
    assert not extract(b"\x00\xff garbage {{{ \n\n", BUILTIN_ENGINES["vllm"]).any()
    assert not extract(b"", BUILTIN_ENGINES["vllm"]).any()


def test_engine_config_override_and_disable() -> None:
    params = CoreMetricsExtractorParams.from_dict(
        {
            "engineConfigs": [
                {
                    "name": "vllm",
                    "queuedRequestsSpec": 'vllm:num_requests_waiting_by_reason{reason="deferred"}',
                    "runningRequestsSpec": "",
                    "kvUsageSpec": "vllm:kv_cache_usage_perc",
                    "cacheInfoSpec": "vllm:cache_config_info",
                    "cacheBlockSizeLabelName": "block_size",
                }
            ]
        },
        "p",
    )
    ex = extract(fixture_page("vllm.txt"), params.engine({}))
    assert (ex.waiting, ex.running, ex.kv_usage, ex.block_size, ex.num_blocks, ex.lora) == (
        1.0,
        None,
        0.4321,
        16.0,
        None,
        None,
    )
