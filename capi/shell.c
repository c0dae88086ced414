/* The C side of libtinybert.so: argument checks that need no Python, per-thread error state, and one call
 * into the Python bridge (tinybert_capi/bridge.py) per function. No model logic lives here.
 *
 * The bridge functions return 1 on success and a negative TB_ERR_* code on failure, never 0: 0 is what
 * cffi returns when the embedded interpreter could not start or the bridge raised, and is reported as
 * TB_ERR_INTERNAL. Handles are integers the bridge hands out; C never dereferences a tb_model pointer.
 * This file is compiled by tinybert_capi.build (cffi's embedding mode) after the generated cffi glue
 * (which includes Python.h and defines the _tbpy_* functions below as static extern "Python" callbacks).
 *
 * Python is started here, not by cffi: Py_InitializeFromConfig reports a broken installation as a status
 * instead of aborting the process, so a missing or moved Python becomes TB_ERR_INTERNAL with a message.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "tinybert.h"

#ifndef TINYBERT_VERSION
#define TINYBERT_VERSION "unknown"
#endif
#ifndef TINYBERT_PYTHON_HOME
#define TINYBERT_PYTHON_HOME ""
#endif

static __thread char tb_error[2048];
static __thread size_t tb_needed;

static void tb_set_error(const char *message) {
    snprintf(tb_error, sizeof tb_error, "%s", message ? message : "");
}

/* Called by the bridge (declared in the cdef): record the calling thread's error. */
static void _tb_set_error(const char *message, size_t needed) {
    tb_set_error(message);
    tb_needed = needed;
}

static pthread_once_t tb_python_once = PTHREAD_ONCE_INIT;
static int tb_python_ready;
static char tb_python_error[1024];

static void tb_start_python(void) {
    if (Py_IsInitialized()) { /* the host is a Python process: use its interpreter */
        tb_python_ready = 1;
        return;
    }
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    config.install_signal_handlers = 0; /* the host program keeps its signals */
    config.parse_argv = 0;
    PyStatus status = PyConfig_SetBytesString(&config, &config.home, TINYBERT_PYTHON_HOME);
    if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        snprintf(tb_python_error, sizeof tb_python_error,
                 "tinybert: the embedded Python (home %s) could not start: %s%s%s", TINYBERT_PYTHON_HOME,
                 status.func ? status.func : "", status.func ? ": " : "", status.err_msg ? status.err_msg : "?");
        return;
    }
    PyEval_SaveThread(); /* release the GIL: every call takes it (cffi does, per call) */
    tb_python_ready = 1;
}

/* 0 when Python runs; TB_ERR_INTERNAL (message set) when it cannot. */
static int tb_python(void) {
    pthread_once(&tb_python_once, tb_start_python);
    if (tb_python_ready) return 0;
    tb_set_error(tb_python_error);
    return TB_ERR_INTERNAL;
}

static int tb_status(int bridge_result) {
    if (bridge_result == 1) return TB_OK;
    if (bridge_result < 0) return bridge_result;
    tb_set_error("tinybert: the embedded Python could not start or import tinybert (the reason was printed "
                 "on stderr); was the environment the library was built from moved or removed?");
    return TB_ERR_INTERNAL;
}

static int tb_begin(void) {
    tb_error[0] = '\0';
    tb_needed = 0;
    return 0;
}

CFFI_DLLEXPORT const char *tb_version(void) { return TINYBERT_VERSION; }

CFFI_DLLEXPORT const char *tb_last_error(void) { return tb_error; }

CFFI_DLLEXPORT size_t tb_last_needed(void) { return tb_needed; }

CFFI_DLLEXPORT tb_model *tb_model_load(const char *path, int n_threads) {
    uint64_t handle = 0;
    tb_begin();
    if (path == NULL) {
        tb_set_error("tb_model_load: path is NULL");
        return NULL;
    }
    if (n_threads < 0) {
        tb_set_error("tb_model_load: n_threads must be >= 0 (0 = all cores)");
        return NULL;
    }
    if (tb_python() != 0 || tb_status(_tbpy_model_load(path, n_threads, &handle)) != TB_OK || handle == 0)
        return NULL;
    return (tb_model *)(uintptr_t)handle;
}

CFFI_DLLEXPORT void tb_model_free(tb_model *model) {
    tb_begin();
    if (model != NULL && tb_python() == 0) tb_status(_tbpy_model_free((uint64_t)(uintptr_t)model));
}

CFFI_DLLEXPORT int tb_embedding_dim(const tb_model *model) {
    int dim = 0;
    int status;
    tb_begin();
    if (model == NULL) {
        tb_set_error("tb_embedding_dim: model is NULL");
        return TB_ERR_INVALID_ARGUMENT;
    }
    if ((status = tb_python()) != 0) return status;
    status = tb_status(_tbpy_embedding_dim((uint64_t)(uintptr_t)model, &dim));
    return status == TB_OK ? dim : status;
}

