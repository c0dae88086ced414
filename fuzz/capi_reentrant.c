/* Callbacks that re-enter the C API, driven by a seeded random generator (run by `python -m fuzz.stress
 * capi-reentrant`, which builds the library and this program).
 *
 * Usage: capi_reentrant DECODER_A DECODER_B ENCODER CLASSIFIER ITERATIONS SEED
 *
 * Each iteration runs tb_generate on one of the two decoders with an on_piece callback that, at random, calls
 * tb_generate (on either decoder, with the same callback, up to MAX_DEPTH calls deep), tb_encode, tb_classify or
 * tb_model_free on any of the four models, and sometimes stops the generation. Every status is checked against
 * what the API promises: a freed handle is TB_ERR_INVALID_ARGUMENT (at once, and after the call that freed it
 * returns), a call the model's kind does not take is TB_ERR_WRONG_MODEL_KIND, a call on a model whose call is
 * running below in this thread's stack is TB_ERR_BUSY, anything else succeeds. Freed models are loaded again at
 * the next iteration. Prints "key<TAB>value" lines (and up to 20 "mismatch" lines); exit 0 iff no mismatch.
 * A deadlock shows as the program never ending (the runner puts a timeout on it). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tinybert.h"

enum { DEC_A, DEC_B, ENC, CLF, N_MODELS };
#define MAX_DEPTH 3

static const char *names[N_MODELS] = {"decoder_a", "decoder_b", "encoder", "classifier"};
static tb_model *models[N_MODELS];
static int busy[N_MODELS];  /* tb_generate calls on the model running below in this thread's stack */
static int freed[N_MODELS]; /* freed since it was last loaded: its handle must be invalid */
static uint64_t state;
static int depth;
static long calls, mismatches, n_busy, n_ok_in_callback, n_wrong_kind, n_freed, n_freed_in_callback,
    n_invalid_after, n_stops, deepest;

static uint64_t next_random(void) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

static int pick(int n) { return (int)(next_random() % (uint64_t)n); }

static int is_decoder(int m) { return m == DEC_A || m == DEC_B; }

/* What the API must answer: an unknown handle first, then the model's kind, then a busy model. */
static int expected(int m, int wants_decoder, int wants_classifier) {
    if (freed[m]) return TB_ERR_INVALID_ARGUMENT;
    if (wants_decoder != is_decoder(m) || (wants_classifier && m != CLF)) return TB_ERR_WRONG_MODEL_KIND;
    if (busy[m]) return TB_ERR_BUSY;
    return TB_OK;
}

static void check(const char *what, int m, int got, int want) {
    calls++;
    if (got == TB_ERR_BUSY) n_busy++;
    if (got == TB_ERR_WRONG_MODEL_KIND) n_wrong_kind++;
    if (got == TB_OK && depth > 0) n_ok_in_callback++;
    if (got != want) {
        mismatches++;
        if (mismatches <= 20)
            printf("mismatch\t%s on %s at depth %d: got %d, expected %d (%s)\n", what, names[m], depth, got, want,
                   tb_last_error());
    }
}

static int on_piece(const char *piece, void *user_data);

static void call_generate(int m) {
    int want = expected(m, 1, 0);
    tb_generate_params params = tb_generate_default_params();
    params.max_new_tokens = 1 + pick(4);
    if (pick(2)) {
        params.temperature = 0.8f;
        params.seed = pick(1000);
    }
    char out[1024];
    if (want == TB_OK) busy[m]++;
    depth++;
    if (depth > deepest) deepest = depth;
    int got = tb_generate(models[m], "the cat", &params, depth <= MAX_DEPTH ? on_piece : NULL, NULL, out, sizeof out);
    depth--;
    if (want == TB_OK) busy[m]--;
    check("tb_generate", m, got, want);
}

static void call_encode(int m) {
    const char *texts[] = {"the cat sat", "café 你好"};
    float vectors[64];
    check("tb_encode", m, tb_encode(models[m], texts, 2, vectors, 64), expected(m, 0, 0));
}

static void call_classify(int m) {
    char label[64];
    float score;
    check("tb_classify", m, tb_classify(models[m], "the cat sat", label, sizeof label, &score), expected(m, 0, 1));
}

static void call_free(int m) {
    tb_model_free(models[m]); /* a second free of the same handle is ignored */
    if (!freed[m]) {
        freed[m] = 1;
        n_freed++;
        if (depth > 0) n_freed_in_callback++;
    }
    check("tb_embedding_dim after free", m, tb_embedding_dim(models[m]), TB_ERR_INVALID_ARGUMENT);
}

static int on_piece(const char *piece, void *user_data) {
    (void)user_data;
    if (piece == NULL || strlen(piece) > 1000) {
        mismatches++;
        printf("mismatch\ton_piece got %s\n", piece == NULL ? "NULL" : "a piece over 1000 bytes");
    }
    for (int i = pick(3); i > 0; i--) {
        int m = pick(N_MODELS);
        switch (pick(8)) {
        case 0: case 1: case 2: call_generate(m); break;
        case 3: case 4: call_encode(m); break;
        case 5: call_classify(m); break;
        case 6: call_free(m); break;
        default: break;
        }
    }
    if (pick(8) == 0) {
        n_stops++;
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: capi_reentrant DECODER_A DECODER_B ENCODER CLASSIFIER ITERATIONS SEED\n");
        return 2;
    }
    long iterations = atol(argv[5]);
    state = strtoull(argv[6], NULL, 10) * 2654435761u + 88172645463325252ull;
    if (state == 0) state = 1;
    for (int m = 0; m < N_MODELS; m++) freed[m] = 1;
    for (long it = 0; it < iterations; it++) {
        for (int m = 0; m < N_MODELS; m++) {
            if (!freed[m]) continue;
            models[m] = tb_model_load(argv[1 + m], 1);
            if (models[m] == NULL) {
                printf("load_failed\t%s: %s\n", names[m], tb_last_error());
                return 3;
            }
            freed[m] = 0;
        }
        call_generate(pick(2) ? DEC_A : DEC_B);
        /* Handles freed during the call (from a callback or not) stay invalid once it has returned. */
        for (int m = 0; m < N_MODELS; m++) {
            if (!freed[m]) continue;
            char out[64];
            check("tb_generate after free", m, tb_generate(models[m], "the cat", NULL, NULL, NULL, out, sizeof out),
                  TB_ERR_INVALID_ARGUMENT);
            const char *texts[] = {"the cat"};
            float vector[8];
            check("tb_encode after free", m, tb_encode(models[m], texts, 1, vector, 8), TB_ERR_INVALID_ARGUMENT);
            n_invalid_after++;
        }
    }
    for (int m = 0; m < N_MODELS; m++)
        if (!freed[m]) tb_model_free(models[m]);
    printf("iterations\t%ld\ncalls\t%ld\nbusy\t%ld\nok_in_callback\t%ld\nwrong_kind\t%ld\nfreed\t%ld\n"
           "freed_in_callback\t%ld\ninvalid_after_free\t%ld\nstops\t%ld\ndeepest\t%ld\nmismatches\t%ld\n",
           iterations, calls, n_busy, n_ok_in_callback, n_wrong_kind, n_freed, n_freed_in_callback, n_invalid_after,
           n_stops, deepest, mismatches);
    return mismatches ? 1 : 0;
}
