"""Inter-token latency (ITL) of a served model under in-flight batching: the decode step plus
the prefills of the requests that join the batch while a request decodes, amortised over its
output tokens (docs/cost-model.md, "Serving: inter-token latency").

A benchmark at concurrency C keeps C requests in flight (a closed loop: each client sends its
next request when the last one ends), each of I input and O output tokens. A request's mean
ITL, (end-to-end − time to first token) / (O − 1), spans its O − 1 decode steps. In steady
state every client's request cycle lasts the same, so while one request decodes each of the
other C − 1 clients starts about one new request, whose prefill of I tokens the engine runs
between decode steps, holding up the batch:

    ITL = decode_step(batch C, context I + O/2) + (C − 1) / (O − 1) × prefill(batch 1, I tokens)

The decode step is priced at the mean context, I + O/2: a step's KV-cache read grows linearly
with the context, so the step at the mean context is the mean step. The exact count of other
requests started during the window is (C − 1) · w / (TTFT + w), w = (O − 1) · ITL, so the
formula errs high by at most TTFT / end-to-end of a request.
"""

from __future__ import annotations

from helix_jax.analysis.costmodel.compiler import DIRECT, Compiler
from helix_jax.analysis.costmodel.hardware import Hardware
from helix_jax.analysis.costmodel.projection import Projection
from helix_jax.config import ModelConfig
from helix_jax.enums import Mode, Weights
from helix_jax.layouts import Layout

ASSUMPTIONS = (
    "closed loop: C requests in flight at all times, each of I input and O output tokens",
    "the decode batch is C, at the mean context I + O/2",
    "over one request's O - 1 decode steps each of the other C - 1 clients starts one request "
    "(errs high by at most TTFT / end-to-end)",
    "a joining request's prefill runs between decode steps and holds up the whole batch "
    "(prefill and decode times add; a stack that fuses a prefill chunk into a decode step "
    "shares its weight reads, and is faster)",
)


def check_serving(mode: str, prompt_tokens: int | None, output_tokens: int | None) -> None:
    """A one-line ValueError, before any compiling, for serving options that do not go
    together: both or neither, with --mode decode only, I >= 1 and O >= 2."""
    if prompt_tokens is None and output_tokens is None:
        return
    if prompt_tokens is None or output_tokens is None:
        raise ValueError("--prompt-tokens and --output-tokens go together (a served request's "
                         "input and output lengths)")
    if mode != Mode.DECODE:
        raise ValueError(f"--prompt-tokens/--output-tokens price the inter-token latency of a "
                         f"served decode: use --mode decode (got --mode {mode})")
    if prompt_tokens < 1:
        raise ValueError(f"--prompt-tokens must be at least 1, got {prompt_tokens}")
    if output_tokens < 2:
        raise ValueError(f"--output-tokens must be at least 2 (the inter-token latency spans a "
                         f"request's O - 1 decode steps), got {output_tokens}")


def mean_context(prompt_tokens: int, output_tokens: int) -> int:
    """The mean KV-cache length over a request's decode steps, I + O/2 (rounded down)."""
    return prompt_tokens + output_tokens // 2


def amortised_prefill_seconds(concurrency: int, output_tokens: int,
                              prefill_seconds: float) -> float:
    """The share of the others' prefills in one inter-token latency: (C − 1) / (O − 1) × P."""
    return (concurrency - 1) / (output_tokens - 1) * prefill_seconds


def serving_itl(cfg: ModelConfig, layout: Layout, hw: Hardware, decode: Projection,
                prompt_tokens: int, output_tokens: int, compiler: Compiler = DIRECT,
                weights: str = Weights.MODEL) -> dict:
    """The ITL of `decode` (one decode step of cfg.batch = C sequences) served with
    `prompt_tokens` / `output_tokens` requests: the prefill of one request is compiled and priced
    by the same machinery (`project_step`, batch 1, I positions) and amortised (module doc)."""
    from helix_jax.analysis.costmodel.project import project_step

    prefill = project_step(cfg.replace(batch=1, seq=prompt_tokens), layout, hw, Mode.PREFILL,
                           compiler, weights)
    C = cfg.batch
    step = decode.projected.step_seconds
    prefill_s = prefill.projected.step_seconds
    share = amortised_prefill_seconds(C, output_tokens, prefill_s)
    return {
        "prompt_tokens": prompt_tokens, "output_tokens": output_tokens, "concurrency": C,
        "decode_context": cfg.seq,
        "decode_step_ms": step * 1e3, "prefill_ms": prefill_s * 1e3,
        "prefill_compute_ms": prefill.projected.compute_seconds * 1e3,
        "prefill_comm_ms": prefill.projected.comm_seconds * 1e3,
        "prefill_hbm_bound": prefill.projected.hbm_bound,
        "prefill_compiled": prefill.compiled,
        "amortised_prefill_ms": share * 1e3, "itl_ms": (step + share) * 1e3,
        "formula": "ITL = decode step + (C - 1) / (O - 1) x prefill(I tokens)",
        "assumptions": list(ASSUMPTIONS),
    }
