"""Compile every Triton kernel the triton backend launches, for real GPUs, on a machine without one.

The Triton interpreter (TRITON_INTERPRET=1, the CPU tests) runs a kernel's Python, not its
compiled form: it accepts code the compiler rejects (a non-constexpr global, a float tuple
passed where a constexpr is needed). This runs each op's triton backend, forward and backward,
on small CPU tensors with kernel launches replaced by a compile for each target (Triton's own
front end, LLVM and ptxas, which need no GPU), and reports every kernel specialisation that
fails. The kernels do not run: outputs are whatever memory the op allocated.

    python -m wscswap_fast.triton.compile_check [--arch 80,90]

Exit status 1 if any kernel fails to compile.
"""
import argparse
import os
import sys
import traceback

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    # triton.jit reads this at decoration time: interpreted functions cannot be compiled
    sys.exit("compile_check compiles kernels: run it with TRITON_INTERPRET unset")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

_POINTER_TYPES = {torch.float32: "*fp32", torch.float64: "*fp64", torch.float16: "*fp16", torch.bfloat16: "*bf16",
                  torch.int64: "*i64", torch.int32: "*i32", torch.int16: "*i16", torch.int8: "*i8",
                  torch.uint8: "*u8", torch.bool: "*i1"}


def _scalar_type(value) -> str:
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for a launch argument of type {type(value).__name__}")


class CompileRecorder:
    """Replaces JITFunction.run: each distinct launch (kernel, argument types, constexprs, options)
    is compiled once per target; failures are kept with their message."""

    def __init__(self, archs):
        self.targets = [GPUTarget("cuda", a, 32) for a in archs]
        self.seen = set()
        self.compiled = 0
        self.failures = []  # (kernel, arch, message)

    def run(self, fn: JITFunction, args, kwargs):
        options = {k: kwargs.pop(k) for k in list(kwargs) if k not in fn.arg_names}
        bound = fn.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        signature, constexprs = {}, {}
        for param in fn.params:
            value = bound.arguments[param.name]
            # as at a real launch: an int equal to 1 arrives as a constexpr unless excluded
            one = type(value) is int and value == 1 and not param.do_not_specialize
            if param.is_constexpr or value is None or one:
                signature[param.name] = "constexpr"
                constexprs[param.name] = value
            elif isinstance(value, torch.Tensor):
                signature[param.name] = _POINTER_TYPES[value.dtype]
            else:
                signature[param.name] = _scalar_type(value)
        key = (fn.fn.__qualname__, tuple(signature.items()), repr(sorted(constexprs.items())),
               repr(sorted(options.items())))
        if key in self.seen:
            return
        self.seen.add(key)
        for target in self.targets:
            try:
                triton.compile(ASTSource(fn, signature, constexprs), target=target, options=options)
                self.compiled += 1
            except Exception as e:  # every compiler error, reported with the kernel that raised it
                message = "".join(traceback.format_exception_only(type(e), e)).strip()
                self.failures.append((fn.fn.__qualname__, target.arch, message))

    def __enter__(self):
        recorder = self
        self._saved = JITFunction.run

        def run(fn, *args, grid, warmup=False, **kwargs):
            recorder.run(fn, args, kwargs)

        JITFunction.run = run
        # the triton backend serves CPU tensors only where it believes it is interpreted
        from ..ops import _backends
        self._saved_interpret = _backends.triton_interpret
        _backends.triton_interpret = lambda: True
        return self

    def __exit__(self, *exc):
        from ..ops import _backends
        JITFunction.run = self._saved
        _backends.triton_interpret = self._saved_interpret
        return False


