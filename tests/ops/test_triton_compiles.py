"""Every Triton kernel the triton backend launches compiles for sm_80 and sm_90 (the CPU tests run
the kernels in Triton's interpreter, which accepts code the compiler rejects)."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def test_every_triton_kernel_compiles_for_gpus():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "wscswap_fast.triton.compile_check", "--arch", "80,90"],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert "0 failed" in run.stdout
