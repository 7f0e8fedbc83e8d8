"""Whole-network latency of the dynamic samples on the torch extension's kernels against their static twins.

Issue 14's goal is network-level: the whole DY-MobileNetV2 within 1.15x of its static twin at batch 256 in
fp16. For each sample (``--samples``: DY-MobileNetV2, DY-ResNet-18), precision and batch (1, 32, 256), one
process times the whole eager forward on device-resident inputs under ``torch.inference_mode``, with CUDA
events around ``--iters`` back-to-back calls (one synchronisation per group, ms per call):

* ``reference``: the dynamic model on the op's default CUDA implementation (the batch-folded grouped conv of
  :func:`dyconv_deploy.ops.reference.dynamic_conv2d_reference`), i.e. without the extension;
* ``ours``: the same model after :func:`dyconv_deploy.ops.cuda.enable_cuda_kernels`, each dynamic layer on the
  path the cost model picks for its shape, batch and precision (the count per path is in the table and JSON);
* ``twin``: the sample's static twin (``nn.Conv2d``, no attention branches), the latency to beat.

Registering the kernels cannot be undone, so the run has two phases: every ``reference`` measurement first,
then the kernels are registered and every ``ours`` one. In each phase the dynamic model and the twin alternate
(dynamic, twin, dynamic, twin, ... ``--repeats`` groups each, the median per variant), so ``reference / twin``
and ``ours / twin`` divide by a twin timed in the same rounds, under the same clocks and temperature.
Precisions are kernel_bench's: ``tf32`` (fp32 tensors, TF32 allowed in cuDNN and matmul), ``fp32`` (TF32 off)
and ``fp16`` (model, twin and inputs in half precision). Once per sample and precision, ours' output on a batch
of 2 different images is compared with the reference's (kept from phase 1) under :data:`CHECK_TOLERANCES`; a
mismatch is marked in the table and makes the exit status 1, the timing goes on. A batch that runs out of GPU
memory is an ``OOM`` row and the run goes on. Writes ``network_bench_<gpu>.md`` and ``.json`` atomically under
``--out`` (default ``benchmarks/results``), rewritten after every measurement so an interrupted run keeps what
it measured.

Where the time goes: in the ``ours`` phase, at ``--profile-batch`` (default: the largest batch), ours and the twin
each run under ``torch.profiler`` (CUDA kernels): the table after the main one lists, per precision and sample,
the kernels' time per forward against the measured latency (the difference is time the GPU waited for launches)
and the most expensive kernels with their calls, ms and share of a forward (our kernels by name and path,
cuDNN's, the attention branches' small ones).

Time budget: with the defaults (``--iters 5 --repeats 3``, 2 warm-up calls) each variant runs 17 times per
measurement; at batch 256 a forward takes up to ~100 ms on an H100, so the default run (2 samples x 3
precisions x 3 batches x 2 phases) takes about 1-2 minutes with the loading and cuDNN's autotuning (on, as in
kernel_bench: the twin at its fastest), within the 240 s that ``benchmarks/gpu_check.sh`` gives its ``network`` step.

    python benchmarks/network_bench.py                          # tf32, fp32, fp16; batches 1 32 256
    python benchmarks/network_bench.py --samples dy_mobilenetv2 --precisions fp16 --batches 256 --iters 20
    python benchmarks/network_bench.py --list                   # what would be timed (CPU is enough)
"""

import argparse
import copy
import json
import statistics
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import kernel_bench  # the sibling script (on sys.path as the script's folder): precisions, TF32, atomic writes
from dyconv_deploy.bench.graphs import twin_spec
from dyconv_deploy.inputs import random_images
from dyconv_deploy.io import load_model
from dyconv_deploy.nn.base import DynamicConvBase
from dyconv_deploy.samples import default_input_shape, get_sample, list_samples
from dyconv_deploy.tolerance import TOLERANCES, compare

PRECISIONS = kernel_bench.PRECISIONS
SAMPLES_WITH_TWINS = tuple(s for s in list_samples() if twin_spec(f"sample:{s}") is not None)
PHASES = ("reference", "ours")  # in this order: registering the kernels for ``ours`` cannot be undone
WARMUP = 2  # untimed calls of each variant before its timed groups (cuDNN autotunes on the first)
CHECK_BATCH = 2
# Whole-network tolerance of ours against the reference, per precision. tf32 has no named one: TF32 rounds each
# conv's operands to 11 significant bits as fp16 does (activations stay fp32), so it takes fp16's end-to-end one.
CHECK_TOLERANCES = {"fp32": "fp32", "tf32": "fp16", "fp16": "fp16"}
OOM = "OOM"
PROFILE_FORWARDS = 3  # forwards of each variant under the profiler (after one untimed)
PROFILE_TOP = 12  # kernels listed per variant, the rest summed as "other"
DYNAMIC_CONV_OP = torch.ops.dyconv.dynamic_conv2d.default


