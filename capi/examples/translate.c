/* translate.c — translate each argument with an encoder-decoder model (T5, BART, Marian).
 *
 *   gcc translate.c -o translate $(pkg-config --cflags --libs /path/to/tinybert.pc)
 *   ./translate model.safetensors "Hello world." [...]
 *
 * Prints one line per text (beam 4, up to 256 new tokens: tb_translate_default_params()).
 */
#include <stdio.h>

#include "tinybert.h"

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL TEXT...\n", argv[0]);
        return 2;
    }
    tb_model *model = tb_model_load(argv[1], 0);
    if (model == NULL) {
        fprintf(stderr, "load failed: %s\n", tb_last_error());
        return 1;
    }
    tb_translate_params params = tb_translate_default_params();
    int rc = 0;
    for (int i = 2; i < argc; i++) {
        char out[4096];
        int status = tb_translate(model, argv[i], &params, out, sizeof out);
        if (status != TB_OK) {
            fprintf(stderr, "tb_translate: %d %s\n", status, tb_last_error());
            rc = 1;
            break;
        }
        printf("%s\n", out);
    }
    tb_model_free(model);
    return rc;
}
