"""Build the C library: ``tinybert build-capi OUTDIR`` → libtinybert.so, tinybert.h, tinybert.pc.

cffi's embedding mode compiles capi/shell.c (the exported C functions) with cffi's glue into a shared
library that starts an embedded CPython on its first call and runs capi/bridge.py in it. What that
interpreter needs is recorded now, from the building environment: the libpython to link (by rpath), and
the site-packages and source folders holding tinybert and its dependencies, so a C program runs from a
plain shell, outside any virtual environment.
"""

from __future__ import annotations

import os
import shutil
import site
import sys
import sysconfig
import tempfile
from pathlib import Path

import tinybert

HERE = Path(__file__).resolve().parent

# The declarations cffi needs: the parameter structs and callback type of tinybert.h (checked against the
# header by the compiler), the bridge's extern "Python" functions, and the error setter shell.c defines.
CDEF = """
typedef int (*tb_token_callback)(const char *piece, void *user_data);
typedef struct tb_generate_params {
    int max_new_tokens; float temperature; int top_k; float top_p; float repetition_penalty; int64_t seed;
} tb_generate_params;
typedef struct tb_translate_params {
    int beam_size; int max_length; int min_length; float length_penalty; int no_repeat_ngram_size;
    float repetition_penalty; int truncation;
} tb_translate_params;

extern "Python" int _tbpy_model_load(const char *path, int n_threads, uint64_t *handle);
extern "Python" int _tbpy_model_free(uint64_t handle);
extern "Python" int _tbpy_embedding_dim(uint64_t handle, int *dim);
extern "Python" int _tbpy_encode(uint64_t handle, const char *const *texts, size_t n_texts, float *out,
                                 size_t out_len);
extern "Python" int _tbpy_classify(uint64_t handle, const char *text, char *label, size_t label_len, float *score);
extern "Python" int _tbpy_generate(uint64_t handle, const char *prompt, const tb_generate_params *params,
                                   tb_token_callback on_piece, void *user_data, char *out, size_t out_len);
extern "Python" int _tbpy_translate(uint64_t handle, const char *text, const tb_translate_params *params,
                                    const char *src_lang, const char *tgt_lang, char *out, size_t out_len);
extern "Python" int _tbpy_chat(uint64_t handle, const char *messages_json, const tb_generate_params *params,
                               tb_token_callback on_piece, void *user_data, char *out, size_t out_len);

void _tb_set_error(const char *message, size_t needed);
"""

# shell.c calls the extern "Python" functions, which cffi defines after this preamble.
FORWARD = """
#include "tinybert.h"
static int _tbpy_model_load(const char *path, int n_threads, uint64_t *handle);
static int _tbpy_model_free(uint64_t handle);
static int _tbpy_embedding_dim(uint64_t handle, int *dim);
static int _tbpy_encode(uint64_t handle, const char *const *texts, size_t n_texts, float *out, size_t out_len);
static int _tbpy_classify(uint64_t handle, const char *text, char *label, size_t label_len, float *score);
static int _tbpy_generate(uint64_t handle, const char *prompt, const tb_generate_params *params,
                          tb_token_callback on_piece, void *user_data, char *out, size_t out_len);
static int _tbpy_translate(uint64_t handle, const char *text, const tb_translate_params *params,
                           const char *src_lang, const char *tgt_lang, char *out, size_t out_len);
static int _tbpy_chat(uint64_t handle, const char *messages_json, const tb_generate_params *params,
                      tb_token_callback on_piece, void *user_data, char *out, size_t out_len);
"""

INIT = """
import site, sys
for _dir in {sitedirs!r}:
    site.addsitedir(_dir)          # also runs their .pth files (editable installs)
for _dir in reversed({paths!r}):
    if _dir not in sys.path:
        sys.path.insert(0, _dir)
from libtinybert import ffi, lib
from tinybert_capi.bridge import install
install(ffi, lib)
"""


def _python_paths() -> tuple[list[str], list[str]]:
    """(site-packages folders, extra folders) where the building interpreter finds tinybert, the C API's
    bridge and their dependencies."""
    sitedirs = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
    paths = []
    import tinybert_capi

    for module in (tinybert, tinybert_capi):
        # not resolved: a package folder reached through a symlink of its import name (tinybert_capi → capi/)
        # is importable from the symlink's folder, not from its target's
        parent = str(Path(os.path.abspath(module.__file__)).parent.parent)
        if parent not in sitedirs and parent not in paths:
            paths.append(parent)
    return sitedirs, paths


def build(outdir: str | Path, verbose: bool = False, python_home: str | None = None,
          sitedirs: list[str] | None = None, paths: list[str] | None = None) -> dict[str, Path]:
    """Compile libtinybert.so into ``outdir`` and write tinybert.h and tinybert.pc beside it; returns
    their paths. Needs cffi (the "capi" extra), a C compiler and a CPython built with a shared libpython.

    ``python_home``, ``sitedirs`` and ``paths`` replace what is recorded from the building interpreter
    (its sys.base_prefix, its site-packages, the folders holding tinybert): for tests of a broken setup."""
    try:
        import cffi
    except ImportError:
        raise RuntimeError("building the C API needs cffi: pip install 'tinybert[capi]'") from None
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise RuntimeError(f"{sys.executable} has no shared libpython (built without --enable-shared); the "
                           "C API embeds CPython and needs one")
    outdir = Path(outdir).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    libdir = sysconfig.get_config_var("LIBDIR")
    found_sitedirs, found_paths = _python_paths()
    sitedirs = found_sitedirs if sitedirs is None else sitedirs
    paths = found_paths if paths is None else paths
    home = sys.base_prefix if python_home is None else python_home

    ffi = cffi.FFI()
    ffi.embedding_api("")
    ffi.cdef(CDEF)
    ffi.set_source("libtinybert", FORWARD + (HERE / "shell.c").read_text(),
                   include_dirs=[str(HERE)], define_macros=[("TINYBERT_VERSION", f'"{tinybert.__version__}"'),
                                  ("TINYBERT_PYTHON_HOME", '"' + home.replace('"', '') + '"')],
                   extra_compile_args=["-O2", "-Wall"], extra_link_args=[f"-Wl,-rpath,{libdir}"])
    ffi.embedding_init_code(INIT.format(sitedirs=sitedirs, paths=paths))
    with tempfile.TemporaryDirectory(prefix="tinybert-capi-") as tmp:
        built = Path(ffi.compile(tmpdir=tmp, target="libtinybert.so", verbose=verbose))
        library = outdir / "libtinybert.so"
        shutil.copyfile(built, library)
    header = outdir / "tinybert.h"
    shutil.copyfile(HERE / "tinybert.h", header)
    pc = outdir / "tinybert.pc"
    pc.write_text(f"prefix={outdir}\n\nName: tinybert\nDescription: CPU Transformer inference (C API)\n"
                  f"Version: {tinybert.__version__}\nCflags: -I${{prefix}}\n"
                  f"Libs: -L${{prefix}} -ltinybert -Wl,-rpath,${{prefix}}\n")
    return {"library": library, "header": header, "pkgconfig": pc}
