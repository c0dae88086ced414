"""Loop hints, a stream prefetch and a generic vpdpbusd for hand-written LLVM IR micro-kernels.

A micro-kernel's loop body is sized to the register file: 24 accumulators, the weight vectors and a
broadcast fill AVX-512's 32 zmm registers.  LLVM's runtime unroller does not know that: on Zen 4
(znver4) it unrolled the VNNI loop by two and hoisted the second iteration's broadcasts, and the
accumulators went to the stack (74 stack accesses per unrolled step, 120 GOP/s: fp32 speed).
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils


def no_unroll(builder: ir.IRBuilder, loop_index: ir.PhiInstr) -> None:
    """Mark the loop of ``cgutils.for_range`` whose index is ``loop_index`` as not to be unrolled.

    Call after the ``with`` block: the back edge is then the branch that ends the body.
    """
    module = builder.module
    disable = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
    # A loop ID is a node whose first operand is itself; built with a placeholder, then closed.
    loop_id = module.add_metadata([ir.MetaDataString(module, f"tinybert.loop.{len(module.metadata)}"), disable])
    loop_id.operands = (loop_id, disable)
    for _, block in loop_index.incomings[1:]:          # [0] is the entry edge
        block.terminator.set_metadata("llvm.loop", loop_id)


def dpbusd_generic(builder: ir.IRBuilder, acc: ir.Value, u: ir.Value, s: ir.Value) -> ir.Value:
    """acc + vpdpbusd(u, s) in generic IR: lane j gains sum_t zext(u byte 4j+t) * sext(s byte 4j+t).

    acc, u, s are <16 x i32>; the four products of a lane are exact in int32 and the accumulation
    wraps as the instruction's does, so the sums are the instruction's bit for bit (the int8 and
    int4 VNNI kernels' emulation on CPUs without it, so that their paths stay tested anywhere).
    """
    i8, i32 = ir.IntType(8), ir.IntType(32)
    v64i8, v64i32 = ir.VectorType(i8, 64), ir.VectorType(i32, 64)
    prods = builder.mul(builder.zext(builder.bitcast(u, v64i8), v64i32),
                        builder.sext(builder.bitcast(s, v64i8), v64i32))
    for t in range(4):
        lanes = ir.Constant(ir.VectorType(i32, 16), [4 * j + t for j in range(16)])
        acc = builder.add(acc, builder.shuffle_vector(prods, ir.Constant(v64i32, None), lanes))
    return acc


def dpbusd(builder: ir.IRBuilder, emit: bool):
    """acc, u, s -> acc + vpdpbusd(u, s) on <16 x i32>: the instruction when ``emit`` (a target with AVX-512
    VNNI), else ``dpbusd_generic``'s exact emulation."""
    if not emit:
        return lambda acc, u, s: dpbusd_generic(builder, acc, u, s)
    v16i32 = ir.VectorType(ir.IntType(32), 16)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16i32, [v16i32] * 3),
                                        "llvm.x86.avx512.vpdpbusd.512")
    return lambda acc, u, s: builder.call(fn, [acc, u, s])


# How far ahead a decode GEMV prefetches its weight stream. Without it a thread keeps too few lines in flight: the
# out-of-order window of a loop of a few dozen instructions per few hundred bytes spans only a few KB. Measured on
# Zen 4, 2 threads, a 135M-shape chain of 120 int4 decode GEMVs from memory, kernels alone: none 27 GB/s, 2.5 KB
# ahead 32, 5 KB 37, 10 KB 41, 20 KB 38 (0.5B shape: 36 / 44 / 48 / 50 / 47).
STREAM_PREFETCH_BYTES = 10240


def prefetch(builder: ir.IRBuilder, ptr: ir.Value, ahead: int = STREAM_PREFETCH_BYTES, write: bool = False) -> None:
    """Prefetch into L1 (prefetcht0; prefetchw when ``write``) the line ``ahead`` bytes past ``ptr`` (any pointer).
    A prefetch never faults, so the last ones of a stream may point past its end."""
    i8, i32 = ir.IntType(8), ir.IntType(32)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [i8.as_pointer(), i32, i32, i32]), "llvm.prefetch.p0i8")
    line = builder.gep(builder.bitcast(ptr, i8.as_pointer()), [ir.Constant(ir.IntType(64), ahead)])
    builder.call(fn, [line, ir.Constant(i32, int(write)), ir.Constant(i32, 3), ir.Constant(i32, 1)])
