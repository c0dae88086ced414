"""The CPU the kernels compile for, and which int8 kernel path a layer runs: decided here, nowhere else.

Why one module: the kernels' instruction choices, the environment caps and the choice of weight
layout and GEMM driver used to be spread over gemm.py, gemm_vnni.py and attention.py, which made
gemm.py and gemm_vnni.py import each other.  They all follow from three facts with different
lifetimes, kept apart here:

* **The target** Numba compiles for (``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES``, else the host):
  what compiled code may contain.  An instruction the target lacks aborts LLVM's instruction
  selection (under valgrind, for one, Numba is pinned to an older CPU than the host's).  Numba keys
  its disk cache on the target, so code generation depends on the target alone, never on the caps
  below or the OS's AMX grant: a capped process caches kernels that an uncapped one then loads.
  ``TARGET_VNNI`` / ``TARGET_AMX`` say whether those instructions are emitted or emulated in
  generic LLVM IR (exact, slow: it lets the tests run both quads drivers on any CPU).
* **The policy**: ``TINYBERT_INT8_ISA`` (avx2 | avx512vnni | amx, a ceiling; avx512vnni shows what
  a CPU without AMX runs) and ``TINYBERT_INT8_EMULATE=1`` (let the default path run emulations:
  whole-model tests of the quads kernels on any CPU, never for speed).  Read once, at import: that
  is detection, and a bad value fails at import rather than at the first GEMM.
* **The OS grant** of the AMX tile state (Linux ``arch_prctl(ARCH_REQ_XCOMP_PERM)``, process-wide:
  every thread's context then carries 8 KiB more state).  It is a side effect, so it is requested
  the first time an AMX path is chosen (``amx_available()``; ``amx_for`` asks only for a GEMM big
  enough to run on AMX), never at import: an fp32 model, a batch-1 encoder or a CPU without AMX
  never asks.

``int8_policy`` is a pure function of the target features and the environment, so the tests check
every ISA level's choices without a CPU that has it.  This module imports no kernel: every kernel
module may import it.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from typing import NamedTuple

import llvmlite.binding as llb
import numba

ISA_LEVELS = ("avx2", "avx512vnni", "amx")
AMX_MIN_ROWS = 16
"""Below this many rows a quads GEMM runs the VNNI driver on AMX hosts too: an AMX tile holds 16 rows,
and a tile of mostly padding rows wastes the unit."""


def target_features() -> frozenset[str]:
    """CPU features Numba compiles for: NUMBA_CPU_FEATURES when set, else the host's."""
    if numba.config.CPU_FEATURES:
        return frozenset(f[1:] for f in numba.config.CPU_FEATURES.split(",") if f.startswith("+"))
    if numba.config.CPU_NAME and numba.config.CPU_NAME != "host":
        return frozenset()      # a named CPU without a feature list: assume nothing beyond baseline
    return frozenset(k for k, v in llb.get_host_cpu_features().items() if v)


class Int8Policy(NamedTuple):
    """What the int8 kernels may emit, and what the default path may run (see the module docstring)."""

    target_vnni: bool     # the VNNI micro-kernel emits vpdpbusd (else emulates it)
    target_amx: bool      # the AMX block emits tile instructions (else emulates them)
    vnni: bool            # weights are packed as quads and the default path runs the VNNI driver
    amx_wanted: bool      # ... and the AMX driver for M >= AMX_MIN_ROWS, once the OS grants the tiles
    amx_needs_grant: bool  # the AMX driver runs native code: the OS must grant the tile state first

    @property
    def layout(self) -> str:
        return "quads" if self.vnni else "pairs"


