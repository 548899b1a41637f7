"""The benchmark behind `wscswap bench`: each op against eager PyTorch, torch.compile and the
tools' baselines, with achieved bandwidth against this machine's measured copy bandwidth.

Every module here other than `harness` is one suite: it defines
``run(device, quick, copy_gbps, seconds) -> list[harness.Row]``.
"""
import importlib
import pkgutil


def suites() -> dict:
    """Suite name -> module, in name order."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "harness")
    return {name: importlib.import_module(f"{__name__}.{name}") for name in names}
