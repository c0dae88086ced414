/* Callbacks that call back into the model whose tb_generate invoked them: never a deadlock.
 * Usage: reentrant DECODER_MODEL ENCODER_MODEL. Prints one "name<TAB>status" line per case. */
#include <stdio.h>
#include <string.h>

#include "tinybert.h"

static tb_model *decoder, *encoder;
static int inner_generate = 1, inner_encode_other = 1, calls;

static int generate_again(const char *piece, void *user_data) {
    (void)piece;
    (void)user_data;
    char out[256];
    if (calls++ == 0) {
        inner_generate = tb_generate(decoder, "Again", NULL, NULL, NULL, out, sizeof out);
        /* Another model is not busy: calling it from the callback works. */
        float vec[384];
        const char *text[] = {"Another model."};
        inner_encode_other = tb_encode(encoder, text, 1, vec, 384);
    }
    return 0;
}

static int free_itself(const char *piece, void *user_data) {
    (void)piece;
    (void)user_data;
    if (calls++ == 0) tb_model_free(decoder);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    decoder = tb_model_load(argv[1], 1);
    encoder = tb_model_load(argv[2], 1);
    if (decoder == NULL || encoder == NULL) return 3;
    tb_generate_params params = tb_generate_default_params();
    params.max_new_tokens = 4;
    char out[256];
    int outer = tb_generate(decoder, "Hello", &params, generate_again, NULL, out, sizeof out);
    printf("outer_generate\t%d\n", outer);
    printf("inner_generate\t%d\n", inner_generate);
    printf("inner_busy_message\t%d\n", inner_generate == TB_ERR_BUSY);
    printf("inner_encode_other\t%d\n", inner_encode_other);
    calls = 0;
    outer = tb_generate(decoder, "Hello", &params, free_itself, NULL, out, sizeof out);
    printf("generate_freeing_itself\t%d\n", outer);
    printf("after_free\t%d\n", tb_generate(decoder, "Hello", &params, NULL, NULL, out, sizeof out));
    tb_model_free(encoder);
    return 0;
}
