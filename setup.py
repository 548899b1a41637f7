"""Builds wscswap_fast._C: the CPU kernels always, the CUDA kernels when torch is a CUDA build
and nvcc is found (WSCSWAP_NO_CUDA=1 skips them).

    pip install torch==2.13.0          # or any torch you already use
    MAX_JOBS=2 pip install --no-build-isolation -e .
"""
import glob
import os
import shutil

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def _want_cuda():
    if os.environ.get("WSCSWAP_NO_CUDA") == "1":
        return False, "WSCSWAP_NO_CUDA=1"
    if torch.version.cuda is None:
        return False, "torch is a CPU-only build"
    if CUDA_HOME is None and shutil.which("nvcc") is None:
        return False, "nvcc not found"
    return True, ""


def extensions():
    sources = _rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")) + glob.glob(os.path.join(ROOT, "kernels", "*_cpu.cpp")))
    cxx = ["-O3", "-std=c++17", "-fopenmp"]
    with_cuda, why_not = _want_cuda()
    if not with_cuda:
        print(f"wscswap_fast: building the CPU kernels only ({why_not})")
        return [CppExtension("wscswap_fast._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])]
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;8.6;9.0+PTX")
    print(f"wscswap_fast: building CPU and CUDA kernels for {os.environ['TORCH_CUDA_ARCH_LIST']}")
    return [
        CUDAExtension(
            "wscswap_fast._C",
            sources + _rel(glob.glob(os.path.join(ROOT, "kernels", "*.cu"))),
            define_macros=[("WSC_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17", "--expt-relaxed-constexpr"]},
            extra_link_args=["-fopenmp"],
        )
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
