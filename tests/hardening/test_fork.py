"""A process forked after its parent ran tinybert's parallel kernels gets a ProcessError saying to use spawn,
instead of hanging (64 texts) or being killed by the OpenMP runtime (one text); spawned workers work."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent("""
    import multiprocessing, os, sys, time
    import tinybert

    PATH = sys.argv[1]
    TEXTS = ["Fork after first use."] * 64

    def work(n):
        return tinybert.Encoder(PATH, threads=2).encode(TEXTS[:n]).shape

    if __name__ == "__main__":
        tinybert.Encoder(PATH, threads=2).encode(TEXTS)          # the parent's kernels and threads start
        for n in (64, 1):
            pid = os.fork()
            if pid == 0:
                try:
                    work(n)
                    os._exit(0)
                except tinybert.ProcessError:
                    os._exit(3)
                except BaseException:
                    os._exit(4)
            deadline = time.time() + 120
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    print("fork", n, os.waitstatus_to_exitcode(status))
                    break
                if time.time() > deadline:
                    os.kill(pid, 9)
                    print("fork", n, "hung")
                    break
                time.sleep(0.05)
        with multiprocessing.get_context("fork").Pool(2) as pool:
            try:
                pool.map(work, [1, 1])
                print("fork-pool ok")
            except tinybert.ProcessError as exc:
                print("fork-pool ProcessError", "spawn" in str(exc))
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            print("spawn-pool", pool.map(work, [1, 3]))
""")


def test_forked_child_is_told_to_use_spawn_and_spawn_works(minilm_files, tmp_path):
    script = tmp_path / "forking.py"
    script.write_text(_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(minilm_files["int8"])], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "fork 64 3" in lines and "fork 1 3" in lines, done.stdout     # ProcessError in the child
    assert "fork-pool ProcessError True" in lines, done.stdout
    assert "spawn-pool [(1, 384), (3, 384)]" in lines, done.stdout
