"""ONNX Runtime CPU and PyTorch eager in the same interleaved rounds: a sample against its static twin.

``dyconv-deploy bench`` times one backend at a time; this script puts every lowering strategy
on ONNX Runtime and both PyTorch eager modules (the dynamic model and its twin) in one
process and one interleaved loop (:func:`dyconv_deploy.bench.measure.interleaved`), checks
the exact graphs against PyTorch first, and prints p50 / p90 latency and the ratio of p50s to
the ONNX Runtime static twin::

    python benchmarks/lowering_cpu.py --sample dy_mobilenetv2 --batches 1 8 --iterations 40
"""

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from dyconv_deploy.bench.graphs import TWIN, GraphSet, default_cache_dir
from dyconv_deploy.bench.measure import interleaved, summarize
from dyconv_deploy.export.settings import DEFAULT_OPSET, STRATEGIES
from dyconv_deploy.runtime import load_runtime
from dyconv_deploy.samples import create_sample, default_input_shape
from dyconv_deploy.verify import verify_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", default="dy_mobilenetv2")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--iterations", type=int, default=40, help="timed rounds per batch")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="intra-op threads, both runtimes")
    parser.add_argument("--cache-dir", type=Path, default=None, help="graph cache (default: the bench cache)")
    args = parser.parse_args()
    logging.getLogger("dyconv_deploy").setLevel(logging.ERROR)  # the static pass warns it is not equivalent
    torch.set_num_threads(args.threads)

    shape = default_input_shape(args.sample)
    dynamic, twin = create_sample(args.sample), create_sample(f"{args.sample}_static")
    graphs = GraphSet(dynamic, twin, shape, args.cache_dir or default_cache_dir(), DEFAULT_OPSET)
    print(f"{args.sample} {list(shape[1:])}, {args.threads} threads, {args.iterations} interleaved rounds; "
          f"p50 / p90 ms and p50 ratio to 'ort {TWIN}'")
    print(f"{'batch':>5}  {'graph':<22} {'p50':>9} {'p90':>9} {'ratio':>8}  check vs eager")
    def ort(name: str, batch: int):
        return load_runtime(graphs.path(name, batch), "ort-cpu", threads=args.threads, spinning=False).load()

    shared = {f"ort {name}": ort(name, 1) for name in (TWIN, *STRATEGIES) if name != "grouped"}  # any batch
    shared |= {"torch eager": load_runtime(dynamic, "torch").load(),
               f"torch {TWIN}": load_runtime(twin, "torch").load()}
    for batch in args.batches:
        with ort("grouped", batch) as grouped:  # a static batch: one graph per batch size
            runtimes = {**shared, "ort grouped": grouped}
            checks = {name: "pass" if all(c.passed for c in verify_onnx(dynamic, runtimes[f"ort {name}"], shape,
                                                                        [batch])) else "FAIL"
                      for name in ("plugin", "experts", "grouped")}
            x = np.random.default_rng(batch).standard_normal((batch, *shape[1:])).astype(np.float32)
            runners = {name: (lambda r=runtime: r.run({r.input_specs[0].name: x}))
                       for name, runtime in runtimes.items()}
            stats = {name: summarize(seconds, batch)
                     for name, seconds in interleaved(runners, args.warmup, args.iterations).items()}
        baseline = stats[f"ort {TWIN}"].p50_ms
        for name, s in stats.items():
            check = checks.get(name.removeprefix("ort "), "")
            print(f"{batch:>5}  {name:<22} {s.p50_ms:>9.2f} {s.p90_ms:>9.2f} {s.p50_ms / baseline:>7.2f}x  {check}")
    for runtime in shared.values():
        runtime.close()

if __name__ == "__main__":
    main()
