"""Strategy ``auto``'s two halves in the lower stage: one-layer graphs to time, and a per-layer lowering.

:func:`layer_graphs` cuts every ``dyconv::DynamicConv2d`` node of a (BatchNorm-folded) graph out
into a graph of its own — inputs X, A (and S), the node with its expert W and B, output Y —
so an engine can time each strategy on that layer alone (``dyconv_deploy.bench.layer_tuning``).
Layers with the same geometry share one :class:`LayerGraph` (their weights differ, their
cost does not). :func:`lower_per_layer` then lowers each node with the strategy chosen for
it, and records the choice in the ``dyconv_deploy.layer_strategies`` metadata entry (JSON:
node output name -> strategy).
"""

import json
from dataclasses import dataclass, field
from typing import Mapping, Optional

import onnx
import onnx_graphsurgeon as gs

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.export.metadata import read_metadata, stamp
from dyconv_deploy.lower import experts, grouped, plugin
from dyconv_deploy.lower.fold_bn import fold_batchnorm
from dyconv_deploy.lower.graph import ContractNode, contract_nodes, finish, load, with_static_batch

NAME = "auto"
_REWRITES = {"plugin": plugin.rewrite, "experts": experts.rewrite, "grouped": grouped.rewrite}
LAYER_STRATEGIES = tuple(_REWRITES)  # the exact strategies a layer can take
METADATA_KEY = "layer_strategies"
BATCH = "batch"  # the dynamic batch dimension of a layer graph


@dataclass
class LayerGraph:
    """One distinct layer geometry: a graph of that single node, and every node of the model that has it.

    ``model``: inputs ``X [batch, C, H, W]``, ``A [batch, K]`` or ``[batch, K, M]`` (and ``S [batch, kH, kW]``),
    the contract node with the first such node's W (and B), output ``Y``; the batch is dynamic.
    ``geometry``: what determines its cost (JSON-able); ``label``: the same, short, for tables.
    """

    geometry: dict
    label: str
    model: onnx.ModelProto
    layers: list[str] = field(default_factory=list)


def layer_graphs(model: onnx.ModelProto) -> list[LayerGraph]:
    """The distinct layers of ``model`` after BatchNorm folding, in graph order (see the module doc).

    The layer names are the output names of the folded graph's contract nodes, the keys
    :func:`lower_per_layer` takes.
    """
    graph = load(fold_batchnorm(model), NAME)
    distinct: dict[str, LayerGraph] = {}
    for contract in contract_nodes(graph, NAME):
        geometry = _geometry(contract)
        key = json.dumps(geometry, sort_keys=True)
        if key not in distinct:
            distinct[key] = LayerGraph(geometry, _label(geometry), _single_node_model(contract, graph, model.ir_version))
        distinct[key].layers.append(contract.y.name)
    return list(distinct.values())


def lower_per_layer(model: onnx.ModelProto, choices: Mapping[str, str], *,
                    static_batch: Optional[int] = None) -> onnx.ModelProto:
    """Lower each contract node with ``choices[its output name]`` (one of :data:`LAYER_STRATEGIES`).

    ``choices`` must name every node of the folded graph (:func:`layer_graphs` gives the names);
    ``grouped`` needs a static batch (``static_batch``, or one the graph already has).
    Raises:
        DyconvError: an unknown strategy, a node without a choice, or a choice for a node that does not exist.
    """
    unknown = sorted({s for s in choices.values() if s not in _REWRITES})
    if unknown:
        raise DyconvError(f"lower[auto]: unknown layer strategy {', '.join(unknown)}; choose from "
                          f"{', '.join(LAYER_STRATEGIES)}")
    if static_batch is not None:
        model = with_static_batch(model, static_batch, NAME)
    folded = fold_batchnorm(model)
    graph = load(folded, NAME)
    contracts = contract_nodes(graph, NAME)
    names = {contract.y.name for contract in contracts}
    missing, extra = sorted(names - set(choices)), sorted(set(choices) - names)
    if missing or extra:
        raise DyconvError(f"lower[auto]: the layer choices do not fit the graph (no choice for {missing or 'none'}; "
                          f"no such node: {extra or 'none'}). Next: tune the layers of this very graph again.")
    for contract in contracts:
        _REWRITES[choices[contract.y.name]](graph, contract)
    return stamp(finish(graph, folded, NAME), **{METADATA_KEY: json.dumps(dict(sorted(choices.items())))})


def layer_strategies(model: onnx.ModelProto) -> dict[str, str]:
    """The per-layer choices recorded by :func:`lower_per_layer` (empty for other graphs)."""
    recorded = read_metadata(model).get(METADATA_KEY)
    return json.loads(recorded) if recorded else {}


def _geometry(contract: ContractNode) -> dict:
    channels, height, width = (int(d) for d in contract.x.shape[1:])
    return {"in": channels, "out": contract.out_channels, "hw": [height, width], "experts": contract.experts,
            "kernel": list(contract.kernel_size), "strides": contract.strides, "pads": contract.pads,
            "dilations": contract.dilations, "group": contract.group,
            "attention": [int(d) for d in contract.attention.shape[1:]], "bias": contract.bias is not None,
            "spatial": contract.spatial is not None, "dtype": str(contract.weight.dtype)}


def _label(geometry: dict) -> str:
    """E.g. ``3x3/2 96->96 g96 @56x56 K4`` (+ ``per-channel A``, ``S``)."""
    kh, kw = geometry["kernel"]
    stride = max(geometry["strides"])
    extras = "".join([" per-channel A" if len(geometry["attention"]) == 2 else "", " S" if geometry["spatial"] else ""])
    group = f" g{geometry['group']}" if geometry["group"] > 1 else ""
    return (f"{kh}x{kw}{f'/{stride}' if stride > 1 else ''} {geometry['in']}->{geometry['out']}{group} "
            f"@{geometry['hw'][0]}x{geometry['hw'][1]} K{geometry['experts']}{extras}")


def _single_node_model(contract: ContractNode, source: gs.Graph, ir_version: int) -> onnx.ModelProto:
    """The contract node alone, with graph inputs for its computed inputs and a dynamic batch."""
    def graph_input(tensor: gs.Tensor, name: str) -> gs.Variable:
        return gs.Variable(name, dtype=tensor.dtype, shape=[BATCH, *tensor.shape[1:]])

    x, attention = graph_input(contract.x, "X"), graph_input(contract.attention, "A")
    inputs = [x, attention, *contract.node.inputs[2:]]
    graph_inputs = [x, attention]
    if contract.spatial is not None:
        spatial = graph_input(contract.spatial, "S")
        inputs[4] = spatial
        graph_inputs.append(spatial)
    y = gs.Variable("Y", dtype=contract.y.dtype, shape=[BATCH, contract.out_channels, *contract.y.shape[2:]])
    node = gs.Node(contract.node.op, "layer", dict(contract.node.attrs), inputs, [y], domain=contract.node.domain)
    single = gs.Graph(nodes=[node], inputs=graph_inputs, outputs=[y], opset=source.opset,
                      import_domains=source.import_domains)
    exported = gs.export_onnx(single)
    exported.ir_version = ir_version
    return exported