@dataclass(frozen=True)
class Device:
    """Where the networks run and how they are timed.

    ``timer(fn)``: ms per call of ``fn()``, one timed group; ``enable_kernels()``: registers the kernels ``ours``
    runs (once, cannot be undone); ``path_of(x, attention, weight, stride, padding, dilation, groups)``: the kernel
    path one op call takes once they are registered; ``activities``: what the profile of ours and the twin at the
    profile batch records (CUDA kernels on the GPU).
    """

    name: str
    timer: Callable[[Callable[[], object]], float]
    enable_kernels: Callable[[], object]
    path_of: Callable[..., str]
    activities: tuple = ()  # torch.profiler activities of the kernel profile (:func:`kernel_profile`); () none


def cuda_device(iters: int) -> Device:
    """The GPU: CUDA events around ``iters`` back-to-back calls, the extension's kernels and its cost model."""
    from torch.profiler import ProfilerActivity

    from dyconv_deploy.ops import cuda as cuda_ops

    return Device("cuda", lambda fn: cuda_ops.median_call_ms(fn, iters, repeats=1, warmup=0),
                  cuda_ops.enable_cuda_kernels, cuda_ops.chosen_algo, (ProfilerActivity.CUDA,))


def short_kernel_name(name: str) -> str:
    """A profiler event's name without the return type, anonymous namespaces and the argument list
    (``void dyconv::(anonymous namespace)::tensor_core_kernel<__half, true, ...>(dyconv::ConvShape, ...)`` ->
    ``dyconv::tensor_core_kernel<__half, true, ...>``), at most 120 characters."""
    name = name.replace("(anonymous namespace)::", "").strip()
    if name.startswith("void "):
        name = name[len("void "):]
    if name.endswith(")"):  # cut the argument list at its matching "(" (template arguments may hold parentheses)
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i] if i > 0 else name
                break
    return name if len(name) <= 120 else name[:117] + "..."


def kernel_profile(fn: Callable[[], object], activities: tuple, forwards: int = PROFILE_FORWARDS,
                   top: int = PROFILE_TOP) -> dict:
    """Where the time of one call of ``fn`` goes: ``fn`` once untimed, then ``forwards`` calls under
    ``torch.profiler`` with ``activities``; each kernel's (CUDA activity: device kernels; else CPU ops) self time
    and calls per forward, most expensive first, the ``top`` first listed and the rest summed as ``other_ms``;
    ``kernel_ms``: all of them per forward (on a GPU, what the device computed; the measured latency minus
    that is the time it waited for launches)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    on_device = ProfilerActivity.CUDA in activities
    fn()
    if on_device:
        torch.cuda.synchronize()  # the untimed call's kernels end before the profiler starts
    with profile(activities=list(activities)) as prof:
        for _ in range(forwards):
            fn()
        if on_device:
            torch.cuda.synchronize()
    kernels: dict[str, list[float]] = {}
    for event in prof.key_averages():
        if on_device and event.device_type != DeviceType.CUDA:
            continue
        us = event.self_device_time_total if on_device else event.self_cpu_time_total
        if us > 0:
            calls_ms = kernels.setdefault(short_kernel_name(event.key), [0.0, 0.0])
            calls_ms[0] += event.count / forwards
            calls_ms[1] += us / 1e3 / forwards
    ranked = sorted(kernels.items(), key=lambda item: -item[1][1])
    total = sum(ms for _, (_, ms) in ranked)
    listed = [{"name": name, "calls": calls, "ms": ms, "share": ms / total} for name, (calls, ms) in ranked[:top]]
    return {"forwards": forwards, "kernel_ms": total, "kernels": listed,
            "other_ms": total - sum(k["ms"] for k in listed)}


def interleaved_ms(runners: dict[str, Callable[[], object]], timer: Callable[[Callable[[], object]], float],
                   rounds: int, warmup: int = WARMUP) -> dict[str, float]:
    """Median ms per call of each runner: ``warmup`` untimed calls of each, then ``rounds`` rounds, each timing
    every runner once with ``timer`` in the order of ``runners`` (dynamic, twin, dynamic, twin, ...)."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            times[name].append(timer(run))
    return {name: statistics.median(values) for name, values in times.items()}


