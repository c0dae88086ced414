"""tinybert's C API: capi/tinybert.h, built into libtinybert.so by ``tinybert build-capi`` (see build.py)."""
