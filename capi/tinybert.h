/* tinybert.h — the C interface of tinybert (CPU Transformer inference).
 *
 * Build the library with `tinybert build-capi OUTDIR` (pip extra "capi"); it writes libtinybert.so, this
 * header and tinybert.pc. Link with `gcc prog.c $(pkg-config --cflags --libs OUTDIR/tinybert.pc)`, i.e.
 * `-I OUTDIR -L OUTDIR -ltinybert -Wl,-rpath,OUTDIR`.
 *
 * The library embeds the Python interpreter and the tinybert package it was built from (their paths are
 * recorded at build time), so a program needs no virtual environment or PYTHONPATH. Python starts on the
 * first call; if it cannot (the recorded environment was removed, ...), every call fails with
 * TB_ERR_INTERNAL and tb_last_error() says why; nothing crashes.
 *
 * Conventions (llama.h style):
 *   - tb_model is an opaque handle: tb_model_load() gives one, tb_model_free() takes it back. A handle the
 *     library did not give out (or already freed) is rejected with TB_ERR_INVALID_ARGUMENT; it is never
 *     dereferenced.
 *   - Functions return TB_OK (0) or a negative TB_ERR_* code; tb_model_load returns NULL on failure.
 *     After any failure tb_last_error() describes it (per thread; valid until that thread's next call).
 *   - Every pointer argument may be NULL only where documented; lengths are the caller's buffer sizes and
 *     are never exceeded. When a buffer is too small the call returns TB_ERR_BUFFER_TOO_SMALL and
 *     tb_last_needed() gives the size that would have been enough (in the buffer's own units).
 *   - Text is UTF-8, NUL-terminated. Invalid UTF-8 is rejected (TB_ERR_INVALID_UTF8), never replaced.
 *   - Output strings are written NUL-terminated into the caller's buffer; the library keeps no pointer to
 *     caller memory after a call returns and allocates nothing the caller must free.
 *
 * Thread safety: every function may be called from any thread. Calls on one model are serialised by a
 * lock held by the model (and by the interpreter); calls on different models may overlap but share the
 * CPU threads given at load time. tb_last_error() and tb_last_needed() are per thread.
 */
#ifndef TINYBERT_H
#define TINYBERT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes. */
#define TB_OK 0
#define TB_ERR_INVALID_ARGUMENT -1   /* NULL where not allowed, n_texts 0, bad parameter value, unknown handle */
#define TB_ERR_BUFFER_TOO_SMALL -2   /* out buffer too small: tb_last_needed() says how large it must be */
#define TB_ERR_INVALID_UTF8 -3       /* a text is not valid UTF-8 */
#define TB_ERR_WRONG_MODEL_KIND -4   /* e.g. tb_generate on an encoder file */
#define TB_ERR_FILE -5               /* missing, unreadable or invalid model file */
#define TB_ERR_INTERNAL -6           /* anything else (including "Python could not start") */
#define TB_ERR_BUSY -7               /* a callback called the model whose call invoked it (tb_generate's on_piece
                                        calling tb_generate, tb_encode, ... on the same model); other models work */

typedef struct tb_model tb_model;

/* Streaming callback: receives each new piece of text (UTF-8, NUL-terminated, never a split character)
 * and the caller's user_data; return 0 to continue, non-zero to stop generating. */
typedef int (*tb_token_callback)(const char *piece, void *user_data);

typedef struct tb_generate_params {
    int max_new_tokens;        /* default 64 */
    float temperature;         /* 0 = greedy (default); > 0 samples */
    int top_k;                 /* 0 = off (default) */
    float top_p;               /* 1 = off (default) */
    float repetition_penalty;  /* 1 = off (default) */
    int64_t seed;              /* -1 = unseeded (default); >= 0 makes sampling reproducible */
} tb_generate_params;

typedef struct tb_translate_params {
    int beam_size;             /* default 4; 1 = greedy */
    int max_length;            /* most new tokens, EOS included; default 256 */
    int min_length;            /* default 0 */
    float length_penalty;      /* default 1.0 */
    int no_repeat_ngram_size;  /* default 0 (off) */
    float repetition_penalty;  /* 1 = off (default) */
    int truncation;            /* 1: cut sources longer than the model takes; 0 (default): error */
} tb_translate_params;

