"""Write the notebooks in notebooks/ from the cell lists below, and optionally execute them.

    .venv/bin/python scripts/make_notebooks.py                 # write the changed notebooks, without outputs
    .venv/bin/python scripts/make_notebooks.py --execute       # write and run them (full size: slow)
    .venv/bin/python scripts/make_notebooks.py --execute --quick   # run them in quick mode

Notebooks only call the package through ``import workbench as wb`` (the public API; a test checks each
notebook's source uses only its names); every computation lives in ``workbench``. Each has a parameter cell
where ``QUICK`` (``WORKBENCH_NOTEBOOK_QUICK=1``) shrinks the run and ``RUNS`` is where trained vectors
are cached (``wb.study_vectors``): ``$WORKBENCH_RUNS/{quick,full}/vectors``, by default
``results/{quick,full}/vectors``, the same place as ``scripts/reproduce.sh``, so the notebooks reuse the
vectors of a reproduction run (and each other's).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

PARAMETERS = '''\
import os
from pathlib import Path

QUICK = os.environ.get("WORKBENCH_NOTEBOOK_QUICK") == "1"  # a small run for tests
# trained vectors are cached here and shared with `workbench reproduce` (results/full/vectors)
RUNS = Path(os.environ.get("WORKBENCH_RUNS", "../results")) / ("quick" if QUICK else "full") / "vectors"'''

SETUP = '''\
%matplotlib inline
import logging

import pandas as pd
from IPython.display import display

import workbench as wb

logging.getLogger("workbench").setLevel(logging.WARNING)
pd.set_option("display.max_colwidth", 120)
CONFIG = wb.StudyConfig.quick() if QUICK else wb.StudyConfig()
model = wb.load_model()  # the embedded SmolLM2-135M-Instruct, offline
print(model.cfg.model_name, model.cfg.n_layers, "layers, d_model", model.cfg.d_model, "| QUICK =", QUICK)'''


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str, parameters: bool = False):
    cell = new_code_cell(text.strip("\n"))
    if parameters:
        cell.metadata["tags"] = ["parameters"]
    return cell


def header(title: str, body: str) -> list:
    return [md(f"# {title}\n\n{body.strip()}"), code(PARAMETERS, parameters=True), code(SETUP)]


NOTEBOOK_CELLS = {
    "01_quickstart": header("Quickstart: train a BiPO steering vector and steer generation", """