def timing_entry(dynamic_ms: float, twin_ms: float) -> dict:
    """A phase's cell of a row: the dynamic model's and the twin's median ms from the same rounds, and their ratio."""
    return {"dynamic_ms": dynamic_ms, "twin_ms": twin_ms, "ratio": dynamic_ms / twin_ms}


def oom_entry(error: Exception) -> dict:
    """A phase's cell of a row whose batch ran out of GPU memory: the error's first line."""
    return {OOM: str(error).split("\n")[0]}


class PathCounter(TorchFunctionMode):
    """Inside the block, counts ``path_of(x, attention, weight, stride, padding, dilation, groups)`` of every
    ``dyconv::dynamic_conv2d`` call (one per dynamic layer and forward), with the arguments the kernel gets."""

    def __init__(self, path_of: Callable[..., str]):
        super().__init__()
        self.path_of = path_of
        self.counts: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is DYNAMIC_CONV_OP:
            x, attention, weight, _bias, _spatial, stride, padding, dilation, groups = args
            self.counts[self.path_of(x, attention, weight, stride, padding, dilation, groups)] += 1
        return func(*args, **(kwargs or {}))


def profile_entry(model: nn.Module, twin: nn.Module, x: Tensor, activities: tuple) -> dict:
    """:func:`kernel_profile` of ``model`` and of ``twin`` on ``x`` (``{"ours": ..., "twin": ...}``), or
    :func:`oom_entry` when the profiler's extra memory does not fit."""
    try:
        with torch.inference_mode():
            return {"ours": kernel_profile(lambda: model(x), activities),
                    "twin": kernel_profile(lambda: twin(x), activities)}
    except torch.cuda.OutOfMemoryError as exc:
        entry = oom_entry(exc)
    torch.cuda.empty_cache()  # outside the handler, as in measure
    return entry


def path_counts(model: nn.Module, x: Tensor, path_of: Callable[..., str]) -> dict[str, int]:
    """Path name -> how many of ``model``'s dynamic layers take it in one forward of ``x``, most used first."""
    with PathCounter(path_of) as counter:
        model(x)
    return dict(counter.counts.most_common())


def check_entry(ours: Tensor, reference: Tensor, precision: str, name: str) -> dict:
    """Ours' output against the reference's (same model and input) under the precision's tolerance."""
    tolerance = CHECK_TOLERANCES[precision]
    result = compare(ours, reference, TOLERANCES[tolerance], name=name)
    return {"tolerance": tolerance, "passed": result.passed, "max_abs": result.max_abs,
            "tolerance_used": result.tolerance_used}


def exit_status(checks: dict) -> int:
    """1 when any check of ``checks`` (``(sample, precision) -> check_entry``) failed, else 0 (OOM rows pass)."""
    return int(any(not check["passed"] for check in checks.values()))


def dynamic_layer_count(sample: str) -> int:
    """How many dynamic conv layers ``sample`` has (built without its calibration: only the layout matters)."""
    return sum(isinstance(module, DynamicConvBase) for module in get_sample(sample).build().modules())


def _ms_cells(entry: Optional[dict]) -> list[str]:
    """The dynamic ms, twin ms and ratio cells of one phase: ``-`` not measured (yet), ``OOM`` out of memory."""
    if entry is None:
        return ["-"] * 3
    if OOM in entry:
        return [OOM] * 3
    return [f"{entry['dynamic_ms']:.3f}", f"{entry['twin_ms']:.3f}", f"{entry['ratio']:.2f}"]


def _check_cell(check: Optional[dict]) -> str:
    if check is None:
        return "-"
    verdict = "ok" if check["passed"] else "MISMATCH"
    return f"{verdict}, {check['tolerance_used']:.2f} of tolerance {check['tolerance']}"


def markdown(rows: list[dict], checks: dict, header: str) -> str:
    """The table of ``rows``: one line per precision, sample and batch with both phases' times against the twin
    of the same rounds, ours' path counts, and the check of the row's sample and precision (``checks``:
    ``(sample, precision) -> check_entry``; the share of the tolerance its worst element uses)."""
    lines = [header, "",
             "| precision | sample | batch | reference ms | twin ms (with reference) | reference / twin | ours ms "
             "| twin ms (with ours) | ours / twin | ours paths (layers) | ours vs reference (b=2) |",
             "|" + "---|" * 11]
    for r in rows:
        paths = ", ".join(f"{path} {count}" for path, count in r["paths"].items()) if r["paths"] else "-"
        cells = [r["precision"], r["sample"], str(r["batch"]), *_ms_cells(r["reference"]), *_ms_cells(r["ours"]),
                 paths, _check_cell(checks.get((r["sample"], r["precision"])))]
        lines.append("| " + " | ".join(cells) + " |")
    for r in rows:
        if r.get("profile") and OOM not in r["profile"]:
            lines += ["", *profile_markdown(r)]
    return "\n".join(lines) + "\n"


