"""The quantized linear kernel of this checkout against an earlier commit's, paired, on this CPU's best path.

    python benchmarks/kernel_ab.py --against 21d88fb [--rows 1,2,3,4,8] [--bits 4] [--out data/cpu/kernel_ab/x.csv]

Two kernel versions can only be compared in one process (these machines' speed drifts by 25% or more within
minutes): the earlier commit's qlinear sources are built as a second extension, their op renamed
(torch.ops.specdec_then.qlinear), and both run over the same weights: qkernel.TUNING_SHAPES, distinct copies over
TUNING_BYTES (past the caches, as a forward streams them), the calls of a row count interleaved over passes in a
fresh random order each (specdec.paired). Both run with this machine's tuning (prefetch distances, the AMX
crossover) wherever the earlier kernel takes it: a path it could not tune runs as it ran then (no prefetch). Writes per row count: each version's median seconds over the stack, and
the median and range over passes of now / then, with the machine and this checkout's commit. Both must give the same
bits (checked first).
"""
import argparse
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils import cpp_extension

from specdec import paired, qkernel
from specdec.machine import machine_key
from specdec.study.provenance import git_state

FILES = ("qlinear.cpp", "qlinear_avx512.cpp", "qlinear_avx2.cpp", "qlinear.h", "ops.h")


def build_then(commit: str, folder: Path):
    """The commit's qlinear sources, their namespace and op library renamed specdec_then, built and loaded."""
    for name in FILES:
        text = subprocess.run(["git", "show", f"{commit}:specdec/csrc/{name}"], capture_output=True, text=True,
                              check=True).stdout
        for old, new in (("TORCH_LIBRARY(specdec,", "TORCH_LIBRARY(specdec_then,"),
                         ("TORCH_LIBRARY_IMPL(specdec,", "TORCH_LIBRARY_IMPL(specdec_then,"),
                         ("namespace specdec", "namespace specdec_then"), ("specdec::", "specdec_then::")):
            text = text.replace(old, new)
        (folder / name).write_text(text)
    cpp_extension.load(name="specdec_then_qlinear", sources=[str(folder / n) for n in FILES[:3]],
                       build_directory=str(folder), extra_cflags=["-O3", "-fopenmp", "-ffp-contract=off"],
                       is_python_module=False)


def tune_then(tuned: dict):
    """Set this machine's tuning in the earlier kernel where it has the knob (same advantages on both sides)."""
    for path, ahead in tuned["prefetch"].items():
        for level, bytes_ in enumerate(ahead, 1):
            try:
                torch.ops.specdec_then.qlinear_prefetch(int(path), int(bytes_), level)
            except RuntimeError:  # that commit's code does not prefetch on this path
                pass
    if torch.ops.specdec.qlinear_best_path() == 3:
        torch.ops.specdec_then.qlinear_amx_from(tuned["amx_from"])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--against", required=True, help="the earlier commit")
    p.add_argument("--rows", default="1,2,3,4,8")
    p.add_argument("--bits", type=int, default=4, choices=(4, 8))
    p.add_argument("--passes", type=int, default=9)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not qkernel.load():
        sys.exit(f"kernel_ab: the kernel cannot run here ({qkernel.why_not()})")
    source = git_state()  # before anything is written
    build_then(args.against, Path(tempfile.mkdtemp(prefix="kernel-then-")))
    tune_then(qkernel._state.get("tuning", {"prefetch": {}}))  # the scalar code has nothing to tune
    ops = {"now": torch.ops.specdec.qlinear, "then": torch.ops.specdec_then.qlinear}
    weights = qkernel._layer_stack()
    if args.bits == 8:  # twice the bytes per weight: half as many copies
        weights = [(torch.randint(0, 256, (N * K,), dtype=torch.uint8), s, N, K) for _, s, N, K in weights[::2]]
    x = torch.randn(3, weights[0][3])
    codes, scales, N, _ = weights[0]
    assert torch.equal(*(op(x, codes, scales, None, N, 64, args.bits) for op in ops.values())), "the bits differ"

    def stack(op, rows):
        xs = {K: torch.randn(rows, K) for K in {K for *_, K in weights}}
        return lambda: [op(xs[K], c, s, None, N, 64, args.bits) for c, s, N, K in weights]

    found = []
    for rows in [int(r) for r in args.rows.split(",")]:
        times = paired.interleaved({name: stack(op, rows) for name, op in ops.items()}, args.passes,
                                   shuffle=random.Random(rows))
        ratio = np.array(times["now"]) / np.array(times["then"])
        found.append(dict(rows=rows, bits=args.bits, now_s=np.median(times["now"]), then_s=np.median(times["then"]),
                          now_over_then=np.median(ratio), lowest=ratio.min(), highest=ratio.max()))
        print(f"{rows} rows: now / then {found[-1]['now_over_then']:.3f} (passes {ratio.min():.3f}-{ratio.max():.3f})",
              flush=True)
    table = pd.DataFrame(found).assign(against=args.against, path=qkernel.path_words(),
                                       gb=sum(c.numel() for c, *_ in weights) / 1e9, machine=machine_key(), **source)
    print(table.to_string(index=False))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
