"""The endpoint label of the request path's metrics: configured templates only, at most
``metrics.max_endpoints`` of them, ``other`` for the rest; never a raw path."""

from __future__ import annotations

import random
import uuid

import pytest
from prometheus_client import REGISTRY

from config.load import config_from_mapping
from diff.endpoints import EndpointMatcher
from graygate.errors import ConfigError
from proxy.metrics import PROXY_ADDED, observe_proxy_added, observe_upstream
from proxy.route_match import OTHER, UNMATCHED, RouteMatcher

BASE = {
    "run": "r1",
    "upstreams": {"primary": "http://127.0.0.1:8081", "canary": "http://127.0.0.1:8082"},
}


def _matcher(n: int) -> EndpointMatcher:
    return EndpointMatcher([f"GET /svc{i}/items/{{id}}" for i in range(n)])


def test_a_matched_request_gets_its_template() -> None:
    routes = RouteMatcher(EndpointMatcher(["GET /api/orders/{id}", "* /api/stock/{sku}"]), 50)
    order = routes.route("GET", "/api/orders/1042")
    assert (order.endpoint, order.template) == ("GET /api/orders/{id}", "/api/orders/{id}")
    # a * pattern takes the request's method, as the record's endpoint does
    assert routes.route("POST", "/api/stock/A-1").endpoint == "POST /api/stock/{sku}"
    assert routes.route("post", "/api/stock/A-1").endpoint == "POST /api/stock/{sku}"
    # ... a known method only: a client's made-up one is no label value
    made_up = routes.route("BREW", "/api/stock/A-1")
    assert (made_up.endpoint, made_up.template) == (OTHER, "/api/stock/{sku}")
    # a method-specific pattern does not match another method
    assert routes.route("DELETE", "/api/orders/1") is UNMATCHED


def test_an_unmatched_path_is_other_with_no_template() -> None:
    routes = RouteMatcher(EndpointMatcher(["GET /api/orders/{id}"]), 50)
    assert routes.route("GET", "/api/users/7") is UNMATCHED
    assert routes.route("GET", "/api/orders/7/items") is UNMATCHED
    assert UNMATCHED.endpoint == OTHER and UNMATCHED.template is None
    # without configured endpoints every request is other (the normalised path the record
    # falls back to is the client's to choose)
    assert RouteMatcher(EndpointMatcher([]), 50).route("GET", "/api/orders/7") is UNMATCHED


def test_at_the_bound_the_next_template_is_other() -> None:
    routes = RouteMatcher(_matcher(3), 2)
    assert routes.route("GET", "/svc0/items/1").endpoint == "GET /svc0/items/{id}"
    assert routes.route("GET", "/svc1/items/1").endpoint == "GET /svc1/items/{id}"
    assert routes.labelled == {"GET /svc0/items/{id}", "GET /svc1/items/{id}"}
    over = routes.route("GET", "/svc2/items/1")
    assert over.endpoint == OTHER
    assert over.template == "/svc2/items/{id}"  # the span still names its route
    # the templates given out keep their label, for any id
    assert routes.route("GET", "/svc0/items/999").endpoint == "GET /svc0/items/{id}"
    assert routes.route("GET", "/svc2/items/999").endpoint == OTHER
    assert len(routes.labelled) == 2


def test_one_endpoint_at_most() -> None:
    routes = RouteMatcher(_matcher(2), 1)
    assert routes.route("GET", "/svc1/items/1").endpoint == "GET /svc1/items/{id}"
    assert routes.route("GET", "/svc0/items/1").endpoint == OTHER


def test_max_endpoints_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RouteMatcher(_matcher(1), 0)


def test_ten_thousand_raw_paths_give_at_most_max_plus_one_label_values() -> None:
    """Through the real histogram: the label values of one role's series."""
    max_endpoints = 50
    routes = RouteMatcher(_matcher(80), max_endpoints)
    role = f"test-{uuid.uuid4().hex[:8]}"  # this test's series only
    rng = random.Random(13)
    raw_paths = set()
    for n in range(10_000):
        kind = n % 4
        if kind == 0:  # a template with an id that is also a fresh raw path
            path = f"/svc{rng.randrange(80)}/items/{uuid.uuid4().hex}"
        elif kind == 1:  # unmatched, id-like
            path = f"/api/{rng.randrange(10**9)}/{uuid.uuid4()}"
        elif kind == 2:  # unmatched words
            path = "/" + "/".join(uuid.uuid4().hex[:6] for _ in range(rng.randrange(1, 4)))
        else:  # a configured prefix with a raw tail
            path = f"/svc{rng.randrange(80)}/items/{n}/extra"
        raw_paths.add(path)
        route = routes.route("GET", path)
        observe_upstream(role, "serve", route.endpoint, 200, 0.001)
    assert len(raw_paths) == 10_000
    values = set()
    for metric in REGISTRY.collect():
        if metric.name != "graygate_upstream_latency_seconds":
            continue
        for sample in metric.samples:
            if sample.labels.get("role") == role and sample.name.endswith("_count"):
                values.add(sample.labels["endpoint"])
                assert sample.value > 0
    assert len(values) <= max_endpoints + 1
    assert len(values) == max_endpoints + 1  # 80 templates were asked for: the cap is reached
    assert OTHER in values
    assert not values & raw_paths
    templates = {f"GET /svc{i}/items/{{id}}" for i in range(80)}
    assert values <= templates | {OTHER}


def test_proxy_added_is_head_to_head_less_the_upstream() -> None:
    def total() -> tuple[float, float]:
        count = REGISTRY.get_sample_value("graygate_proxy_added_seconds_count") or 0.0
        return count, REGISTRY.get_sample_value("graygate_proxy_added_seconds_sum") or 0.0

    count, sum_ = total()
    observe_proxy_added(100.0, 100.5, 0.4375)  # started, head sent, upstream's time to head
    after_count, after_sum = total()
    assert after_count == count + 1
    assert after_sum - sum_ == pytest.approx(0.0625)
    observe_proxy_added(100.0, None, 0.1)  # no head went out: not observed
    observe_proxy_added(100.0, 100.2, None)  # no upstream head: not observed
    assert total()[0] == after_count
    observe_proxy_added(100.0, 100.1, 0.2)  # clock skew cannot make it negative
    assert total()[1] == pytest.approx(after_sum)
    # buckets fit sub-millisecond values
    assert min(PROXY_ADDED._upper_bounds) <= 0.0001  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", [1, 50, 1000])
def test_max_endpoints_within_bounds(value: int) -> None:
    cfg = config_from_mapping({**BASE, "metrics": {"max_endpoints": value}}, env={})
    assert cfg.metrics.max_endpoints == value


@pytest.mark.parametrize("value", [0, 1001, -1])
def test_max_endpoints_out_of_bounds_names_the_key(value: int) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping({**BASE, "metrics": {"max_endpoints": value}}, env={})
    assert "metrics.max_endpoints" in str(err.value)


def test_defaults_and_environment() -> None:
    cfg = config_from_mapping(BASE, env={})
    assert cfg.metrics.max_endpoints == 50 and cfg.log.access is False
    cfg = config_from_mapping(
        BASE, env={"GRAYGATE_METRICS_MAX_ENDPOINTS": "7", "GRAYGATE_LOG_ACCESS": "true"}
    )
    assert cfg.metrics.max_endpoints == 7 and cfg.log.access is True
