"""``grouped``: batch folded into conv groups at a fixed batch, exact against the reference."""

import pytest
from graphs import NODES, assert_matches, batch_dim, contract_model, op_types, random_feeds, run_onnxruntime, \
    run_reference

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.lower.graph import with_static_batch
from dyconv_deploy.lower.grouped import lower_grouped


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("node", NODES, ids=str)
def test_grouped_matches_reference(node, batch):
    model = contract_model(node)
    lowered = lower_grouped(model, static_batch=batch)
    feeds = random_feeds(model, batch)
    assert_matches(run_onnxruntime(lowered, feeds), run_reference(model, feeds))
    convs = [n for n in lowered.graph.node if n.op_type == "Conv"]
    assert len(convs) == 1 and "DynamicConv2d" not in op_types(lowered)
    assert next(a.i for a in convs[0].attribute if a.name == "group") == node.groups * batch
    assert batch_dim(lowered) == batch
    assert lowered.graph.output[0].type.tensor_type.shape.dim[0].dim_value == batch


def test_dynamic_batch_is_refused_with_the_reason():
    with pytest.raises(DyconvError, match=r"lower\[grouped\] step 2/3: .*dynamic batch.*groups are static.*"
                                          r"Next: pass static_batch=N"):
        lower_grouped(contract_model(NODES[0]))


def test_static_batch_must_agree_with_a_fixed_batch():
    fixed = with_static_batch(contract_model(NODES[0]), 2, "grouped")
    with pytest.raises(DyconvError, match="fixed batch 2, not 4"):
        lower_grouped(fixed, static_batch=4)


def test_static_batch_fixes_the_outputs_that_share_the_batch_symbol():
    from onnx import TensorProto, helper

    model = contract_model(NODES[2])
    model.graph.output.append(helper.make_tensor_value_info("A", TensorProto.FLOAT, ["other", NODES[2].experts]))
    fixed = with_static_batch(model, 3, "grouped")

    def batches(values):
        return [v.type.tensor_type.shape.dim[0].dim_value or v.type.tensor_type.shape.dim[0].dim_param for v in values]

    assert batches(fixed.graph.input) == [3, 3]
    assert batches(fixed.graph.output) == [3, "other"]  # another symbol is not the batch
    assert batches(model.graph.output) == ["batch", "other"]  # a copy: the model is not modified
