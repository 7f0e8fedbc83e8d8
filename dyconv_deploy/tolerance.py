"""The one tolerance table, and the comparison every check uses.

``verify``, the tests and the benchmarks read their tolerances from :data:`TOLERANCES`;
a comparison reports max/mean absolute error, how much of the tolerance the worst element
uses (``|a - b| / (atol + rtol·|b|)``, the measure ``allclose`` applies: at most 1 passes) and the
smallest ``atol`` that would have passed at the given ``rtol``.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Elementwise check ``|actual - expected| <= atol + rtol * |expected|``."""

    atol: float
    rtol: float


TOLERANCES = {
    # End-to-end fp32 (export, runtimes): different conv algorithms reorder sums.
    "fp32": Tolerance(atol=1e-4, rtol=1e-3),
    # fp16 engines end to end (fp16 activations between layers, fp32 accumulation).
    "fp16": Tolerance(atol=1e-2, rtol=1e-2),
    # One fp16 kernel call against float64 on the same fp16-rounded inputs: with fp32 accumulation the
    # error is the output's rounding (<= 2^-11 relative) plus fp32 sums (~1e-5 absolute at 1000 terms).
    # Rounding products and partial sums to fp16 instead misses it ~100x on reductions of >= 1000 terms.
    "fp16-kernel": Tolerance(atol=1e-3, rtol=1e-3),
    # One kernel call on tensor cores against float64: TF32 for float32 inputs, or float16 per-sample kernels
    # (mixed in fp32, then rounded); both operands of each product have 11 significant bits (u = 2^-11), with
    # fp32 accumulation. The extra rounding of X (TF32) or of the mixed kernels adds to an output a sum of
    # independent errors of std ~u/sqrt(3) |w x| per term. Measured (emulated cuBLAS path, pointwise kernel
    # configs up to 1024 terms): at most 0.29 of this tolerance; a wrong leading dimension misses it.
    "tensor-core-kernel": Tolerance(atol=1e-2, rtol=1e-2),
    # A single layer against its naive per-sample loop, same backend, fp32.
    "layer": Tolerance(atol=1e-5, rtol=0.0),
    # The next three are for one layer on OpenVINO against the float64 reference, with both outputs divided
    # by the reference output's RMS: the error grows with the output as a whole, not with each element.
    # OpenVINO with the expert kernels stored rounded to nearest (expert_dtype), mixing and conv in fp32.
    # Each weight's relative error is then uniform in [-u, u], u = 2^-8 ~ 3.9e-3 for bf16 (8 significant
    # bits), 2^-11 ~ 4.9e-4 for f16 (11 bits). An output y = sum_j w_j x_j errs by a sum of independent terms
    # of std u/sqrt(3) |w_j x_j|: std u/sqrt(3) sqrt(sum_j (w_j x_j)^2), ~0.58u of the RMS of y for a deep
    # reduction, a few times more for an output of a short one (depthwise: 9 terms) with one large term.
    # Measured at most 2.9u over the layer tests (tests/runtime/test_openvino.py); atol 6u is twice that,
    # and still 1/6 of the smallest error of an injected defect (another sample's attention, a dropped bias:
    # 40u and more).
    "bf16-experts": Tolerance(atol=6 * 2**-8, rtol=0.0),
    "f16-experts": Tolerance(atol=6 * 2**-11, rtol=0.0),
    # OpenVINO's bf16 inference precision (INFERENCE_PRECISION_HINT): X and the mixed kernels are rounded to
    # bf16 at the conv (two roundings per product: std u sqrt(2/3) ~ 0.82u of the RMS in a deep reduction),
    # fp32 accumulation, and the output is rounded to bf16 (relative u = 2^-8: the rtol). Beyond that rtol,
    # measured at most 2.9u; atol 6u again.
    "bf16-inference": Tolerance(atol=6 * 2**-8, rtol=2**-8),
}


@dataclass(frozen=True)
class Comparison:
    """Error statistics of ``actual`` against ``expected`` for one output.

    ``tolerance_used``: the largest ``|actual - expected| / (atol + rtol·|expected|)`` (at most 1
    passes; inf where the tolerance is 0 and the outputs differ). ``required_atol``: the smallest
    atol that passes at ``tolerance.rtol`` (0 when the rtol alone covers every element).
    """

    name: str
    max_abs: float
    mean_abs: float
    tolerance_used: float
    required_atol: float
    passed: bool
    tolerance: Tolerance

    def __str__(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        return (f"{self.name}: {verdict} max_abs={self.max_abs:.3g} mean_abs={self.mean_abs:.3g} "
                f"tolerance_used={self.tolerance_used:.3g} (atol={self.tolerance.atol:g} "
                f"rtol={self.tolerance.rtol:g}; smallest passing atol={self.required_atol:.3g})")


def compare(actual, expected, tolerance: Tolerance, name: str = "output") -> Comparison:
    """Compare two arrays (numpy or torch) of equal shape under ``tolerance``."""
    a = _as_float64(actual)
    e = _as_float64(expected)
    if a.shape != e.shape:
        raise ValueError(f"{name}: shape {a.shape} differs from reference shape {e.shape}")
    diff = np.abs(a - e)
    if diff.size == 0:
        return Comparison(name, 0.0, 0.0, 0.0, 0.0, True, tolerance)
    finite = np.isfinite(a).all() and np.isfinite(e).all()
    required = float(np.max(diff - tolerance.rtol * np.abs(e))) if finite else float("inf")
    allowed = tolerance.atol + tolerance.rtol * np.abs(e)
    with np.errstate(divide="ignore", invalid="ignore"):
        used = np.where(diff == 0, 0.0, diff / allowed)  # x/0 = inf where nothing is allowed
    return Comparison(
        name=name,
        max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        tolerance_used=float(used.max()) if finite else float("inf"),
        required_atol=max(required, 0.0),
        passed=bool(finite and required <= tolerance.atol),
        tolerance=tolerance,
    )


def _as_float64(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)