def profile_markdown(row: dict) -> list[str]:
    """A row's profile: for ours and the twin, the kernels' time per forward against the measured latency, then
    the most expensive kernels with their calls, ms and share per forward."""
    ours, twin = row["profile"]["ours"], row["profile"]["twin"]
    measured = {"ours": row["ours"]["dynamic_ms"], "twin": row["ours"]["twin_ms"]}
    lines = [f"### Where the time goes: {row['precision']} {row['sample']} batch {row['batch']}", "",
             f"Kernels per forward (profiler, {ours['forwards']} forwards): ours {ours['kernel_ms']:.3f} ms of "
             f"{measured['ours']:.3f} ms measured, twin {twin['kernel_ms']:.3f} ms of {measured['twin']:.3f} ms "
             "(the rest: waiting for launches).", ""]
    for variant, profile in (("ours", ours), ("twin", twin)):
        lines += [f"| {variant}: kernel | calls | ms | share |", "|---|---|---|---|"]
        lines += [f"| `{k['name']}` | {k['calls']:g} | {k['ms']:.3f} | {k['share']:.1%} |" for k in profile["kernels"]]
        if profile["other_ms"] > 0:
            lines.append(f"| other | | {profile['other_ms']:.3f} | {profile['other_ms'] / profile['kernel_ms']:.1%} |")
        lines.append("")
    return lines[:-1]


def report_json(rows: list[dict], checks: dict, settings: dict) -> str:
    """``settings``, ``rows`` and ``checks`` (a list, each with its sample and precision) as JSON."""
    return json.dumps({**settings, "rows": rows,
                       "checks": [{"sample": s, "precision": p, **c} for (s, p), c in checks.items()]}, indent=1)


def load_twins(sample: str) -> tuple[nn.Module, nn.Module]:
    """``sample``'s dynamic model and its static twin, on the CPU in fp32 (samples are built of the canonical
    layers, so there is nothing to convert)."""
    return load_model(f"sample:{sample}"), load_model(twin_spec(f"sample:{sample}"))


def images(sample: str, batch: int, device: str, dtype: torch.dtype) -> Tensor:
    """``batch`` images of ``sample``'s input shape that differ per image (seeded by the batch), on ``device``."""
    shape = (batch, *default_input_shape(sample)[1:])
    return random_images(shape, torch.Generator().manual_seed(batch)).to(device, dtype)


def measure(model: nn.Module, twin: nn.Module, x: Tensor, device: Device, rounds: int,
            count_paths: bool) -> tuple[dict, Optional[dict]]:
    """``model`` against ``twin`` on ``x``, interleaved: the phase's cell (:func:`timing_entry`, or
    :func:`oom_entry` when the batch does not fit) and, with ``count_paths``, :func:`path_counts`."""
    try:
        with torch.inference_mode():
            paths = path_counts(model, x, device.path_of) if count_paths else None
            medians = interleaved_ms({"dynamic": lambda: model(x), "twin": lambda: twin(x)}, device.timer, rounds)
        return timing_entry(medians["dynamic"], medians["twin"]), paths
    except torch.cuda.OutOfMemoryError as exc:
        entry = oom_entry(exc)
    torch.cuda.empty_cache()  # outside the handler: the traceback no longer holds the batch's tensors
    return entry, None


