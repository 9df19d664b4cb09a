"""Property tests of the parsers of untrusted input (Hypothesis, bounded to a few seconds): the SSE usage scanner,
the metrics extractor against prometheus_client's parser, the config loader, the endpoints file and `epp migrate`
over mutated documents."""

from __future__ import annotations

import copy
import io
import math
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from epp.config.schema import ConfigError, load_config_text
from epp.datalayer.extract import extract
from epp.datalayer.params import BUILTIN_ENGINES, MetricSpec
from epp.discovery.static import EndpointSpecError, parse_endpoints_text
from epp.migrate.cli import main as migrate_main
from epp.migrate.cli import render_steps
from epp.migrate.convert import MigrationError, Options, plan_migration
from epp.migrate.manifests import ManifestError, load_text
from epp.requests.usage import usage_of
from fuzz.targets import scan_sse
from tests.support.extproc import split

ROOT = Path(__file__).resolve().parents[2]
BOUNDED = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SMALL_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
SCALARS = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | SMALL_TEXT
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(SMALL_TEXT | st.integers(0, 9), inner, max_size=3),
    max_leaves=8,
)

# --- SSE usage scanner ------------------------------------------------------------------------------------------

USAGE = st.fixed_dictionaries(
    {},
    optional={
        "prompt_tokens": st.integers(0, 10**6) | SCALARS,
        "completion_tokens": st.integers(0, 10**6),
        "input_tokens": st.integers(0, 10**6),
        "output_tokens": st.integers(0, 10**6),
        "total_tokens": st.integers(0, 10**6),
        "prompt_tokens_details": st.fixed_dictionaries({}, optional={"cached_tokens": st.integers(0, 99) | SCALARS}),
    },
)
DOCUMENT = st.fixed_dictionaries(
    {"object": st.sampled_from(["chat.completion.chunk", "text_completion", "response", "other", ""])},
    optional={"usage": USAGE | st.none(), "choices": st.lists(st.just({"text": "x\ny"}), max_size=2)},
)
EVENT = st.one_of(
    DOCUMENT.map(lambda doc: ("doc", doc)),
    st.builds(
        lambda usage: ("doc", {"type": "response.completed", "response": {"object": "response", "usage": usage}}), USAGE
    ),
    st.just(("raw", b"data: [DONE]")),
    st.just(("raw", b": keep-alive comment")),
    st.just(("raw", b"event: message")),
    st.just(("raw", b'data: {"usage": broken')),
)


def sse_stream(events: list[tuple[str, Any]], newline: bytes, final_newline: bool) -> bytes:
    lines = [b"data: " + orjson.dumps(item) if kind == "doc" else item for kind, item in events]
    text = (newline * 2).join(lines)
    return text + newline * 2 if final_newline else text


def first_usage(events: list[tuple[str, Any]]) -> Any:
    """What the scanner should report, read off the events themselves: the first one carrying a usage object."""
    for kind, item in events:
        if kind == "doc":
            found = usage_of(item)
            if found is not None:
                return found
    return None


@BOUNDED
@given(
    st.lists(EVENT, max_size=6),
    st.lists(st.integers(0, 2000), max_size=8),
    st.sampled_from([b"\n", b"\r\n"]),
    st.booleans(),
)
def test_sse_usage_is_the_first_usage_in_any_chunking(
    events: list[tuple[str, Any]], cuts: list[int], newline: bytes, final_newline: bool
) -> None:
    stream = sse_stream(events, newline, final_newline)
    whole = scan_sse([stream])
    assert whole == first_usage(events)
    assert scan_sse(split(stream, cuts)) == whole
    assert scan_sse([stream[i : i + 1] for i in range(len(stream))]) == whole


# --- metrics extractor against prometheus_client ------------------------------------------------------------------

