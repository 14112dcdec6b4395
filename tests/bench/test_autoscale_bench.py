"""`basalt bench autoscale` on a small synthetic Azure-format trace: a burst after idle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.autoscale import SECTION, main
from bench.autoscale_sim import FleetParams, Policy, Workload, simulate


def _azure_csv(path: Path) -> Path:
    """30 s of light load, 4 idle minutes, a 30 s burst, 3.5 idle minutes, one request."""
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]

    def row(t: float, ctx: int, gen: int) -> None:
        m, s = divmod(t, 60)
        lines.append(f"2023-11-16 18:{int(m):02d}:{s:010.7f},{ctx},{gen}")

    for i in range(30):
        row(i * 1.0, 500, 50)
    for i in range(1500):
        row(270 + i * 0.02, 1500 + (i % 7) * 100, 40 + (i % 5) * 20)
    row(510.0, 300, 20)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("autoscale")
    trace = _azure_csv(d / "burst.csv")
    doc = d / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Routing\n\nrouting text\n\n## Chaos\n\nchaos text\n")
    out = d / "out.json"
    assert main(["--trace", str(trace), "--cold-start-s", "10", "--json", str(out),
                 "--markdown", str(doc)]) == 0
    data = json.loads(out.read_text())
    data["doc"] = doc.read_text()
    return data


def _by(report: dict) -> dict[str, dict]:
    return {p["policy"]: p for p in report["traces"][0]["policies"]}


def test_every_policy_reports_and_static_is_the_reference(report: dict) -> None:
    by = _by(report)
    assert set(by) == {"static-peak", "kpa", "baseten", "basalt-sla"}
    assert by["static-peak"]["vs_static"] == pytest.approx(1.0)
    assert by["static-peak"]["scale_events"] == 0
    for p in by.values():
        assert 0.0 <= p["ttft_attainment"] <= 1.0
        assert 0.0 <= p["itl_attainment"] <= 1.0
        assert p["replica_seconds"] > 0
        assert p["rejected"] == 0


def test_scale_to_zero_costs_less_than_a_peak_fleet_on_a_bursty_trace(report: dict) -> None:
    by = _by(report)
    assert by["static-peak"]["max_replicas"] >= 2  # the burst needs more than one replica
    assert by["kpa"]["replica_seconds"] < by["static-peak"]["replica_seconds"]
    # the lone request after the burst finds no replica (scale to zero) and parks
    assert by["kpa"]["parked"] >= 1


def test_markdown_section_is_written_and_the_rest_kept(report: dict) -> None:
    doc = report["doc"]
    assert SECTION in doc and "routing text" in doc and "chaos text" in doc
    assert doc.index("## Routing") < doc.index("## Chaos") < doc.index(SECTION)
    assert "| static-peak |" in doc and "Command: `basalt bench autoscale" in doc
    assert "Verdict:" in doc


def test_bad_inputs_exit_nonzero_with_a_message(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--trace", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00,abc,3\n")
    assert main(["--trace", str(bad)]) == 2
    assert "bad.csv:2" in capsys.readouterr().err
    cols = tmp_path / "cols.csv"
    cols.write_text("a,b\n1,2\n")
    assert main(["--trace", str(cols)]) == 2
    assert "columns" in capsys.readouterr().err
    moon = tmp_path / "m.jsonl"
    moon.write_text('{"timestamp": 0, "input_length": 5}\n')
    assert main(["--trace", str(moon)]) == 2
    assert "m.jsonl:1" in capsys.readouterr().err


def test_a_request_waits_for_a_cold_start_when_no_replica_is_ready() -> None:
    w = Workload([0.5], [100], [10])
    fp = FleetParams(cold_start_s=5.0)
    from services.autoscaler.core.settings import Settings
    r = simulate(w, fp, Policy("kpa", Settings(max_replica=4, concurrency_target=10),
                               initial=0))
    o = r.outcome
    assert o.parked[0]
    assert o.first[0] - w.arrival[0] >= 5.0  # waited the launch + cold start
    assert o.finish[0] > o.first[0]
