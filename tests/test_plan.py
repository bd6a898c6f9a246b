"""`helix plan`: the search space holds only legal layouts, the bounds never prune the best, the
disk cache re-prices without compiling, and bad input is a one-line error."""

import dataclasses
import json
from collections import Counter

import jax
import pytest

from helix_jax import cli
from helix_jax.analysis import collectives, load_hardware, matmul_flops
from helix_jax.analysis.costmodel.compiler import compile_program
from helix_jax.analysis.costmodel.project import project
from helix_jax.analysis.hlo import memo
from helix_jax.analysis.hlo.module import parse_module
from helix_jax.analysis.planner import prune as PR
from helix_jax.analysis.planner import rows as rows_mod
from helix_jax.analysis.planner.cache import ProgramCache
from helix_jax.analysis.planner.explain import TERMS, bound_violations, step_terms
from helix_jax.analysis.planner.search import plan
from helix_jax.analysis.planner.space import enumerate_candidates, parse_candidate, short_spec
from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.model import Sharded

HW = load_hardware("h100-paper")
# Small enough to compile every candidate: 2 devices, batch 4 (forward) or 1 (training).
TINY = resolve_model("tiny-dense").replace(batch=4, seq=32, dtype="float16")
# Links slow enough that bytes, not latency, price the collectives of so small a model: the time
# bounds then come close to the projections, and prune.
SLOW = dataclasses.replace(HW, name="slow-links", nvlink_bytes_per_s=1e8, ib_bytes_per_s=1e8,
                           latency_nvlink_s=0.0, latency_ib_s=0.0, flops_per_s=1e12,
                           peak_flops_per_s=1e12)


@pytest.mark.parametrize("model, mode", [("tiny-dense", "forward"), ("tiny-moe", "train"),
                                         ("tiny-moe", "decode")])
def test_enumeration_yields_only_legal_layouts_and_each_builds(model, mode):
    cfg = resolve_model(model)
    candidates, illegal = enumerate_candidates(cfg, 16, mode, gspmd=False)
    labels = [c.label for c in candidates]
    assert len(labels) == len(set(labels)) >= 40
    layouts = {c.layout.spec: c.layout for c in candidates}
    for layout in layouts.values():
        assert layout.devices == 16
        Sharded.build(cfg, layout)  # raises for an illegal layout
        assert parse_candidate(short_spec(layout), mode).layout == layout
    # tiny models have head_dim 8: helix with m=16 head-dim shards is illegal and counted
    assert any("head_dim" in reason for reason in illegal)
    assert not any(s.startswith("helix:m=16") or ",m=16" in s for s in layouts)
    paper = {"tiny-dense": ("tp-pp", "helix"), "tiny-moe": ("tp-pp", "ep")}[model]
    assert {parse_layout(p).spec for p in paper} <= set(layouts) or mode != "forward"
    if mode == "train":  # remat is an option of training steps only
        assert {c.remat for c in candidates} == {"none", "selective", "full"}
    else:
        assert {c.remat for c in candidates} == {"none"}


def test_placement_does_not_change_the_program():
    """The program cache leaves `place` out of its keys: only pricing sees the placement."""
    programs = [compile_program(Sharded.build(TINY, parse_layout(
        f"tp-pp:tp=2,pp=2,microbatches=2,place={place}")), "forward").as_text()
        for place in ("tensor-inner", "stage-inner")]
    (a, b) = [sorted((c.op, c.replica_groups, c.source_target_pairs, c.payload_bytes,
                      c.trip_count) for c in collectives(p)) for p in programs]
    assert a == b and a
    assert matmul_flops(programs[0]) == matmul_flops(programs[1])


def _check_plan(p):
    assert bound_violations(p) == []
    for row in p.rows.values():
        if row.projection is not None:  # the terms add up to the step
            terms = step_terms(row.projection, p.hw)
            assert set(terms) == set(TERMS)
            assert sum(terms.values()) == pytest.approx(row.step, rel=1e-6)


def test_pruning_never_drops_the_true_best_forward():
    """Every candidate projected (no pruning) against the pruned search: the same best step,
    no projection under its bounds, pruning by the memory and the time bounds."""
    hw = dataclasses.replace(SLOW, hbm_capacity_bytes=1.5e6)
    cache = ProgramCache(None)  # one in-memory cache: the pruned run reuses the programs
    full = plan(TINY, hw, 2, "forward", prune=False, cache=cache, gspmd=False, jobs=2)
    pruned = plan(TINY, hw, 2, "forward", prune=True, cache=cache, gspmd=False, jobs=2)
    _check_pruned(full, pruned, ("memory bound", "time bound"))


