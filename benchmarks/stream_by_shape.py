"""How fast specdec's int4 kernel streams each of the model's weight shapes at one row, against one big weight and
torch's sum: where a 4-bit decode step loses to its bandwidth floor.

    python benchmarks/stream_by_shape.py [--out data/cpu/int4_vs_llamacpp]

Each shape of Qwen2.5-Coder-1.5B's and 0.5B's decoder layers (fused q/k/v, o, fused gate/up, down; groups of 64) is
called once on each of as many distinct random weights as fill 1 GiB, so that every call reads from memory as in a
decode step, not from cache. Beside them: one weight of 226 MB (the kernel's rate without call boundaries) and
the bandwidth floor's own readers over 1 GiB (specdec.qkernel.readers: torch's sum, the kernel on one synthetic
weight of 4096 inputs). Every job is timed in 7 shuffled
interleaved passes (specdec.paired.interleaved) and priced by its median pass. Writes stream_by_shape.csv: shape,
calls, MB a call, GB/s (median and fastest pass), the machine, the kernel's tuning and the checkout's state
(specdec.study.provenance.git_state).
"""
import argparse
import random
import statistics
from pathlib import Path

import pandas as pd
import torch

from specdec import hugepages, paired, qkernel
from specdec.machine import cpu_identity
from specdec.study.provenance import git_state

GROUP = 64
GIB = 2**30
# (outputs, inputs) per call, from the models' configs: 1.5B hidden 1536, intermediate 8960, 12 + 2 x 2 heads of 128
# for q/k/v; 0.5B hidden 896, intermediate 4864, 14 + 2 x 2 heads of 64.
SHAPES = {"target q/k/v": (2048, 1536), "target o": (1536, 1536), "target gate/up": (17920, 1536),
          "target down": (1536, 8960), "draft q/k/v": (1152, 896), "draft o": (896, 896),
          "draft gate/up": (9728, 896), "draft down": (896, 4864), "one big weight": (262144, 1536)}


def calls_over_copies(out_f, in_f):
    """A job calling the kernel once on each of enough distinct weights of this shape to fill 1 GiB; its bytes."""
    copies = max(1, GIB // (out_f * in_f // 2))
    placed = iter(hugepages.gather([t for _ in range(copies) for t in qkernel.synthetic_int4(out_f, in_f, GROUP)]))
    weights = list(zip(placed, placed))  # side by side on huge pages, as a quantized model's (specdec.hugepages)
    x = torch.randn(1, in_f)

    def run():
        for codes, scales in weights:
            qkernel.qlinear(x, codes, scales, None, out_f, GROUP, 4)
    return run, sum(c.numel() + s.numel() * 2 for c, s in weights), copies


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="data/cpu/int4_vs_llamacpp")
    args = p.parse_args()
    if not qkernel.load():
        raise SystemExit(f"specdec's kernel is not available here: {qkernel.why_not()}")
    jobs = {name: calls_over_copies(*shape) for name, shape in SHAPES.items()}
    jobs.update({name: (call, nbytes, 1) for name, (call, nbytes) in qkernel.readers().items()})
    times = paired.interleaved({name: job[0] for name, job in jobs.items()}, 7, shuffle=random.Random(0))
    source = git_state()  # before writing
    rows = []
    for name, (_, nbytes, calls) in jobs.items():
        rate = [nbytes / t / 1e9 for t in times[name]]
        rows.append(dict(shape=name, calls=calls, mb_a_call=nbytes / calls / 1e6, gb_s=statistics.median(rate),
                         gb_s_fastest=max(rate), machine=cpu_identity(), kernel=qkernel.path_words(),
                         **source))
        print(f"{name:15s} {rows[-1]['gb_s']:5.1f} GB/s (fastest pass {max(rate):.1f}), {calls} calls of "
              f"{rows[-1]['mb_a_call']:.2f} MB", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(Path(args.out) / "stream_by_shape.csv", index=False)


if __name__ == "__main__":
    main()