def int8_policy(features: frozenset[str] | set[str], cap: str, emulate: bool) -> Int8Policy:
    """The int8 policy for a target with ``features`` under TINYBERT_INT8_ISA = ``cap`` and
    TINYBERT_INT8_EMULATE = ``emulate``; ValueError for a cap outside ISA_LEVELS."""
    if cap not in ISA_LEVELS:
        raise ValueError(f"TINYBERT_INT8_ISA must be one of {ISA_LEVELS}, got {cap!r}")
    target_vnni = {"avx512f", "avx512bw", "avx512vnni"} <= set(features)
    target_amx = target_vnni and {"amx-tile", "amx-int8"} <= set(features)
    vnni = (target_vnni or emulate) and cap != "avx2"
    amx_wanted = vnni and cap == "amx" and (target_amx or emulate)
    return Int8Policy(target_vnni, target_amx, vnni, amx_wanted, amx_wanted and target_amx)


class CodeFacts(NamedTuple):
    """The target features the kernels' code depends on: two targets with equal facts get the same kernels, so
    code compiled for one runs the same on the other (if that CPU has every instruction it uses)."""

    avx2: bool    # HOST_AVX2
    f16c: bool    # half.F16C
    wide: bool    # WIDE_REGISTERS
    vnni: bool    # Int8Policy.target_vnni
    amx: bool     # Int8Policy.target_amx


def code_facts(features: frozenset[str] | set[str]) -> CodeFacts:
    """What code the kernels compile to for a target with ``features``."""
    policy = int8_policy(features, "amx", False)
    return CodeFacts("avx2" in features, "f16c" in features, "avx512f" in features, policy.target_vnni,
                     policy.target_amx)


class Tier(NamedTuple):
    """A CPU tier that kernels are compiled for ahead of time (when the package is built): LLVM's name of a
    generic CPU and the features it gets, so the code runs on every CPU that has them."""

    cpu: str
    features: frozenset[str]

    @property
    def feature_string(self) -> str:
        """NUMBA_CPU_FEATURES for this tier."""
        return ",".join("+" + f for f in sorted(self.features))


_V3 = frozenset("avx avx2 bmi bmi2 cx16 f16c fma lzcnt movbe popcnt sahf sse3 ssse3 sse4.1 sse4.2 xsave".split())
_V4 = _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
TIERS = {
    "avx2": Tier("x86-64-v3", _V3),                          # Haswell .. Alder Lake, Zen 1-3
    "avx512": Tier("x86-64-v4", _V4),                        # Skylake-X
    "avx512vnni": Tier("x86-64-v4", _V4 | {"avx512vnni"}),   # Cascade Lake, Ice Lake, Zen 4-5
    "amx": Tier("x86-64-v4", _V4 | {"avx512vnni", "amx-tile", "amx-int8"}),   # Sapphire / Emerald Rapids
}
"""Code for a tier is built by running it, so a machine builds the tiers its CPU runs (see api/prebuild.py)."""


def tier_for(features: frozenset[str] | set[str]) -> str | None:
    """The tier whose code is the code the kernels compile to on a CPU with ``features``, and runs there: its
    features are a subset of ``features`` and its CodeFacts equal theirs. None when no tier is (AVX-only
    CPUs, other architectures)."""
    facts = code_facts(features)
    for name, tier in TIERS.items():
        if tier.features <= set(features) and code_facts(tier.features) == facts:
            return name
    return None


def host_tier() -> str | None:
    """The tier of prebuilt kernels this process may load: None when Numba compiles for a target other than the
    host (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES, NUMBA_ENABLE_AVX=0), whose code prebuilt kernels are not."""
    if numba.config.CPU_NAME not in (None, "host") or numba.config.CPU_FEATURES or not numba.config.ENABLE_AVX:
        return None
    return tier_for(frozenset(k for k, v in llb.get_host_cpu_features().items() if v))


TARGET_FEATURES = target_features()
HOST_AVX2 = "avx2" in TARGET_FEATURES
"""The pairs micro-kernel calls the AVX2 vpmaddwd intrinsic (else generic vector IR, which LLVM lowers
to the same instructions on AVX2 and to widening multiplies elsewhere)."""
WIDE_REGISTERS = "avx512f" in TARGET_FEATURES
"""32 vector registers of 16 floats: the fp32 and attention micro-kernels take wider tiles."""