def test_an_unchunked_step_no_faster_than_the_best_is_pruned():
    """A forward search whose capacity makes layouts chunk their batch: a whole program whose
    step at one chunk is no faster than the best is pruned after that one compile, and the best
    is the one projecting every candidate finds; every step projected at more chunks is at
    least its unchunked step."""
    hw = dataclasses.replace(SLOW, hbm_capacity_bytes=2e6)
    cfg = TINY.replace(batch=8)
    cache = ProgramCache(None)
    full = plan(cfg, hw, 2, "forward", prune=False, cache=cache, gspmd=False, jobs=2)
    pruned = plan(cfg, hw, 2, "forward", prune=True, cache=cache, gspmd=False, jobs=2)
    _check_pruned(full, pruned, ("unchunked step",))
    for label, row in pruned.rows.items():
        if row.pruned_by and "unchunked step" in row.pruned_by:
            assert full.rows[label].step >= row.least_compiled_seconds >= pruned.best.step, label
    chunked = [r for r in full.rows.values() if r.projection and r.projection["batch_chunks"] > 1]
    assert chunked
    for row in chunked:
        one = project(cfg, row.candidate.layout, hw, batch_chunks=1, compiler=cache)
        assert row.step >= one.step_seconds, row.candidate.label


def test_training_search_prunes_safely_and_the_cache_re_prices_without_compiling(
        tmp_path, monkeypatch):
    """Training steps, composed (pp=2) and whole programs (tp=2), every one projected, then
    searched with pruning: the same best. With fast links the whole programs have the lowest
    time bounds, but (by the GPU memory estimate) only the one with full recompute fits. Runs
    after the first reuse the disk cache: nothing is compiled (jax's compile is counted), and
    another profile is priced from the stored HLO."""
    compiles = []
    original = jax.stages.Lowered.compile

    def counting(self, *args, **kwargs):
        compiles.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(jax.stages.Lowered, "compile", counting)
    hw = dataclasses.replace(SLOW, hbm_capacity_bytes=3.72e6, nvlink_bytes_per_s=1e12,
                             ib_bytes_per_s=1e12)
    # one sequence of 33 positions: no data parallelism, no sequence parallelism (33 is odd)
    cfg, kinds = TINY.replace(batch=1, seq=33), ("tp-pp",)

    def search(hw, prune):
        return plan(cfg, hw, 2, "train", kinds=kinds, prune=prune, cache=ProgramCache(tmp_path),
                    gspmd=False, jobs=2)

    full = search(hw, prune=False)
    assert full.cache.stats.compiles == len(compiles) > 0
    _check_least_steps(full, cfg, hw)
    compiles.clear()
    pruned = search(hw, prune=True)
    _check_pruned(full, pruned, ("time bound",))
    again = search(hw, prune=False)
    assert compiles == [] and pruned.cache.stats.compiles == again.cache.stats.compiles == 0
    assert again.cache.stats.priced_hits == again.counts()["projected"] == len(full.rows)
    assert again.ranking == full.ranking
    other = dataclasses.replace(hw, name="slower-links", nvlink_bytes_per_s=1e8)
    # another profile: priced anew from the stored programs and their stored read-outs, as a
    # new process would (nothing in memory), without parsing one HLO text
    memo._VALUES.clear()
    parse_module.cache_clear()
    moved = search(other, prune=False)
    assert parse_module.cache_info().misses == 0
    assert compiles == [] and moved.cache.stats.compiles == 0
    assert moved.cache.stats.program_hits > 0 and moved.cache.stats.priced_hits == 0
    label = "tp-pp:tp=2,pp=1,microbatches=1@none"  # tensor-parallel: its all-reduces slow down
    assert moved.rows[label].projection["hardware"] == "slower-links"
    assert moved.rows[label].step > full.rows[label].step


