"""`basalt bench coldstart`'s scale-from-zero part, short form, on the sim engine: one
`basalt up`, four deployments at zero, each woken by one request through the router. Each
start reports the tier its weights came from, as the variant arranged it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.coldstart import VARIANTS, stack_rows, stack_table

pytestmark = pytest.mark.integration


def test_each_variant_starts_from_the_tier_it_arranged(tmp_path: Path) -> None:
    rows = {r.variant: r for r in stack_rows("sim", tmp_path, extra_mb=16, timeout=120.0)}
    assert list(rows) == list(VARIANTS)
    assert rows["in place"].tier == "" and rows["in place"].fetched_bytes == 0
    assert rows["source"].tier == "source" and rows["source"].fetched_bytes >= 16 << 20
    assert rows["node cache"].tier == "node" and rows["node cache"].fetched_bytes == 0
    assert rows["warm tier"].tier == "warm" and rows["warm tier"].fetched_bytes == 0
    for r in rows.values():
        assert r.first_token_s > r.wake_s >= 0
        assert r.weights_bytes >= 16 << 20, "the runtime read the weights before its engine"
        assert "engine_init" in r.phases and "first_token" in r.phases
    table = stack_table(list(rows.values()), "sim")
    assert all(f"| {v} |" in table for v in VARIANTS)
