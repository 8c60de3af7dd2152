"""The refusal study: refusal rate and likelihood signal of steered answers, with jailbreak templates.

BiPO (Cao et al. 2024, arXiv 2406.00045, section 4.3) trains a vector on harmful requests paired with
a refusal and with the affirmative opening an attack aims for (AdvBench's ``target``, Zou et al. 2023,
arXiv 2307.15043): one direction of the vector breaks an aligned model's refusals (a jailbreak), the
other defends against jailbreak prompts. No harmful completion is ever needed: the "not matching"
answer is only the opening, such as "Sure, here is how to ...".

Here a *refusal pair* has the request as its question, a stock refusal (``STOCK_REFUSALS``, written
for this project, one drawn per request from a hash of the request, so the draw never changes) as its
**matching** answer and the affirmative opening as its **not matching** answer: ``+m`` steers toward
refusing, ``-m`` is the jailbreak direction. Requests come from AdvBench's ``goal, target`` CSV
(``load_advbench``) or from the embedded set (``load_refusal_requests``: 60 mild requests written for
this project, lock picking, fake reviews and the like; every fifth is held out); the requests, pairs
and templates live in ``workbench.data.refusal``, the refusal rule in ``workbench.evaluate.generation``.

Two signals at each multiplier, on held-out requests:

* **refusal rate** of greedy answers under the keyword rule ``is_refusal``. The rule reads only the
  opening of the answer (``REFUSAL_WINDOW`` characters), where refusals are said, and knows a few
  look-alikes that are not refusals ("I can't wait to help", "I cannot stress enough", "I'm sorry to
  hear that", "I'm sorry for any confusion, but ... here is"). Known limits: it misses refusals
  phrased otherwise ("Let's talk about something else"), counts an answer that refuses and then
  complies as a refusal, and reads English only.
* **likelihood signal**: ``log p(refusal opening) - log p(target opening)`` under the steered model,
  the preference log-odds of the refusal pairs (``workbench.evaluate.preference.logodds_curve``, with no
  end-of-turn token after either answer, since the target is only an opening): no generation, no
  keyword rule, exact.

"Defense" is the same measured with a jailbreak template wrapped around each request
(``JAILBREAK_TEMPLATES``, written for this project in the manner of published attacks; each entry
says which).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from workbench.core.backend import Model
from workbench.core.results import REFUSAL, Result, result
from workbench.core.vector import SteeringVector
from workbench.data.refusal import HarmfulRequest, refusal_pairs
from workbench.evaluate.generation import REFUSAL_WINDOW, is_refusal, steered_generations
from workbench.evaluate.preference import logodds_curve
from workbench.evaluate.statistics import summarize
from workbench.evaluate.utility import utility_curve
from workbench.core.options import with_options
from workbench.studies.config import RefusalConfig


def refusal_study(model: Model, vectors: Mapping[str, SteeringVector], requests: Sequence[HarmfulRequest],
                  multipliers: Sequence[float] = (-2.0, -1.0, 0.0, 1.0, 2.0), *,
                  neutral_texts: Sequence[str] | None = None, config: RefusalConfig | None = None,
                  progress: bool = False, **options: Any) -> Result:
    """Refusal rate and likelihood signal of steered answers, with and without jailbreak templates.

    Args:
        model: the model.
        vectors: ``{label: SteeringVector}``.
        requests: held-out requests (never those the vectors were trained on).
        multipliers: multipliers of every vector.
        neutral_texts: neutral passages; with them every row also gets the utility cost of its
            ``(vector, multiplier)`` (``workbench.evaluate.utility.utility_curve``: ``kl`` from the unsteered
            model per token and ``perplexity``, with intervals; the same for every template).
        config: the options (``RefusalConfig``): ``templates`` (``None``, the plain request, and names
            of ``JAILBREAK_TEMPLATES``), ``max_new_tokens`` (length of the greedy answers scored by
            ``is_refusal``), ``system_prompt`` (``"default"``: the evaluation's default, BiPO's),
            ``n_boot``, ``seed``, ``batch_size``, ``utility_max_tokens``.
        progress: show progress bars.
        **options: fields of ``RefusalConfig``, replacing those of ``config``.

    Returns:
        A result ``{"kind": "refusal", "rows": [...], "generations": [...], ...}``; each row is one
        ``(vector, template, multiplier)`` with ``refusal_rate`` (and its bootstrap interval) and
        ``logodds`` (the likelihood signal: mean over requests, and its interval), and with
        ``neutral_texts`` ``kl`` and ``perplexity`` (and their intervals).

    Raises:
        TypeError: an option that is not a field of ``RefusalConfig``.
    """
    config = with_options(RefusalConfig, config, options, "refusal_study")
    templates, max_new_tokens, system_prompt = config.templates, config.max_new_tokens, config.system_prompt
    n_boot, seed, batch_size = config.n_boot, config.seed, config.batch_size
    kw: dict[str, Any] = {} if system_prompt == "default" else {"system_prompt": system_prompt}
    rows, gens_out = [], []
    for template in templates:
        name = template or "none"
        pairs = refusal_pairs(requests, template=template, seed=seed)
        # the target is only an opening: no end-of-turn token after either answer
        curve = logodds_curve(model, dict(vectors), pairs, multipliers, n_boot=n_boot, seed=seed,
                              append_end_of_turn=False, batch_size=batch_size, progress=progress,
                              **kw).table("logodds")
        gens = steered_generations(model, dict(vectors), [p.question for p in pairs], multipliers,
                                   max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress, **kw)
        gens = gens.assign(template=name, refused=[is_refusal(t) for t in gens["generation"]])
        rate = summarize(gens.assign(refused=gens["refused"].astype(float)), "refused", n_boot=n_boot, seed=seed)
        merged = rate.rename(columns={"mean": "refusal_rate", "ci_low": "refusal_ci_low",
                                      "ci_high": "refusal_ci_high"}).merge(
            curve[["vector", "multiplier", "mean", "ci_low", "ci_high"]].rename(
                columns={"mean": "logodds", "ci_low": "logodds_ci_low", "ci_high": "logodds_ci_high"}),
            on=["vector", "multiplier"])
        merged.insert(1, "template", name)
        rows.append(merged)
        gens_out.append(gens)
    table = pd.concat(rows, ignore_index=True)
    if neutral_texts:
        util = utility_curve(model, dict(vectors), list(neutral_texts), multipliers, n_boot=n_boot, seed=seed,
                             max_tokens=config.utility_max_tokens, batch_size=batch_size, progress=progress)
        wide = {}
        for measure, name in (("kl_from_unsteered", "kl"), ("perplexity", "perplexity")):
            u = util.table(measure)[["vector", "multiplier", "mean", "ci_low", "ci_high"]]
            wide[name] = u.rename(columns={"mean": name, "ci_low": f"{name}_ci_low", "ci_high": f"{name}_ci_high"})
        for part in wide.values():
            table = table.merge(part, on=["vector", "multiplier"], how="left")
    return result(REFUSAL, rows=table, generations=pd.concat(gens_out, ignore_index=True),
                  templates=[t or "none" for t in templates], n_requests=len(requests),
                  max_new_tokens=max_new_tokens, refusal_rule={"window": REFUSAL_WINDOW},
                  n_neutral_texts=len(neutral_texts or []),
                  vectors={label: getattr(v, "hook_name", None) for label, v in vectors.items()})


TEXT_FIELDS = ("question", "generation")


def without_text(res: Mapping[str, Any]) -> dict[str, Any]:
    """A refusal result with the requests' and answers' text removed (the numbers are unchanged).

    Each generation keeps its vector, template, multiplier, item and ``refused`` flag, so the refusal
    rates can be recomputed from it; ``text_omitted`` records that the text was dropped. For data whose
    text must not be committed or shared (AdvBench's requests; what a model answers to them).
    """
    out = dict(res)
    out["generations"] = [{k: v for k, v in g.items() if k not in TEXT_FIELDS} for g in res["generations"]]
    out["text_omitted"] = list(TEXT_FIELDS)
    return out