def test_a_step_whose_full_recompute_sibling_does_not_fit_is_pruned(tmp_path):
    """dp:dp=2 keeps every optimizer state on both ranks and does not fit even with full
    recompute, so its steps that recompute less are pruned unprojected; fsdp=true fits, and the
    CLI's default search skips its steps that recompute more (from the cache: no compile)."""
    hw = dataclasses.replace(SLOW, hbm_capacity_bytes=5e6)
    cfg = TINY.replace(batch=2, seq=33)

    def search(prune):
        return plan(cfg, hw, 2, "train", kinds=("dp",), prune=prune,
                    cache=ProgramCache(tmp_path), gspmd=False, jobs=2)

    full = search(prune=False)
    assert not full.rows["dp:dp=2@full"].projection["fits"]
    _check_pruned(full, search(prune=True), ("keeps the least",))
    least = plan(cfg, hw, 2, "train", kinds=("dp",), cache=ProgramCache(tmp_path), gspmd=False,
                 all_remat=False)  # the CLI's default: no more recompute than a layout needs
    skipped = [r for r in least.rows.values() if r.status == "skipped: recompute"]
    assert skipped and least.cache.stats.compiles == 0
    for row in skipped:
        sibling = least.rows[row.pruned_by.split(" fits")[0]]
        assert sibling.projection["fits"] and sibling.candidate.layout == row.candidate.layout


def _check_least_steps(full, cfg, hw):
    """The least steps the pruned search reads off compiled programs hold on every candidate of
    a search that projected them all: a composed step is at least its share of any larger
    microbatch of the same stage; a recomputing whole step is at least the matmul, attention
    and exposed collectives of its no-recompute sibling's unchunked program."""

    rows = [r for r in full.rows.values() if r.projection]
    pairs = [(r, o) for r in rows for o in rows if r.candidate.composed and o.candidate.composed
             and PR.stage_group(o.candidate) == PR.stage_group(r.candidate)
             and PR.microbatch(o.candidate, cfg) >= PR.microbatch(r.candidate, cfg)]
    for r, o in pairs:
        assert PR.smaller_microbatch_bound(r.candidate, cfg, o) <= r.step * (1 + 1e-9), (
            r.candidate.label, o.candidate.label)
    recomputing = [r for r in rows if not r.candidate.composed and r.candidate.remat != "none"]
    assert pairs or recomputing
    for r in recomputing:
        plain = full.rows[dataclasses.replace(r.candidate, remat="none").label]
        one = project(cfg, plain.candidate.layout, hw, batch_chunks=1, mode="train",
                      compiler=full.cache).to_dict()
        assert PR.recompute_floor(one) <= r.step * (1 + 1e-9), r.candidate.label


def test_least_steps_from_larger_microbatches_hold():
    """Composed training steps of one stage (tp=2, pp=2) at four microbatch sizes and two
    data-parallel degrees, each projected: each is at least its share of every larger
    microbatch of the same stage."""

    cfg = TINY.replace(batch=8)
    hw = dataclasses.replace(HW, hbm_capacity_bytes=1e9, nvlink_bytes_per_s=1e13,
                             ib_bytes_per_s=1e13)  # compute-bound: the bounds are near the steps
    cache = ProgramCache(None)
    rows = {}
    for dp, M in ((1, 1), (1, 2), (1, 4), (1, 8), (2, 1), (2, 2)):
        c = parse_candidate(f"tp-pp:tp=2,pp=2,dp={dp},microbatches={M}@none", "train")
        rows[c.label] = rows_mod.Row(c, projection=project(cfg, c.layout, hw, mode="train",
                                                       compiler=cache,
                                                       composed=c.composed).to_dict())
    plan_ = rows_mod.Plan(cfg, hw, 8, "train", rows, Counter(), [], False, 0.0, cache, False)
    _check_least_steps(plan_, cfg, hw)
    assert {r.projection["microbatch_size"] for r in rows.values()} == {1, 2, 4, 8}


def _check_pruned(full, pruned, rules):
    for p in (full, pruned):
        _check_plan(p)
    fits = [r for r in full.rows.values() if r.status == "ranked"]
    assert fits and len(fits) < len(full.rows)  # the capacity leaves some out
    assert pruned.best.step == full.best.step
    assert pruned.counts()["projected"] < full.counts()["projected"]
    reasons = " ".join(r.pruned_by for r in pruned.rows.values() if r.pruned_by)
    for rule in rules:
        assert rule in reasons, rule
    for label, row in pruned.rows.items():  # what was pruned by memory really does not fit
        if row.status == "pruned: memory":
            assert full.rows[label].status == "does not fit", label


