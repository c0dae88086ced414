/* classify.c — the top label of each text (arguments) with a sequence-classification model.
 *
 *   gcc classify.c -o classify $(pkg-config --cflags --libs /path/to/tinybert.pc)
 *   ./classify model.safetensors "A wonderful film." "Awful."
 *
 * Prints "label<TAB>score" per text (score with 9 significant digits).
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
    int rc = 0;
    for (int i = 2; i < argc; i++) {
        char label[256];
        float score = 0.0f;
        int status = tb_classify(model, argv[i], label, sizeof label, &score);
        if (status != TB_OK) {
            fprintf(stderr, "tb_classify: %d %s\n", status, tb_last_error());
            rc = 1;
            break;
        }
        printf("%s\t%.9g\n", label, score);
    }
    tb_model_free(model);
    return rc;
}
