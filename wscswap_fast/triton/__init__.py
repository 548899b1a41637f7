"""Triton kernels, one file per op. Imported lazily by wscswap_fast.ops (set TRITON_INTERPRET=1
before the first import to run them on the CPU)."""
