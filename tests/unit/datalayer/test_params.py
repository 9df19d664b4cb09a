from __future__ import annotations

import pytest

from epp.datalayer.params import (
    BUILTIN_ENGINES,
    CoreMetricsExtractorParams,
    MetricsDataSourceParams,
    MetricSpec,
)


def test_source_defaults_and_camel_case() -> None:
    assert MetricsDataSourceParams.from_dict({}, "p") == MetricsDataSourceParams("http", "/metrics", True)
    got = MetricsDataSourceParams.from_dict(
        {"scheme": "https", "path": "/prometheus/metrics", "insecureSkipVerify": False}, "p"
    )
    assert got == MetricsDataSourceParams("https", "/prometheus/metrics", False)


@pytest.mark.parametrize(
    ("d", "needle"),
    [
        ({"scheme": "ftp"}, "plugins[1].parameters.scheme"),
        ({"path": "metrics"}, "plugins[1].parameters.path"),
        ({"insecureSkipVerify": "yes"}, "plugins[1].parameters.insecureSkipVerify"),
        ({"bogus": 1}, "plugins[1].parameters.bogus"),
    ],
)
def test_source_errors_name_the_path(d: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        MetricsDataSourceParams.from_dict(d, "plugins[1].parameters")


def test_extractor_defaults_are_the_builtins() -> None:
    p = CoreMetricsExtractorParams.from_dict({}, "p")
    assert p.engine_label_key == "inference.networking.k8s.io/engine-type"
    assert p.default_engine == "vllm"
    assert set(p.engine_configs) == {"vllm", "sglang", "trtllm-serve", "triton-tensorrt-llm"}
    assert p.engine({}).name == "vllm"
    assert p.engine({"inference.networking.k8s.io/engine-type": "sglang"}).name == "sglang"
    assert p.engine({"inference.networking.k8s.io/engine-type": "unknown"}).name == "vllm"


def test_builtin_name_fully_replaces_defaults_and_empty_disables() -> None:
    p = CoreMetricsExtractorParams.from_dict(
        {
            "engineLabelKey": "llm-d.ai/engine-type",
            "defaultEngine": "mine",
            "engineConfigs": [
                {"name": "vllm", "queuedRequestsSpec": 'q{a="b"}', "kvUsageSpec": ""},
                {"name": "mine", "runningRequestsSpec": "r"},
            ],
        },
        "p",
    )
    vllm = p.engine_configs["vllm"]
    assert vllm.queued == MetricSpec("q", (("a", "b"),))
    assert vllm.running is None and vllm.kv_usage == () and vllm.lora is None  # not inherited
    assert p.engine({}).name == "mine"
    assert p.engine({"llm-d.ai/engine-type": "vllm"}) is vllm
    assert p.engine_configs["sglang"] == BUILTIN_ENGINES["sglang"]


@pytest.mark.parametrize(
    ("d", "needle"),
    [
        ({"engineConfigs": [{"name": "vllm", "kvUsageSpec": 'x{a!="b"}'}]}, r"engineConfigs\[0\]\.kvUsageSpec"),
        ({"engineConfigs": [{"name": "vllm", "kvUsageSpec": "9bad"}]}, r"engineConfigs\[0\]\.kvUsageSpec"),
        ({"engineConfigs": [{"kvUsageSpec": "x"}]}, r"engineConfigs\[0\]\.name"),
        ({"engineConfigs": [{"name": "a"}, {"name": "a"}]}, r"engineConfigs\[1\]\.name"),
        ({"engineConfigs": [{"name": "a", "loraSpecc": "x"}]}, r"engineConfigs\[0\]\.loraSpecc.*loraSpec"),
        ({"defaultEngine": "nope"}, r"defaultEngine.*sglang"),
        ({"engineConfigs": {"name": "a"}}, r"engineConfigs: expected a list"),
    ],
)
def test_extractor_errors_name_the_path(d: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=r"plugins\[3\]\.parameters\." + needle):
        CoreMetricsExtractorParams.from_dict(d, "plugins[3].parameters")


def test_selector_parsing() -> None:
    spec = MetricSpec.parse('nv_trt_llm_request_metrics{request_type="waiting", model = "m"}', "p")
    assert spec == MetricSpec("nv_trt_llm_request_metrics", (("request_type", "waiting"), ("model", "m")))
    assert str(spec) == 'nv_trt_llm_request_metrics{request_type="waiting",model="m"}'
    assert MetricSpec.parse("vllm:num_requests_waiting", "p").labels == ()
