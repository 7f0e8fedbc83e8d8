"""Time per op category (attention, expert mixing, convolution, other) of one graph on one engine.

:func:`categorize` assigns every ONNX node one of :data:`CATEGORIES`; :func:`profile_onnxruntime`
and :func:`profile_openvino` run a graph with the engine's own per-node profiler and sum the
node times per category, so ``bench --profile`` can show where the dynamic cost goes.

Rules of :func:`categorize` (decided on the graphs of the four strategies and of the ONNX Runtime
expansion; "constant" = an initializer, a ``Constant`` output, or computed from constants only):

* **mixing** — nodes that combine attention with expert weights:

  - a ``dyconv::DynamicConv2d`` contract node is *convolution* (mixing and conv in one kernel;
    engines that split it report the parts: ONNX Runtime runs the expansion, OpenVINO
    ``MixKernels``);
  - per-sample kernels (``grouped``, the ONNX Runtime expansion): a ``MatMul``/``Mul`` of a
    non-constant operand with a constant of rank >= 2 that holds more elements than that operand
    (``A @ W.reshape(K, -1)``: every expert is read), *when* its result flows — through
    Reshape/Transpose/Unsqueeze/…, ``Mul`` (by S) and ``ReduceSum`` (over K) — into a conv's weight
    or bias (a ``Conv`` input 1/2, a ``Scan`` input whose body feeds its ``Conv`` weight or bias, or
    a ``MatMul``/``Add`` with a non-constant operand: the expansion's batched 1x1 conv and its bias).
    That origin, the nodes on that flow and the constant nodes feeding it (``Reshape(W)``) are mixing;
  - ``experts``: ``ReduceSum(Mul(Reshape(Conv(X, W_const)), a))`` where the Reshape splits the
    conv's K·M channels into >= 5 dims: the split Reshape, the Mul, the ReduceSum and a Reshape
    right after it are mixing (the K·M-channel Conv is convolution);
  - ``experts`` on a depthwise node: ``Sum_k Mul(Conv(X, W_k const), a_k)`` with a non-constant
    ``a_k`` smaller than the conv output (the expert's attention): the Muls and the Sum are mixing
    (the K Convs are convolution), and each ``a_k`` is an attention input;
  - Shape/Slice/Concat/Gather/… nodes (and constant nodes) whose outputs only mixing nodes read
    (the split and merge shapes) are mixing.

* **attention** — the nodes that exclusively compute the attention inputs. Attention inputs are
  input 1 (A) and 4 (S) of contract nodes, the non-constant operand of a mixing origin and of a
  mixing ``Mul`` outside the expert flow (S), and ODConv's channel/filter scales (below). Walking
  the graph backwards, a node is attention when every consumer of each of its outputs is an
  attention node or an attention input, and none is a graph output: the pooling ``ReduceMean``,
  ``Gemm``/``MatMul``/1x1 ``Conv`` of the routing, ``Relu``, ``Softmax``, ``Sigmoid``, ``Div`` by
  the temperature, and reshapes of A are attention; the main-path tensor the pooling reads (also X)
  is not. ODConv's scales: a routing node that attention nodes read but is not attention itself
  (its output also feeds the channel/filter heads) starts single-consumer chains of 1 to
  :data:`_MAX_SCALE_CHAIN` nodes ending in a ``Mul`` whose other operand is computed and larger (a
  broadcast ``[N, C, 1, 1]`` scale on ``[N, C, H, W]``); that Mul's operand is an attention input
  too, and the walk is repeated. DyReLU / SE branches that share no routing node stay "other".

* **convolution** — the remaining ``Conv``/``ConvTranspose``/``MatMul``/``Gemm`` (main path, also
  the classifier), contract nodes, and a ``Scan`` whose body runs a ``Conv`` (per-sample conv).

* **other** — everything else (activations, BatchNorm, residual Adds, reshapes of the main path, …).

Unnamed nodes are keyed by :func:`node_key` (``"<op>:<first output>"``); the profilers give them
that name before running the graph.
"""

import json
import os
from dataclasses import dataclass, field

import numpy as np
import onnx

from dyconv_deploy.ops.contract import DOMAIN, OP_TYPE

CATEGORIES = ("attention", "mixing", "convolution", "other")

