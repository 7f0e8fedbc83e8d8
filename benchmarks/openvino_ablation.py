"""Where the dynamic cost goes on OpenVINO, by wall-clock ablation: plugin graph, its run-time weights alone, twin.

OpenVINO's per-node counters (``bench --profile``) overstate graphs of many tiny nodes, so this
script measures by removing work instead. Three compiled models run in one process, interleaved
(:func:`dyconv_deploy.bench.measure.interleaved`), at each batch:

- ``plugin``: the sample's ``plugin`` graph with the project's extension, as ``bench`` runs it;
- ``weights only``: the same model with every ``MixKernels`` output (per-sample kernels and biases)
  replaced by an input of the same shape, set once to small random values. Nothing reads the
  attention any more, so OpenVINO drops the routing branches with the mixing: what remains are the
  convolutions with run-time weights (and, at batch > 1, the per-sample route);
- the static twin.

``weights only`` - twin is what run-time weights cost; ``plugin`` - ``weights only`` is what the
attention branches and the mixing cost together. (They do not split further by ablation: keeping
the attention alive without the mixing, as extra outputs or summed into Y times 0, measured slower
than the whole plugin graph, so the parts do not add up.)::

    python benchmarks/openvino_ablation.py --sample dy_mobilenetv2 --batches 1 8 --iterations 40
"""

import argparse
import logging
from pathlib import Path

import numpy as np

from dyconv_deploy.bench.graphs import TWIN, GraphSet, default_cache_dir
from dyconv_deploy.bench.measure import interleaved, summarize
from dyconv_deploy.export.settings import DEFAULT_OPSET
from dyconv_deploy.runtime.openvino_runtime import MIX_OP, OpenVinoRuntime
from dyconv_deploy.samples import create_sample, default_input_shape


def without_mixing(graph):
    """``graph`` (an OpenVINO model) with each ``MixKernels`` output replaced by a new Parameter of its shape
    (what computed MixKernels' inputs, the routing branches, becomes dead code)."""
    import openvino as ov

    parameters = []
    for node in graph.get_ordered_ops():
        if node.get_type_name() != MIX_OP:
            continue
        for output in node.outputs():  # an f32 input, converted where MixKernels wrote bf16 (bf16 inference)
            parameter = ov.opset13.parameter(output.get_partial_shape(), ov.Type.f32)
            value = parameter.output(0)
            if output.get_element_type() != ov.Type.f32:
                value = ov.opset13.convert(value, output.get_element_type()).output(0)
            for target in list(output.get_target_inputs()):
                target.replace_source_output(value)
            parameters.append(parameter)
    graph.add_parameters(parameters)
    return graph


def compiled(runtime: OpenVinoRuntime, graph, x: np.ndarray):
    """An infer request for ``graph`` compiled as ``runtime`` compiles, with X = ``x`` and every other input
    set once (small random values); returns a callable that runs it."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": runtime.precision, "PERFORMANCE_HINT": "LATENCY"}
    if runtime.threads:
        config["INFERENCE_NUM_THREADS"] = runtime.threads
    request = runtime._core.compile_model(graph, "CPU", config).create_infer_request()
    generator = np.random.default_rng(0)
    for i, port in enumerate(request.model_inputs):
        value = x if i == 0 else generator.uniform(0, 0.01, list(port.get_shape())).astype(np.float32)
        request.set_input_tensor(i, ov.Tensor(value))
    return request.infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", default="dy_mobilenetv2")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--iterations", type=int, default=40, help="timed rounds per batch")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="OpenVINO threads (0: one per core)")
    parser.add_argument("--precision", default="f32", choices=["f32", "bf16"])
    parser.add_argument("--cache-dir", type=Path, default=None, help="graph cache (default: the bench cache)")
    args = parser.parse_args()
    logging.getLogger("dyconv_deploy").setLevel(logging.ERROR)

    shape = default_input_shape(args.sample)
    graphs = GraphSet(create_sample(args.sample), create_sample(f"{args.sample}_static"), shape,
                      args.cache_dir or default_cache_dir(), DEFAULT_OPSET)
    plugin = OpenVinoRuntime(graphs.path("plugin", 1), precision=args.precision, threads=args.threads).load()
    twin = OpenVinoRuntime(graphs.path(TWIN, 1), precision=args.precision, threads=args.threads).load()
    print(f"{args.sample} on OpenVINO, {args.precision}, {args.iterations} interleaved rounds; p50 ms and ratio "
          f"to the twin")
    print(f"{'batch':>5}  {'twin':>8}  {'weights only':>16}  {'plugin':>16}  {'run-time weights':>16}  "
          f"{'attention + mixing':>18}")
    for batch in args.batches:
        x = np.random.default_rng(batch).standard_normal((batch, *shape[1:])).astype(np.float32)
        shapes = ((batch, *shape[1:]),)
        runners = {"twin": compiled(twin, twin._read(shapes), x),
                   "weights only": compiled(plugin, without_mixing(plugin._read(shapes)), x),
                   "plugin": compiled(plugin, plugin._read(shapes), x)}
        p50 = {name: summarize(seconds, batch).p50_ms
               for name, seconds in interleaved(runners, args.warmup, args.iterations).items()}
        ratio = {name: value / p50["twin"] for name, value in p50.items()}
        print(f"{batch:>5}  {p50['twin']:>8.2f}  {p50['weights only']:>8.2f} ({ratio['weights only']:.2f}x)  "
              f"{p50['plugin']:>8.2f} ({ratio['plugin']:.2f}x)  {p50['weights only'] - p50['twin']:>+13.2f} ms  "
              f"{p50['plugin'] - p50['weights only']:>+15.2f} ms")
    plugin.close()
    twin.close()


if __name__ == "__main__":
    main()
