"""The backend seam (workbench.core.backend) on whichever TransformerLens line is installed."""

import importlib.metadata

import pytest
import torch

from workbench.core import backend
from workbench.core.vector import SteeringVector
from workbench.engine import unembed
from workbench.engine.steering import generate, remaining_hooks, steer


def _vector(model, hook="blocks.1.hook_resid_post", scale=2.0):
    g = torch.Generator().manual_seed(3)
    return SteeringVector(scale * torch.randn(model.cfg.d_model, generator=g), hook)


def test_line_and_model_kind_agree(tiny_model):
    assert backend.LINE == int(backend.TL_VERSION.split(".")[0])
    assert backend.is_bridge(tiny_model) == (backend.LINE == 4)
    assert (backend.HookedTransformer is None) == (backend.LINE == 4)


def test_final_residual_unembeds_to_the_models_logits_under_hooks(tiny_model):
    tokens = tiny_model.to_tokens(["Hello there, model", "Hi"], prepend_bos=False, padding_side="right")
    v = _vector(tiny_model)
    with torch.no_grad(), steer(tiny_model, v, 1.5):
        logits = tiny_model(tokens).float()  # (b, pos, d_vocab)
        h = backend.final_residual(tiny_model, tokens)  # (b, pos, d_model)
    assert h.shape == (*tokens.shape, tiny_model.cfg.d_model)
    torch.testing.assert_close(unembed(tiny_model, h.flatten(0, 1)).view_as(logits), logits, atol=1e-5, rtol=1e-5)
    assert remaining_hooks(tiny_model) == 0


def test_a_vector_at_resid_post_is_what_the_next_block_reads(tiny_model):
    """Hooks act at the requested name (the bridge's internal names differ): resid_post of 1 + v = resid_pre of 2."""
    v = _vector(tiny_model)
    tokens = tiny_model.to_tokens("Some words here", prepend_bos=False)
    seen = {}

    def keep(name):
        def fn(act, hook):  # noqa: ARG001
            seen[name] = act.detach().clone()
        return fn

    with torch.no_grad():
        with tiny_model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", keep("post"))]):
            tiny_model(tokens)
        with steer(tiny_model, v, 1.0), tiny_model.hooks(fwd_hooks=[("blocks.2.hook_resid_pre", keep("pre"))]):
            tiny_model(tokens)
    torch.testing.assert_close(seen["pre"], seen["post"] + v.vector, atol=1e-5, rtol=1e-5)


def test_remaining_hooks_counts_the_callers_hooks_only(tiny_model):
    assert remaining_hooks(tiny_model) == 0  # a fresh bridge's own module hooks are not counted
    with tiny_model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda act, hook: act),
                                     ("blocks.2.hook_mlp_out", lambda act, hook: act)]):
        assert remaining_hooks(tiny_model) == 2
    assert remaining_hooks(tiny_model) == 0


def _greedy(model, prompt, v, m, n):
    """Reference decoding: one full forward per new token, argmax, stop at EOS."""
    tokens = model.to_tokens(prompt, prepend_bos=False)
    new = []
    with torch.no_grad(), steer(model, v, m):
        for _ in range(n):
            nxt = model(tokens)[0, -1].argmax()
            if int(nxt) == model.tokenizer.eos_token_id:
                break
            new.append(int(nxt))
            tokens = torch.cat([tokens, nxt.view(1, 1)], dim=1)
    return model.tokenizer.decode(new, skip_special_tokens=True)


def test_generation_with_the_cache_matches_full_forward_decoding(tiny_model):
    """Catches garbage from cached decoding (transformers 5.24.0 on a bridge): workbench must not produce it."""
    v = _vector(tiny_model)
    for prompt in ("Hello there", "A longer prompt with more words in it"):
        assert generate(tiny_model, prompt, v, 2.0, max_new_tokens=8, use_kv_cache=True) == \
            _greedy(tiny_model, prompt, v, 2.0, 8)
    assert remaining_hooks(tiny_model) == 0


def test_broken_cached_generation_list_is_right_for_the_installed_transformers(tiny_model):
    """The model's own cached decoding equals uncached decoding exactly when ``kv_cache_ok`` says so."""
    tokens = tiny_model.to_tokens("Hello there", prepend_bos=False)
    kw = dict(max_new_tokens=8, do_sample=False, verbose=False, stop_at_eos=False, prepend_bos=False,
              return_type="tokens")
    with torch.no_grad():
        cached = tiny_model.generate(tokens, use_past_kv_cache=True, **kw)
        plain = tiny_model.generate(tokens, use_past_kv_cache=False, **kw)
    assert torch.equal(cached, plain) == backend.kv_cache_ok(tiny_model), (
        f"transformers {importlib.metadata.version('transformers')}: update backend.BROKEN_CACHED_GENERATION")


@pytest.mark.embedded
def test_embedded_model_cfg_facts(embedded_model):
    c = embedded_model.cfg
    assert (c.n_layers, c.d_model, c.default_prepend_bos, c.model_name) == (30, 576, False, "SmolLM2-135M-Instruct")
    assert c.rotary_base == 100000.0 and c.dtype == torch.float32
    assert backend.is_bridge(embedded_model) == (backend.LINE == 4)
    assert embedded_model.to_tokens("hi", prepend_bos=False).tolist() == [[6004]]
    assert remaining_hooks(embedded_model) == 0
