"""The build step that pyproject.toml cannot say: compile the kernels for CPU tiers into the wheel.

After the sources are copied to the build tree, ``python -m tinybert.api.prebuild`` runs on that tree and writes
``tinybert/kernels/prebuilt/<tier>/`` (TINYBERT_KERNEL_TIERS: host, the default, for this machine; all; none), so
that a fresh install's first call loads machine code instead of compiling for a minute. Such a wheel holds code for
one Python and one Numba, so it is tagged for this platform and Python and requires the Numba and llvmlite it was
built with (the loader also checks them). Editable installs compile on first use, as before.
"""

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel

RUNTIME = [
    "numpy>=1.24",
    "numba>=0.60",
    "llvmlite",
    "safetensors>=0.4",
    "tokenizers>=0.15",
    "tqdm>=4.60",
    "huggingface_hub>=0.20",   # Hub ids: the Hugging Face cache, offline first, and downloads
    "filelock>=3.0",           # one conversion per model when processes race (a huggingface_hub dependency)
    "jinja2>=3.1.6",           # chat templates, sandboxed (3.1.6 closes known sandbox escapes, as transformers asks)
]


def ships_kernels() -> bool:
    tiers = os.environ.get("TINYBERT_KERNEL_TIERS", "host").strip().lower()
    return tiers not in ("", "none", "off") and platform.machine().lower() in ("x86_64", "amd64")


def requirements() -> list[str]:
    if not ships_kernels():
        return RUNTIME
    import llvmlite
    import numba

    pins = {"numba": f"numba=={numba.__version__}", "llvmlite": f"llvmlite=={llvmlite.__version__}"}
    return [pins.get(req.split(">")[0].split("=")[0], req) for req in RUNTIME]


class BuildWithKernels(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False) or not ships_kernels():
            return
        root = Path(self.build_lib) / "tinybert" / "kernels" / "prebuilt"
        shutil.rmtree(root, ignore_errors=True)   # a previous build's tiers
        build_lib = os.path.abspath(self.build_lib)    # the copy that gets installed: its kernels, its hashes
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [build_lib, os.environ.get("PYTHONPATH")]))}
        done = subprocess.run([sys.executable, "-m", "tinybert.api.prebuild", "--root", str(root.absolute())],
                              env=env, cwd=build_lib)
        if done.returncode != 0:   # the first calls compile instead: slower, never wrong
            shutil.rmtree(root, ignore_errors=True)
            print("tinybert: WARNING: compiling the kernels failed; the first calls will compile them",
                  file=sys.stderr)


class PlatformWheel(bdist_wheel):
    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = not ships_kernels()


if __name__ == "__main__":   # setuptools runs this file as __main__; the tests import it
    setup(install_requires=requirements(), cmdclass={"build_py": BuildWithKernels, "bdist_wheel": PlatformWheel})
