from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from epp.observability.families import FamiliesCollector, Family
from tests.support.extproc import body_msg, headers_msg, make_table, response_body_msg, response_headers_msg


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_histogram_buckets_are_cumulative_with_le_semantics() -> None:
    registry = CollectorRegistry()
    family = Family("histogram", "h_seconds", "doc", ["a"], [1, 2, 5])
    registry.register(FamiliesCollector([family]))
    child = family.distribution("x")
    for value in (0.5, 1, 1.5, 2, 7):
        child.observe(value)
    got = samples(registry)
    assert got[("h_seconds_bucket", (("a", "x"), ("le", "1.0")))] == 2
    assert got[("h_seconds_bucket", (("a", "x"), ("le", "2.0")))] == 4
    assert got[("h_seconds_bucket", (("a", "x"), ("le", "5.0")))] == 4
    assert got[("h_seconds_bucket", (("a", "x"), ("le", "+Inf")))] == 5
    assert got[("h_seconds_count", (("a", "x"),))] == 5
    assert got[("h_seconds_sum", (("a", "x"),))] == 12.0


def test_request_metrics_use_reference_names_and_labels() -> None:
    from epp.director import Director
    from epp.extproc.core import ExtProcStream
    from epp.observability.metrics import RequestMetrics
    from epp.requests.parsers import openai_parser
    from tests.support.least_queue import LeastQueueScheduler

    registry = CollectorRegistry()
    metrics = RequestMetrics(registry)
    stream = ExtProcStream(Director(make_table("10.0.0.1:8000"), LeastQueueScheduler()), openai_parser, metrics)
    stream.process(headers_msg({"x-gateway-model-name-rewrite": "m2"}))
    stream.process(body_msg(b'{"model":"m","prompt":"hi"}'))
    stream.process(response_headers_msg("application/json"))
    stream.process(response_body_msg(b'{"usage":{"prompt_tokens":3,"completion_tokens":4}}', end_of_stream=True))
    bad = ExtProcStream(Director(make_table("10.0.0.1:8000"), LeastQueueScheduler()), openai_parser, metrics)
    bad.process(headers_msg())
    bad.process(body_msg(b"{}"))
    got = samples(registry)
    labels = (("model_name", "m"), ("target_model_name", "m2"))
    assert got[("inference_objective_request_total", tuple(sorted((*labels, ("priority", "0")))))] == 1
    assert got[("inference_objective_running_requests", (("model_name", "m"),))] == 0
    assert got[("inference_objective_input_tokens_sum", labels)] == 3
    assert got[("inference_objective_output_tokens_count", labels)] == 1
    assert got[("inference_objective_request_duration_seconds_count", labels)] == 1
    error = (("error_code", "BadRequest"), ("model_name", ""), ("target_model_name", ""))
    assert got[("inference_objective_request_error_total", error)] == 1