CFFI_DLLEXPORT int tb_encode(tb_model *model, const char *const *texts, size_t n_texts, float *out, size_t out_len) {
    tb_begin();
    if (model == NULL || texts == NULL || n_texts == 0) {
        tb_set_error(model == NULL ? "tb_encode: model is NULL"
                     : texts == NULL ? "tb_encode: texts is NULL" : "tb_encode: n_texts is 0");
        return TB_ERR_INVALID_ARGUMENT;
    }
    if (out == NULL && out_len != 0) {
        tb_set_error("tb_encode: out is NULL but out_len is not 0");
        return TB_ERR_INVALID_ARGUMENT;
    }
    if (tb_python() != 0) return TB_ERR_INTERNAL;
    return tb_status(_tbpy_encode((uint64_t)(uintptr_t)model, texts, n_texts, out, out_len));
}

CFFI_DLLEXPORT int tb_classify(tb_model *model, const char *text, char *label, size_t label_len, float *score) {
    tb_begin();
    if (model == NULL || text == NULL || label == NULL) {
        tb_set_error(model == NULL ? "tb_classify: model is NULL"
                     : text == NULL ? "tb_classify: text is NULL" : "tb_classify: label is NULL");
        return TB_ERR_INVALID_ARGUMENT;
    }
    if (tb_python() != 0) return TB_ERR_INTERNAL;
    return tb_status(_tbpy_classify((uint64_t)(uintptr_t)model, text, label, label_len, score));
}

CFFI_DLLEXPORT tb_generate_params tb_generate_default_params(void) {
    tb_generate_params p;
    memset(&p, 0, sizeof p);
    p.max_new_tokens = 64;
    p.temperature = 0.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.repetition_penalty = 1.0f;
    p.seed = -1;
    return p;
}

CFFI_DLLEXPORT int tb_generate(tb_model *model, const char *prompt, const tb_generate_params *params,
                               tb_token_callback on_piece, void *user_data, char *out, size_t out_len) {
    tb_generate_params defaults = tb_generate_default_params();
    tb_begin();
    if (model == NULL || prompt == NULL) {
        tb_set_error(model == NULL ? "tb_generate: model is NULL" : "tb_generate: prompt is NULL");
        return TB_ERR_INVALID_ARGUMENT;
    }
    if (out == NULL && out_len != 0) {
        tb_set_error("tb_generate: out is NULL but out_len is not 0");
        return TB_ERR_INVALID_ARGUMENT;
    }
    if (tb_python() != 0) return TB_ERR_INTERNAL;
    return tb_status(_tbpy_generate((uint64_t)(uintptr_t)model, prompt, params ? params : &defaults, on_piece,
                                    user_data, out, out_len));
}

CFFI_DLLEXPORT int tb_chat(tb_model *model, const char *messages_json, const tb_generate_params *params,
                           tb_token_callback on_piece, void *user_data, char *out, size_t out_len) {
    tb_generate_params defaults = tb_generate_default_params();
    tb_begin();
    if (model == NULL || messages_json == NULL) {
        tb_set_error(model == NULL ? "tb_chat: model is NULL" : "tb_chat: messages_json is NULL");
        return TB_ERR_INVALID_ARGUMENT;
    }
    if (out == NULL && out_len != 0) {
        tb_set_error("tb_chat: out is NULL but out_len is not 0");
        return TB_ERR_INVALID_ARGUMENT;
    }
    if (tb_python() != 0) return TB_ERR_INTERNAL;
    return tb_status(_tbpy_chat((uint64_t)(uintptr_t)model, messages_json, params ? params : &defaults, on_piece,
                                user_data, out, out_len));
}

CFFI_DLLEXPORT tb_translate_params tb_translate_default_params(void) {
    tb_translate_params p;
    memset(&p, 0, sizeof p);
    p.beam_size = 4;
    p.max_length = 256;
    p.min_length = 0;
    p.length_penalty = 1.0f;
    p.no_repeat_ngram_size = 0;
    p.repetition_penalty = 1.0f;
    p.truncation = 0;
    return p;
}

CFFI_DLLEXPORT int tb_translate_lang(tb_model *model, const char *text, const tb_translate_params *params,
                                     const char *src_lang, const char *tgt_lang, char *out, size_t out_len) {
    tb_translate_params defaults = tb_translate_default_params();
    tb_begin();
    if (model == NULL || text == NULL || out == NULL) {
        tb_set_error(model == NULL ? "tb_translate: model is NULL"
                     : text == NULL ? "tb_translate: text is NULL" : "tb_translate: out is NULL");
        return TB_ERR_INVALID_ARGUMENT;
    }
    if (tb_python() != 0) return TB_ERR_INTERNAL;
    return tb_status(_tbpy_translate((uint64_t)(uintptr_t)model, text, params ? params : &defaults, src_lang,
                                     tgt_lang, out, out_len));
}

CFFI_DLLEXPORT int tb_translate(tb_model *model, const char *text, const tb_translate_params *params, char *out,
                                size_t out_len) {
    return tb_translate_lang(model, text, params, NULL, NULL, out, out_len);
}