def test_helix_plan_end_to_end(tmp_path, capsys):
    out = tmp_path / "plan.json"
    rc = cli.main(["plan", "--model", "tiny-dense", "--batch", "2", "--dtype", "float16",
                   "--devices", "2", "--kinds", "dp,helix", "--explain", "helix:m=2,n=1",
                   "--json", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "fastest" in text and "why: " in text and "helix:m=2,n=1 (asked about)" in text
    report = json.loads(out.read_text())
    assert report["generated_by"]["command"].startswith("helix plan --model tiny-dense")
    assert report["best"] == report["ranking"][0]
    assert report["counts"]["considered"] == len(report["candidates"])
    assert report["explain"][0]["label"] == "helix:m=2,n=1"
    assert (tmp_path / "plan.png").stat().st_size > 0


def test_a_kv_cache_no_layout_can_hold_is_explained_with_the_batch_that_could():
    """Weights and KV cache beyond all the devices together: every candidate is pruned without a
    compile, and the plan says why and which batch could fit, from the cache's size by formula."""
    from helix_jax.analysis.planner.bounds import whole_model_floor
    from helix_jax.analysis.planner.explain import nothing_fits

    cfg = TINY.replace(batch=8)
    kv_per_sequence = cfg.n_layers * 2 * cfg.seq * cfg.n_heads * cfg.head_dim * 2  # k and v, fp16
    roomy = whole_model_floor(cfg, HW, 2, "decode")
    assert roomy.cache_bytes_per_sequence == kv_per_sequence
    # room for the weights and 5 sequences' caches on the 2 devices together
    small = dataclasses.replace(HW, hbm_capacity_bytes=(roomy.state_bytes + 5.5 * kv_per_sequence) / 2)
    floor = whole_model_floor(cfg, small, 2, "decode")
    assert floor.max_batch == 5 and floor.total_bytes > floor.capacity_bytes
    p = plan(cfg, small, 2, "decode", cache=ProgramCache(None), gspmd=False)
    assert p.best is None and p.counts()["projected"] == 0 and p.cache.stats.compiles == 0
    text = nothing_fits(p)
    assert "so no layout can fit" in text and "at most batch 5 could" in text, text
    # at batch 5 the floor fits, and what the compiled programs need besides is what is said
    p = plan(cfg.replace(batch=5), small, 2, "decode", cache=ProgramCache(None), gspmd=False)
    assert whole_model_floor(p.cfg, small, 2, "decode").total_bytes <= floor.capacity_bytes
    text = nothing_fits(p)
    assert "no layout can fit" not in text and "the least memory of those projected is" in text
    assert "MB per device against" in text, text


@pytest.mark.parametrize("argv, message", [
    (["--devices", "0"], "--devices must be between 1 and 65,536, got 0"),
    (["--top", "0"], "--top must be at least 1, got 0"),
    (["--max-tp", "-1"], "--max-tp must be at least 0, got -1"),
    (["--chart", "/no/such/folder/plan.png"], "does not exist"),
    (["--explain", "helix:m=4,n=2"], "is a 8-device layout, but --devices is 16"),
    (["--explain", "dp@full"], "applies to --mode train only"),
    (["--explain", "dp@fast", "--mode", "train"], "cannot read @fast"),
    (["--explain", "nonsense"], "unknown layout 'nonsense'"),
    (["--kinds", "dp,nope"], "unknown kind(s) ['nope']"),
    (["--json", "/no/such/folder/plan.json"], "does not exist"),
    (["--hardware", "no-such-gpu"], "unknown hardware"),
    (["--context", "100"], "--context applies to --mode prefill or decode"),
    (["--model-file", "/no/such.toml"], "no such file"),
])
def test_bad_inputs_are_one_line_errors(argv, message, capsys):
    assert cli.main(["plan", "--model", "tiny-dense", "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("helix: error:") and "\n" not in err and message in err, err


def test_readme_quotes_the_committed_plan():
    """The README's planner block is what results/plan.json says (experiments/plan.py writes
    both)."""
    from pathlib import Path

    from helix_jax.report.planning import readme_block, replace_readme_block

    root = Path(__file__).resolve().parent.parent
    report = json.loads((root / "results" / "plan.json").read_text())
    text = (root / "README.md").read_text()
    assert "<!-- plan:start -->" in text
    assert replace_readme_block(text, readme_block(report)) == text
    for run in report["runs"]:  # the search never projected anything under its bounds
        assert run["bound_violations"] == [], (run["model"], run["mode"], run["hardware"])
