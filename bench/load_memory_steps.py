"""Where a local directory's load puts its memory: resident size around each step of ``load_hf_dir``.

    python bench/load_memory_steps.py DIRECTORY [--dtype bf16]

Loads ``DIRECTORY`` once in this process with a thread sampling the resident set (``/proc/self/statm``)
every millisecond, and prints, for each step of ``workbench.core.hf_dir.load_hf_dir`` (config, tokenizer,
meta transformers model, ``HookedTransformer`` construction, the streamed fill, placement), the resident
size when it starts and ends and the highest sample inside it, in MiB above the size before the load
and as a fraction of the weights' bytes. The steps are found by wrapping the module's own callables,
so the loader itself is unchanged.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class _Sampler:
    def __init__(self):
        self.peak, self.highest, self.stop = 0, 0, False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop:
            now = _rss()
            self.peak, self.highest = max(self.peak, now), max(self.highest, now)
            time.sleep(0.001)

    def reset(self) -> int:
        now = _rss()
        self.peak = now
        return now


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directory", type=Path)
    ap.add_argument("--dtype", default="fp32")
    args = ap.parse_args()
    import workbench.core.hf_dir as hd
    import workbench.core.loading as loading

    sampler = _Sampler()
    rows: list[tuple[str, int, int, int]] = []

    def wrap(owner, attr, label):
        fn = getattr(owner, attr)

        def wrapped(*a, **k):
            start = sampler.reset()
            try:
                return fn(*a, **k)
            finally:
                rows.append((label, start, sampler.peak, _rss()))
        setattr(owner, attr, wrapped)

    class _AutoTok:
        from_pretrained = staticmethod(hd.AutoTokenizer.from_pretrained)

    wrap(_AutoTok, "from_pretrained", "tokenizer")
    hd.AutoTokenizer = _AutoTok
    wrap(hd, "tl_config_dict", "TransformerLens config")
    wrap(hd, "allocate_model", "allocate_model (HookedTransformer)")
    wrap(hd, "_fill", "stream weights (_fill)")
    wrap(hd, "place_model", "place_model")
    sampler.thread.start()
    before = sampler.reset()
    t0 = time.time()
    model = loading.load_model(str(args.directory), dtype=args.dtype)
    sampler.stop = True
    total_peak = max(sampler.highest, _rss())
    weights = sum({p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}.values())
    mib = lambda b: (b - before) / 2**20  # noqa: E731
    print(f"{args.directory.name} -> {args.dtype}: weights {weights / 2**20:.0f} MiB, {time.time() - t0:.0f} s, "
          f"peak {mib(total_peak):.0f} MiB above before = {(total_peak - before) / weights:.3f}x")
    print(f"{'step':<40}{'start':>9}{'peak':>9}{'end':>9}   (MiB above before; peak / weights)")
    for label, start, peak, end in rows:
        print(f"{label:<40}{mib(start):>9.0f}{mib(peak):>9.0f}{mib(end):>9.0f}   {(peak - before) / weights:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