_CONV_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
_SHAPE_OPS = {"Reshape", "Transpose", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Cast", "Expand"}
_SHAPE_COMPUTE = {"Shape", "Slice", "Concat", "Gather", "Cast", "Unsqueeze", "Squeeze", "Reshape", "Constant",
                  "ConstantOfShape", "Range", "Size"}
_MAX_SCALE_CHAIN = 8
# Engine op names (after fusion) that are convolutions / GEMMs when no ONNX node name matches.
_ENGINE_CONV_OPS = {"Conv", "FusedConv", "NchwcConv", "ConvTranspose", "MatMul", "FusedMatMul", "Gemm", "FusedGemm",
                    "Convolution", "GroupConvolution", "Deconvolution"}


def node_key(node: onnx.NodeProto) -> str:
    """The key of ``node`` in :func:`categorize`'s result: its name, or ``"<op>:<first output>"`` if unnamed."""
    return node.name or f"{node.op_type}:{node.output[0] if node.output else ''}"


@dataclass
class Profile:
    """Mean milliseconds per run, per category (all of :data:`CATEGORIES`) and in total, of ``nodes`` timed nodes."""

    categories: dict[str, float] = field(default_factory=dict)
    total_ms: float = 0.0
    nodes: int = 0

    def to_dict(self) -> dict:
        return {"categories": dict(self.categories), "total_ms": self.total_ms, "nodes": self.nodes}


class _Graph:
    """Producers, consumers, constants and element counts of a (shape-inferred) graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        from dyconv_deploy.ops.onnx_schema import register_schema

        register_schema()
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # shapes only sharpen the mixing rule; an uninferable graph keeps its own value_info
            pass
        graph = model.graph
        self.nodes = list(graph.node)
        self.producer = {out: i for i, n in enumerate(self.nodes) for out in n.output if out}
        self.consumers: dict[str, list[tuple[int, int]]] = {}
        for i, n in enumerate(self.nodes):
            for slot, name in enumerate(n.input):
                if name:
                    self.consumers.setdefault(name, []).append((i, slot))
        self.outputs = {o.name for o in graph.output}
        self.dims = {t.name: list(t.dims) for t in graph.initializer}
        for info in [*graph.value_info, *graph.input, *graph.output]:
            if info.name not in self.dims and info.type.tensor_type.HasField("shape"):
                self.dims[info.name] = [d.dim_value if d.HasField("dim_value") else None
                                        for d in info.type.tensor_type.shape.dim]
        self.constant = {t.name for t in graph.initializer}
        for n in self.nodes:  # topological order: constants propagate forwards
            if n.op_type == "Constant" or (n.input and all(not x or x in self.constant for x in n.input)
                                           and n.op_type not in {"RandomNormal", "RandomUniform"}):
                self.constant.update(o for o in n.output if o)

    def rank(self, name: str) -> int | None:
        return len(self.dims[name]) if name in self.dims else None

    def numel(self, name: str) -> int:
        return int(np.prod([d or 1 for d in self.dims.get(name, [])], dtype=np.int64))

    def uses(self, name: str) -> list[tuple[int, int]]:
        return self.consumers.get(name, [])

    def made_by(self, name: str) -> int | None:
        return self.producer.get(name)


def categorize(model: onnx.ModelProto) -> dict[str, str]:
    """ONNX node key (:func:`node_key`) -> category, for every node of ``model``'s graph (rules: module doc)."""
    g = _Graph(model)
    mixing: set[int] = set()
    slots: set[tuple[int, int]] = set()  # (node, input index) that take an attention input
    for i, node in enumerate(g.nodes):
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            slots.update((i, s) for s in (1, 4) if s < len(node.input) and node.input[s])
    _per_sample_kernels(g, mixing, slots)
    _expert_sums(g, mixing, slots)
    _expert_terms(g, mixing, slots)
    attention = _attention(g, mixing, slots)
    for _ in range(3):  # ODConv's channel/filter scales hang off a routing node; each round may expose more
        extra = _scale_slots(g, attention, mixing) - slots
        if not extra:
            break
        slots |= extra
        attention = _attention(g, mixing, slots)
    _absorb(g, mixing, attention)
    result = {}
    for i, node in enumerate(g.nodes):
        if i in attention:
            category = "attention"
        elif i in mixing:
            category = "mixing"
        elif node.op_type in _CONV_OPS or (node.domain == DOMAIN and node.op_type == OP_TYPE) or _is_conv_scan(node):
            category = "convolution"
        else:
            category = "other"
        result[node_key(node)] = category
    return result


def _per_sample_kernels(g: _Graph, mixing: set[int], slots: set[tuple[int, int]]) -> None:
    """Mixing origins ``A @ E`` / ``A * E`` whose result flows into a conv weight or bias (module doc)."""
    for i, node in enumerate(g.nodes):
        if node.op_type not in ("MatMul", "Mul") or len(node.input) != 2 or i in mixing:
            continue
        const = [s for s, x in enumerate(node.input) if x in g.constant]
        if len(const) != 1:
            continue
        experts, data = node.input[const[0]], node.input[1 - const[0]]
        if (g.rank(experts) or 0) < 2 or g.numel(experts) <= g.numel(data):
            continue
        flow, side_slots, reaches_sink = {i}, set(), False
        carrying, frontier = set(node.output), list(node.output)
        while frontier:
            tensor = frontier.pop()
            for c, slot in g.uses(tensor):
                consumer = g.nodes[c]
                others = [x for s, x in enumerate(consumer.input) if s != slot and x]
                if _is_sink(g, consumer, slot, others, carrying):
                    reaches_sink = True
                elif (consumer.op_type in _SHAPE_OPS and slot == 0) or (consumer.op_type == "ReduceSum" and slot == 0) \
                        or consumer.op_type == "Mul":
                    flow.add(c)
                    side_slots.update((c, s) for s, x in enumerate(consumer.input)
                                      if s != slot and x and x not in g.constant and x not in carrying)
                    new = [o for o in consumer.output if o and o not in carrying]
                    carrying.update(new)
                    frontier.extend(new)
        if reaches_sink:
            mixing |= flow | _constant_feeders(g, experts)
            slots.add((i, 1 - const[0]))
            slots |= side_slots


def _is_sink(g: _Graph, consumer: onnx.NodeProto, slot: int, others: list[str], carrying: set[str]) -> bool:
    """Does ``consumer`` take the per-sample kernel (or bias) at ``slot`` as a conv's weight?"""
    if consumer.op_type in ("Conv", "ConvTranspose"):
        return slot in (1, 2)
    if consumer.op_type == "Scan":
        return slot > 0 and _is_conv_scan(consumer)
    if consumer.op_type in ("MatMul", "Add"):
        return any(x not in g.constant and x not in carrying for x in others)
    return False


def _is_conv_scan(node: onnx.NodeProto) -> bool:
    if node.op_type != "Scan":
        return False
    body = next((a.g for a in node.attribute if a.name == "body"), None)
    return body is not None and any(n.op_type in ("Conv", "ConvTranspose") for n in body.node)


def _constant_feeders(g: _Graph, tensor: str) -> set[int]:
    """The nodes computing the constant ``tensor`` (e.g. ``Reshape(W, shape)``)."""
    found, stack = set(), [tensor]
    while stack:
        i = g.made_by(stack.pop())
        if i is not None and i not in found:
            found.add(i)
            stack.extend(x for x in g.nodes[i].input if x)
    return found


def _expert_sums(g: _Graph, mixing: set[int], slots: set[tuple[int, int]]) -> None:
    """``experts``: ``ReduceSum(Mul(Reshape(Conv(X, W_const)), a))`` with a >= 5-dim split (module doc)."""
    for r, node in enumerate(g.nodes):
        if node.op_type != "ReduceSum" or g.made_by(node.input[0]) is None:
            continue
        m = g.made_by(node.input[0])
        mul = g.nodes[m]
        if mul.op_type != "Mul" or len(mul.input) != 2:
            continue
        for s, operand in enumerate(mul.input):
            split = g.made_by(operand)
            if split is None or g.nodes[split].op_type != "Reshape" or (g.rank(operand) or 0) < 5:
                continue
            conv = g.made_by(g.nodes[split].input[0])
            if conv is None or g.nodes[conv].op_type != "Conv" or g.nodes[conv].input[1] not in g.constant:
                continue
            mixing.update((split, m, r))
            after = g.uses(node.output[0])
            if len(after) == 1 and g.nodes[after[0][0]].op_type == "Reshape" and after[0][1] == 0:
                mixing.add(after[0][0])
            if mul.input[1 - s] not in g.constant:
                slots.add((m, 1 - s))
            break


def _expert_terms(g: _Graph, mixing: set[int], slots: set[tuple[int, int]]) -> None:
    """``experts`` on a depthwise node: ``Sum_k Mul(Conv(X, W_k const), a_k)`` (module doc)."""
    for r, node in enumerate(g.nodes):
        if node.op_type != "Sum" or len(node.input) < 2:
            continue
        terms = []
        for operand in node.input:
            m = g.made_by(operand)
            mul = g.nodes[m] if m is not None else None
            if mul is None or mul.op_type != "Mul" or len(mul.input) != 2:
                break
            term = next(((m, 1 - s) for s, x in enumerate(mul.input)
                         if (c := g.made_by(x)) is not None and g.nodes[c].op_type == "Conv"
                         and g.nodes[c].input[1] in g.constant and mul.input[1 - s] not in g.constant
                         and g.numel(mul.input[1 - s]) < g.numel(x)), None)
            if term is None:
                break
            terms.append(term)
        else:
            mixing.update(m for m, _ in terms)
            mixing.add(r)
            slots.update(terms)


def _attention(g: _Graph, mixing: set[int], slots: set[tuple[int, int]]) -> set[int]:
    """Nodes every output of which only attention nodes or attention inputs read (reverse topological walk)."""
    attention: set[int] = set()
    for i in range(len(g.nodes) - 1, -1, -1):
        node = g.nodes[i]
        if i in mixing or (node.domain == DOMAIN and node.op_type == OP_TYPE):
            continue
        outputs = [o for o in node.output if o]
        if outputs and all(o not in g.outputs and g.uses(o) and
                           all(c in attention or (c, s) in slots for c, s in g.uses(o)) for o in outputs):
            attention.add(i)
    return attention


def _scale_slots(g: _Graph, attention: set[int], mixing: set[int]) -> set[tuple[int, int]]:
    """ODConv's channel/filter scales: single-consumer chains from a routing node to a Mul (module doc)."""
    found = set()
    for i, node in enumerate(g.nodes):
        if i in attention or i in mixing or g.nodes[i].output[0] in g.constant:
            continue
        uses = [u for o in node.output if o for u in g.uses(o)]
        if not any(c in attention for c, _ in uses):
            continue
        for c, s in uses:
            if c in attention:
                continue
            for step in range(_MAX_SCALE_CHAIN):
                chain = g.nodes[c]
                if chain.op_type == "Mul":
                    data = chain.input[1 - s] if len(chain.input) == 2 else ""
                    if step > 0 and data and data not in g.constant and \
                            g.numel(chain.input[s]) < g.numel(data):  # a broadcast scale on a larger tensor
                        found.add((c, s))
                    break
                nxt = g.uses(chain.output[0]) if len(chain.output) == 1 else []
                if (c in mixing or len(nxt) != 1 or chain.output[0] in g.outputs
                        or (chain.domain == DOMAIN and chain.op_type == OP_TYPE)):
                    break
                c, s = nxt[0]
    return found


def _absorb(g: _Graph, mixing: set[int], attention: set[int]) -> None:
    """Shape computations (and constants) that only mixing nodes read become mixing."""
    for i in range(len(g.nodes) - 1, -1, -1):
        node = g.nodes[i]
        if i in mixing or i in attention:
            continue
        outputs = [o for o in node.output if o]
        shape_like = node.op_type in _SHAPE_COMPUTE or all(o in g.constant for o in outputs)
        if shape_like and outputs and all(o not in g.outputs and g.uses(o) and
                                          all(c in mixing for c, _ in g.uses(o)) for o in outputs):
            if node.op_type == "Reshape" and node.input[0] not in g.constant and g.made_by(node.input[0]) is not None \
                    and node.input[0] not in {t for c in mixing for t in g.nodes[c].output}:
                continue  # a Reshape of a main-path / attention tensor is not a shape computation
            mixing.add(i)


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose unnamed nodes are named :func:`node_key` (names do not change what runs)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        if not node.name:
            node.name = node_key(node)
    return copy


def _resolver(model: onnx.ModelProto, categories: dict[str, str]):
    """``(engine node name, engine op type) -> category`` through the ONNX node names the engines keep.

    Engines rename what they fuse or rewrite: ONNX Runtime ``fused <name>``, ``<output>_nchwc``,
    ``<name>/<Fusion>``, ``<name>_token_<i>``; OpenVINO ``<name>/WithoutBiases``, an output tensor's
    name. A match takes that node's category, except that a conv/GEMM kernel whose match is "other"
    (a Conv fused into the activation it is named after) is convolution; no match: by op type.
    """
    by_output = {o: node_key(n) for n in model.graph.node for o in n.output if o}

    def lookup(name: str) -> str | None:
        candidates = [name, name.removeprefix("fused "), name.removesuffix("_nchwc"),
                      *_slash_prefixes(name.removeprefix("fused "))]
        if "_token_" in name:
            candidates.append(name.removeprefix("fused ").split("_token_")[0])
        for candidate in candidates:
            if candidate in categories:
                return categories[candidate]
            if candidate in by_output:
                return categories[by_output[candidate]]
        return None

    def resolve(name: str, op_type: str) -> str:
        category = lookup(name)
        if category in (None, "other") and op_type in _ENGINE_CONV_OPS:
            return "convolution"
        return category or "other"

    return resolve


def _slash_prefixes(name: str) -> list[str]:
    """``a/b/c`` -> ``["a/b", "a"]``: the names an engine's ``<onnx name>/<suffix>`` may come from, longest
    first (TorchScript-exported nodes are themselves named like paths, ``/features/0/Conv``)."""
    parts = name.split("/")
    return [prefix for prefix in ("/".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)) if prefix]


