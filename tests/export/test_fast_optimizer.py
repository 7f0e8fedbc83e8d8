"""fast_matching: onnxscript's optimizer gives the same graph, and its matcher only sees nodes that can
be the root of a pattern."""

import numpy as np
import onnx
import onnx_ir as ir
import onnxscript
from onnx import TensorProto, helper, numpy_helper
from onnxscript.rewriter import _matcher

from dyconv_deploy.export.fast_optimizer import fast_matching


def _halves_model(chain: int = 12) -> onnx.ModelProto:
    """``x [1, 8]`` through ``chain`` Tanh nodes, then two Slices of the halves (onnxscript's SlicesSplit rule
    turns them into one Split) added together. The high half comes first: the rule tries the pairs of Slices
    in graph order, the first Slice paired with itself too, and gives up after the first pair it rejects."""
    nodes = [helper.make_node("Tanh", [f"t{i}"], [f"t{i + 1}"]) for i in range(chain)]
    last = f"t{chain}"
    nodes += [helper.make_node("Slice", [last, "four", "eight", "axis"], ["high"]),
              helper.make_node("Slice", [last, "zero", "four", "axis"], ["low"]),
              helper.make_node("Add", ["low", "high"], ["y"])]
    constants = [numpy_helper.from_array(np.array([v], np.int64), name)
                 for name, v in (("zero", 0), ("four", 4), ("eight", 8), ("axis", -1))]
    graph = helper.make_graph(nodes, "halves", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _optimized(proto: onnx.ModelProto, fast: bool) -> onnx.ModelProto:
    model = ir.from_proto(proto)
    if fast:
        with fast_matching():
            onnxscript.optimizer.optimize(model)
    else:
        onnxscript.optimizer.optimize(model)
    return ir.to_proto(model)


def test_the_optimised_graph_is_the_same_and_its_split_rewrite_still_applies():
    proto = _halves_model()
    fast = _optimized(proto, fast=True)
    assert fast.SerializeToString() == _optimized(proto, fast=False).SerializeToString()
    assert "Split" in {node.op_type for node in fast.graph.node}
    assert "Slice" not in {node.op_type for node in fast.graph.node}


def test_the_matcher_sees_only_nodes_that_can_be_the_root_of_the_pattern(monkeypatch):
    seen = {True: [], False: []}  # per fast_matching: (several output nodes, node op, root op or None)
    original = _matcher.SimplePatternMatcher.match

    def recording(self, model, graph, node, **options):
        root = self.pattern.output_nodes[0].op_identifier()
        seen[fast].append((not self.pattern.has_single_output_node, node.op_type, root and root[1]))
        return original(self, model, graph, node, **options)

    monkeypatch.setattr(_matcher.SimplePatternMatcher, "match", recording)
    for fast in (False, True):
        _optimized(_halves_model(), fast)
    # Without it, every node is tried with every rule, the graph indexed for each multi-output try.
    assert {"Tanh", "Add"} <= {op for multi, op, _ in seen[False] if multi}
    assert {op for multi, op, _ in seen[True] if multi} == {"Slice"}
    assert any(root not in (None, op) for _, op, root in seen[False])
    assert all(root in (None, op) for _, op, root in seen[True])
    assert _matcher.SimplePatternMatcher.match is recording  # restored after the block
