"""Parameters of the `metrics-data-source` and `core-metrics-extractor` plugins (config file, camelCase)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

ENGINE_LABEL_KEY = "inference.networking.k8s.io/engine-type"
_SELECTOR = re.compile(r"^\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(?:\{(.*)\})?\s*$")
_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"?([^",]*)"?\s*(?:,|$)')


@dataclass(frozen=True)
class MetricSpec:
    """`family{label="value",...}`: a PromQL instant selector with equality matchers only."""

    family: str
    labels: tuple[tuple[str, str], ...] = ()
    #: encoded forms, for the extractor's hot path
    family_bytes: bytes = field(init=False, repr=False, compare=False)
    label_bytes: tuple[tuple[bytes, bytes], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "family_bytes", self.family.encode())
        object.__setattr__(self, "label_bytes", tuple((k.encode(), v.encode()) for k, v in self.labels))

    @classmethod
    def parse(cls, text: str, path: str) -> MetricSpec:
        m = _SELECTOR.match(text)
        if m is None:
            raise ValueError(f'{path}: {text!r} is not a metric selector; expected family{{label="value",...}} or ""')
        labels: list[tuple[str, str]] = []
        body = (m.group(2) or "").strip()
        pos = 0
        while pos < len(body):
            lm = _MATCHER.match(body, pos)
            if lm is None or lm.end() == pos:
                raise ValueError(f'{path}: bad label matcher in {text!r}; only label="value" matchers are supported')
            labels.append((lm.group(1), lm.group(2)))
            pos = lm.end()
        return cls(m.group(1), tuple(labels))

    def __str__(self) -> str:
        if not self.labels:
            return self.family
        return self.family + "{" + ",".join(f'{k}="{v}"' for k, v in self.labels) + "}"


@dataclass(frozen=True)
class EngineConfig:
    """Where one engine exposes each field. None/empty disables a field. `kv_usage` lists fallbacks in order."""

    name: str
    queued: MetricSpec | None = None
    running: MetricSpec | None = None
    kv_usage: tuple[MetricSpec, ...] = ()
    lora: MetricSpec | None = None
    cache_info: MetricSpec | None = None
    cache_block_size_label: str = ""
    cache_num_blocks_label: str = ""
    cache_block_size: MetricSpec | None = None
    cache_num_blocks: MetricSpec | None = None

    def families(self) -> frozenset[str]:
        specs = [self.queued, self.running, *self.kv_usage, self.lora, self.cache_info]
        specs += [self.cache_block_size, self.cache_num_blocks]
        return frozenset(s.family for s in specs if s is not None)

    _KEYS = (
        "name",
        "queuedRequestsSpec",
        "runningRequestsSpec",
        "kvUsageSpec",
        "loraSpec",
        "cacheInfoSpec",
        "cacheBlockSizeLabelName",
        "cacheNumBlocksLabelName",
        "cacheBlockSizeSpec",
        "cacheNumBlocksSpec",
    )

    def describe(self) -> dict[str, str]:
        """As an engineConfigs entry (the kvUsageSpec is the first of the fallbacks)."""

        def text(spec: MetricSpec | None) -> str:
            return str(spec) if spec is not None else ""

        return {
            "name": self.name,
            "queuedRequestsSpec": text(self.queued),
            "runningRequestsSpec": text(self.running),
            "kvUsageSpec": text(self.kv_usage[0] if self.kv_usage else None),
            "loraSpec": text(self.lora),
            "cacheInfoSpec": text(self.cache_info),
            "cacheBlockSizeLabelName": self.cache_block_size_label,
            "cacheNumBlocksLabelName": self.cache_num_blocks_label,
            "cacheBlockSizeSpec": text(self.cache_block_size),
            "cacheNumBlocksSpec": text(self.cache_num_blocks),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str) -> EngineConfig:
        if not isinstance(d, Mapping):
            raise ValueError(f"{path}: expected a mapping with keys {', '.join(cls._KEYS)}")
        for key in d:
            if key not in cls._KEYS:
                raise ValueError(f"{path}.{key}: unknown key; valid keys are {', '.join(cls._KEYS)}")
        name = d.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{path}.name: required non-empty string (e.g. vllm, sglang, trtllm-serve)")

        def spec(key: str) -> MetricSpec | None:
            value = d.get(key, "")
            if value is None:
                return None
            if not isinstance(value, str):
                raise ValueError(f'{path}.{key}: expected a string selector like family{{label="value"}} or ""')
            return MetricSpec.parse(value, f"{path}.{key}") if value.strip() else None

        def label(key: str) -> str:
            value = d.get(key, "")
            if value is None:
                return ""
            if not isinstance(value, str):
                raise ValueError(f"{path}.{key}: expected a label name string")
            return value

        kv = spec("kvUsageSpec")
        return cls(
            name=name,
            queued=spec("queuedRequestsSpec"),
            running=spec("runningRequestsSpec"),
            kv_usage=(kv,) if kv is not None else (),
            lora=spec("loraSpec"),
            cache_info=spec("cacheInfoSpec"),
            cache_block_size_label=label("cacheBlockSizeLabelName"),
            cache_num_blocks_label=label("cacheNumBlocksLabelName"),
            cache_block_size=spec("cacheBlockSizeSpec"),
            cache_num_blocks=spec("cacheNumBlocksSpec"),
        )


def _s(text: str) -> MetricSpec:
    return MetricSpec.parse(text, "<builtin>")


BUILTIN_ENGINES: dict[str, EngineConfig] = {
    "vllm": EngineConfig(
        name="vllm",
        queued=_s("vllm:num_requests_waiting"),
        running=_s("vllm:num_requests_running"),
        kv_usage=(_s("vllm:kv_cache_usage_perc"), _s("vllm:gpu_cache_usage_perc")),
        lora=_s("vllm:lora_requests_info"),
        cache_info=_s("vllm:cache_config_info"),
        cache_block_size_label="block_size",
        cache_num_blocks_label="num_gpu_blocks",
    ),
    "sglang": EngineConfig(
        name="sglang",
        queued=_s("sglang:num_queue_reqs"),
        running=_s("sglang:num_running_reqs"),
        kv_usage=(_s("sglang:token_usage"),),
        cache_info=_s("sglang:cache_config_info"),
        cache_block_size_label="page_size",
        cache_num_blocks_label="num_pages",
    ),
    "trtllm-serve": EngineConfig(
        name="trtllm-serve",
        queued=_s("trtllm_num_requests_waiting"),
        running=_s("trtllm_num_requests_running"),
        kv_usage=(_s("trtllm_kv_cache_utilization"),),
        cache_block_size=_s("trtllm_kv_cache_tokens_per_block"),
        cache_num_blocks=_s("trtllm_kv_cache_max_blocks"),
    ),
    "triton-tensorrt-llm": EngineConfig(
        name="triton-tensorrt-llm",
        queued=_s('nv_trt_llm_request_metrics{request_type="waiting"}'),
        running=_s('nv_trt_llm_request_metrics{request_type="scheduled"}'),
        kv_usage=(_s('nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}'),),
        cache_block_size=_s('nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="tokens_per"}'),
        cache_num_blocks=_s('nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max"}'),
    ),
}


@dataclass(frozen=True)
class MetricsDataSourceParams:
    scheme: str = "http"
    path: str = "/metrics"
    insecure_skip_verify: bool = True

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, path: str) -> Self:
        d = d or {}
        if not isinstance(d, Mapping):
            raise ValueError(f"{path}: expected a mapping with keys scheme, path, insecureSkipVerify")
        valid = ("scheme", "path", "insecureSkipVerify")
        for key in d:
            if key not in valid:
                raise ValueError(f"{path}.{key}: unknown key; valid keys are {', '.join(valid)}")
        scheme = d.get("scheme", "http")
        if scheme not in ("http", "https"):
            raise ValueError(f"{path}.scheme: {scheme!r} is not valid; expected http or https")
        mpath = d.get("path", "/metrics")
        if not isinstance(mpath, str) or not mpath.startswith("/"):
            raise ValueError(f"{path}.path: {mpath!r} is not valid; expected an absolute URL path like /metrics")
        skip = d.get("insecureSkipVerify", True)
        if not isinstance(skip, bool):
            raise ValueError(f"{path}.insecureSkipVerify: {skip!r} is not valid; expected true or false")
        return cls(scheme=scheme, path=mpath, insecure_skip_verify=skip)


@dataclass(frozen=True)
class CoreMetricsExtractorParams:
    engine_label_key: str = ENGINE_LABEL_KEY
    default_engine: str = "vllm"
    engine_configs: Mapping[str, EngineConfig] = field(default_factory=lambda: dict(BUILTIN_ENGINES))

    def engine(self, labels: Mapping[str, str]) -> EngineConfig:
        name = labels.get(self.engine_label_key) or self.default_engine
        cfg = self.engine_configs.get(name)
        return cfg if cfg is not None else self.engine_configs[self.default_engine]

    def describe(self) -> dict[str, Any]:
        """As the parameters of the effective configuration (engines beyond the built-in ones listed)."""
        return {
            "engineLabelKey": self.engine_label_key,
            "defaultEngine": self.default_engine,
            "engineConfigs": [
                engine.describe() for name, engine in self.engine_configs.items() if BUILTIN_ENGINES.get(name) != engine
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, path: str) -> Self:
        d = d or {}
        if not isinstance(d, Mapping):
            raise ValueError(f"{path}: expected a mapping with keys engineLabelKey, defaultEngine, engineConfigs")
        valid = ("engineLabelKey", "defaultEngine", "engineConfigs")
        for key in d:
            if key not in valid:
                raise ValueError(f"{path}.{key}: unknown key; valid keys are {', '.join(valid)}")
        label_key = d.get("engineLabelKey", ENGINE_LABEL_KEY)
        if not isinstance(label_key, str) or not label_key:
            raise ValueError(f"{path}.engineLabelKey: expected a non-empty pod label key")
        engines: dict[str, EngineConfig] = dict(BUILTIN_ENGINES)
        raw = d.get("engineConfigs") or []
        if not isinstance(raw, list):
            raise ValueError(f"{path}.engineConfigs: expected a list of engine configs")
        seen: set[str] = set()
        for i, entry in enumerate(raw):
            cfg = EngineConfig.from_dict(entry, f"{path}.engineConfigs[{i}]")
            if cfg.name in seen:
                raise ValueError(f"{path}.engineConfigs[{i}].name: engine {cfg.name!r} is configured twice")
            seen.add(cfg.name)
            engines[cfg.name] = cfg
        default = d.get("defaultEngine", "vllm")
        if not isinstance(default, str) or default not in engines:
            raise ValueError(
                f"{path}.defaultEngine: {default!r} is not a known engine; valid: {', '.join(sorted(engines))}"
            )
        return cls(engine_label_key=label_key, default_engine=default, engine_configs=engines)
