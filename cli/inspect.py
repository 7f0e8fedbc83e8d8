"""``dyconv-deploy inspect``: list the dynamic convs of a model and count params and MAdds by role."""

import json

import typer

from dyconv_deploy.cli.options import (AdapterOption, ArchOption, InputShapeOption, JsonOption, ModelArgument,
                                       TrustPickleOption, resolve_input_shape)


def inspect_command(model: ModelArgument, input_shape: InputShapeOption = "auto",
                    json_output: JsonOption = False, adapter: AdapterOption = [], arch: ArchOption = None,
                    trust_pickle: TrustPickleOption = False) -> None:
    """List every dynamic conv of MODEL (path, family, K, shapes, source) and its params and MAdds.

    The family is the layer's math (dynamic_conv: softmax over the experts, condconv: sigmoid, odconv,
    dynet); the source is where its code comes from (dyconv_deploy, or the adapter that converted it).

    Attention = routing branch; aggregation = mixing the K experts per sample; convolution = the conv itself.
    The rest of the network is "other". For sample:NAME the paper's figures are shown beside ours.

    Examples:

        dyconv-deploy inspect sample:dy_mobilenetv2

        dyconv-deploy inspect my_net.py:build --input-shape 1x3x256x256 --json

        dyconv-deploy inspect timm_cc.py:build --adapter my_adapter.py:MyAdapter

        dyconv-deploy inspect weights.pth --arch my_net.py:build
    """
    import torch

    from dyconv_deploy.analysis import analyze
    from dyconv_deploy.convert import convert_model
    from dyconv_deploy.io import load_model

    shape = resolve_input_shape(model, input_shape)
    source = load_model(model, arch=arch, trust_pickle=trust_pickle)
    converted, conversion = convert_model(source, torch.randn(*shape), adapters=adapter)
    if conversion.unknown:
        typer.echo(f"warning: {conversion.unknown_message()}", err=True)
    report = analyze(converted, shape)
    paper = _paper_figures(model)
    if json_output:
        typer.echo(json.dumps({"model": model, **report.to_dict(), "paper": paper}, indent=2))
    else:
        _print_tables(model, report, paper, conversion.summary())


def _paper_figures(model: str):
    if not model.startswith("sample:"):
        return None
    from dataclasses import asdict

    from dyconv_deploy.samples import get_sample

    paper = get_sample(model[len("sample:"):]).paper
    return None if paper is None else asdict(paper)


def _print_tables(model: str, report, paper, conversion: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{model}[/bold]  input {_shape(report.input_shape)}  "
                  f"{len(report.layers)} dynamic conv(s); {conversion}")
    if report.layers:
        layers = Table("path", "family", "K", "kernel", "output", "attention", "aggregation", "convolution",
                       "source", title="dynamic convs (MAdds)")
        for layer in report.layers:
            layers.add_row(layer.path, layer.family, str(layer.num_kernels), _shape(layer.kernel_shape),
                           _shape(layer.output_shape), _count(layer.attention.madds),
                           _count(layer.aggregation.madds), _count(layer.convolution.madds), layer.source)
        console.print(layers)
    totals = Table("role", "params", "MAdds", title="totals")
    for role in ("attention", "aggregation", "convolution", "other", "total"):
        cost = getattr(report, role)
        totals.add_row(role, _count(cost.params), _count(cost.madds))
    if paper is not None:
        totals.add_row(f"paper: {paper['source']}", _count(paper["params"]), _count(paper["madds"]))
    console.print(totals)


def _shape(shape) -> str:
    return "x".join(str(d) for d in shape)


def _count(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:g}"
