"""The deployment kit (deploy/): every file parses, the Kubernetes objects carry what their
kinds require, the probes point at graygate's, the Dockerfile copies what exists, and the
configuration files validate against graygate's schema."""

from __future__ import annotations

import configparser
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.load import config_from_mapping

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
YAMLS = sorted(DEPLOY.rglob("*.yaml"))
JSONS = sorted(DEPLOY.rglob("*.json"))
METADATA_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in YAMLS for d in docs(p) if "kind" in d]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in objects() if d["kind"] == kind]


def test_the_kit_is_there() -> None:
    kinds = {d["kind"] for _, d in objects()}
    for kind in (
        "Deployment", "Service", "ConfigMap", "Secret", "ServiceMonitor", "AnalysisTemplate",
        "MetricTemplate", "Canary", "Kustomization",
    ):  # fmt: skip
        assert kind in kinds, kind
    assert (DEPLOY / "Dockerfile").is_file()
    assert (DEPLOY / "systemd" / "graygate.service").is_file()
    assert JSONS, "no Grafana dashboard"


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_parses(path: Path) -> None:
    assert docs(path), path


@pytest.mark.parametrize("path", JSONS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_json_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text()), dict)


def test_every_object_has_api_version_kind_and_a_valid_name() -> None:
    for path, obj in objects():
        assert obj.get("apiVersion"), path
        if obj["kind"] == "Kustomization":
            continue
        name = obj.get("metadata", {}).get("name", "")
        assert METADATA_NAME.match(name) and len(name) <= 63, (path, name)


def _containers(dep: dict[str, Any]) -> list[dict[str, Any]]:
    return list(dep["spec"]["template"]["spec"]["containers"])


def test_deployments_select_their_pods_and_name_their_containers() -> None:
    deps = by_kind("Deployment")
    assert len(deps) == 2
    for dep in deps:
        spec = dep["spec"]
        labels = spec["template"]["metadata"]["labels"]
        for key, value in spec["selector"]["matchLabels"].items():
            assert labels.get(key) == value, dep["metadata"]["name"]
        for c in _containers(dep):
            assert c["name"] and c["image"]
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            assert ports.get("admin") == 9090
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_proxy_deployment_is_probed_on_readyz_and_healthz() -> None:
    (proxy,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "graygate-proxy"]
    (c,) = _containers(proxy)
    assert c["args"][:3] == ["serve", "--role", "proxy"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    # Longer than the grace graygate serves on after SIGTERM.
    cfg = yaml.safe_load(by_kind("ConfigMap")[0]["data"]["graygate.yaml"])
    grace = cfg["shutdown"]["grace_s"]
    assert proxy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace + 15
    (admin,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "graygate-admin"]
    (ac,) = _containers(admin)
    assert ac["args"][:3] == ["serve", "--role", "worker,admin"]
    env = {e["name"]: e for e in ac["env"]}
    ref = env["GRAYGATE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    (secret,) = by_kind("Secret")
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]


def test_services_select_deployments_and_the_monitor_selects_services() -> None:
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in by_kind("Deployment")]
    services = by_kind("Service")
    for svc in services:
        sel = svc["spec"]["selector"]
        assert any(all(p.get(k) == v for k, v in sel.items()) for p in pods), sel
        for port in svc["spec"]["ports"]:
            assert isinstance(port["port"], int) and port["name"]
    (mon,) = by_kind("ServiceMonitor")
    sel = mon["spec"]["selector"]["matchLabels"]
    matched = [
        s for s in services if all(s["metadata"]["labels"].get(k) == v for k, v in sel.items())
    ]
    assert len(matched) == len(services)
    for ep in mon["spec"]["endpoints"]:
        assert ep["path"] == "/metrics"
        assert all(ep["port"] in {p["name"] for p in s["spec"]["ports"]} for s in matched)


def test_the_configuration_files_validate() -> None:
    (cm,) = by_kind("ConfigMap")
    config_from_mapping(yaml.safe_load(cm["data"]["graygate.yaml"]), env={})
    config_from_mapping(yaml.safe_load((DEPLOY / "graygate.yaml").read_text()), env={})
    listed = docs(DEPLOY / "kubernetes" / "kustomization.yaml")[0]["resources"]
    assert all((DEPLOY / "kubernetes" / r).is_file() for r in listed)


def test_the_argo_analysis_template_declares_its_args_and_secret() -> None:
    (tpl,) = by_kind("AnalysisTemplate")
    args = {a["name"]: a for a in tpl["spec"]["args"]}
    ref = args["graygate-token"]["valueFrom"]["secretKeyRef"]
    assert set(ref) == {"name", "key"}
    used = set()
    for metric in tpl["spec"]["metrics"]:
        assert metric["name"] and metric["provider"]["web"]["url"]
        assert metric["successCondition"] == 'result == "GO"'
        text = json.dumps(metric)
        used |= set(re.findall(r"\{\{args\.([\w-]+)\}\}", text))
        assert "/gate?always_200=true" in metric["provider"]["web"]["url"]
    assert used <= set(args), used - set(args)


def test_the_flagger_templates_point_at_the_gate_and_the_verdict_metric() -> None:
    (mt,) = by_kind("MetricTemplate")
    assert mt["spec"]["provider"]["type"] == "prometheus"
    assert "graygate_verdict{" in mt["spec"]["query"]
    (canary,) = by_kind("Canary")
    analysis = canary["spec"]["analysis"]
    assert analysis["metrics"][0]["templateRef"]["name"] == mt["metadata"]["name"]
    hook = analysis["webhooks"][0]
    assert hook["name"] and hook["url"].endswith("/gate")
    assert canary["spec"]["targetRef"]["kind"] == "Deployment"


def dockerfile_copies() -> list[str]:
    sources: list[str] = []
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            sources += [p for p in parts[1:-1] if not p.startswith("--")]
    return sources


def test_the_dockerfile_copies_files_that_exist_and_runs_as_non_root() -> None:
    sources = dockerfile_copies()
    assert "pyproject.toml" in sources
    for src in sources:
        assert (ROOT / src).exists(), src
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.count("FROM ") >= 2  # multi-stage
    assert re.search(r"^USER 10001", text, re.MULTILINE)
    assert 'ENTRYPOINT ["graygate"]' in text
    assert "rm -rf examples/canary" in text  # the Go canary stays out


def test_the_systemd_unit_runs_graygate_serve() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "systemd" / "graygate.service").read_text())
    assert unit["Service"]["ExecStart"].split()[1] == "serve"
    assert unit["Service"]["User"] == "graygate"
    assert unit["Service"]["KillSignal"] == "SIGTERM"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def dashboard_metric_names() -> set[str]:
    names: set[str] = set()
    for path in JSONS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                names |= set(re.findall(r"\bgraygate_[a-z_]+", target["expr"]))
    return names


def test_the_dashboard_covers_requests_mirror_recorder_and_verdict() -> None:
    names = dashboard_metric_names()
    for needed in (
        "graygate_upstream_requests_total",
        "graygate_mirror_outcomes_total",
        "graygate_record_queue_depth",
        "graygate_record_exchanges_dropped_total",
        "graygate_verdict",
    ):
        assert needed in names, needed
