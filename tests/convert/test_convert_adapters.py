"""Unknown dynamic convs are reported; user adapters load from a file or an entry point; the registry is strict."""

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
from cases import randomize_norms
from standins import kaijieshi7
from torch import nn

from dyconv_deploy.cli.main import main
from dyconv_deploy.convert import Adapter, RoutedConv2d, convert_model, load_adapter
from dyconv_deploy.convert import registry as registry_module
from dyconv_deploy.convert.registry import Registry, builtin_adapters
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.nn import Routing
from dyconv_deploy.tolerance import TOLERANCES, compare

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_adapter.py"
ADAPTER_SPEC = f"{EXAMPLE}:ExpertMixAdapter"


def _example_model():
    namespace = {}
    exec(compile(EXAMPLE.read_text(), str(EXAMPLE), "exec"), namespace)
    torch.manual_seed(0)
    return namespace["build"]()


def test_unknown_dynamic_conv_is_reported_with_its_path():
    model = _example_model()
    converted, report = convert_model(model, torch.randn(2, 3, 8, 8))
    assert report.converted == []
    assert [(u.path, u.module_type) for u in report.unknown] == [("2", "ExpertMixConv"), ("4", "ExpertMixConv")]
    assert all("torch.fx cannot trace its forward" in u.reason for u in report.unknown)  # the loop over the batch
    with pytest.raises(DyconvError, match=r"in 2 \(ExpertMixConv: not recognised from its trace: .*\), "
                                          r"4 \(ExpertMixConv: .*--adapter"):
        report.raise_for_unknown()


def test_static_convs_and_input_scaled_activations_are_not_dynamic():
    model = randomize_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1)))
    _, report = convert_model(model, torch.randn(2, 3, 8, 8))
    assert report.unknown == [] and report.converted == []


def test_worked_example_adapter_converts_the_model():
    model = _example_model()
    x = torch.randn(3, 3, 8, 8)
    converted, report = convert_model(model, x, adapters=[ADAPTER_SPEC])
    assert [(r.path, r.family, r.num_kernels) for r in report.converted] == [("2", "expert_mix", 4),
                                                                             ("4", "expert_mix", 4)]
    assert report.unknown == []
    with torch.no_grad():
        assert compare(converted(x), model(x), TOLERANCES["fp32"]).passed


def test_entry_point_adapters_are_used(monkeypatch):
    point = EntryPoint("expert_mix", f"{__name__}:ExampleAdapterFromEntryPoint", registry_module.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [point] if group == point.group else [])
    _, report = convert_model(_example_model(), torch.randn(1, 3, 8, 8))
    assert {r.family for r in report.converted} == {"expert_mix"}


class ExampleAdapterFromEntryPoint(Adapter):
    """What a package would advertise under the ``dyconv_deploy.adapters`` entry-point group."""

    family = "expert_mix"

    def __init__(self):
        self._inner = load_adapter(ADAPTER_SPEC)

    def matches(self, module, parent):
        return self._inner.matches(module, parent)

    def to_canonical(self, module, parent):
        return self._inner.to_canonical(module, parent)


@pytest.mark.parametrize("spec, message", [
    ("no_colon.py", "expected FILE.py:ClassName"),
    ("missing.py:Adapter", "no such file"),
    (f"{EXAMPLE}:ExpertMixAdaptor", "did you mean ExpertMixAdapter"),
    (f"{EXAMPLE}:build", "is not an adapter"),
])
def test_load_adapter_errors_are_one_line(spec, message):
    with pytest.raises(DyconvError, match=message):
        load_adapter(spec)


def test_registry_rejects_a_duplicate_family():
    registry = Registry()
    registry.register(type("First", (Adapter,), {"family": "mine"}))
    with pytest.raises(DyconvError, match="'mine' is registered twice"):
        registry.register(type("Second", (Adapter,), {"family": "mine"}))
    assert "timm_condconv" in builtin_adapters().families()


class WrongAdapter(Adapter):
    """Claims kaijieshi7's layer but forgets its bias."""

    family = "wrong"

    def matches(self, module, parent):
        return type(module).__name__ == "Dynamic_conv2d"

    def to_canonical(self, module, parent):
        from dyconv_deploy.convert.folded_attention import AttentionRouting
        return RoutedConv2d(AttentionRouting(module.attention), module.weight, None, padding=module.padding)


def test_a_wrong_canonical_layer_stops_conversion_naming_the_module():
    model = nn.Sequential(nn.Identity(), kaijieshi7.Dynamic_conv2d(4, 4, 3, padding=1, temperature=4))
    torch.nn.init.normal_(model[1].bias)
    with pytest.raises(DyconvError, match=r"convert: 1 \(Dynamic_conv2d, family wrong\) does not match"):
        convert_model(model, torch.randn(2, 4, 6, 6), adapters=[WrongAdapter()])