LABEL_VALUE = st.text(st.sampled_from('ab1,.- "\\{}=\n'), max_size=6)
ADAPTERS = st.lists(st.sampled_from(["sql-lora", "chat", "a1", "b-2"]), max_size=3).map(",".join)
NUMBER = st.one_of(
    st.integers(0, 10**9).map(float),
    st.floats(0, 1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from([math.inf, -math.inf, 0.0, 1e-7, 1.5e10]),
)
VLLM = BUILTIN_ENGINES["vllm"]
TRITON = BUILTIN_ENGINES["triton-tensorrt-llm"]


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


@st.composite
def series(draw: st.DrawFn, family: str, label_names: list[str], special: dict[str, st.SearchStrategy[str]]) -> str:
    labels = draw(st.lists(st.sampled_from(label_names), unique=True, max_size=len(label_names)))
    text = ",".join(f'{name}="{escape(draw(special.get(name, LABEL_VALUE)))}"' for name in labels)
    value = render_value(draw(NUMBER))
    timestamp = draw(st.sampled_from(["", " 1712345678000"]))
    return f"{family}{{{text}}} {value}{timestamp}" if labels else f"{family} {value}{timestamp}"


@st.composite
def family_block(draw: st.DrawFn, family: str, labels: list[str], special: dict[str, st.SearchStrategy[str]]) -> str:
    lines = []
    if draw(st.booleans()):
        lines += [f"# HELP {family} Some help, with \\\\ and \\n escapes.", f"# TYPE {family} gauge"]
    lines += draw(st.lists(series(family, labels, special), min_size=1, max_size=3))
    return "\n".join(lines)


NUMERIC_LABEL = st.integers(0, 99999).map(str) | LABEL_VALUE
VLLM_FAMILIES = [
    ("vllm:num_requests_waiting", ["model_name", "engine"], {}),
    ("vllm:num_requests_waiting_total", ["model_name"], {}),  # shares a prefix with a wanted family
    ("vllm:num_requests_running", ["model_name"], {}),
    ("vllm:kv_cache_usage_perc", ["model_name"], {}),
    ("vllm:gpu_cache_usage_perc", ["model_name"], {}),
    (
        "vllm:lora_requests_info",
        ["running_lora_adapters", "waiting_lora_adapters", "max_lora"],
        {"running_lora_adapters": ADAPTERS, "waiting_lora_adapters": ADAPTERS, "max_lora": NUMERIC_LABEL},
    ),
    (
        "vllm:cache_config_info",
        ["block_size", "num_gpu_blocks", "x"],
        {"block_size": NUMERIC_LABEL, "num_gpu_blocks": NUMERIC_LABEL},
    ),
    ("other_metric", ["model_name"], {}),
]
TRITON_FAMILIES = [
    (
        "nv_trt_llm_request_metrics",
        ["request_type", "model"],
        {"request_type": st.sampled_from(["waiting", "scheduled", "context", "waiting\\", 'a"b'])},
    ),
    (
        "nv_trt_llm_kv_cache_block_metrics",
        ["kv_cache_block_type", "model"],
        {"kv_cache_block_type": st.sampled_from(["fraction", "tokens_per", "max", "used"])},
    ),
]


@st.composite
def page(draw: st.DrawFn, families: list[tuple[str, list[str], dict[str, st.SearchStrategy[str]]]]) -> str:
    chosen = draw(st.lists(st.sampled_from(families), unique_by=lambda f: f[0], max_size=len(families)))
    blocks = [draw(family_block(*family)) for family in draw(st.permutations(chosen))]
    return "\n".join(blocks) + "\n"


def samples_of(text: str, spec: MetricSpec) -> list[tuple[dict[str, str], float]]:
    """The series of `spec` (family and equality matchers) in page order, as prometheus_client reads them."""
    found = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == spec.family and all(sample.labels.get(k) == v for k, v in spec.labels):
                found.append((sample.labels, sample.value))
    return found


def first_value(text: str, spec: MetricSpec | None) -> float | None:
    found = samples_of(text, spec) if spec is not None else []
    return found[0][1] if found else None


def number_label(labels: dict[str, str], name: str) -> float | None:
    try:
        return float(labels[name]) if name in labels else None
    except ValueError:
        return None


def same(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and math.isnan(a) and math.isnan(b))


@BOUNDED
@given(page(VLLM_FAMILIES))
def test_vllm_values_are_prometheus_client_values(text: str) -> None:
    out = extract(text.encode(), VLLM, {})
    assert same(out.waiting, first_value(text, VLLM.queued))
    assert same(out.running, first_value(text, VLLM.running))
    kv = next((v for v in (first_value(text, spec) for spec in VLLM.kv_usage) if v is not None), None)
    assert same(out.kv_usage, kv)
    info = samples_of(text, VLLM.cache_info) if VLLM.cache_info else []
    if info:
        assert same(out.block_size, number_label(info[0][0], "block_size"))
        assert same(out.num_blocks, number_label(info[0][0], "num_gpu_blocks"))
    else:
        assert out.block_size is None and out.num_blocks is None
    lora = samples_of(text, VLLM.lora) if VLLM.lora else []
    if not lora:
        assert out.lora is None
    else:
        labels, _ = max(lora, key=lambda item: item[1])
        adapters = [
            frozenset(filter(None, labels.get(key, "").split(",")))
            for key in ("running_lora_adapters", "waiting_lora_adapters")
        ]
        assert out.lora is not None
        assert out.lora[:2] == tuple(adapters)
        assert same(out.lora[2], number_label(labels, "max_lora") or 0.0)


@BOUNDED
@given(page(TRITON_FAMILIES))
def test_labelled_selectors_read_prometheus_client_values(text: str) -> None:
    out = extract(text.encode(), TRITON, {})
    assert same(out.waiting, first_value(text, TRITON.queued))
    assert same(out.running, first_value(text, TRITON.running))
    assert same(out.kv_usage, first_value(text, TRITON.kv_usage[0]))
    assert same(out.block_size, first_value(text, TRITON.cache_block_size))
    assert same(out.num_blocks, first_value(text, TRITON.cache_num_blocks))


# --- documents mutated at a random place ------------------------------------------------------------------------


def places(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a YAML document (the root is the empty path)."""
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += places(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += places(value, (*path, index))
    return found


def mutated(draw: st.DrawFn, document: Any) -> Any:
    """`document` with one to three edits: a value replaced (by any YAML value), deleted, or duplicated."""
    document = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(places(document)))
        if not path:
            document = draw(VALUES)
            continue
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        operation = draw(st.sampled_from(["replace", "delete", "duplicate", "wrap"]))
        if operation == "replace":
            parent[last] = draw(VALUES)
        elif operation == "delete":
            del parent[last]
        elif operation == "duplicate" and isinstance(parent, list):
            parent.append(parent[last])
        else:
            parent[last] = [parent[last]]
    return document


def mutations(document: Any) -> st.SearchStrategy[Any]:
    return st.composite(lambda draw: mutated(draw, document))()


def dump(document: Any) -> str:
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


CONFIGS = {path.name: yaml.safe_load(path.read_text()) for path in sorted((ROOT / "config").glob("*.yaml"))}


def assert_config_or_errors_with_paths(text: str) -> None:
    try:
        load_config_text(text, "mutated.yaml")
    except ConfigError as error:
        assert error.errors
        for line in error.errors:
            assert line.startswith("mutated.yaml: ") and len(line) > len("mutated.yaml: ") + 3, line


@BOUNDED
@given(st.sampled_from(sorted(CONFIGS)), st.data())
def test_config_loader_on_mutated_configs_is_a_config_or_a_config_error_with_paths(
    name: str, data: st.DataObject
) -> None:
    assert_config_or_errors_with_paths(dump(data.draw(mutations(CONFIGS[name]))))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(CONFIGS)), st.integers(0, 2000), st.integers(0, 40), st.binary(max_size=6))
def test_config_loader_on_garbled_text_is_a_config_or_a_config_error(name: str, at: int, cut: int, junk: bytes) -> None:
    text = (ROOT / "config" / name).read_text()
    at %= len(text) + 1
    assert_config_or_errors_with_paths(text[:at] + junk.decode("latin-1") + text[at + cut :])


#: label text PyYAML writes and reads back unchanged (it folds some line breaks such as U+0085 into spaces)
LABEL_TEXT = st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]), max_size=12)
ENDPOINT = st.fixed_dictionaries(
    {
        "address": st.sampled_from(["10.0.0.1", "::1", "[::2]", "127.0.0.1"]) | SCALARS,
        "port": st.integers(-1, 70000) | SCALARS,
    },
    optional={"name": SCALARS, "labels": VALUES, "metricsPort": st.integers(0, 70000) | SCALARS, "extra": SCALARS},
)


@BOUNDED
@given(st.lists(ENDPOINT, max_size=4), st.booleans(), st.data())
def test_endpoints_file_is_endpoints_or_an_endpoint_spec_error(
    items: list[dict[str, Any]], as_mapping: bool, data: st.DataObject
) -> None:
    document: Any = {"endpoints": items} if as_mapping else items
    if data.draw(st.booleans()):
        document = data.draw(mutations(document))
    try:
        endpoints = parse_endpoints_text(dump(document), Path("endpoints.yaml"))
    except EndpointSpecError as error:
        assert str(error).startswith("endpoints.yaml") or str(error).startswith("--endpoints-file endpoints.yaml")
        return
    for endpoint in endpoints:
        assert 1 <= endpoint.port <= 65535 and endpoint.address
    assert len({endpoint.key for endpoint in endpoints}) == len(endpoints)


@BOUNDED
@given(
    st.lists(
        st.tuples(st.integers(1, 254), st.integers(1, 65535), st.dictionaries(LABEL_TEXT, LABEL_TEXT, max_size=2)),
        unique_by=lambda item: item[0],
        max_size=5,
    )
)
def test_valid_endpoints_files_read_back_exactly(items: list[tuple[int, int, dict[str, str]]]) -> None:
    document = {
        "endpoints": [{"address": f"10.1.0.{host}", "port": port, "labels": labels} for host, port, labels in items]
    }
    endpoints = parse_endpoints_text(dump(document), Path("endpoints.yaml"))
    assert [(e.address, e.port, e.labels) for e in endpoints] == [(f"10.1.0.{h}", p, lab) for h, p, lab in items]


MIGRATE_FIXTURES = [
    ROOT / "tests/fixtures/migrate/guide/preview-stack.yaml",
    ROOT / "tests/fixtures/migrate/canary/stack.yaml",
]
MIGRATE_DOCUMENTS = [list(yaml.safe_load_all(path.read_text())) for path in MIGRATE_FIXTURES]


@BOUNDED
@given(st.sampled_from(range(len(MIGRATE_DOCUMENTS))), st.data())
def test_migrate_on_mutated_manifests_converts_or_names_its_errors(index: int, data: st.DataObject) -> None:
    documents = data.draw(mutations(MIGRATE_DOCUMENTS[index]))
    documents = documents if isinstance(documents, list) else [documents]
    text = yaml.safe_dump_all(documents, sort_keys=False)
    try:
        manifests = load_text(text, "stack.yaml")
        plan = plan_migration(manifests, Options())
    except (ManifestError, MigrationError) as error:
        assert error.errors and all(line.startswith("stack.yaml") for line in error.errors), error.errors
        return
    for document in yaml.safe_load_all(render_steps(plan)):
        assert document is None or isinstance(document, dict)


@settings(max_examples=25, deadline=None)
@given(index=st.sampled_from(range(len(MIGRATE_DOCUMENTS))), data=st.data())
def test_epp_migrate_command_exits_0_1_or_2_on_mutated_manifests(
    index: int, data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    documents = data.draw(mutations(MIGRATE_DOCUMENTS[index]))
    documents = documents if isinstance(documents, list) else [documents]
    path = tmp_path_factory.mktemp("migrate") / "stack.yaml"
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    for argv in ([str(path)], ["--check", str(path)]):
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            status = migrate_main(argv)
        assert status in (0, 1, 2), err.getvalue()
        assert "Traceback" not in err.getvalue()
