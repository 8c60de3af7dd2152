"""Perplexity and agreement with the unsteered model on neutral text."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from workbench.core.vector import SteeringVector
from workbench.engine.steering import remaining_hooks
from workbench.evaluate.utility import (
    MEASURES,
    summarize_utility,
    utility_curve,
    utility_per_text,
    utility_tables,
)

TEXTS = ["The river winds through low hills to the sea.", "Bread needs flour, water, salt and yeast.",
         "Trains leave every thirty minutes."]


@pytest.fixture
def vec():
    return SteeringVector(torch.randn(32, generator=torch.Generator().manual_seed(5)), "blocks.1.hook_resid_post",
                          method="caa")


def test_unsteered_row_is_the_plain_model(tiny_model, vec):
    res = utility_curve(tiny_model, vec, TEXTS, [0.0, 4.0], n_boot=100, progress=False)
    assert remaining_hooks(tiny_model) == 0
    assert res.kind == "eval" and res.tables == list(MEASURES)
    u = pd.concat([res.table(m).assign(measure=m) for m in MEASURES], ignore_index=True)
    at0 = u[u.multiplier == 0.0].set_index("measure")["mean"]
    assert at0["top1_agreement"] == 1.0 and at0["kl_from_unsteered"] == pytest.approx(0.0, abs=1e-6)
    # perplexity from TransformerLens' own loss (token-weighted over the passages)
    nll, n = 0.0, 0
    for t in TEXTS:
        toks = tiny_model.tokenizer(t, return_tensors="pt", add_special_tokens=False)["input_ids"]
        loss = tiny_model(toks, return_type="loss", loss_per_token=True)
        nll, n = nll + float(loss.sum()), n + loss.numel()
    assert at0["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-4)
    at4 = u[u.multiplier == 4.0].set_index("measure")["mean"]
    assert at4["kl_from_unsteered"] > 0 and at4["top1_agreement"] < 1.0


def test_tidy_columns(tiny_model, vec):
    fast = utility_per_text(tiny_model, {"v": vec}, TEXTS, [-2.0, 1.0], progress=False)
    s = summarize_utility(fast, n_boot=50)
    assert list(s.columns) == ["vector", "multiplier", "measure", "n", "n_tokens", "mean", "ci_low", "ci_high"]
    assert set(s.measure) == {"perplexity", "top1_agreement", "kl_from_unsteered"}
    assert (s.n_tokens == sum(len(t) - 1 for t in TEXTS)).all()  # char-level tokenizer, no BOS
    tables = utility_tables(fast, n_boot=50)  # the curve's tables: summarize_utility's rows of each measure
    assert list(tables) == list(MEASURES)
    for measure, table in tables.items():
        want = s[s.measure == measure].drop(columns="measure").reset_index(drop=True)
        pd.testing.assert_frame_equal(table, want)


def test_default_neutral_text_and_errors(tiny_model, vec):
    u = utility_curve(tiny_model, vec, None, [1.0], max_tokens=16, n_boot=0, progress=False).table("perplexity")
    assert (u.n >= 10).all()  # the embedded neutral text has many passages
    with pytest.raises(ValueError, match="empty"):
        utility_curve(tiny_model, vec, [], progress=False)
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        utility_curve(tiny_model, vec, ["fine text", "  "], progress=False)


def test_kl_beyond_bound_lists_the_rows_past_it():
    from workbench.evaluate.utility import KL_BOUND, kl_beyond_bound

    rows = [{"vector": "v", "multiplier": m, "mean": k} for m, k in ((0.0, 0.0), (1.0, 1.9), (4.0, 2.5),
                                                                      (8.0, float("nan")))]
    assert KL_BOUND == 2.0
    got = kl_beyond_bound(rows)
    assert [(r["multiplier"], r["kl"]) for r in got[:1]] == [(4.0, 2.5)] and got[1]["multiplier"] == 8.0
    assert kl_beyond_bound(rows, bound=3.0)[0]["multiplier"] == 8.0 and kl_beyond_bound([]) == []


def test_chunk_statistics_equal_the_definitions_bit_for_bit(tiny_model):
    """The in-place KL of a chunk is ``kl_unsteered_to_steered``'s, bit for bit; the unsteered rows score KL 0
    and agree everywhere."""
    from workbench.engine.readout import unembed
    from workbench.evaluate.utility import _chunk_stats, _reference_chunk, kl_unsteered_to_steered

    g = torch.Generator().manual_seed(0)
    h_ref = torch.randn(7, tiny_model.cfg.d_model, generator=g)
    h = h_ref + 0.5 * torch.randn(7, tiny_model.cfg.d_model, generator=g)
    targets = torch.randint(0, tiny_model.cfg.d_vocab, (7,), generator=g)
    ref = _reference_chunk(tiny_model, h_ref)
    lp = unembed(tiny_model, h).log_softmax(-1)
    stats = _chunk_stats(tiny_model, h, targets, ref)
    assert torch.equal(stats[:, 2], kl_unsteered_to_steered(ref[0], lp).double())
    assert torch.equal(stats[:, 0], -lp.gather(1, targets[:, None]).squeeze(1).double())
    assert torch.equal(stats[:, 1], (lp.argmax(-1) == ref[0].argmax(-1)).double())
    assert stats[:, 2].min() > 0
    own = _chunk_stats(tiny_model, None, targets, ref)
    assert torch.equal(own[:, 1:], torch.tensor([[1.0, 0.0]], dtype=torch.float64).expand(7, 2))
    from workbench.engine.readout import Scratch

    scratch = Scratch()  # the log-probs and exp(ref) in reused buffers: the same numbers, twice over
    assert torch.equal(_chunk_stats(tiny_model, h, targets, ref, scratch), stats)
    assert torch.equal(_chunk_stats(tiny_model, h, targets, ref, scratch), stats)


def test_utility_passes_equal_utility_per_text_and_run_the_prefix_once(tiny_model, vec, monkeypatch):
    """A comparison's cost probes: every pass gives ``utility_per_text``'s numbers bit for bit, and only the first
    runs the blocks below the vector (the later ones reuse each batch's residual stream; on the bridge every
    pass runs the full forward)."""
    import workbench.engine.forward as forward
    from workbench.core.backend import LINE
    from workbench.evaluate.utility import NeutralReference, utility_passes

    embeds = []
    real = forward._embed
    monkeypatch.setattr(forward, "_embed", lambda model, batch: embeds.append(1) or real(model, batch))
    ref = NeutralReference(tiny_model, TEXTS, 16)
    first = utility_passes(tiny_model, ref, [(vec, 2.0)], batch_size=2)
    n_first = len(embeds)
    second = utility_passes(tiny_model, ref, [(vec, -1.0), (vec, 2.0)], batch_size=2)
    assert len(embeds) == n_first == (2 if LINE == 3 else 0)  # two batches of passages, embedded (and run up) once
    assert torch.equal(second[1], first[0])
    df = utility_per_text(tiny_model, vec, TEXTS, [-1.0, 2.0], max_tokens=16, batch_size=2, progress=False)
    for m, got in ((-1.0, second[0]), (2.0, first[0])):
        want = df[df.multiplier == m].sort_values("text")[["nll_sum", "agree_sum", "kl_sum"]].to_numpy()
        assert torch.equal(got, torch.tensor(want))
    assert torch.equal(ref.base, torch.tensor(
        utility_per_text(tiny_model, vec, TEXTS, [0.0], max_tokens=16, batch_size=2, progress=False)
        .sort_values("text")[["nll_sum", "agree_sum", "kl_sum"]].to_numpy()))
    assert (second[:, :, 2] > 0).all()