def test_inspect_cli_takes_adapters_and_warns_about_unknown_convs(capsys):
    from dyconv_deploy.cli.main import main

    model = f"{EXAMPLE}:build"
    assert main(["inspect", model, "--input-shape", "2x3x8x8"]) == 0
    assert "ExpertMixConv" in capsys.readouterr().err
    assert main(["inspect", model, "--input-shape", "2x3x8x8", "--adapter", ADAPTER_SPEC, "--json"]) == 0
    out = capsys.readouterr()
    assert '"family": "expert_mix"' in out.out and "warning" not in out.err


def test_readme_adapter_commands_run_as_written(capsys, monkeypatch):
    import re
    import shlex

    from dyconv_deploy.cli.main import main

    root = EXAMPLE.parents[1]
    section = (root / "README.md").read_text().split("## Bring your own model", 1)[1].split("\n## ", 1)[0]
    commands = [line for block in re.findall(r"```shell\n(.*?)```", section, flags=re.S)
                for line in block.splitlines() if line.startswith("dyconv-deploy ")]
    assert len(commands) == 2
    monkeypatch.chdir(root)
    outputs = []
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, command
        outputs.append(capsys.readouterr())
    assert "2 (ExpertMixConv: not recognised from its trace" in outputs[0].err
    assert "4 (ExpertMixConv: not recognised from its trace" in outputs[0].err
    assert "expert_mix" in outputs[1].out


def test_program_of_a_foreign_dynamic_conv_asks_for_the_module(tmp_path, capsys):

    layer = kaijieshi7.Dynamic_conv2d(3, 4, 3, padding=1, K=4).eval()
    torch.export.save(torch.export.export(layer, (torch.randn(1, 3, 8, 8),)), tmp_path / "layer.pt2")
    assert main(["export", str(tmp_path / "layer.pt2"), "-o", str(tmp_path / "x.onnx"), "--input-shape",
                 "1x3x8x8"]) == 2
    assert "keeps no layer structure" in capsys.readouterr().err


class RolledAttentionAdapter(WrongAdapter):
    """Claims kaijieshi7's layer and gives sample n sample n-1's attention: right on identical samples only."""

    family = "rolled"

    def to_canonical(self, module, parent):
        from dyconv_deploy.convert.folded_attention import AttentionRouting

        class Rolled(AttentionRouting):
            def forward(self, x):
                return Routing(self.attention(x).roll(1, 0))

        return RoutedConv2d(Rolled(module.attention), module.weight, module.bias, padding=module.padding)


def test_the_conversion_check_feeds_samples_that_differ():
    model = nn.Sequential(nn.Identity(), kaijieshi7.Dynamic_conv2d(4, 4, 3, padding=1, temperature=1)).eval()
    with pytest.raises(DyconvError, match="family rolled"):
        convert_model(model, torch.randn(3, 4, 6, 6), adapters=[RolledAttentionAdapter()])


def test_the_summary_names_the_worst_layer_error():
    from dyconv_deploy.convert import ConversionReport, ConvertedModule

    report = ConversionReport([ConvertedModule("a", "f", 4, 1e-9), ConvertedModule("b", "f", 4, 3e-6)])
    assert report.summary() == "converted 2 f layers, max error 3e-06"


def test_an_adapter_file_class_without_to_canonical_is_refused(tmp_path):
    source = tmp_path / "half.py"
    source.write_text("class Half:\n    family = 'half'\n    def matches(self, module, parent):\n        return False\n")
    with pytest.raises(DyconvError, match=r"Half is not an adapter \(no 'to_canonical'\)"):
        load_adapter(f"{source}:Half")


def test_the_blog_post_temperature_is_kept():
    """tau != 1 (the cases deploy it at 1): the batched routing divides by the layer's own tau."""
    from standins import seed_dynamic_conv

    torch.manual_seed(0)
    layer = seed_dynamic_conv.DynamicConv2D(8, 8, 3, padding=1, num_experts=4).eval()
    torch.nn.init.normal_(layer.weight, std=0.3)
    layer._attention_fn.tau = 0.25
    x = torch.randn(3, 8, 6, 6)
    converted, report = convert_model(layer, x)
    assert [r.family for r in report.converted] == ["per_sample_dynamic_conv"]
    with torch.no_grad():
        assert compare(converted(x), layer(x), TOLERANCES["fp32"]).passed
        assert converted.routing(x).attention.max() > 0.5  # sharp: the temperature matters here


class ByNameAdapter(Adapter):
    """Claims every module named like a canonical layer (a foreign DyReLU or DynamicConv2d would share the name)."""

    family = "by_name"

    def matches(self, module, parent):
        return type(module).__name__ in ("DynamicConv2d", "DyReLU")

    def to_canonical(self, module, parent):
        raise AssertionError(f"a canonical {type(module).__name__} was offered to an adapter")


def test_canonical_layers_are_never_offered_to_an_adapter():
    from dyconv_deploy.nn import DynamicConv2d, DyReLU

    model = nn.Sequential(DynamicConv2d(4, 4, 3, padding=1), DyReLU(4), nn.Sequential(DyReLU(4, mode="A")))
    converted, report = convert_model(model, torch.randn(2, 4, 6, 6), adapters=[ByNameAdapter()])
    assert report.converted == [] and report.unknown == []
    assert [type(m) for m in converted.modules()] == [type(m) for m in model.modules()]
