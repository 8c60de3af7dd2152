"""The public API: the pinned list of names, each resolving, and the static import list agreeing."""

import ast
import subprocess
import sys
from pathlib import Path

import workbench

#: The public API. Adding or removing a name here is a decision about what users see as ``wb.<name>``.
API = """
BiPOConfig BiPOResult EvalConfig GenerationConfig LoRAFinetuneConfig LoRATransferConfig MatchedCostConfig RefusalConfig Result
SweepConfig TruthfulnessConfig effect_vs_zero CompositionResult DataFormatError PreferencePair RePSConfig ResultFormatError SteeringExplorer
SteeringVector StudyConfig SweepResult ab_curve actadd as_ab_pairs caa composition_table cosine_table demo
evaluate_vectors finetune_copy format_chat format_eval generate import_vector layer_cosine_table layer_sweep
layer_transfer list_behaviors load_behavior load_model load_neutral_text load_pairs load_refusal_requests
load_result load_vector logodds_curve lora_finetunes lora_transfer matched_cost method_cosines pca plot plot_composition plot_cosine_heatmap
plot_cost_effect plot_layer_sweep plot_logit_lens_layers plot_logit_lens_tokens plot_lora_transfer plot_method_cosine
plot_multiplier_curves plot_refusal plot_training_curves plot_transfer refusal_study remaining_hooks
result_table save_figure steer steered_generations steered_logit_lens study_extra_vectors study_pairs study_sweeps study_vectors
train_bipo train_reps train_test_split checkpoint_vectors
SteeringCondition ConditionalConfig conditional_steering fit_condition EntanglementConfig measure_entanglement PromptingConfig prompting_baseline PatchingConfig activation_patching attribution_patching steered_dla attention_shifts compare_routes route_patching transfer_effect truthfulness_study truthfulqa_mc utility_curve vector_logit_lens write_figures
""".split()


def test_public_api_is_pinned():
    assert sorted(workbench.__all__) == sorted(API + ["__version__"])
    assert set(dir(workbench)) == set(workbench.__all__)  # tab completion offers the API only


def test_every_export_resolves_to_its_module():
    for name in API:
        value = getattr(workbench, name)
        assert value is not None, name
        assert getattr(value, "__module__", None) == workbench._WHERE[name], name
    assert workbench.SteeringVector.__module__ == "workbench.core.vector"


def test_static_imports_match_the_lazy_exports():
    """The TYPE_CHECKING block (what static tools and editors see) names exactly the exported names."""
    tree = ast.parse(Path(workbench.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", None) == "TYPE_CHECKING")
    static = {(imp.module, alias.name) for imp in block.body for alias in imp.names}
    assert static == {(module, name) for name, module in workbench._WHERE.items()}


def test_no_module_is_named_like_an_exported_function():
    """Importing a submodule binds its name on its package: no module may share a name with a function
    its package exports, or ``workbench.analysis.layer_sweep`` would turn into a module."""
    import pkgutil

    for sub in pkgutil.iter_modules(workbench.__path__):
        if sub.ispkg:
            package = __import__(f"workbench.{sub.name}", fromlist=["*"])
            modules = {m.name for m in pkgutil.iter_modules(package.__path__)}
            assert not modules & set(getattr(package, "__all__", ())), sub.name


def test_help_does_not_import_transformer_lens():
    code = ("import sys, workbench.cli.main as c\n"
            "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('transformer_lens' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"


#: The layers, bottom to top: a module may import from its own subpackage and from those below it.
LAYERS = ["core", "data", "engine", "train", "evaluate", "analysis", "viz", "studies", "cli"]


def _workbench_imports(path: Path) -> set[str]:
    """Every ``workbench.<subpackage>`` a module imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "workbench":
                found.add(parts[1] if len(parts) > 1 else "workbench")
    return found


def test_imports_only_point_down_the_layers():
    package = Path(workbench.__file__).parent
    assert sorted(p.name for p in package.iterdir() if (p / "__init__.py").exists()) == sorted(LAYERS)
    upward = []
    for layer in LAYERS:
        for path in sorted((package / layer).glob("*.py")):
            for target in _workbench_imports(path) & (set(LAYERS) | {"workbench"}):
                if target == "workbench" or LAYERS.index(target) > LAYERS.index(layer):
                    upward.append(f"{path.relative_to(package)} imports workbench.{target}".replace("workbench.workbench", "workbench"))
    assert not upward, upward