def _summed(times: list[tuple[str, float]], runs: int) -> Profile:
    sums = dict.fromkeys(CATEGORIES, 0.0)
    for category, ms in times:
        sums[category] += ms
    categories = {c: v / runs for c, v in sums.items()}
    return Profile(categories, sum(categories.values()), len(times) // max(runs, 1))


def profile_onnxruntime(model_path_or_proto, feeds: dict[str, np.ndarray], iterations: int, threads: int = 0,
                        warmup: int = 1) -> Profile:
    """Mean ms per run and category of ``iterations`` ONNX Runtime CPU runs (after ``warmup`` untimed ones).

    The graph runs as the ort-cpu runtime runs it: contract nodes expanded by
    :func:`~dyconv_deploy.runtime.ort_custom_op.to_onnxruntime`, intra-op spinning off; the expanded graph
    is categorized. Node times come from ONNX Runtime's profiler (``*_kernel_time`` events); events nested
    in another node's (a ``Scan`` body's nodes) are inside that node's time and are not counted twice.
    """
    from dyconv_deploy.deps import require
    from dyconv_deploy.export.onnx_export import contract_nodes

    ort = require("onnxruntime", for_="profiling on ONNX Runtime")
    model = model_path_or_proto if isinstance(model_path_or_proto, onnx.ModelProto) \
        else onnx.load(os.fspath(model_path_or_proto))
    if contract_nodes(model):
        from dyconv_deploy.runtime.ort_custom_op import to_onnxruntime

        model = to_onnxruntime(model)
    model = _named(model)
    resolve = _resolver(model, categorize(model))
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    inputs = {n: np.ascontiguousarray(feeds[n]) for n in names}
    for _ in range(warmup + iterations):
        session.run(None, inputs)
    trace = session.end_profiling()
    try:
        with open(trace) as f:
            events = json.load(f)
    finally:
        os.remove(trace)
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    first = runs[warmup] if len(runs) > warmup else float("-inf")  # the warmup runs' node events come before
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
             and e["ts"] >= first]
    outer = _outermost(nodes)
    times = [(resolve(e["name"][:-len("_kernel_time")], e.get("args", {}).get("op_name", "")), e["dur"] / 1e3)
             for e in outer]
    return _summed(times, iterations)


