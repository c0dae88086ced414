"""Limits the fuzzers run under, so that a memory bomb or a call that runs for ever is a finding, not a stall.

- ``limit_address_space``: libFuzzer's -rss_limit_mb sees only memory that is touched, and its -malloc_limit_mb
  needs a sanitizer's malloc hooks, which atheris' libFuzzer lacks (measured: a 300 MB numpy array under
  -malloc_limit_mb=100 passes). An address-space limit (RLIMIT_AS) makes any allocation past it fail at once: a
  ``MemoryError`` in Python (reported as a crash, since it is not a TinyBertError) or an abort in native code
  (reported as a deadly signal).
- ``cpu_budget``: a call asked for a huge size (``max_new_tokens=10**9`` on a file stating 2**20 positions) may
  legitimately run for minutes, which libFuzzer's -timeout would report as a hang. What the fuzzers check there
  is that nothing is allocated up front for the size asked, so such a call is stopped after a few seconds of
  CPU time (SIGVTALRM: libFuzzer's -timeout uses SIGALRM) by raising ``OutOfBudget``, which the fuzzers accept.
"""

from __future__ import annotations

import contextlib
import resource
import signal
from collections.abc import Iterator


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":"))


def limit_address_space(extra_mb: int) -> int:
    """Let the process map at most ``extra_mb`` MiB more than it has mapped now; returns the limit in MiB."""
    limit = _status_kb("VmSize") * 1024 + (extra_mb << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    return limit >> 20


class OutOfBudget(BaseException):
    """A call ran past its CPU budget (a BaseException, so that no ``except Exception`` in the library turns it
    into something else)."""


_armed = False


def _compiling() -> bool:
    """Whether Numba is compiling (or loading cached code): an exception raised in its compiler could leave
    its state half-built for the next inputs."""
    try:
        from numba.core.compiler_lock import global_compiler_lock
    except ImportError:
        return False
    return global_compiler_lock.is_locked()


def _on_alarm(signum, frame) -> None:
    if not _armed:
        return              # the call ended just as the timer fired
    if _compiling():
        signal.setitimer(signal.ITIMER_VIRTUAL, 0.1)        # try again once Numba is done
        return
    raise OutOfBudget


@contextlib.contextmanager
def cpu_budget(seconds: float) -> Iterator[None]:
    """Raise OutOfBudget in the main thread once the process has used ``seconds`` of CPU time in the block."""
    global _armed
    signal.signal(signal.SIGVTALRM, _on_alarm)     # left installed: a late signal then finds it, disarmed
    _armed = True
    signal.setitimer(signal.ITIMER_VIRTUAL, seconds)
    try:
        yield
    finally:
        _armed = False
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
