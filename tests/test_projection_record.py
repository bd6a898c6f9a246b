"""Every path that makes a projection (whole program, KV-cache step, composed pipeline) returns
the same typed record, whose JSON has the same top-level keys."""

import json

import pytest

from helix_jax.analysis.costmodel.hardware import HARDWARE
from helix_jax.analysis.costmodel.project import project
from helix_jax.analysis.costmodel.projection import Projection, Timing, projection_keys
from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout

HW = HARDWARE["dgx-h100"]


@pytest.fixture(scope="module")
def one_of_each() -> dict[str, Projection]:
    cfg = resolve_model("tiny-dense").replace(batch=8, seq=32)
    return {
        "whole forward": project(cfg, parse_layout("helix:m=2,n=2"), HW, batch_chunks=1),
        "whole train": project(cfg, parse_layout("helix:m=2,n=2"), HW, batch_chunks=1,
                               mode="train"),
        "decode step": project(cfg, parse_layout("helix:m=2,n=2"), HW, mode="decode"),
        "composed train": project(cfg, parse_layout("tp-pp:tp=2,pp=2,dp=2,microbatches=2"), HW,
                                  mode="train"),
    }


def test_every_path_has_the_same_top_level_keys(one_of_each):
    keys = {name: set(p.to_dict()) for name, p in one_of_each.items()}
    assert all(isinstance(p, Projection) and isinstance(p.projected, Timing)
               for p in one_of_each.values())
    for name, got in keys.items():
        assert got == set(projection_keys()), (name, got ^ set(projection_keys()))


def test_path_specific_fields_are_none_elsewhere(one_of_each):
    p = one_of_each
    assert p["decode step"].context == 32 and p["decode step"].projected.hbm_floor_seconds > 0
    assert p["composed train"].microbatch_size == 2
    assert p["composed train"].projected.bubble_seconds > 0
    assert p["whole forward"].context is None and p["whole forward"].microbatch_size is None
    assert "hbm_floor_seconds" not in p["whole forward"].to_dict()["projected"]
    # every path reads its collectives by op and by source line
    for name, proj in p.items():
        assert proj.comm_bytes_by_op, name
        assert sum(proj.comm_bytes_by_op.values()) == pytest.approx(
            sum(r["payload_bytes_per_device"] * r["count"] for r in proj.collectives)), name
        assert len(proj.collective_sites) >= len(proj.collectives), name
        # each collective is blamed on the model or training code that asked for it, never on
        # the analysis that compiled the program
        sources = [site["source"] for site in proj.collective_sites]
        assert sources and all(s.startswith("helix_jax/") and "helix_jax/analysis/" not in s
                               for s in sources), (name, sources)


def test_json_round_trips(one_of_each):
    for name, proj in one_of_each.items():
        text = json.dumps(proj.to_dict())
        back = Projection.from_dict(json.loads(text))
        assert back.to_dict() == json.loads(text), name
        assert back.step_seconds == proj.projected.step_seconds
    unknown = {**one_of_each["whole forward"].to_dict(), "analysis_seconds": 1.5}
    assert Projection.from_dict(unknown).to_dict()["analysis_seconds"] == 1.5
