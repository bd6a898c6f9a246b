"""The README's numbers are the committed report's numbers (and its links point at real files)."""

import json
import re
from pathlib import Path

from helix_jax.report import readme

ROOT = Path(__file__).resolve().parent.parent


def test_readme_numbers_come_from_reproduce_json():
    report = json.loads((ROOT / "results" / "reproduce.json").read_text())
    text = (ROOT / "README.md").read_text()
    block = text.split(readme.START, 1)[1].split(readme.END, 1)[0].strip()
    assert block == readme.numbers_block(report), (
        "README.md disagrees with results/reproduce.json: run `python -m helix_jax.report.readme`")


def test_readme_accuracy_comes_from_validation_json():
    report = json.loads((ROOT / "results" / "validation.json").read_text())
    text = (ROOT / "README.md").read_text()
    assert readme.block(text, readme.VALIDATION_START, readme.VALIDATION_END) == \
        readme.validation_block(report), "run `python -m helix_jax.report.readme`"


def test_numbers_block_follows_the_report():
    """Change one projected number in the report: the block must change with it."""
    report = json.loads((ROOT / "results" / "reproduce.json").read_text())
    before = readme.numbers_block(report)
    row = next(r for r in report["tables"]["dense"]["rows"] if r["row"] == "helix")
    row["projection"]["tokens_per_s"] *= 2
    after = readme.numbers_block(report)
    assert before != after and f"{row['projection']['tokens_per_s']:,.0f}" in after


def test_readme_links_exist():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(((?:docs|notebooks|results|experiments)/[^)#]+)\)", text)
    assert {"docs/layouts.md", "docs/cost-model.md", "docs/jax-notes.md"} <= set(links)
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_validation_block_reports_the_decode_table_when_there_is_one():
    """A made-up report (not the committed one): the training rows, and with a decode table its
    summary and one line per row; without one, none."""
    row = dict(label="7B", source="Some paper, Table 1", hardware="dgx-h100", measured=2.0,
               projected_step_s=2.2, error=0.1, constant_mfu_error=-0.2)
    train = {"summary": dict(rows=1, median_abs_error=0.1, worst_abs_error=0.1,
                             constant_mfu_median_abs_error=0.2, constant_mfu_worst_abs_error=0.2),
             "rows": [row]}
    plain = readme.validation_block(train)
    assert "| 7B (Some paper) | dgx-h100 | 2.00 | 2.20 | +10.0% | -20.0% |" in plain
    assert "Decode" not in plain
    dec = dict(batch=25, context=5250, measured_ms=40.0, projected_ms=30.0, error=-0.25,
               step_ms=20.0, naive_error=0.125)
    text = readme.validation_block({**train, "decode": [dec], "decode_summary": dict(
        rows=1, median_abs_error=0.25, worst_abs_error=0.25, naive_median_abs_error=0.125,
        naive_worst_abs_error=0.125, naive_floor_only_median_abs_error=0.5,
        naive_floor_only_worst_abs_error=0.5, weights_priced=["float8"])})
    assert text.startswith(plain)
    assert "off by 25.0% at the median" in text and "weights priced as float8" in text
    assert "without the prefill term by 50.0%" in text
    assert "| 25 | 5,250 | 40.00 | 30.00 | -25.0% | 20.00 | +12.5% |" in text
