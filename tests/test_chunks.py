"""Batch chunks with the input spread over all devices: same numbers, and the gather is counted."""

import jax
import numpy as np
import pytest

from helix_jax.analysis import collectives
from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.model import Sharded, random_input
from tests.helpers import random_params, rel_err

CFG = resolve_model("tiny-dense")


def forward(spec, chunks):
    sharded = Sharded.build(CFG, parse_layout(spec), batch_chunks=chunks)
    x = jax.device_put(random_input(CFG, 0), sharded.x_sharding)
    y, _ = sharded.forward_fn()(sharded.place(random_params(CFG)), x)
    return sharded, np.asarray(y)


@pytest.mark.parametrize("spec, chunks", [("helix:core=seq_a2a", 4), ("tp-pp:sp=true", 2)])
def test_chunked_forward_matches_unchunked(spec, chunks):
    _, ref = forward("single", 1)
    sharded, got = forward(spec, chunks)
    assert rel_err(ref, got) < 1e-5
    assert sharded.spread_axes  # the input really is spread, not replicated
    hlo = sharded.forward_fn().lower(*sharded.abstract_inputs()).compile().as_text()
    gathers = [c for c in collectives(hlo) if c.op == "all-gather" and c.trip_count == chunks
               and c.operand_shapes[0][0] == CFG.batch // sharded.layout.size_of(sharded.rest_axes) // chunks]
    assert len(gathers) == 1  # one gather of each chunk's input rows


def test_chunks_that_do_not_divide_the_batch():
    with pytest.raises(ValueError, match="not divisible into batch_chunks=3"):
        Sharded.build(CFG, parse_layout("helix"), batch_chunks=3)
