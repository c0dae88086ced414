/* generate.c — stream a continuation of a prompt to stdout with a decoder model (GPT-2, Llama).
 *
 *   gcc generate.c -o generate $(pkg-config --cflags --libs /path/to/tinybert.pc)
 *   ./generate model.safetensors "Once upon a time" [MAX_NEW_TOKENS]
 *
 * Pieces are printed as they come; then a line "---" and the whole text from the out buffer, so the two
 * can be compared.
 */
#include <stdio.h>
#include <stdlib.h>

#include "tinybert.h"

static int print_piece(const char *piece, void *user_data) {
    int *count = user_data;
    fputs(piece, stdout);
    fflush(stdout);
    ++*count;
    return 0; /* non-zero would stop generation */
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL PROMPT [MAX_NEW_TOKENS]\n", argv[0]);
        return 2;
    }
    tb_model *model = tb_model_load(argv[1], 0);
    if (model == NULL) {
        fprintf(stderr, "load failed: %s\n", tb_last_error());
        return 1;
    }
    tb_generate_params params = tb_generate_default_params();
    if (argc > 3) params.max_new_tokens = atoi(argv[3]);
    char text[8192];
    int pieces = 0;
    int status = tb_generate(model, argv[2], &params, print_piece, &pieces, text, sizeof text);
    if (status != TB_OK) {
        fprintf(stderr, "\ntb_generate: %d %s\n", status, tb_last_error());
        tb_model_free(model);
        return 1;
    }
    printf("\n---\n%s\n", text);
    fprintf(stderr, "%d pieces\n", pieces);
    tb_model_free(model);
    return 0;
}
