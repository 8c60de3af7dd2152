"""Compare two results directories number by number (after a refactor, the same study should give the same numbers).

    python scripts/compare_results.py results/full /tmp/regen [--tol 1e-6] [--out report.json]

Every ``*.json`` result present in both directories is read through ``workbench.core.results.load_result``
(so an older schema version is migrated first) and walked key by key: numbers must agree within ``--tol``
(absolute, or relative for numbers above 1), strings, booleans and nulls exactly. Timing fields (``seconds``,
``*_seconds``) and file lists are ignored. Prints one line per file (identical / max difference / what differs)
and exits 1 when any file differs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from workbench.core.results import ResultFormatError, load_result

IGNORED = {"seconds", "all_seconds", "total_seconds", "train_seconds", "timings", "results", "figures", "schema_version"}


def _walk(a: Any, b: Any, where: str, tol: float, out: dict[str, Any]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key in IGNORED or key.endswith("_seconds"):
                continue
            if key not in a or key not in b:
                out["keys"].append(f"{where}.{key} only in {'new' if key not in a else 'old'}")
                continue
            _walk(a[key], b[key], f"{where}.{key}", tol, out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out["keys"].append(f"{where}: {len(a)} vs {len(b)} items")
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(x, y, f"{where}[{i}]", tol, out)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if math.isnan(a) and math.isnan(b):
            return
        diff = abs(a - b) / max(1.0, abs(a))
        out["max_diff"] = max(out["max_diff"], diff)
        if diff > tol:
            out["values"].append(f"{where}: {a!r} vs {b!r}")
    elif a != b:
        out["values"].append(f"{where}: {str(a)[:60]!r} vs {str(b)[:60]!r}")


def compare(old_dir: Path, new_dir: Path, tol: float) -> dict[str, dict[str, Any]]:
    report = {}
    for old in sorted(old_dir.rglob("*.json")):
        rel = old.relative_to(old_dir)
        new = new_dir / rel
        if not new.exists():
            continue
        try:
            a, b = load_result(old), load_result(new)
        except ResultFormatError:  # not a result (a vector's metadata, a cache key): compare as JSON
            a, b = json.loads(old.read_text()), json.loads(new.read_text())
        out: dict[str, Any] = {"max_diff": 0.0, "keys": [], "values": []}
        _walk(a, b, "", tol, out)
        report[str(rel)] = out
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    report = compare(args.old, args.new, args.tol)
    bad = 0
    for name, r in report.items():
        state = "identical" if not r["keys"] and not r["values"] else "DIFFERS"
        bad += state != "identical"
        print(f"{name}: {state} (max relative difference {r['max_diff']:.2e})")
        for line in (r["keys"] + r["values"])[:8]:
            print(f"    {line}")
    print(f"{len(report)} files compared, {bad} differ")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