try:
    POLICY = int8_policy(TARGET_FEATURES, os.environ.get("TINYBERT_INT8_ISA", "amx").strip().lower(),
                         os.environ.get("TINYBERT_INT8_EMULATE", "").strip() == "1")
except ValueError as err:
    raise ImportError(str(err)) from None

VNNI_EMULATED = not POLICY.target_vnni
"""True when the compiled VNNI micro-kernel emulates vpdpbusd (a target without AVX-512 VNNI)."""
AMX_EMULATED = not POLICY.target_amx
"""True when the compiled AMX block emulates the tile instructions (a target without AMX-INT8)."""
VNNI_AVAILABLE = POLICY.vnni
"""True when weights are packed as quads: Numba targets AVX-512 VNNI and TINYBERT_INT8_ISA allows it, or
TINYBERT_INT8_EMULATE=1 makes the emulation count."""


def request_amx() -> bool:
    """Ask Linux for the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); the grant
    covers every thread of the process.  False where refused or not Linux x86-64."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(158, 0x1023, 18) == 0        # SYS_arch_prctl on x86-64
    except (OSError, AttributeError):
        return False


_amx: bool | None = None     # amx_available()'s answer, once asked


def amx_available() -> bool:
    """True when the default path may run the AMX driver: the policy wants it and, for native code, the
    OS granted the tile state.  The first call that needs the grant requests it (once per process)."""
    global _amx
    if _amx is None:
        _amx = POLICY.amx_wanted and (request_amx() if POLICY.amx_needs_grant else True)
    return _amx


def amx_for(m_rows: int) -> bool:
    """The default path's choice for a quads GEMM of ``m_rows`` rows: True for the AMX driver.  Cheap
    (a layer asks on every call); a GEMM too small for AMX never triggers the permission request."""
    return m_rows >= AMX_MIN_ROWS and (_amx if _amx is not None else amx_available())


def best_layout() -> str:
    """The int8 weight layout for this CPU: "quads" with AVX-512 VNNI (gemm_vnni.py), else "pairs"."""
    return POLICY.layout


def check_layout(layout: str | None) -> str:
    """``layout`` (None: ``best_layout()``) as "pairs" or "quads"; ValueError for anything else."""
    layout = best_layout() if layout is None else layout
    if layout not in ("pairs", "quads"):
        raise ValueError(f"layout must be None, 'pairs' or 'quads', not {layout!r}")
    return layout


def pairs_path(path: str | None) -> str:
    """The kernel for pairs-packed weights: the vector micro-kernel, on every CPU ("simd"; AVX2
    intrinsic or generic LLVM vectors).  ``path`` None or "simd"; ValueError for anything else."""
    if path is None or path == "simd":
        return "simd"
    raise ValueError(f"pairs-packed weights run on path None or 'simd', not {path!r}")


def quads_path(path: str | None, m_rows: int) -> str:
    """The driver for quad-packed weights and ``m_rows`` rows: "amx" or "vnni".

    ``path`` None takes only what is available (AMX for M >= AMX_MIN_ROWS where granted, else VNNI;
    never an emulation unless TINYBERT_INT8_EMULATE=1).  A path named explicitly runs where its code is
    native, or emulated (a CPU without it); "amx" compiled for an AMX CPU whose OS refused the tile
    state, or either path capped by TINYBERT_INT8_ISA, is refused (ValueError).
    """
    if path is None:
        if not POLICY.vnni:
            raise ValueError("quad-packed weights need a CPU with AVX-512 VNNI (or path='vnni' to emulate it)")
        return "amx" if amx_for(m_rows) else "vnni"
    if path not in ("amx", "vnni"):
        raise ValueError(f"quad-packed weights run on path None, 'vnni' or 'amx', not {path!r}")
    if path == "amx" and not (AMX_EMULATED or amx_available()):
        raise ValueError("path 'amx' needs a CPU with AMX-INT8 and the OS's permission")
    if not (POLICY.vnni or VNNI_EMULATED):
        raise ValueError("quad-packed weights need a CPU with AVX-512 VNNI")
    return path
