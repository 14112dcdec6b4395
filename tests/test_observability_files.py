"""deploy/observability/: the Prometheus scrape config and the Grafana dashboard hold together
(reads files, imports the services' metrics modules; no network).

The scrape config names a job for every service, on distinct ports, and finds the replicas
through a route the control plane really serves; every metric the dashboard's PromQL reads is
one some service really exports (read from the prometheus_client registry after importing
every module that defines metrics), and the JSON has what Grafana's dashboard schema requires.
`promtool check config` runs too where promtool is installed (it is not a Python package).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "deploy" / "observability"
PROMETHEUS = HERE / "prometheus.yml"
DASHBOARD = HERE / "basalt-dashboard.json"
JOBS = {"basalt-router", "basalt-mcm", "basalt-autoscaler", "basalt-coldstart",
        "basalt-runtime"}
# Every module that defines Prometheus metrics (grep Counter( / Gauge( / Histogram( ).
METRICS_MODULES = ("services.router.metrics", "services.runtime.metrics",
                   "services.autoscaler.main", "services.coldstart.main")
# Series Prometheus makes itself for each target.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",), "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "offset", "le", "inf", "nan"}


def exported_series() -> set[str]:
    """Every series name the services can expose: each metric family's samples by type."""
    import importlib

    from prometheus_client import REGISTRY

    for name in METRICS_MODULES:
        importlib.import_module(name)
    names: set[str] = set()
    for family in REGISTRY.collect():
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
        names.update(s.name for s in family.samples)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers left once strings, label
    matchers, ranges, groupings, Grafana variables and function calls are taken out."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\$\{?\w+\}?", "", e)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:ms|[smhdwy])?\b", "", e)  # numbers, offsets
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    found = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue  # a function or aggregation, or a keyword
        found.add(word)
    return found


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _exprs(dash: dict[str, Any]) -> list[str]:
    out = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query))
    return out


def test_metric_names_are_read_off_promql() -> None:
    assert metric_names('histogram_quantile(0.9, sum by (le, deployment) (rate('
                        'basalt:x_bucket{deployment=~"$deployment"}[$__rate_interval])))') == {
        "basalt:x_bucket"}
    assert metric_names('a_total{o!="ok"} / on(job) b offset 5m') == {"a_total", "b"}


def test_prometheus_scrapes_every_service_and_finds_replicas_through_the_mcm() -> None:
    doc = yaml.safe_load(PROMETHEUS.read_text())
    assert re.fullmatch(r"\d+[smh]", doc["global"]["scrape_interval"])
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    assert len(jobs) == len(doc["scrape_configs"]), "job names are unique"
    assert set(jobs) == JOBS
    ports = []
    for name, job in jobs.items():
        if name == "basalt-runtime":
            continue
        [static] = job["static_configs"]
        for target in static["targets"]:
            host, _, port = target.rpartition(":")
            assert host and 1024 <= int(port) <= 65535, target
            ports.append(int(port))
    assert len(ports) == len(set(ports)), "each service its own metrics port"
    [sd] = jobs["basalt-runtime"]["http_sd_configs"]
    assert sd["authorization"]["type"] == "Bearer" and sd["authorization"]["credentials_file"]
    path = "/" + sd["url"].split("//", 1)[1].split("/", 1)[1]
    assert path in _mcm_routes(), f"the control plane serves {path}"


def _mcm_routes() -> set[str]:
    from services.mcm.api import create_app
    from services.mcm.dashboard import Traffic, install
    from services.mcm.store import Store

    app = create_app(Store(None, None), nc=None)  # type: ignore[arg-type]
    install(app, Traffic(None), None)  # type: ignore[arg-type]
    return {getattr(r, "path", "") for r in app.routes}


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="needs promtool, Prometheus' own checker (Debian's `prometheus` "
                           "package, 96 MB, not on PyPI: make test does not install it); the "
                           "file's structure and every query's metrics are checked above")
def test_promtool_accepts_the_scrape_config_and_every_query(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("bsk_000000000000.x\n")
    config = tmp_path / "prometheus.yml"
    config.write_text(PROMETHEUS.read_text().replace("/etc/prometheus/basalt-management-key",
                                                     str(key)))
    done = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    # Every dashboard query parses as PromQL: each one a recording rule, Grafana's variables
    # given values.
    rules = [{"record": f"basalt:dashboard_query_{i}",
              "expr": e.replace("$__rate_interval", "1m").replace("$deployment", ".*")}
             for i, e in enumerate(_exprs(_dashboard()))]
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(["promtool", "check", "rules", str(rules_file)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_metric_the_dashboard_reads_is_exported() -> None:
    exported = exported_series() | SYNTHETIC
    read: set[str] = set()
    for expr in _exprs(_dashboard()):
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        read |= names
    assert read - exported == set(), f"not exported by any service: {sorted(read - exported)}"
    # What an operator looks for: rate, TTFT, ITL, prefix hits, queue, replicas.
    for needed in ("basalt_router_requests_total", "basalt_router_time_to_first_token_seconds_bucket",
                   "basalt:inter_token_latency_seconds_bucket", "basalt:prefix_cache_hit_tokens_total",
                   "basalt_router_queued_requests", "basalt_autoscaler_ready_replicas"):
        assert needed in read, needed


def test_the_dashboard_has_grafanas_required_fields() -> None:
    dash = _dashboard()
    for field, kind in (("title", str), ("uid", str), ("schemaVersion", int), ("panels", list),
                        ("time", dict), ("templating", dict), ("version", int)):
        assert isinstance(dash.get(field), kind), field
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dash["uid"])
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        assert p["type"] and p["title"], p
        g = p["gridPos"]
        assert {"h", "w", "x", "y"} <= g.keys() and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"]["type"] == "prometheus"
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)) and all(t["expr"] for t in p["targets"])
    names = {v["name"] for v in dash["templating"]["list"]}
    assert "datasource" in names
    used = {m for e in _exprs(dash) for m in re.findall(r"\$\{?(\w+)", e)} - {"__rate_interval"}
    assert used <= names, f"undefined variables {used - names}"