def _exercise_every_op():
    """Each op's triton backend, forward and backward, on every dtype and layout it serves (small
    shapes: the kernels specialise on dtypes and constexprs, not on sizes)."""
    from .. import ops

    def rand(*shape, dtype=torch.float32, fmt=torch.contiguous_format, grad=True):
        return torch.rand(*shape).to(dtype).contiguous(memory_format=fmt).requires_grad_(grad)

    def backward(*outs):
        sum(o.float().sum() for o in outs).backward()

    halves = (torch.float16, torch.bfloat16)
    layouts = (torch.contiguous_format, torch.channels_last)
    for fmt in layouts:
        for dtype in (torch.float32,) + halves:
            backward(ops.instance_norm_act(rand(2, 8, 9, 11, dtype=dtype, fmt=fmt), backend="triton"))
        for r, stride, pad in ((3, 1, 1), (2, 1, 0), (4, 1, 1), (4, 2, 1)):
            x, w, b = rand(2, 6, 13, 11, fmt=fmt), rand(5, 6, r, r), rand(5)
            backward(ops.winograd_conv2d(x, w, b, padding=pad, stride=stride, backend="triton"))
    yield "instance_norm_act, winograd_conv2d"

    for fmt in layouts:
        for dtype in (torch.float32,) + halves:
            h, g_att, b_att = (rand(2, 8, 7, 9, dtype=dtype, fmt=fmt) for _ in range(3))
            g_id, b_id = rand(2, 8, dtype=dtype), rand(2, 8, dtype=dtype)
            out, m = ops.ain(h, g_id, b_id, g_att, b_att, rand(8, dtype=dtype), rand(1, dtype=dtype),
                             return_mask=True, backend="triton")
            backward(out, m)
            face, bg = rand(2, 3, 10, 12, dtype=dtype, fmt=fmt), rand(2, 3, 10, 12, dtype=dtype, fmt=fmt)
            backward(ops.blend(face, bg, rand(2, 1, 10, 12, dtype=dtype, fmt=fmt), backend="triton"))
    yield "ain, blend"

    frames = torch.randint(0, 256, (2, 40, 50, 3), dtype=torch.uint8)
    affines = torch.tensor([[[1.0, 0.0, -5.0], [0.0, 1.0, -6.0]], [[0.9, 0.1, -20.0], [-0.1, 0.9, -15.0]]])
    frame_idx = torch.tensor([0, 1])
    for crop_dtype in (torch.uint8, torch.float32) + halves:
        crops = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
        crops = crops if crop_dtype == torch.uint8 else (crops / 255).to(crop_dtype)
        for feather in (0, 3):
            ops.paste_faces(frames, crops, rand(2, 1, 16, 16, grad=False), affines, frame_idx, feather=feather,
                            backend="triton")
    yield "paste_faces"

    n, lms, k_id, k_exp = 3, 10, 6, 4
    for weights in (rand(lms, grad=False), rand(n, lms, grad=False)):
        for norm in ("l2", "l1"):
            for reduction in ("mean", "sum", "none"):
                angles = (torch.rand(n, 3) * 0.2).requires_grad_()
                translation = torch.tensor([[0.0, 0.0, 1.0]]).repeat(n, 1).requires_grad_()
                loss = ops.landmark_loss(rand(n, k_id), rand(n, k_exp), angles, translation, rand(n, lms, 2) * 100,
                                         weights, rand(lms, 3, grad=False), rand(lms, 3, k_id, grad=False),
                                         rand(lms, 3, k_exp, grad=False), focal=100.0, cx=50.0, cy=50.0,
                                         norm=norm, reduction=reduction, backend="triton")
                backward(loss)
    yield "landmark_loss"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wscswap_fast.triton.compile_check", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="80,90", help="compute capabilities to compile for (default 80,90)")
    args = parser.parse_args(argv)
    archs = [int(a) for a in args.arch.split(",")]
    with CompileRecorder(archs) as recorder:
        for done in _exercise_every_op():
            print(f"compiled {done}: {recorder.compiled} kernels so far, {len(recorder.failures)} failures", flush=True)
    for name, arch, message in recorder.failures:
        print(f"FAILED {name} sm_{arch}: {message}\n")
    print(f"{recorder.compiled} kernel compilations for sm_{', sm_'.join(map(str, archs))}; "
          f"{len(recorder.failures)} failed")
    return 1 if recorder.failures else 0


if __name__ == "__main__":
    sys.exit(main())