/* Library version, e.g. "0.1.0" (static storage). */
const char *tb_version(void);

/* The last error message of the calling thread ("" if none); static per-thread storage. */
const char *tb_last_error(void);

/* After TB_ERR_BUFFER_TOO_SMALL: the buffer size (floats or bytes, as the call counts them) needed. */
size_t tb_last_needed(void);

/* Load a tinybert .safetensors file. n_threads: CPU threads for this model's kernels (0 = all cores).
 * Returns NULL on failure (TB_ERR_FILE, TB_ERR_INVALID_ARGUMENT; see tb_last_error()). */
tb_model *tb_model_load(const char *path, int n_threads);

/* Release a model. NULL is a no-op; an unknown handle is ignored. Called from a callback of a call on the
 * same model, the handle is invalid at once and the model is released when that call returns. */
void tb_model_free(tb_model *model);

/* Width of the sentence embeddings of an encoder model (> 0), or a negative TB_ERR_* code. */
int tb_embedding_dim(const tb_model *model);

/* Sentence embeddings of n_texts texts (pooled and normalised as the file says) into out, row after row:
 * out needs n_texts * tb_embedding_dim(model) floats; out_len is the number of floats provided. */
int tb_encode(tb_model *model, const char *const *texts, size_t n_texts, float *out, size_t out_len);

/* The top label of a sequence-classification model for one text, written into label (label_len bytes,
 * NUL included), and its score into *score (score may be NULL). */
int tb_classify(tb_model *model, const char *text, char *label, size_t label_len, float *score);

/* Default generation parameters (greedy, 64 new tokens). */
tb_generate_params tb_generate_default_params(void);

/* Continue prompt with a decoder model (GPT-2, Llama family). params may be NULL (defaults). on_piece may
 * be NULL; otherwise it receives the text as it is generated. The whole generated text (without the
 * prompt) is written into out (out_len bytes, NUL included); out may be NULL when out_len is 0 (streaming
 * only). */
int tb_generate(tb_model *model, const char *prompt, const tb_generate_params *params, tb_token_callback on_piece,
                void *user_data, char *out, size_t out_len);

/* The assistant's reply to a conversation, with a decoder model that has a chat template (an instruct or chat
 * model; its file keeps the checkpoint's template). messages_json is a UTF-8 JSON array of
 * {"role": "...", "content": "..."} objects, oldest first, e.g.
 *   [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
 * rendered with the template as transformers' apply_chat_template(add_generation_prompt=True) renders it.
 * Generation stops at every EOS id the file records. params, on_piece, user_data, out and out_len as in
 * tb_generate. Malformed JSON or messages, a file without a chat template and a conversation the template
 * refuses are TB_ERR_INVALID_ARGUMENT (tb_last_error() says which). */
int tb_chat(tb_model *model, const char *messages_json, const tb_generate_params *params, tb_token_callback on_piece,
            void *user_data, char *out, size_t out_len);

/* Default translation parameters (beam 4, up to 256 new tokens). */
tb_translate_params tb_translate_default_params(void);

/* Translate (or summarise: pass the summarisation settings) one text with an encoder-decoder model (T5,
 * mT5, BART, mBART, Marian, M2M-100, NLLB; multilingual ones need tb_translate_lang). params may be NULL (defaults). The result is written into out (out_len bytes, NUL
 * included). */
int tb_translate(tb_model *model, const char *text, const tb_translate_params *params, char *out, size_t out_len);

/* tb_translate for multilingual models (NLLB-200, M2M-100, mBART-50): src_lang is the text's language code
 * (e.g. "eng_Latn"; NULL: the tokenizer's default), tgt_lang the code to translate into (required by those
 * models; NULL otherwise). An unknown or missing code is TB_ERR_INVALID_ARGUMENT; tb_last_error() lists the
 * model's codes. A separate function, so that tb_translate_params keeps its layout (an additive ABI). */
int tb_translate_lang(tb_model *model, const char *text, const tb_translate_params *params, const char *src_lang,
                      const char *tgt_lang, char *out, size_t out_len);

#ifdef __cplusplus
}
#endif

#endif /* TINYBERT_H */
