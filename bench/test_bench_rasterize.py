"""pytest bench/ --benchmark-only -k rasterize: rasterize + photometric loss forward+backward on the
Surrey Face Model (or its synthetic stand-in, see benchmarks/rasterize.py), the fused backends at
256x256 batch 8 and the brute-force reference at 64x64 batch 1 (where it is feasible)."""
import pytest

from wscswap_fast.benchmarks.rasterize import CASES, make_case, minimal_bytes, sfm_mesh, step, synthetic_mesh

MESH = sfm_mesh() or synthetic_mesh()


@pytest.mark.parametrize("contender", ["cpu", "cuda"])
def test_photometric_forward_backward(benchmark, device, sync, skip_unless_native, contender):
    skip_unless_native(contender, device)
    batch, side = CASES["full"][0]
    case, tris = make_case(MESH, batch, side, device, seed=1)
    run = step(case, tris, contender)
    benchmark.group = f"rasterize+photometric fwd+bwd {side}x{side} batch {batch} {device}"
    benchmark.extra_info.update(mesh=MESH[2], images=batch, bytes=minimal_bytes(batch, side))
    benchmark.pedantic(lambda: (run(), sync()), warmup_rounds=3, rounds=30)


@pytest.mark.parametrize("contender", ["reference", "cpu", "cuda"])
def test_photometric_forward_backward_small(benchmark, device, sync, skip_unless_native, contender):
    """The size where the brute-force reference is timed (seconds per call)."""
    skip_unless_native(contender, device)
    batch, side = CASES["full"][1]
    case, tris = make_case(MESH, batch, side, device)
    run = step(case, tris, contender)
    benchmark.group = f"rasterize+photometric fwd+bwd {side}x{side} batch {batch} {device}"
    benchmark.extra_info.update(mesh=MESH[2], images=batch, bytes=minimal_bytes(batch, side))
    slow = contender == "reference"
    benchmark.pedantic(lambda: (run(), sync()), warmup_rounds=1 if slow else 3, rounds=3 if slow else 30)