BiPO (bi-directional preference optimization, Cao et al. 2024, [arXiv 2406.00045](https://arxiv.org/abs/2406.00045))
learns a steering vector `v` so that adding `+v` to the residual stream makes the behavior-matching answer
of each preference pair more likely and adding `-v` makes the other answer more likely (a DPO loss with
the direction drawn at random per batch). This notebook trains one on the embedded power-seeking pairs,
shows its training curves and steers generation with several multipliers `m` of `m * v`.
""") + [
        md("## Data\nEmbedded preference pairs: a question, a behavior-matching answer, a not-matching answer."),
        code('''
train, test = wb.study_pairs("power-seeking", CONFIG)
print(len(train), "training pairs,", len(test), "held-out pairs")
pair = train[0]
print("Q:", pair.question, "\\n+:", pair.matching, "\\n-:", pair.not_matching)'''),
        md("## Train\n`train_bipo` optimises only the vector (the model is frozen); "
           "`CONFIG.bipo_config()` holds the study's settings (layer 14, `resid_post`)."),
        code('''
result = wb.train_bipo(model, train, CONFIG.bipo_config(), progress=False)
vector = result.vector
record = result.to_dict()  # the training record: a bipo_history result (per step and per epoch)
print(vector)
display(record.table("epochs").round(3))'''),
        code('''
wb.plot(record)  # its training curves'''),
        md("## Steer generation\nGreedy answers to held-out questions at several multipliers (`m = 0` is the unsteered model)."),
        code('''
questions = [p.question for p in test[: 1 if QUICK else 3]]
multipliers = [-2.0, 0.0, 2.0]
gens = wb.steered_generations(model, {"bipo": vector}, questions, multipliers,
                           max_new_tokens=8 if QUICK else 64, progress=False)
display(gens.pivot(index="question", columns="multiplier", values="generation"))'''),
        md("## Save and load\nA vector is a directory: `vector.safetensors` + `vector.json` (metadata, config, data fingerprint)."),
        code('''
path = vector.save(RUNS / "quickstart" / "bipo")
loaded = wb.load_vector(path, model)
print(path, loaded.method, loaded.hook_name, f"norm {loaded.norm:.3f}", "equal:", bool((loaded.vector == vector.vector).all()))
with wb.steer(model, loaded, multipliers=2.0):  # hooks exist only inside the block
    pass
print("hooks left:", wb.remaining_hooks(model))'''),
    ],
    "02_bipo_vs_caa": header("BiPO vs. CAA", """
CAA (contrastive activation addition, Rimsky et al. 2023, [arXiv 2312.06681](https://arxiv.org/abs/2312.06681)) takes
the mean difference of the activations of matching and not-matching answers; BiPO (Cao et al. 2024,
[arXiv 2406.00045](https://arxiv.org/abs/2406.00045)) optimises the vector directly. Both are made at the same
layer from the same pairs (`wb.study_vectors` trains them once and caches them in `RUNS`), then compared on
held-out pairs: the log-odds `log p(matching) - log p(not matching)` across multipliers, their cosine
similarity, and steered generations side by side.
""") + [
        code('''
behaviors = list(CONFIG.composition)  # power-seeking, wealth-seeking
vectors = {b: wb.study_vectors(model, b, CONFIG, RUNS) for b in behaviors}
for b, vecs in vectors.items():
    for m, v in vecs.items():
        print(f"{b:15s} {m:5s} {v.hook_name}  norm {v.norm:8.3f}")'''),
        md("## Held-out log-odds across multipliers\nMean over held-out pairs with a 95% bootstrap interval "
           "(`wb.logodds_curve`)."),
        code('''
_, test = wb.study_pairs("power-seeking", CONFIG)
curve = wb.logodds_curve(model, vectors["power-seeking"], test, CONFIG.multipliers, n_boot=CONFIG.n_boot,
                         progress=False)
display(curve.table("logodds").round(3))  # an eval result, as `workbench eval` writes: one table per metric
wb.plot_multiplier_curves(curve, title="power-seeking")'''),
        md("## Cosine similarity\nBetween methods and between behaviors (`wb.cosine_table`)."),
        code('''
cosines = wb.cosine_table({f"{m}:{b}": vecs[m] for b, vecs in vectors.items() for m in ("bipo", "caa")})
display(cosines.table().round(3))
wb.plot_cosine_heatmap(cosines)'''),
        md("## Generations side by side"),
        code('''
gens = wb.steered_generations(model, vectors["power-seeking"], [p.question for p in test[: 1 if QUICK else 3]],
                           [-2.0, 2.0], max_new_tokens=8 if QUICK else 64, progress=False)
display(gens.pivot(index=["question", "multiplier"], columns="vector", values="generation"))'''),
        md("""## At equal cost: the matched-cost comparison
Equal multipliers are not a common scale: the vectors' norms differ, and so does the damage each does per
unit of norm. `wb.matched_cost` gives each vector its own multipliers: for each budget of KL from the
unsteered model per token on neutral text, in both directions, it searches the multiplier where the cost
reaches the budget and measures the held-out log-odds shift there (with a bootstrap interval). RePS
(`wb.train_reps`) and PCA (`wb.pca`) join BiPO and CAA (`wb.study_extra_vectors` makes and caches them as
`workbench reproduce` does)."""),
        code('''
four = {**vectors["power-seeking"], **wb.study_extra_vectors(model, "power-seeking", CONFIG, RUNS)}
texts = wb.load_neutral_text()[: 1 if QUICK else CONFIG.compare_texts]  # as `workbench compare`: 16 passages, 64 tokens
matched = wb.matched_cost(model, four, test, texts, budgets=CONFIG.budgets, n_boot=CONFIG.n_boot,
                          utility_kw={"max_tokens": CONFIG.compare_max_tokens})
table = matched.table()
display(table[["vector", "direction", "budget", "multiplier", "cost", "effect", "effect_ci_low", "effect_ci_high",
               "monotone"]].round(3))
wb.plot(matched)  # effect against cost, one line per vector and direction, budgets marked'''),
    ],
    "03_layer_sweep": header("Layer sweep", """
Where in the network does steering work? CAA vectors are extracted at every layer from one forward pass per
batch; BiPO vectors are trained at a few layers (cached in `RUNS`). Each layer's vector is scored on held-out
pairs: the change of the mean log-odds at `m = ±1` against the unsteered model. `wb.study_sweeps` is the
sweep stage of `workbench reproduce` (`CONFIG.sweep_layers`, `CONFIG.bipo_sweep_layers`).
""") + [
        code('''
sweeps = wb.study_sweeps(model, "power-seeking", CONFIG, RUNS)  # {"caa": SweepResult, "bipo": SweepResult}
for method, sweep in sweeps.items():
    print(method)
    display(sweep.table().round(3))'''),
        md("BiPO's `cos_ref` is its cosine to the CAA vector of the same layer."),
        code('''
wb.plot_layer_sweep(sweeps)'''),
        md("## How the CAA direction changes with depth\nCosine between the CAA vectors of every pair of layers."),
        code('''
wb.plot_cosine_heatmap(wb.layer_cosine_table(sweeps["caa"].vectors))'''),
    ],
    "04_logit_lens": header("Logit lens", """
The logit lens (nostalgebraist 2020) reads a residual-stream direction through the final norm and the
unembedding. (a) Which tokens does each vector promote or suppress on its own? (b) In a steered run on
held-out pairs, how does the change of the log-odds build up layer by layer, compared with the vector's
direct effect? (`workbench.analysis.logit_lens`)
""") + [
        code('''
vectors = wb.study_vectors(model, "power-seeking", CONFIG, RUNS)
_, test = wb.study_pairs("power-seeking", CONFIG)'''),
        md("## (a) Top tokens of each vector"),
        code('''
tokens = wb.vector_logit_lens(model, vectors, k=CONFIG.lens_k)  # one table, a `vector` column
display(tokens.table().pivot(index=["direction", "rank"], columns="vector", values="token"))
wb.plot_logit_lens_tokens(tokens)'''),
        md("## (b) Per-layer propagation of a steered run (`m = +1`)\nLayers before the vector's hook are shaded."),
        code('''
for name, v in vectors.items():
    lens = wb.steered_logit_lens(model, v, test, multiplier=1.0)
    display(lens.table().iloc[[0, v.layer, v.layer + 1, -1]].round(3))
    display(wb.plot_logit_lens_layers(lens, title=f"{name}, m = +1"))'''),
    ],
    "05_composition_transfer": header("Composition and transfer", """
**Composition** (BiPO, Cao et al. 2024, section 4.4): apply the power-seeking and wealth-seeking vectors
together and measure each behavior on its own held-out pairs: do the effects add, interfere or reinforce?
**Transfer**: the BiPO vector moved to other layers, and applied to a copy of the model fine-tuned briefly
on neutral text (`wb.composition_table`, `wb.layer_transfer`, `wb.transfer_effect`).
""") + [
        code('''
behaviors = list(CONFIG.composition)
vectors = {b: wb.study_vectors(model, b, CONFIG, RUNS)["bipo"] for b in behaviors}
tests = {b: wb.study_pairs(b, CONFIG)[1] for b in behaviors}'''),
        md("## Composition"),
        code('''
comp = wb.composition_table(model, vectors, tests, multipliers=CONFIG.composition_multiplier)
display(comp.table().round(3))
wb.plot(comp)'''),
        md("## Transfer across layers\nThe vector made at layer L applied at L + k, unchanged."),
        code('''
first = behaviors[0]
moved = wb.layer_transfer(model, vectors[first], tests[first], offsets=CONFIG.transfer_offsets, multipliers=(1.0,))
display(moved.table().round(3))
wb.plot_transfer(moved)'''),
        md("## Transfer to a fine-tuned copy\nThe last blocks of a copy are trained briefly on neutral text; "
           "the vector is applied unchanged."),
        code('''
target, losses = wb.finetune_copy(model, wb.load_neutral_text(), steps=max(1, CONFIG.finetune_steps))
print(f"fine-tuning loss {losses[0]:.3f} -> {losses[-1]:.3f}")
effect = wb.transfer_effect(model, target, vectors[first], tests[first], multipliers=CONFIG.sweep_multipliers)
display(effect.table().round(3))
wb.plot_transfer(effect, source=model.cfg.model_name, target=target.cfg.model_name)'''),
        md("""## Transfer to LoRA fine-tunes
A closer analog of the paper's transfer to Vicuna and LoRA fine-tunes: `wb.lora_transfer` fine-tunes the model
with `peft` LoRA adapters on a chat dataset written for this project until its KL from the base per token on
neutral text passes each target (`CONFIG.lora_kl_targets`), saves the merged weights (they load with
`wb.load_model(path)`), and measures the retained effect of the BiPO and CAA vectors on each fine-tune, and of
vectors made on the fine-tune applied back to the base. Fine-tunes are shared with `workbench reproduce`
(`results/full/finetunes`)."""),
        code('''
pair = wb.study_vectors(model, first, CONFIG, RUNS)
train_first = wb.study_pairs(first, CONFIG)[0]
lora = wb.lora_transfer(model, pair, train_first, tests[first], RUNS.parent / "finetunes",
                        kl_targets=CONFIG.lora_kl_targets, bipo_config=CONFIG.bipo_config(),
                        neutral_texts=wb.load_neutral_text()[: CONFIG.utility_texts], max_steps=CONFIG.lora_max_steps,
                        rank=CONFIG.lora_rank, lr=CONFIG.lora_lr, utility_max_tokens=CONFIG.utility_max_tokens,
                        n_boot=CONFIG.n_boot)
display(lora.table("finetunes"))
display(lora.table().round(3))
wb.plot(lora)  # retained effect against the fine-tune's distance'''),
    ],
    "07_refusal_truthfulness": header("Refusal, jailbreak templates and truthfulness", """
Two more of the BiPO paper's experiments (Cao et al. 2024, sections 4.2 and 4.3). **Refusal**: a vector
trained on requests paired with a stock refusal (matching) and the affirmative opening an attack aims for
(not matching), so `+m` steers toward refusing and `-m` is the jailbreak direction; measured on held-out
requests by a keyword refusal rate of greedy answers and by the likelihood signal
`log p(refusal) - log p(target opening)`, plainly and inside two of the project's jailbreak templates, with
the utility cost at each multiplier (`wb.refusal_study`). **Truthfulness**: a vector trained on TruthfulQA's
true and false answers of some questions, scored by MC1 and MC2 on questions it never saw
(`wb.truthfulness_study`; TruthfulQA is read from a path, `WORKBENCH_TRUTHFULQA`).
""") + [
        md("## Refusal and jailbreak templates"),
        code('''
refusal_vectors = wb.study_vectors(model, "refusal", CONFIG, RUNS)
requests = wb.load_refusal_requests("test")[: CONFIG.n_test]
refusal = wb.refusal_study(model, refusal_vectors, requests, CONFIG.multipliers,
                           templates=[None if t == "none" else t for t in CONFIG.refusal_templates],
                           max_new_tokens=CONFIG.refusal_max_new_tokens, n_boot=CONFIG.n_boot,
                           neutral_texts=wb.load_neutral_text()[: CONFIG.utility_texts])
display(refusal.table()[["vector", "template", "multiplier", "refusal_rate", "logodds", "kl"]].round(3))
wb.plot(refusal)  # refusal rate, likelihood signal and utility cost against the multiplier'''),
        code('''
gens = refusal.table("generations")  # every greedy answer, with the rule's verdict
display(gens[gens.template == "none"][["vector", "multiplier", "generation", "refused"]].head(6))'''),
        md("## Truthfulness on held-out TruthfulQA questions"),
        code('''
TRUTHFULQA = Path(os.environ.get("WORKBENCH_TRUTHFULQA", "../../shared/data/truthfulqa/mc_task_dev.json"))
print(TRUTHFULQA, "found" if TRUTHFULQA.is_file() else "not found: set WORKBENCH_TRUTHFULQA")'''),
        code('''
truth = wb.truthfulness_study(model, TRUTHFULQA, RUNS / "truthfulness", CONFIG.bipo_config(),
                              test_fraction=CONFIG.truthfulqa_test_fraction,
                              pairs_per_question=CONFIG.truthfulqa_pairs_per_question,
                              n_train=CONFIG.truthfulqa_n_train, n_test=CONFIG.n_test, multipliers=CONFIG.multipliers,
                              neutral_texts=wb.load_neutral_text()[: CONFIG.utility_texts],
                              utility_max_tokens=CONFIG.utility_max_tokens, n_boot=CONFIG.n_boot)
print(truth["data"])
display(wb.result_table(truth, "mc2").round(3))
wb.plot(truth, metric="mc1")'''),
        code('''
wb.plot(truth, metric="mc2")'''),
    ],
    "06_explorer": header("Interactive steering explorer", """
Tick vectors, move their multiplier sliders (and their layer), type a prompt and press **Generate** to see
the unsteered and steered answers side by side; **Update curve** draws the held-out log-odds against the
multiplier, and the sliders move each vector's marker along its curve (`wb.SteeringExplorer`).
The cells after the widget drive the same callbacks from code, as the tests do.
""") + [
        code('''
vectors = wb.study_vectors(model, "power-seeking", CONFIG, RUNS)
_, test = wb.study_pairs("power-seeking", CONFIG)
explorer = wb.SteeringExplorer(model, vectors, pairs=test, max_curve_pairs=2 if QUICK else 16,
                            curve_multipliers=CONFIG.multipliers, max_new_tokens=8 if QUICK else 48)
explorer.widget'''),
        code('''
explorer.set_multiplier("bipo", 2.0)
out = explorer.on_generate()
print("unsteered:", out["unsteered"])
print("steered:  ", out["steered"])'''),
        code('''
explorer.enable("bipo", "caa")
display(explorer.on_curve().round(3))'''),
    ],
    "08_mechanism": header("How a steering vector works inside the model", """
A steering vector added at layer 14 changes the answer's log-odds, but the vector's own direct path to the
logits carries almost none of that change: the blocks after the hook do the work. Which ones? This notebook
patches every attention head, MLP and block after the hook (exact activation patching: *necessity*, the
steered run with one component restored to its unsteered value; *sufficiency*, the unsteered run with only
that component steered), checks the one-pass gradient approximation (attribution patching) against it,
attributes the steered change to components directly through the unembedding, shows how the top heads'
attention moves, compares BiPO's route with CAA's and follows BiPO's route over training (`workbench.analysis`:
`patching`, `attribution`, `attention_shift`, `routes`). Quick mode patches the MLPs and blocks of 2 pairs; the
full run patches every head too, on 20 pairs (the README gives the measured times).
""") + [
        code('''
vectors = wb.study_vectors(model, "power-seeking", CONFIG, RUNS)
train, test = wb.study_pairs("power-seeking", CONFIG)
pairs = test[:2] if QUICK else test[:20]
components = ("mlp", "block", "direct") if QUICK else ("head", "mlp", "block", "direct")
print({name: v.hook_name for name, v in vectors.items()}, "|", len(pairs), "held-out pairs")'''),
        md("## Exact activation patching of the steering effect (`m = +1`)"),
        code('''
exact = {name: wb.activation_patching(model, v, pairs, 1.0, components=components) for name, v in vectors.items()}
for name, res in exact.items():
    print(f"{name}: total effect {res['total_effect']:+.2f} log-odds; patched in {res['seconds']:.0f} s")
    display(res.table().query("direction == 'necessity'").nlargest(5, "share")
            [["component", "share", "share_ci_low", "share_ci_high"]].round(3))
wb.plot(exact["bipo"])'''),
        md("## Attribution patching: the same shares from one forward/backward pair\nIts rank agreement with the exact result is in the `agreement` table."),
        code('''
approx = wb.attribution_patching(model, vectors["bipo"], pairs, 1.0, exact=exact["bipo"])
display(pd.DataFrame(approx["agreement"]).round(3))
wb.plot(approx)'''),
        md("## Direct logit attribution of the steered change\nPer layer, attention and MLP; the cumulative sum ends at the logit lens's final row."),
        code('''
dla = wb.steered_dla(model, vectors["bipo"], pairs, 1.0)
wb.plot(dla)'''),
        md("## Where the top heads look, steered vs unsteered\nHeads ranked by the attribution result's necessity share."),
        code('''
shift = wb.attention_shifts(model, vectors["bipo"], pairs, 1.0, heads=approx, top_k=5)
display(shift.table("heads").round(3))
wb.plot(shift)'''),
        md("## BiPO's route against CAA's\nPer-layer shares side by side and the cosine of the two component profiles."),
        code('''
routes = wb.compare_routes(exact)
display(routes.table("cosines").round(3))
wb.plot(routes)'''),
        md("## BiPO's route over training\nRetrained with a checkpoint directory, the trainer keeps each epoch's vector "
           "(`wb.checkpoint_vectors`); attribution patching gives each one's route in one forward/backward pair."),
        code('''
layer = vectors["bipo"].layer
checkpoints = RUNS / "power-seeking" / f"L{layer}" / "bipo-checkpoints"
wb.train_bipo(model, train, CONFIG.bipo_config(layer), checkpoint_dir=checkpoints, resume=True, progress=False)
by_epoch = wb.checkpoint_vectors(checkpoints)
over_training = wb.route_patching(model, {k: (v, 1.0) for k, v in by_epoch.items()}, pairs, estimate="attribution",
                                  components=components)
display(over_training.table("cosines").round(3))
wb.plot(over_training)'''),
    ],
}


def write_notebooks(names: list[str] | None = None, force: bool = False) -> list[Path]:
    """Write each notebook whose cell sources differ from its cell list (all of them with ``force``).

    A rewritten notebook keeps the cell ids of the one it replaces, cell by cell, so that a change of
    one cell is a change of one cell in the diff. Returns the paths written.
    """
    NOTEBOOKS.mkdir(exist_ok=True)
    paths = []
    for name, cells in NOTEBOOK_CELLS.items():
        if names and name not in names:
            continue
        path = NOTEBOOKS / f"{name}.ipynb"
        old = nbformat.read(path, as_version=4).cells if path.is_file() else []
        if not force and [c.source for c in old] == [c.source for c in cells]:
            continue
        for cell, before in zip(cells, old):
            cell.id = before.get("id", cell.id)
        nb = new_notebook(cells=cells, metadata={
            "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
            "language_info": {"name": "python"}})
        nbformat.write(nb, path)
        paths.append(path)
    return paths


def execute(path: Path, quick: bool, timeout: int = 7200) -> float:
    """Run a notebook in place (outputs saved, widget state stored); returns seconds."""
    from nbclient import NotebookClient

    if quick:
        os.environ["WORKBENCH_NOTEBOOK_QUICK"] = "1"
    else:
        os.environ.pop("WORKBENCH_NOTEBOOK_QUICK", None)
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--execute", action="store_true", help="run the notebooks and save their outputs")
    parser.add_argument("--quick", action="store_true", help="with --execute: WORKBENCH_NOTEBOOK_QUICK=1")
    parser.add_argument("--force", action="store_true",
                        help="rewrite every notebook, also those whose sources are unchanged (their outputs go)")
    parser.add_argument("names", nargs="*", help="only these notebooks (e.g. 01_quickstart)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    for path in write_notebooks(args.names, force=args.force or args.execute):
        if args.execute:
            seconds = execute(path, args.quick)
            print(f"{path.relative_to(ROOT)}: executed in {seconds:.0f} s", file=sys.stderr)
        else:
            print(f"{path.relative_to(ROOT)}: written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
