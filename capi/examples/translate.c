/* translate.c — translate each argument with an encoder-decoder model (T5, BART, Marian, NLLB, ...).
 *
 *   gcc translate.c -o translate $(pkg-config --cflags --libs /path/to/tinybert.pc)
 *   ./translate model.safetensors "Hello world." [...]
 *   ./translate nllb.safetensors --src-lang eng_Latn --tgt-lang fra_Latn "Hello world." [...]
 *
 * Prints one line per text (beam 4, up to 256 new tokens: tb_translate_default_params()). Multilingual
 * models (NLLB-200, M2M-100, mBART-50) take the language codes (tb_translate_lang).
 */
#include <stdio.h>
#include <string.h>

#include "tinybert.h"

int main(int argc, char **argv) {
    const char *src_lang = NULL, *tgt_lang = NULL;
    int first = 2;
    while (first + 1 < argc && (strcmp(argv[first], "--src-lang") == 0 || strcmp(argv[first], "--tgt-lang") == 0)) {
        if (strcmp(argv[first], "--src-lang") == 0) {
            src_lang = argv[first + 1];
        } else {
            tgt_lang = argv[first + 1];
        }
        first += 2;
    }
    if (argc < 3 || first >= argc) {
        fprintf(stderr, "usage: %s MODEL [--src-lang CODE] [--tgt-lang CODE] TEXT...\n", argv[0]);
        return 2;
    }
    tb_model *model = tb_model_load(argv[1], 0);
    if (model == NULL) {
        fprintf(stderr, "load failed: %s\n", tb_last_error());
        return 1;
    }
    tb_translate_params params = tb_translate_default_params();
    int rc = 0;
    for (int i = first; i < argc; i++) {
        char out[4096];
        int status = tb_translate_lang(model, argv[i], &params, src_lang, tgt_lang, out, sizeof out);
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
