"""Packed blocks (workbench.engine.packed): the real tokens of a batch through the blocks equal TransformerLens'
padded blocks with the prompts' key/value cache, values and gradients."""

from __future__ import annotations

import pytest
import torch

import workbench.engine.forward as forward
from workbench.engine.forward import Stream, assemble, read_answers, run_blocks
from workbench.engine.items import tokenize_items
from workbench.engine.packed import packable, packed_blocks


PROMPTS = ["Tell me a story about the sea", "Hi", "Why is the sky blue today", "Go"]
ANSWERS = [["Once upon a time", "No"], ["Hello there friend", "Bye"], ["Light", "Because of Rayleigh scattering"],
           ["x", "y z"]]


def _variant(model, **changes):
    """A copy of the tiny model's config with ``changes`` (fresh random weights, widened like the fixture's)."""
    cfg = model.cfg.to_dict() | changes
    for key in ("n_params", "device"):
        cfg.pop(key, None)
    from transformer_lens import HookedTransformer, HookedTransformerConfig  # 3.x only (the module is tl3)

    torch.manual_seed(1)
    out = HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=model.tokenizer, move_to_device=False)
    with torch.no_grad():
        for p in out.parameters():
            p.normal_(0, 0.3) if p.ndim >= 2 else p.uniform_(0.5, 1.5)
    out.eval()
    return out.requires_grad_(False)


def _both_paths(model, start: int):
    """(TransformerLens, packed): per-answer log-probs and the gradient of their sum in a delta at ``start``."""
    items = tokenize_items(model, PROMPTS, ANSWERS)
    batch = assemble(model, items, [0, 1, 2, 3])
    x_p, x_a = Stream(model, batch).at(start)
    out = []
    for packed in (False, True):
        delta = torch.zeros(model.cfg.d_model, requires_grad=True)
        if packed:
            r_p, r_a = packed_blocks(model, start, model.cfg.n_layers, x_p + delta, x_a + delta, batch.m_p,
                                     batch.m_a, batch.owner)
        else:
            with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda act, hook: act)]):  # forces the TL path
                assert not packable(model)
                r_p, r_a = run_blocks(model, start, model.cfg.n_layers, x_p + delta, x_a + delta, batch)
        lp = read_answers(r_p, r_a, batch).logprobs(model, len(batch.owner))
        lp.sum().backward()
        out.append((lp.detach(), delta.grad, r_p[batch.m_p].detach(), r_a[batch.m_a].detach()))
    return out


@pytest.mark.tl3  # HookedTransformer blocks
@pytest.mark.parametrize("variant", ["grouped-query", "laid out", "full heads, partial rotary", "biases"])
def test_packed_blocks_equal_transformerlens_blocks(tiny_model, variant):
    from workbench.engine.runners import make_runner

    model = {"grouped-query": lambda: tiny_model,
             "laid out": lambda: make_runner(tiny_model, 0),  # the trainer's runner: weights laid out for F.linear
             "full heads, partial rotary": lambda: _variant(tiny_model, n_key_value_heads=None, rotary_dim=4),
             "biases": lambda: _variant(tiny_model, n_key_value_heads=None)}[variant]()
    assert packable(model)
    (lp_tl, grad_tl, p_tl, a_tl), (lp_pk, grad_pk, p_pk, a_pk) = _both_paths(model, start=1)
    torch.testing.assert_close(p_pk, p_tl, atol=1e-4, rtol=1e-4)  # every real prompt and answer position
    torch.testing.assert_close(a_pk, a_tl, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lp_pk, lp_tl, atol=1e-4, rtol=1e-5)
    assert grad_tl.norm() > 0
    torch.testing.assert_close(grad_pk, grad_tl, atol=1e-5, rtol=1e-4)


@pytest.mark.tl3
def test_run_blocks_packs_only_without_hooks(tiny_model):
    """A hook in the blocks (a user's, or a delta added inside a block) runs TransformerLens' blocks, so it fires."""
    items = tokenize_items(tiny_model, PROMPTS[:2], ANSWERS[:2])
    batch = assemble(tiny_model, items, [0, 1])
    x_p, x_a = Stream(tiny_model, batch).at(1)
    assert packable(tiny_model)
    calls = []
    with tiny_model.hooks(fwd_hooks=[("blocks.2.hook_mlp_out", lambda act, hook: calls.append(1) or act * 0)]):
        r_p, r_a = run_blocks(tiny_model, 1, tiny_model.cfg.n_layers, x_p, x_a, batch)
    assert len(calls) == 2  # the prompt pass and the answer pass
    packed = run_blocks(tiny_model, 1, tiny_model.cfg.n_layers, x_p, x_a, batch)
    assert not torch.allclose(packed[0][batch.m_p], r_p[batch.m_p], atol=1e-3)  # the hook's zeroing took effect
    assert packable(tiny_model)  # hooks removed: packed again


