"""Backend selection, availability, and the package without its compiled extension."""
import subprocess
import sys
import textwrap

import pytest
import torch

from wscswap_fast import ops


def test_available_lists_every_backend():
    avail = ops.available()
    assert set(avail) == set(ops.BACKENDS)
    assert avail["reference"] is True
    assert avail["cpu"] is True, "the CPU kernels must be built: " + str(avail["cpu"])
    for backend, state in avail.items():
        assert state is True or (isinstance(state, str) and state), backend


def test_unknown_backend_is_a_value_error():
    x = torch.rand(1, 3, 2, 2)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.blend(x, x, x[:, :1], backend="fastest")


def test_import_without_extension_warns_once_and_runs_on_reference():
    script = textwrap.dedent("""
        import sys, warnings
        sys.modules["wscswap_fast._C"] = None  # makes `from . import _C` raise ImportError
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import wscswap_fast
            import wscswap_fast.ops
        msgs = [str(w.message) for w in caught if "wscswap_fast._C" in str(w.message)]
        assert len(msgs) == 1, msgs
        assert "ModuleNotFoundError" in msgs[0] and "Build it with" in msgs[0], msgs
        import torch
        from wscswap_fast import ops
        assert "not built" in ops.available()["cpu"]
        x = torch.rand(1, 3, 4, 4)
        m = torch.rand(1, 1, 4, 4)
        torch.testing.assert_close(ops.blend(x, 1 - x, m), m * x + (1 - m) * (1 - x))
        try:
            ops.blend(x, x, m, backend="cpu")
        except ops.BackendUnavailable as e:
            assert "not built" in str(e)
        else:
            raise AssertionError("explicit cpu backend must raise")
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
