"""Load time of the embedded model: a first load (GGUF -> TransformerLens, cache written) and a second
(from the safetensors cache). Prints both and writes bench/results/model_load.json.

    .venv/bin/python bench/model_load.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from workbench.core.io import atomic_write_json  # noqa: E402
from workbench.core.embedded import load_embedded_model  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        load_embedded_model(cache_dir=Path(cache))
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        load_embedded_model(cache_dir=Path(cache))
        second = time.perf_counter() - t0
    result = {"first_load_s": round(first, 2), "cached_load_s": round(second, 2)}
    print(f"first load (convert + write cache): {first:.1f} s; second load (from cache): {second:.1f} s")
    atomic_write_json(result, Path(__file__).parent / "results" / "model_load.json")


if __name__ == "__main__":
    main()
