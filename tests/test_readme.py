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
