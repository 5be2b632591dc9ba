"""Every numeric configuration key has an upper bound (issue 10, small ones): accepted at
the bound, refused one past it with a ConfigError naming the key."""

from __future__ import annotations

import typing
from typing import Any

import pytest
from pydantic import BaseModel

from config.load import config_from_mapping
from config.schema import GraygateConfig
from graygate.errors import ConfigError

UPSTREAMS = {"primary": "http://127.0.0.1:1", "canary": "http://127.0.0.1:2"}

# (dotted key, the bound, a value just past it)
BOUNDS: list[tuple[str, float, float]] = [
    ("database.pool_size", 500, 501),
    ("upstreams.timeout_ms", 3_600_000, 3_600_001),
    ("upstreams.connect_timeout_ms", 600_000, 600_001),
    ("upstreams.max_connections", 65_536, 65_537),
    ("upstreams.max_head_bytes", 16_777_216, 16_777_217),
    ("upstreams.max_head_fields", 100_000, 100_001),
    ("mirror.sample", 1.0, 1.000001),
    ("mirror.max_body_bytes", 67_108_864, 67_108_865),
    ("mirror.timeout_ms", 600_000, 600_001),
    ("mirror.max_in_flight", 65_536, 65_537),
    ("mirror.eject.consecutive", 1_000, 1_001),
    ("mirror.eject.max_ms", 3_600_000, 3_600_001),
    ("shutdown.grace_s", 300.0, 300.001),
    ("workers.nice", 19, 20),
    ("compare.noise.relative", 100.0, 100.001),
    ("compare.noise.absolute", 1.0, 1.001),
    ("compare.max_body_bytes", 268_435_456, 268_435_457),
    ("compare.defaults.tolerance.$.total.abs", 1e15, 1.1e15),
    ("compare.defaults.tolerance.$.total.rel", 1e6, 1.1e6),
    ("redact.max_header_bytes", 1_048_576, 1_048_577),
    ("record.queue_size", 10_000_000, 10_000_001),
    ("record.batch_size", 100_000, 100_001),
    ("record.flush_interval_ms", 60_000, 60_001),
    ("record.max_body_bytes", 67_108_864, 67_108_865),
    ("record.spill_max_bytes", 1_099_511_627_776, 1_099_511_627_777),
    ("record.bodies.sample", 1.0, 1.000001),
    ("verdict.min_pairs", 100_000_000, 100_000_001),
    ("verdict.min_pairs_per_endpoint", 100_000_000, 100_000_001),
    ("verdict.max_strict_mismatch_rate", 1.0, 1.001),
    ("verdict.max_tolerance_violation_rate", 1.0, 1.001),
    ("verdict.max_error_rate_increase", 1.0, 1.001),
    ("verdict.max_unrecorded_rate", 1.0, 1.001),
    ("verdict.latency.max_increase", 100.0, 100.001),
    ("verdict.latency.min_samples", 1_000_000, 1_000_001),
    ("runtime.interval_s", 3_600.0, 3_600.001),
    ("runtime.window_s", 86_400.0, 86_400.001),
    ("runtime.gc_pause_budget_ms", 60_000.0, 60_000.001),
    ("runtime.failing_windows", 10_000, 10_001),
    ("runtime.max_goroutine_growth", 1_000.0, 1_000.001),
    ("runtime.max_heap_growth", 1_000.0, 1_000.001),
    ("runtime.max_gc_cpu_fraction", 1.0, 1.001),
    ("preflight.timeout_ms", 600_000, 600_001),
]


def _doc(key: str, value: float) -> dict[str, Any]:
    doc: dict[str, Any] = {"run": "r", "upstreams": dict(UPSTREAMS)}
    if key.startswith("compare.defaults.tolerance."):
        _, _, rest = key.partition("compare.defaults.tolerance.")
        path, _, leaf = rest.rpartition(".")
        doc["compare"] = {"defaults": {"tolerance": {path: {leaf: value}}}}
        return doc
    node = doc
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return doc


