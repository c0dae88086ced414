/* chat.c — stream an instruct model's reply to a conversation (a JSON array of messages) to stdout.
 *
 *   gcc chat.c -o chat $(pkg-config --cflags --libs /path/to/tinybert.pc)
 *   ./chat model.safetensors '[{"role": "user", "content": "Hello!"}]' [MAX_NEW_TOKENS]
 *
 * Pieces are printed as they come; then a line "---" and the whole reply from the out buffer, so the two
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
        fprintf(stderr, "usage: %s MODEL MESSAGES_JSON [MAX_NEW_TOKENS]\n", argv[0]);
        return 2;
    }
    tb_model *model = tb_model_load(argv[1], 0);
    if (model == NULL) {
        fprintf(stderr, "load failed: %s\n", tb_last_error());
        return 1;
    }
    tb_generate_params params = tb_generate_default_params();
    if (argc > 3) params.max_new_tokens = atoi(argv[3]);
    char reply[8192];
    int pieces = 0;
    int status = tb_chat(model, argv[2], &params, print_piece, &pieces, reply, sizeof reply);
    if (status != TB_OK) {
        fprintf(stderr, "tb_chat: %d %s\n", status, tb_last_error());
        tb_model_free(model);
        return 1;
    }
    printf("\n---\n%s\n", reply);
    fprintf(stderr, "%d pieces\n", pieces);
    tb_model_free(model);
    return 0;
}