def run(samples: list[str], precisions: list[str], batches: list[int], device: Device, rounds: int, out_stem: Path,
        header: str, settings: dict, profile_batch: Optional[int] = None) -> int:
    """Both phases over every precision, sample and batch, the report rewritten after each measurement; in the
    ``ours`` phase, at ``profile_batch`` (default: the largest batch), ours and the twin are also profiled
    (:func:`kernel_profile`, when the device has profiler activities).

    Returns the exit status: 1 if ours mismatched the reference anywhere, else 0.
    """
    pairs = {sample: load_twins(sample) for sample in samples}
    profile_batch = max(batches) if profile_batch is None else profile_batch
    rows = [{"precision": p, "sample": s, "batch": b, "reference": None, "ours": None, "paths": None,
             "profile": None} for p in precisions for s in samples for b in batches]
    row_of = {(r["precision"], r["sample"], r["batch"]): r for r in rows}
    references: dict[tuple[str, str], Tensor] = {}  # (sample, precision) -> the reference output at CHECK_BATCH
    checks: dict[tuple[str, str], dict] = {}

    def save() -> None:
        kernel_bench.atomic_write(out_stem.with_suffix(".md"), markdown(rows, checks, header))
        kernel_bench.atomic_write(out_stem.with_suffix(".json"), report_json(rows, checks, settings))

    for phase in PHASES:
        if phase == "ours":
            device.enable_kernels()
        for precision in precisions:
            dtype, tf32 = PRECISIONS[precision][:2]
            kernel_bench.set_tf32(tf32)
            for sample in samples:
                model, twin = (copy.deepcopy(m).to(device.name, dtype) for m in pairs[sample])
                with torch.inference_mode():
                    output = model(images(sample, CHECK_BATCH, device.name, dtype)).float().cpu()
                if phase == "reference":
                    references[(sample, precision)] = output
                else:
                    check = check_entry(output, references[(sample, precision)], precision, f"{sample} {precision}")
                    checks[(sample, precision)] = check
                    print(f"check {precision:<4} {sample:<15} {_check_cell(check)}", flush=True)
                    save()
                for batch in batches:
                    row = row_of[(precision, sample, batch)]
                    x = images(sample, batch, device.name, dtype)
                    row[phase], paths = measure(model, twin, x, device, rounds, count_paths=phase == "ours")
                    if paths is not None:
                        row["paths"] = paths
                    if phase == "ours" and batch == profile_batch and device.activities and OOM not in row[phase]:
                        row["profile"] = profile_entry(model, twin, x, device.activities)
                    del x
                    cells = _ms_cells(row[phase])
                    print(f"{phase:<9} {precision:<4} {sample:<15} b={batch:<4} {cells[0]} ms, twin {cells[1]} ms: "
                          f"{cells[2]}x", flush=True)
                    save()
                del model, twin  # the next sample or precision gets the device memory
    return exit_status(checks)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", choices=SAMPLES_WITH_TWINS, nargs="+", default=list(kernel_bench.SAMPLES))
    parser.add_argument("--precisions", choices=PRECISIONS, nargs="+", default=list(PRECISIONS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--iters", type=int, default=5, help="back-to-back forwards per timed group")
    parser.add_argument("--repeats", type=int, default=3, help="timed groups per variant and measurement (median)")
    parser.add_argument("--out", type=Path, default=kernel_bench.RESULTS, help="folder of the .md and .json results")
    parser.add_argument("--profile-batch", type=int, help="batch whose kernels are profiled (default: the largest)")
    parser.add_argument("--list", action="store_true", help="print what would be timed and exit")
    args = parser.parse_args(argv)
    if args.profile_batch is not None and args.profile_batch not in args.batches:
        parser.error(f"--profile-batch {args.profile_batch} is not one of --batches {args.batches}")

    if args.list:
        print(f"precisions {' '.join(args.precisions)}; batches {' '.join(map(str, args.batches))}; "
              "reference and ours, each against the static twin:")
        for sample in args.samples:
            shape = "x".join(map(str, default_input_shape(sample)[1:]))
            print(f"  {sample} ({shape}): {dynamic_layer_count(sample)} dynamic layers, twin "
                  f"{twin_spec(f'sample:{sample}')}")
        return 0
    if not torch.cuda.is_available():
        print("network_bench: no CUDA device (the benchmark times GPU kernels; --list works on a CPU)",
              file=sys.stderr)
        return 2

    torch.backends.cudnn.benchmark = True
    gpu = torch.cuda.get_device_name()
    command = " ".join(["python benchmarks/network_bench.py", "--samples", *args.samples, "--precisions",
                        *args.precisions, "--batches", *map(str, args.batches)])
    header = (f"# Whole networks: the extension's kernels vs the static twin ({gpu}, torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}, per forward: median of {args.repeats} groups of {args.iters})\n\n"
              f"Generated by `{command}`. reference: the op's default CUDA implementation (grouped conv); ours: "
              "the extension's kernels (the cost model's path per layer); each divided by the twin timed in the "
              "same rounds. Ratios < 1 mean faster than the twin.")
    settings = {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "iters": args.iters,
                "repeats": args.repeats, "warmup": WARMUP, "check_batch": CHECK_BATCH}
    stem = args.out / f"network_bench_{gpu.replace(' ', '_')}"
    status = run(args.samples, args.precisions, args.batches, cuda_device(args.iters), args.repeats, stem, header,
                 settings, args.profile_batch)
    print(f"wrote {stem}.md and {stem}.json" + ("; ours mismatched the reference (see the table)" if status else ""))
    return status


if __name__ == "__main__":
    sys.exit(main())
