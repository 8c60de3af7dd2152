"""The ``workbench mechanism`` run: which components carry each steering vector's effect, and how.

For every ``--vector`` on the first ``--pairs`` held-out pairs of an embedded behavior, at one multiplier:
exact activation patching (``workbench.analysis.patching``; Heimersheim and Nanda 2024, arXiv 2404.15255),
its gradient approximation (attribution patching, ``workbench.analysis.attribution``; Syed et al. 2023,
arXiv 2310.10348; with its rank agreement to the exact result when both run), the direct logit attribution
of the steered change (Elhage et al. 2021), the attention shift of the heads that patching finds
necessary (``workbench.analysis.attention_shift``) and, with two vectors or more, the comparison of
their routes (``workbench.analysis.routes``). Options and paths are checked before the model loads;
each result is written atomically as ``OUT/<label>_<kind>.json`` (the routes as
``OUT/mechanism_routes.json``) and its figure under ``OUT/figures``.

Exact patching is the slow one (two runs of the blocks after the hook per component and direction);
``--analysis attribution dla`` gives a first look in two passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.analysis.attention_shift import attention_shifts
from workbench.analysis.attribution import attribution_patching, steered_dla
from workbench.analysis.patching import PatchingConfig, activation_patching
from workbench.analysis.routes import compare_routes
from workbench.core.results import Result
from workbench.data.behaviors import list_behaviors, load_behavior
from workbench.studies.runs import (Log, ModelOptions, RunError, check_at_least_one, check_out, load_vectors, silent,
                                    write_result)
from workbench.viz.figures import figures_for
from workbench.viz.style import save_figure

#: the analyses of ``--analysis``, in the order they run (later ones use earlier results)
ANALYSES = ("patching", "attribution", "dla", "attention", "routes")
RESIDUAL_HOOKS = ("hook_resid_pre", "hook_resid_post")  # where direct logit attribution applies


@dataclass(kw_only=True)
class MechanismRun(ModelOptions):
    """Options of ``workbench mechanism``."""

    vector: Sequence[str]  # vector directories (BiPO, CAA, ...); labels as ``load_vectors`` gives them
    behavior: str  # the embedded behavior whose held-out ("test") pairs are used
    out: str  # output directory: one result JSON per vector and analysis, figures under OUT/figures
    analysis: Sequence[str] = ("all",)  # some of ANALYSES, or "all"
    multiplier: float = 1.0  # m of the steered run
    pairs: int = 20  # the first N held-out pairs
    top_k: int = 5  # heads of the attention shift (by necessity share; every head after the hook without patching)
    batch_size: int = 20  # pairs per batch
    n_boot: int = 1000
    seed: int = 0  # bootstrap seed
    figures: bool = True  # also draw each result's figure


def _slug(label: str) -> str:
    """A vector label as a file-name part (``caa:run1`` -> ``caa-run1``)."""
    return "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in label).strip("-") or "vector"


def chosen_analyses(names: Sequence[str], n_vectors: int, log: Log = silent) -> list[str]:
    """``--analysis`` checked and put in running order; routes bring patching with them (and need two vectors)."""
    bad = [n for n in names if n not in (*ANALYSES, "all")]
    if bad or not names:
        raise RunError(f"--analysis {' '.join(bad or names)}: choose from {', '.join(ANALYSES)} or all")
    chosen = set(ANALYSES) if "all" in names else set(names)
    if "routes" in chosen and n_vectors < 2:
        if "all" not in names:
            raise RunError(f"--analysis routes compares vectors: give two --vector or more, got {n_vectors}")
        chosen.discard("routes")
    if "routes" in chosen and "patching" not in chosen:
        log("routes are made of exact patching: running patching too")
        chosen.add("patching")
    return [a for a in ANALYSES if a in chosen]


def mechanism_run(config: MechanismRun, log: Log = silent) -> dict[str, Result]:
    """The chosen analyses of every vector; writes each result (and its figure) under ``config.out``.

    Returns:
        ``{file stem: result}``, e.g. ``{"bipo_activation_patching": ..., "mechanism_routes": ...}``.
    """
    check_at_least_one(config, "pairs", "top_k", "batch_size", "n_boot")
    if config.behavior not in list_behaviors():
        raise RunError(f"--behavior {config.behavior!r}: not an embedded behavior ({', '.join(list_behaviors())})")
    if float(config.multiplier) == 0:
        raise RunError("--multiplier 0 steers nothing: give the multiplier of the steered run")
    config.check_model()
    out = Path(check_out("--out", config.out, kind="dir"))
    try:
        vectors, sources = load_vectors(config.vector)
    except (ValueError, OSError) as exc:
        raise RunError(f"--vector: {exc}") from None
    analyses = chosen_analyses(config.analysis, len(vectors), log)
    pairs = load_behavior(config.behavior, "test")[: config.pairs]
    if len(pairs) < 2:
        raise RunError(f"--behavior {config.behavior}: {len(pairs)} held-out pair(s); the intervals need 2 or more")
    cfg = PatchingConfig(batch_size=config.batch_size, n_boot=config.n_boot, seed=config.seed)
    model = config.load_model()
    info = {"behavior": config.behavior, "split": "test", "pairs": len(pairs)}
    written: dict[str, Result] = {}

    def keep(label: str, res: Result) -> Result:
        res = res.with_info(data=info, source=sources[label]) if label in sources else res
        stem = f"{_slug(label)}_{res.kind}" if label in sources else res.kind
        res = written[stem] = write_result(res, out / f"{stem}.json", model, cfg.system_prompt)
        log(f"wrote {out / f'{stem}.json'}")
        return res

    exact: dict[str, Result] = {}
    for label, vector in vectors.items():
        log(f"{label}: {', '.join(a for a in analyses if a != 'routes')} on {len(pairs)} {config.behavior} pairs, "
            f"m = {config.multiplier:+g}")
        try:
            if "patching" in analyses:
                exact[label] = keep(label, activation_patching(model, vector, pairs, config.multiplier, cfg))
            if "attribution" in analyses:
                keep(label, attribution_patching(model, vector, pairs, config.multiplier, cfg, exact=exact.get(label)))
            if "dla" in analyses:
                if vector.hook_name.rsplit(".", 1)[-1] in RESIDUAL_HOOKS:
                    keep(label, steered_dla(model, vector, pairs, config.multiplier, cfg))
                else:
                    log(f"warning: {label} is on {vector.hook_name}, not the residual stream: no direct logit "
                        "attribution")
            if "attention" in analyses:
                keep(label, attention_shifts(model, vector, pairs, config.multiplier, heads=exact.get(label),
                                             top_k=config.top_k, config=cfg))
        except (ValueError, NotImplementedError) as exc:
            raise RunError(f"mechanism ({label}): {exc}") from None
    if "routes" in analyses:
        keep("", compare_routes(exact).with_info(data=info, sources=sources))
    if config.figures:
        for stem, res in written.items():
            for suffix, fig in figures_for(res).items():
                for path in save_figure(fig, out / "figures" / f"{stem}__{suffix}"):
                    log(f"wrote {path}")
    return written


def format_mechanism(results: Mapping[str, Any], top: int = 5) -> str:
    """A few lines per result: the total effect and the components carrying most of it (necessity share)."""
    lines = []
    for stem, res in results.items():
        kind = res["kind"]
        if kind in ("activation_patching", "attribution_patching"):
            t = res.table()
            t = t[(t["direction"] == "necessity") & (t["type"].isin(["head", "mlp", "direct"]))]
            best = ", ".join(f"{r.component} {r.share:.2f}" for r in t.nlargest(top, "share").itertuples())
            lines.append(f"{stem}: total effect {res['total_effect']:.3f}; top necessity shares: {best}")
        elif kind == "direct_logit_attribution":
            lines.append(f"{stem}: Δ logit difference {res['total_logit_diff_change']:.3f} at the read token")
        elif kind == "attention_shift":
            h = res.table("heads").sort_values("rank")
            lines.append(f"{stem}: total variation " + ", ".join(f"{r.component} {r.tv_distance:.3f}"
                                                                 for r in h.itertuples()))
        elif kind == "mechanism_routes":
            c = res.table("cosines")
            c = c[c["components"] == "all"]
            lines.append(f"{stem}: cosine of the routes " + ", ".join(
                f"{r.label_a}/{r.label_b} {r.direction} {r.cosine:.2f}" for r in c.itertuples()))
    return "\n".join(lines)


__all__ = ["ANALYSES", "MechanismRun", "chosen_analyses", "format_mechanism", "mechanism_run"]
