"""Guards that make a comparison test able to fail (DESIGN.md, Conventions).

A comparison of two implementations proves nothing when the model ignores its input or gives every
sample the same attention. The helpers here check, for a model and the input a comparison uses:

- :func:`assert_attention_varies`: every dynamic layer's routing differs across the batch;
- :func:`assert_depends_on_input`: another input (all zeros; the batch rolled by one) changes the output
  beyond the tolerance;
- :func:`rolled_attention`: a context manager injecting the defect "sample n gets sample n-1's
  attention" into every canonical layer, with :func:`assert_fails` to check a comparison catches it.

The *dynamic layers* are the canonical ones: every :class:`~dyconv_deploy.nn.DynamicConvBase` (the
layers of ``dyconv_deploy.nn`` and converted ``RoutedConv2d``), whose routing is the
:class:`~dyconv_deploy.nn.Routing` passed to ``routed_conv``, and every
:class:`~dyconv_deploy.nn.DyReLU`, whose routing is ``coefficients(x) -> (slopes, intercepts)``.
Both are intercepted by patching these methods on the instances while a context is open.
"""

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from dyconv_deploy.nn import DynamicConvBase, DyReLU
from dyconv_deploy.tolerance import TOLERANCES, Comparison, Tolerance, compare

# The smallest largest-over-entries standard deviation across the batch a routing output must have:
# softmax/sigmoid attention in (0, 1) that moves by less than this mixes the experts alike for all samples.
MIN_ATTENTION_STD = 1e-2

Fields = tuple[Tensor | None, ...]


def dynamic_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, layer)`` of every canonical dynamic layer in ``model`` (``model`` itself included)."""
    return [(path, m) for path, m in model.named_modules() if isinstance(m, (DynamicConvBase, DyReLU))]


@contextmanager
def routed_through(model: nn.Module, transform: Callable[[str, Fields], Fields]) -> Iterator[None]:
    """Inside the context every dynamic layer's routing goes through ``transform(path, fields)``.

    ``fields`` is the layer's :class:`~dyconv_deploy.nn.Routing` (attention ``[N, K]`` or ``[N, K, M]``,
    spatial, channel, filter; None where absent) or DyReLU's ``(slopes, intercepts)`` ``[N, K, C|1, 1, 1]``;
    ``transform`` returns fields of the same kind, which the layer then uses.
    """
    patched = []
    for path, layer in dynamic_layers(model):
        if isinstance(layer, DynamicConvBase):
            def routed_conv(x, routing, *args, _original=layer.routed_conv, _path=path):
                return _original(x, type(routing)(*transform(_path, routing)), *args)
            layer.routed_conv, name = routed_conv, "routed_conv"
        else:
            def coefficients(x, _original=layer.coefficients, _path=path):
                return tuple(transform(_path, _original(x)))
            layer.coefficients, name = coefficients, "coefficients"
        patched.append((layer, name))
    try:
        yield
    finally:
        for layer, name in patched:
            delattr(layer, name)


@contextmanager
def rolled_attention(model: nn.Module) -> Iterator[None]:
    """The injected defect: inside the context sample n of every dynamic layer uses sample n-1's routing
    (all of it: attention, spatial, channel, filter; DyReLU's slopes and intercepts), rolled along the batch."""
    with routed_through(model, lambda path, fields: tuple(None if t is None else t.roll(1, 0) for t in fields)):
        yield


def attention_spread(model: nn.Module, *inputs: Tensor) -> dict[str, float]:
    """``{"<layer path>.<field>": attention.std(0).max()}`` for every routing output of every dynamic layer that
    ran on ``model(*inputs)`` (batch >= 2), the std taken over the batch.

    The kernel attention of a single expert under softmax (``[N, 1]`` of ones) is constant by construction and
    left out; a layer whose routing is all such (DynamicConv with K=1) is a static conv and has no entry.
    """
    if inputs[0].shape[0] < 2:
        raise ValueError(f"attention varies across a batch of at least 2 samples, got {inputs[0].shape[0]}")
    spread: dict[str, float] = {}

    def record(path: str, fields: Fields) -> Fields:
        # DyReLU's attention is its hyper function's output: the slopes and intercepts together.
        named = (zip(fields._fields, fields) if hasattr(fields, "_fields")
                 else [("coefficients", torch.cat([t.reshape(t.shape[0], -1) for t in fields], 1))])
        for name, t in named:
            if t is not None and not (t.shape[1:] == (1,) and bool((t == 1).all())):
                key, std = f"{path or '<model>'}.{name}", float(t.detach().reshape(t.shape[0], -1).std(0).max())
                spread[key] = min(std, spread.get(key, std))  # a layer called twice must vary on both calls
        return fields

    with routed_through(model, record), torch.no_grad():
        model.eval()(*inputs)
    return spread


def assert_attention_varies(model: nn.Module, *inputs: Tensor, min_std: float = MIN_ATTENTION_STD) -> dict:
    """Assert every routing output of :func:`attention_spread` varies by more than ``min_std`` across the batch,
    and that there is at least one (a model without input-dependent attention cannot mix up samples).
    Returns the spread."""
    spread = attention_spread(model, *inputs)
    assert spread, "no dynamic layer with input-dependent routing ran: a sample mix-up could not be detected"
    flat = {path: std for path, std in spread.items() if std <= min_std}
    assert not flat, f"attention (nearly) the same for every sample (std over the batch <= {min_std:g}): {flat}"
    return spread


def assert_fails(comparisons: Comparison | Iterable[Comparison], defect: str) -> None:
    """Assert at least one of ``comparisons`` failed: the comparison caught ``defect``."""
    comparisons = [comparisons] if isinstance(comparisons, Comparison) else list(comparisons)
    assert not all(c.passed for c in comparisons), f"{defect} went undetected: " + "; ".join(map(str, comparisons))


def assert_depends_on_input(model: nn.Module, x: Tensor, tolerance: Tolerance = TOLERANCES["fp32"],
                            others: Sequence[Tensor] = ()) -> None:
    """Assert that ``model``'s output for ``x`` ``[N, ...]`` fails the comparison under ``tolerance`` against its
    output for another input: all zeros, the batch rolled by one (sample n gets input n-1; N >= 2) and each of
    ``others``. A model that passes this cannot pass a comparison of two backends on the wrong input."""
    others = [torch.zeros_like(x), *([x.roll(1, 0)] if x.shape[0] > 1 else []), *others]
    model = model.eval()
    with torch.no_grad():
        expected = model(x)
        for other in others:
            assert_fails(compare(model(other), expected, tolerance), "a different input")