def _outermost(events: list[dict]) -> list[dict]:
    """Events not nested inside another event of the same thread (a Scan's body runs inside the Scan)."""
    result, open_until = [], {}
    for e in sorted(events, key=lambda e: (e["tid"], e["ts"], -e["dur"])):
        if e["ts"] < open_until.get(e["tid"], float("-inf")):
            continue
        result.append(e)
        open_until[e["tid"]] = e["ts"] + e["dur"]
    return result


def profile_openvino(runtime, feeds: dict[str, np.ndarray], onnx_model: onnx.ModelProto, iterations: int,
                     warmup: int = 1) -> Profile:
    """Mean ms per run and category of ``iterations`` runs of an ``OpenVinoRuntime(..., profile=True)``.

    OpenVINO nodes named after an ONNX node (also a fused ``Subgraph``, ``<name>/WithoutBiases``, an
    output tensor's name) take its category (``onnx_model`` is the graph the runtime was made from);
    ``Reorder`` nodes are other; nodes the project's extension creates are ``MixKernels_*`` (mixing),
    unnamed ``FullyConnected`` (the bias mixing ``A @ B``: mixing) and ``GroupConvolution``/``MatMul``
    (convolution); anything else by type: Convolution/GroupConvolution/MatMul → convolution, else other.
    """
    from dyconv_deploy.runtime.openvino_runtime import MIX_OP

    onnx_names = {node_key(n) for n in onnx_model.graph.node} | {o for n in onnx_model.graph.node for o in n.output}
    resolve = _resolver(onnx_model, categorize(onnx_model))

    def category(name: str, node_type: str) -> str:
        if node_type == "Reorder":
            return "other"
        if name.startswith(MIX_OP):
            return "mixing"
        if node_type == "FullyConnected" and not any(n in onnx_names for n in (name, *_slash_prefixes(name))):
            return "mixing"
        return resolve(name, node_type)

    for _ in range(warmup):
        runtime.run(feeds)
    times = []
    for _ in range(iterations):
        runtime.run(feeds)
        times.extend((category(name, kind), ms) for name, kind, ms in runtime.profile(feeds))
    return _summed(times, iterations)
