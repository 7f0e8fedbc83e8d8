"""Workload for compute-sanitizer: every layer config x kernel path x dtype once, batch 7 (run as a script)."""

import torch

from dyconv_deploy.ops import cuda
from layer_configs import KERNEL_CONFIGS


def main() -> None:
    cuda.enable_cuda_kernels()
    for config in KERNEL_CONFIGS:
        algos = ["gemm-fused", "gemm-aggregated"] + (["depthwise"] if config.depthwise else [])
        for dtype in (torch.float32, torch.float16):
            inputs = {k: None if v is None else v.to("cuda", dtype)
                      for k, v in config.inputs(7, torch.Generator().manual_seed(0)).items()}
            for algo in algos:
                cuda.dynamic_conv2d_cuda(**inputs, **config.conv_kwargs(), algo=algo)
    torch.cuda.synchronize()
    print("sanitizer workload done")


if __name__ == "__main__":
    main()
