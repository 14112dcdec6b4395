"""Benchmark sections are replaced in place and nothing else in the file moves."""

from pathlib import Path

from bench.report import update_section


def test_sections_are_replaced_in_place_and_others_kept(tmp_path: Path) -> None:
    doc = tmp_path / "b.md"
    update_section(doc, "## Runtime", "runtime v1")
    update_section(doc, "### synthetic", "syn v1", parent="## Routing", parent_intro="intro")
    update_section(doc, "### mooncake", "mc v1", parent="## Routing")
    update_section(doc, "## Index", "index v1")
    update_section(doc, "### synthetic", "syn v2", parent="## Routing")
    update_section(doc, "## Runtime", "runtime v2")
    text = doc.read_text()
    assert "v1" not in text.replace("mc v1", "").replace("index v1", "")
    order = ["## Runtime", "runtime v2", "## Routing", "intro", "### synthetic", "syn v2",
             "### mooncake", "mc v1", "## Index", "index v1"]
    positions = [text.index(x) for x in order]
    assert positions == sorted(positions)
