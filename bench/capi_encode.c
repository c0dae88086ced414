/* Per-call time of tb_encode for one text (bench/capi.py builds and runs this).
 * Usage: capi_encode MODEL TEXT WARMUP REPEATS → one line per timed call: seconds. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "tinybert.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc < 5) return 2;
    tb_model *model = tb_model_load(argv[1], 0);
    if (!model) {
        fprintf(stderr, "%s\n", tb_last_error());
        return 1;
    }
    int dim = tb_embedding_dim(model);
    float *out = malloc(sizeof(float) * dim);
    const char *texts[] = {argv[2]};
    int warmup = atoi(argv[3]), repeats = atoi(argv[4]);
    for (int i = 0; i < warmup + repeats; i++) {
        double t = now();
        if (tb_encode(model, texts, 1, out, (size_t)dim) != TB_OK) {
            fprintf(stderr, "%s\n", tb_last_error());
            return 1;
        }
        if (i >= warmup) printf("%.9f\n", now() - t);
    }
    free(out);
    tb_model_free(model);
    return 0;
}
