"""dyconv-deploy: deploy PyTorch models built with dynamic convolutions.

Pipeline (one subpackage per stage): ``io`` (load) -> ``convert`` -> ``export`` -> ``lower``
-> ``trt`` (build) -> ``runtime`` / ``bench``. The layers live in ``nn`` and the contract op
``dyconv::DynamicConv2d`` in ``ops``.
"""

__version__ = "0.1.0"