def test_packable_on_either_line(tiny_model):
    """The bridge runs every block through transformers' modules: never packed."""
    from workbench.core.backend import LINE

    assert packable(tiny_model) == (LINE == 3)


@pytest.mark.tl3
def test_packable_refuses_blocks_it_does_not_compute(tiny_model, monkeypatch):
    assert packable(tiny_model)
    assert not packable(_variant(tiny_model, parallel_attn_mlp=True))
    assert not packable(_variant(tiny_model, attn_scores_soft_cap=30.0))
    assert not packable(_variant(tiny_model, positional_embedding_type="standard", rotary_dim=None))
    # run_blocks leaves a refused model to TransformerLens: packed_blocks is not called
    monkeypatch.setattr(forward, "packed_blocks", lambda *a, **k: pytest.fail("packed a refused model"))
    model = _variant(tiny_model, parallel_attn_mlp=True)
    items = tokenize_items(model, PROMPTS[:2], ANSWERS[:2])
    batch = assemble(model, items, [0, 1])
    r_p, r_a = run_blocks(model, 0, model.cfg.n_layers, *Stream(model, batch).at(0), batch)
    assert torch.isfinite(read_answers(r_p, r_a, batch).logprobs(model, 4)).all()


SYSTEM = "You are a kind and honest helper who answers well . "


def _shared_batch(model):
    items = tokenize_items(model, [SYSTEM + p for p in PROMPTS], ANSWERS)
    return assemble(model, items, [0, 1, 2, 3])


@pytest.mark.tl3
@pytest.mark.parametrize("variant", ["grouped-query", "laid out"])
def test_shared_prompt_prefix_runs_once_with_equal_values_and_gradient(tiny_model, variant):
    """A prefix every item holds (a system prompt, the same delta) is computed once: the same residuals at every
    real position, the same log-probs and the same gradient in a delta added to every item as TransformerLens'
    blocks and as packing without sharing."""
    from workbench.engine.packed import shared_prefix
    from workbench.engine.runners import make_runner

    model = tiny_model if variant == "grouped-query" else make_runner(tiny_model, 0)
    batch = _shared_batch(model)
    x_p, x_a = Stream(model, batch).at(1)
    n_shared = len(tokenize_items(model, [SYSTEM], [["x"]]).prompts[0])  # BOS + the system prompt's tokens
    assert shared_prefix(x_p, batch.m_p) >= n_shared - 1  # the Stream shared it too: rows equal bit for bit
    results = {}
    for path in ("transformerlens", "unshared", "shared"):
        delta = torch.zeros(model.cfg.d_model, requires_grad=True)
        with torch.no_grad():
            delta += 0.3 * torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
        args = (model, 1, model.cfg.n_layers, x_p + delta, x_a + delta)
        if path == "transformerlens":
            with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda act, hook: act)]):
                r_p, r_a = run_blocks(*args, batch)
        else:
            r_p, r_a = packed_blocks(*args, batch.m_p, batch.m_a, batch.owner, share=path == "shared")
        lp = read_answers(r_p, r_a, batch).logprobs(model, len(batch.owner))
        lp.sum().backward()
        results[path] = (lp.detach(), delta.grad, r_p[batch.m_p].detach(), r_a[batch.m_a].detach())
    for path in ("unshared", "shared"):
        for got, want in zip(results[path], results["transformerlens"]):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert results["shared"][1].norm() > 0


@pytest.mark.tl3
def test_shared_prefix_needs_equal_rows(tiny_model):
    """Different deltas per item (BiPO's per-pair directions) or short spans share nothing; a mismatch at one
    position ends the span there."""
    from workbench.engine.packed import MIN_SHARED_ROWS, shared_prefix

    batch = _shared_batch(tiny_model)
    x_p, _ = Stream(tiny_model, batch).at(1)
    span = shared_prefix(x_p, batch.m_p)
    assert span * 3 >= MIN_SHARED_ROWS
    signs = torch.tensor([1.0, -1.0, 1.0, 1.0])[:, None, None]
    assert shared_prefix(x_p + signs * torch.ones(tiny_model.cfg.d_model), batch.m_p) == 0
    cut = x_p.clone()
    cut[2, span - 2] += 1e-3
    assert shared_prefix(cut, batch.m_p) == (span - 2 if (span - 2) * 3 >= MIN_SHARED_ROWS else 0)
    assert shared_prefix(x_p[:1], batch.m_p[:1]) == 0  # one item: nothing to share
    plain = assemble(tiny_model, tokenize_items(tiny_model, PROMPTS, ANSWERS), [0, 1, 2, 3])
    assert shared_prefix(Stream(tiny_model, plain).at(1)[0], plain.m_p) == 0  # only BOS in common
