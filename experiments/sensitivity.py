"""How much does each hardware constant move the validation? Every published training step of
`validate_measured.py` projected again with one constant of its profile at each end of the range
its sources quote, the others as they are (`helix_jax/report/sensitivity.py`).

A reader sees which rows lean on which constant and by how much, instead of a bar the committed
numbers must meet (tuning a constant to pass such a bar would fit the rows, not the hardware).
Each row's programs are compiled once (an in-memory program cache); the variants only re-price.

    python experiments/sensitivity.py [--out results]

Writes results/sensitivity.{json,md}.
"""

from __future__ import annotations

from helix_jax.devices import ensure_host_devices

ensure_host_devices(64)  # before jax starts, as validate_measured

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from validate_measured import MODELS, ROWS, parse_args  # noqa: E402

from helix_jax.report.fmt import pct  # noqa: E402
from helix_jax.report.provenance import generated_by  # noqa: E402
from helix_jax.report.sensitivity import markdown, study  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args, out = parse_args("sensitivity", __doc__, argv)
    report = {"generated_by": generated_by("python experiments/sensitivity.py"),
              **study(ROWS, MODELS, args.progress)}
    (out / "sensitivity.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "sensitivity.md").write_text(markdown(report))
    for c in report["constants"].values():
        print(f"  {c['profile']} {c['field']:<22} median |error| "
              f"{pct(c['median_abs_error']['low'])} / {pct(c['median_abs_error']['high'])}, "
              f"largest row shift {pct(c['max_shift'])}")
    print(f"wrote {out / 'sensitivity.json'}, sensitivity.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