@pytest.mark.parametrize(("key", "bound", "past"), BOUNDS, ids=[b[0] for b in BOUNDS])
def test_at_the_bound_and_past_it(key: str, bound: float, past: float) -> None:
    config_from_mapping(_doc(key, bound), env={})
    with pytest.raises(ConfigError) as info:
        config_from_mapping(_doc(key, past), env={})
    tol = "compare.defaults.tolerance"
    shown = tol if key.startswith(tol) else key
    assert str(info.value).startswith(shown), str(info.value)


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    if model in seen:
        return
    seen.add(model)
    for field in model.model_fields.values():
        stack = [field.annotation]
        while stack:
            ann = stack.pop()
            stack.extend(typing.get_args(ann))
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                _models(ann, seen)


def test_every_numeric_key_has_an_upper_bound() -> None:
    # A new numeric key without le= (or lt=) fails here.
    seen: set[type[BaseModel]] = set()
    _models(GraygateConfig, seen)
    unbounded = []
    for model in seen:
        for name, field in model.model_fields.items():
            types = {field.annotation, *typing.get_args(field.annotation)}
            if not types & {int, float}:
                continue
            if not any(getattr(m, "le", None) is not None or getattr(m, "lt", None) is not None
                       for m in field.metadata):  # fmt: skip
                unbounded.append(f"{model.__name__}.{name}")
    assert unbounded == []
    assert len(seen) > 15  # the walk found the models


@pytest.mark.parametrize("value", [0, 0.0, -0.1, "half"])
def test_record_bodies_sample_is_above_zero(value: object) -> None:
    # 0 < sample <= 1: 0 would keep no body at all (say so with a digest-only run).
    with pytest.raises(ConfigError) as info:
        config_from_mapping(_doc("record.bodies.sample", value), env={})  # type: ignore[arg-type]
    assert str(info.value).startswith("record.bodies.sample"), str(info.value)
    assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_record_bodies_sample_smallest_and_environment() -> None:
    cfg = config_from_mapping(_doc("record.bodies.sample", 1e-9), env={})
    assert cfg.record.bodies.sample == 1e-9 and cfg.record.bodies.keep_differing is True
    cfg = config_from_mapping(_doc("record.bodies.sample", 1.0), env={
        "GRAYGATE_RECORD_BODIES_SAMPLE": "0.1",
    })  # fmt: skip
    assert cfg.record.bodies.sample == 0.1


@pytest.mark.parametrize("header", ["X-Build-Version", "x-version", "Build.Version_2", "a" * 256])
def test_versions_header_names(header: str) -> None:
    doc = {"run": "r", "upstreams": dict(UPSTREAMS), "versions": {"header": header}}
    assert config_from_mapping(doc, env={}).versions.header == header


@pytest.mark.parametrize("header", ["", "X Build", "X-Version:", "é", "a" * 257])
def test_versions_header_must_be_a_header_name(header: str) -> None:
    doc = {"run": "r", "upstreams": dict(UPSTREAMS), "versions": {"header": header}}
    with pytest.raises(ConfigError) as info:
        config_from_mapping(doc, env={})
    assert str(info.value).startswith("versions.header"), str(info.value)
    if header and len(header) <= 256:
        assert "not an HTTP header name" in str(info.value)


def _eject(**eject: object) -> dict[str, Any]:
    return {"run": "r", "upstreams": dict(UPSTREAMS), "mirror": {"eject": eject}}


def test_mirror_eject_bounds() -> None:
    # base_ms at its upper bound needs max_ms as high (max_ms >= base_ms); lower bounds.
    cfg = config_from_mapping(_eject(base_ms=3_600_000, max_ms=3_600_000), env={})
    assert cfg.mirror.eject.base_ms == cfg.mirror.eject.max_ms == 3_600_000
    cfg = config_from_mapping(_eject(consecutive=0, base_ms=10, max_ms=10), env={})
    assert (cfg.mirror.eject.consecutive, cfg.mirror.eject.base_ms) == (0, 10)
    for key, value, extra in [
        ("base_ms", 3_600_001, {"max_ms": 3_600_000}),
        ("base_ms", 9, {}),
        ("max_ms", 9, {}),
        ("consecutive", -1, {}),
    ]:
        with pytest.raises(ConfigError) as info:
            config_from_mapping(_eject(**{key: value}, **extra), env={})
        assert str(info.value).startswith(f"mirror.eject.{key}"), str(info.value)
    with pytest.raises(ConfigError) as info:
        config_from_mapping(_eject(base_ms=2_000, max_ms=1_000), env={})
    assert str(info.value).startswith("mirror.eject"), str(info.value)
    assert "max_ms (1000) is less than base_ms (2000)" in str(info.value)
