"""Workload for compute-sanitizer: kernel configs x kernel path x dtype once, batch 7 (run as a script).

    python tests/plugins/sanitizer_workload.py                        # every config of KERNEL_CONFIGS
    python tests/plugins/sanitizer_workload.py pointwise 3x3-deep-dynet  # only these (names of layer_configs)
"""

import sys

import torch

from dyconv_deploy.ops import cuda
from layer_configs import KERNEL_CONFIGS


def main(names: list[str]) -> int:
    known = {config.name: config for config in KERNEL_CONFIGS}
    unknown = [name for name in names if name not in known]
    if unknown:
        print(f"sanitizer_workload: unknown config(s) {', '.join(unknown)}; known: {', '.join(known)}",
              file=sys.stderr)
        return 2
    cuda.enable_cuda_kernels()
    available = cuda.available_algos()
    for config in [known[name] for name in names] or KERNEL_CONFIGS:
        algos = (["gemm-fused", "gemm-aggregated"] + (["depthwise"] if config.depthwise else [])
                 + (["cublas-pointwise"] if config.pointwise and "cublas-pointwise" in available else [])
                 + [p for p in ("tensor-core-fused", "tensor-core-aggregated", "tensor-core-experts")
                    if p in available])
        for dtype in (torch.float32, torch.float16):
            inputs = {k: None if v is None else v.to("cuda", dtype)
                      for k, v in config.inputs(7, torch.Generator().manual_seed(0)).items()}
            for algo in algos:
                cuda.dynamic_conv2d_cuda(**inputs, **config.conv_kwargs(), algo=algo)
    torch.cuda.synchronize()
    print("sanitizer workload done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
