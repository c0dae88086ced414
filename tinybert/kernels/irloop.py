"""Loop hints for hand-written LLVM IR micro-kernels.

A micro-kernel's loop body is sized to the register file: 24 accumulators, the weight vectors and a
broadcast fill AVX-512's 32 zmm registers.  LLVM's runtime unroller does not know that: on Zen 4
(znver4) it unrolled the VNNI loop by two and hoisted the second iteration's broadcasts, and the
accumulators went to the stack (74 stack accesses per unrolled step, 120 GOP/s: fp32 speed).
"""

from __future__ import annotations

from llvmlite import ir


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
