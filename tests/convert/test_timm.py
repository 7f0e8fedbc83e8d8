"""Real timm ``efficientnet_cc_b0_{4,8}e`` models convert, export with a dynamic batch and verify.

timm is installed without its dependencies (README test command): its wheel requires
torchvision, which cannot be installed beside the pinned CPU torch. Where no torchvision is
installed, ``stubs/`` provides the few names timm imports; it is on ``sys.path`` only here.
Weights are random (``pretrained=False``) and the BatchNorms calibrated as the samples' are,
so the outputs depend on the input.
"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from dyconv_deploy.convert import convert_model
from dyconv_deploy.export import contract_nodes, export_onnx
from dyconv_deploy.lower import lower
from dyconv_deploy.samples import calibrate_batch_norms
from dyconv_deploy.tolerance import TOLERANCES
from dyconv_deploy.verify import verify_onnx

STUBS = Path(__file__).parent / "stubs"
SHAPE = (2, 3, 64, 64)  # at 32x32 the calibrated net is ill-conditioned (fp32 and fp64 differ by 1e-2)


@pytest.fixture(scope="module")
def timm():
    """timm, imported over the stand-in where no torchvision is installed; afterwards the stand-in
    is off ``sys.path`` and out of ``sys.modules`` again (timm keeps the names it took from it)."""
    stand_in = importlib.util.find_spec("torchvision") is None
    with pytest.MonkeyPatch.context() as patch:
        if stand_in:
            patch.syspath_prepend(str(STUBS))
        try:
            import timm
        except ModuleNotFoundError as error:
            pytest.fail(f"{error}: install timm as the README's test command does")
    if stand_in:
        for name in [name for name in sys.modules if name.split(".")[0] == "torchvision"]:
            del sys.modules[name]
    return timm


@pytest.mark.parametrize("name", ["efficientnet_cc_b0_4e", "efficientnet_cc_b0_8e"])
def test_timm_efficientnet_cc_converts_and_exports(timm, name):
    model = timm.create_model(name, pretrained=False).eval()
    calibrate_batch_norms(model, SHAPE)
    with torch.no_grad():
        logits = model(torch.randn(*SHAPE))
    assert (logits[0] - logits[1]).abs().max() > 0.1 * logits.abs().max()  # the output depends on the input
    converted, report = convert_model(model, torch.randn(*SHAPE))
    assert report.unknown == [] and {r.family for r in report.converted} == {"timm_condconv"}
    assert {r.num_kernels for r in report.converted} == {int(name[-2])}
    proto = export_onnx(converted, torch.randn(*SHAPE))
    assert len(contract_nodes(proto)) == len(report.converted)
    for comparison in verify_onnx(model, lower(proto, "plugin"), SHAPE, [1, 3], TOLERANCES["fp32"]):
        assert comparison.passed, str(comparison)
