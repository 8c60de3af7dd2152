"""Reliability cases: bad inputs run through the real ``workbench`` command, each with the exit code and
the words its one-line error must hold (issue #19). ``scripts/reliability_table.py`` turns them into
``docs/reliability.md``; ``tests/cli/test_reliability.py`` runs each as a test. Every case must fail before any work
starts; only those in ``LOADS_MODEL`` load the embedded model first (they need its tokenizer). The ``report`` and
``figures`` cases with exit code 3 are not failures: the command did its work and says, in one warning line, which
result it skipped (issue #30).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from workbench.cli.main import main


def _meta(**changes) -> str:
    """A vector.json (16-d vector at blocks.3.hook_resid_post) with some fields changed."""
    meta = {"format_version": 1, "hook_name": "blocks.3.hook_resid_post", "layer": 3, "d_model": 16, "method": "caa"}
    return json.dumps({**meta, **changes})


def _eval_vector(setup_files: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Setup (a vector directory ``v``) and argv of ``workbench eval`` on it."""
    return ({f"v/{k}": text for k, text in setup_files.items()},
            ["eval", "--vector", "{tmp}/v", "--behavior", "power-seeking", "--out", "{tmp}/r.json"])


def _safetensors(dtype: str) -> str:
    """A 16-element safetensors file as text (its header is short, so its length fits in ASCII bytes)."""
    header = json.dumps({"vector": {"dtype": dtype, "shape": [16], "data_offsets": [0, 64]}})
    return chr(len(header)) + "\0" * 7 + header + "\0" * 64


_STUDY_RESULT = Path(__file__).resolve().parents[2] / "results" / "full" / "compare_refusal.json"


def _matched_cost(drop_budget: bool = False) -> str:
    """The study's matched-cost result as text, or, with ``drop_budget``, malformed: its rows lack their budget and
    its points are gone (a result neither the report nor the figures can read)."""
    result = json.loads(_STUDY_RESULT.read_text())
    if drop_budget:
        result = {**result, "points": [], "rows": [{k: v for k, v in r.items() if k != "budget"} for r in result["rows"]]}
    return json.dumps(result)


_LLAMA_NO_HIDDEN = json.dumps({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "num_attention_heads": 4,
                               "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 128})
_LONG_ANSWER_CSV = "question,matching,not_matching\nq1,yes,no\nq2," + " ".join(["word"] * 100) + ",no\n"

# (name, setup: {relative path: "dir" | "symlink:TARGET" | file text}, argv with {tmp} for the case's directory,
#  expected exit code, words the message must contain; exit code 3: done, with one warning line)
CASES: list[tuple[str, dict[str, str], list[str], int, list[str]]] = [
    ("train --out is an existing file", {"afile": "x"},
     ["train", "--method", "caa", "--behavior", "power-seeking", "--out", "{tmp}/afile"], 2, ["--out", "afile", "is a file"]),
    ("eval --out is an existing directory", {"adir": "dir"},
     ["eval", "--vector", "{tmp}/v", "--behavior", "power-seeking", "--out", "{tmp}/adir"], 2,
     ["--out", "adir", "is a directory"]),
    ("train --data is a directory", {"adir": "dir"},
     ["train", "--method", "caa", "--data", "{tmp}/adir", "--out", "{tmp}/o"], 2, ["--data", "adir", "is a directory"]),
    ("eval --data is a directory", {"adir": "dir"},
     ["eval", "--vector", "{tmp}/v", "--data", "{tmp}/adir", "--out", "{tmp}/r.json"], 2, ["--data", "is a directory"]),
    ("train --data does not exist", {},
     ["train", "--method", "caa", "--data", "{tmp}/missing.csv", "--out", "{tmp}/o"], 2, ["--data", "missing.csv", "no such file"]),
    ("train --layer -1", {},
     ["train", "--method", "caa", "--behavior", "power-seeking", "--layer", "-1", "--out", "{tmp}/o"], 2, ["--layer", "-1"]),
    ("train --checkpoint-dir reused without --resume", {"ck/state.json": "{}"},
     ["train", "--method", "bipo", "--behavior", "power-seeking", "--checkpoint-dir", "{tmp}/ck", "--out", "{tmp}/o"], 2,
     ["--checkpoint-dir", "--resume"]),
    ("train --checkpoint-dir is a file", {"ck": "x"},
     ["train", "--method", "bipo", "--behavior", "power-seeking", "--checkpoint-dir", "{tmp}/ck", "--out", "{tmp}/o"], 2,
     ["--checkpoint-dir", "is a file"]),
    ("train --resume without --checkpoint-dir", {},
     ["train", "--method", "bipo", "--behavior", "power-seeking", "--resume", "--out", "{tmp}/o"], 2, ["--resume", "--checkpoint-dir"]),
    ("train --out under a file", {"afile": "x"},
     ["train", "--method", "caa", "--behavior", "power-seeking", "--out", "{tmp}/afile/sub"], 2, ["--out", "not a directory"]),
    ("sweep --out is an existing directory", {"adir": "dir"},
     ["sweep", "--method", "caa", "--layers", "0-1", "--behavior", "power-seeking", "--out", "{tmp}/adir"], 2,
     ["--out", "is a directory"]),
    ("eval --vector whose safetensors header claims more bytes than the file",
     *_eval_vector({"vector.json": _meta(), "vector.safetensors": "zzzzzzzz{}"}), 2,
     ["vector.safetensors", "header length", "exceeds"]),
    ("eval --vector whose tensor is not floating point",
     *_eval_vector({"vector.json": _meta(), "vector.safetensors": _safetensors("I32")}), 2,
     ["vector.safetensors", "dtype 'I32'"]),
    ('eval --vector with d_model "abc" in vector.json',
     *_eval_vector({"vector.json": _meta(d_model="abc"), "vector.safetensors": "x"}), 2, ["vector.json", "'d_model'"]),
    ("eval --vector whose vector.json d_model does not match the tensor",
     *_eval_vector({"vector.json": _meta(d_model=17), "vector.safetensors": _safetensors("F32")}), 2,
     ["vector.safetensors", "does not match d_model 17"]),
    ("eval --vector whose hook is not a TransformerLens hook",
     *_eval_vector({"vector.json": _meta(hook_name="blocks.3.attn.hook_z"), "vector.safetensors": "x"}), 2,
     ["vector.json", "'hook_name'"]),
    ("eval --vector with an unknown field in vector.json",
     *_eval_vector({"vector.json": _meta(surprise=1), "vector.safetensors": "x"}), 2, ["vector.json", "unknown field"]),
    ("eval --vector with a path in its method name",
     *_eval_vector({"vector.json": _meta(method="../../x"), "vector.safetensors": "x"}), 2, ["vector.json", "'method'"]),
    ("convert a garbage .gguf", {"cv.gguf": "GGUF and then garbage"}, ["convert", "{tmp}/cv.gguf", "{tmp}/o"], 2,
     ["cv.gguf", "not a readable GGUF"]),
    ("train --hook unknown (caa)", {},
     ["train", "--method", "caa", "--behavior", "power-seeking", "--hook", "bogus", "--out", "{tmp}/o"], 2,
     ["--hook bogus", "unknown hook point"]),
    ("train --layer beyond the embedded model (caa)", {},
     ["train", "--method", "caa", "--behavior", "power-seeking", "--layer", "99", "--out", "{tmp}/o"], 2,
     ["--layer 99", "0..29"]),
    ("train --max-length 1", {},
     ["train", "--method", "bipo", "--behavior", "power-seeking", "--max-length", "1", "--out", "{tmp}/o"], 2,
     ["max_length=1", "--max-length"]),
    ("train --max-length 0", {},
     ["train", "--method", "caa", "--behavior", "power-seeking", "--max-length", "0", "--out", "{tmp}/o"], 2,
     ["--max-length 0", ">= 1"]),
    ("info --model: a config.json that is not an object", {"m/config.json": "[]"},
     ["info", "--model", "{tmp}/m"], 2, ["config.json", "JSON object"]),
    ("info --model: a Llama config.json without hidden_size", {"m/config.json": _LLAMA_NO_HIDDEN},
     ["info", "--model", "{tmp}/m"], 2, ["config.json", "hidden_size", "missing"]),
    ("info --model: an architecture the loader does not know", {"m/config.json": '{"architectures": ["FooForCausalLM"]}'},
     ["info", "--model", "{tmp}/m"], 2, ["FooForCausalLM", "not supported", "LlamaForCausalLM"]),
    ("train an answer longer than --max-length", {"long.csv": _LONG_ANSWER_CSV},
     ["train", "--method", "bipo", "--data", "{tmp}/long.csv", "--max-length", "32", "--out", "{tmp}/o"], 2,
     ["long.csv:3", "matching answer", "--max-length 32"]),
    ("train --data a pretty-printed JSON object", {"pair.jsonl": '{\n  "question": "q",\n  "matching": "a"\n}\n'},
     ["train", "--method", "caa", "--data", "{tmp}/pair.jsonl", "--out", "{tmp}/o"], 2,
     ["pair.jsonl:1", "JSON document", "one JSON object per line"]),
    ("train --data a CSV with an unclosed quote", {"q.csv": 'question,matching,not_matching\nq1,a,b\n"q2,a,b\nq3,a,b\n'},
     ["train", "--method", "caa", "--data", "{tmp}/q.csv", "--out", "{tmp}/o"], 2, ["q.csv:3", "never closed"]),
    # issue #30: checks before the work, report and figures alike, data and argument sanity
    ("eval --multipliers 1 1 (a multiplier twice)", {},
     ["eval", "--vector", "{tmp}/v", "--behavior", "power-seeking", "--multipliers", "1", "1", "--out", "{tmp}/r.json"],
     2, ["--multipliers[0] = 1.0 and --multipliers[1] = 1.0", "same multiplier 1", "give each multiplier once"]),
    ("eval --multipliers -0 0 (-0 is 0)", {},
     ["eval", "--vector", "{tmp}/v", "--behavior", "power-seeking", "--multipliers", "-0", "0", "--out", "{tmp}/r.json"],
     2, ["--multipliers", "same multiplier 0"]),
    ("sweep --multipliers 1 1", {},
     ["sweep", "--behavior", "power-seeking", "--layers", "1", "--multipliers", "1", "1", "--out", "{tmp}/r.json"], 2,
     ["--multipliers", "same multiplier 1"]),
    ("train --out is a dangling symbolic link", {"o": "symlink:gone"},
     ["train", "--method", "caa", "--behavior", "power-seeking", "--out", "{tmp}/o"], 2,
     ["--out", "symbolic link to", "gone", "does not exist"]),
    ("eval --out is a dangling symbolic link", {"r.json": "symlink:nowhere/r.json"},
     ["eval", "--vector", "{tmp}/v", "--behavior", "power-seeking", "--out", "{tmp}/r.json"], 2,
     ["--out", "symbolic link to", "does not exist"]),
    ("train --n-devices 0", {},
     ["train", "--method", "caa", "--behavior", "power-seeking", "--n-devices", "0", "--out", "{tmp}/o"], 2,
     ["--n-devices 0", ">= 1"]),
    ("train --n-devices 2 on the cpu", {},
     ["train", "--method", "caa", "--behavior", "power-seeking", "--n-devices", "2", "--out", "{tmp}/o"], 2,
     ["--n-devices 2", "needs --device cuda"]),
    ("train --behavior with --test-fraction", {},
     ["train", "--method", "caa", "--behavior", "power-seeking", "--test-fraction", "0.3", "--out", "{tmp}/o"], 2,
     ["--test-fraction applies to --data only", "--behavior power-seeking is fixed", "--split"]),
    ("eval --behavior with --test-fraction", {},
     ["eval", "--vector", "{tmp}/v", "--behavior", "power-seeking", "--test-fraction", "0.3", "--out", "{tmp}/r.json"],
     2, ["--test-fraction applies to --data only"]),
    ("train --data with a NUL byte in a question", {"nul.csv": "question,matching,not_matching\nq1,a,b\nq\x002,a,b\n"},
     ["train", "--method", "caa", "--data", "{tmp}/nul.csv", "--out", "{tmp}/o"], 2,
     ["nul.csv:3", "question holds the control character '\\x00'"]),
    ("train --data with an escape character in an answer",
     {"esc.jsonl": '{"question": "q", "matching": "a\\u001b[31m", "not_matching": "b"}\n'},
     ["train", "--method", "caa", "--data", "{tmp}/esc.jsonl", "--out", "{tmp}/o"], 2,
     ["esc.jsonl:1", "matching holds the control character '\\x1b'"]),
    ("eval --n-boot 0", {},
     ["eval", "--vector", "{tmp}/v", "--behavior", "power-seeking", "--n-boot", "0", "--out", "{tmp}/r.json"], 2,
     ["--n-boot must be >= 1, got 0"]),
    ("compare --effect-grid 1.5", {},
     ["compare", "--vector", "{tmp}/v", "--behavior", "power-seeking", "--effect-grid", "1.5", "--out", "{tmp}/r.json"],
     2, ["--effect-grid: effect_grid=(1.5,): fractions between 0 and 1"]),
    ("compare --n-boot -5", {},
     ["compare", "--vector", "{tmp}/v", "--behavior", "power-seeking", "--n-boot", "-5", "--out", "{tmp}/r.json"], 2,
     ["--n-boot must be >= 1, got -5"]),
    ("report: one malformed result beside a good one (warning, exit 3)",
     {"res/good.json": _matched_cost(), "res/bad.json": _matched_cost(drop_budget=True)},
     ["report", "--results", "{tmp}/res"], 3, ["warning:", "bad.json", "cannot tabulate (KeyError: 'budget')", "skipped"]),
    ("figures: one malformed result beside a good one (warning, exit 3)",
     {"res/good.json": _matched_cost(), "res/bad.json": _matched_cost(drop_budget=True)},
     ["figures", "--results", "{tmp}/res", "--out", "{tmp}/figs", "--formats", "png"], 3,
     ["warning:", "bad.json", "cannot draw", "skipped"]),
    ("report: only unreadable results", {"res/bad.json": _matched_cost(drop_budget=True)},
     ["report", "--results", "{tmp}/res"], 2, ["--results", "no result could be read", "bad.json", "KeyError: 'budget'"]),
    ("figures: only unreadable results", {"res/bad.json": _matched_cost(drop_budget=True)},
     ["figures", "--results", "{tmp}/res", "--out", "{tmp}/figs"], 2,
     ["--results", "no result could be read", "bad.json", "cannot draw"]),
]
#: cases that load the embedded model before they fail (the answer check needs its tokenizer)
LOADS_MODEL = {"train an answer longer than --max-length"}


def prepare(tmp: Path, setup: dict[str, str]) -> None:
    """Create a case's files and directories under ``tmp``."""
    for rel, content in setup.items():
        path = tmp / rel
        if content == "dir":
            path.mkdir(parents=True, exist_ok=True)
        elif content.startswith("symlink:"):  # a symbolic link to a path under tmp (which may not exist)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(tmp / content.removeprefix("symlink:"))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)


def run_case(tmp: Path, setup: dict[str, str], argv: list[str]) -> tuple[int, str]:
    """Run one case through ``workbench.cli.main.main``; returns (exit code, stderr)."""
    prepare(tmp, setup)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([a.replace("{tmp}", str(tmp)) for a in argv])
    return code, err.getvalue()
