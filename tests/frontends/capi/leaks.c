/* Leak growth under valgrind memcheck: tb_encode called WARM times, a leak check, then CALLS more times
 * and a second leak check, in one process (valgrind's client requests; outside valgrind they are no-ops
 * and the counts print as 0). Usage: leaks MODEL WARM CALLS
 * Prints "after WARM: definite N" and "after WARM+CALLS: definite N" (bytes definitely lost). */
#include <stdio.h>
#include <stdlib.h>
#include <valgrind/memcheck.h>

#include "tinybert.h"

static unsigned long definite(void) {
    unsigned long leaked = 0, dubious = 0, reachable = 0, suppressed = 0;
    VALGRIND_DO_QUICK_LEAK_CHECK;
    VALGRIND_COUNT_LEAKS(leaked, dubious, reachable, suppressed);
    (void)dubious, (void)reachable, (void)suppressed;
    return leaked;
}

static int encode(tb_model *model, float *out, int dim, long calls) {
    const char *texts[] = {"A man is playing a guitar on the stage tonight.", "Ça va? 你好"};
    for (long i = 0; i < calls; i++) {
        if (tb_encode(model, texts, 2, out, 2 * (size_t)dim) != TB_OK) {
            fprintf(stderr, "tb_encode: %s\n", tb_last_error());
            return 1;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    long warm = strtol(argv[2], NULL, 10), calls = strtol(argv[3], NULL, 10);
    tb_model *model = tb_model_load(argv[1], 1);
    if (!model) {
        fprintf(stderr, "%s\n", tb_last_error());
        return 1;
    }
    int dim = tb_embedding_dim(model);
    float *out = malloc(sizeof(float) * 2 * dim);
    if (encode(model, out, dim, warm)) return 1;
    printf("after %ld: definite %lu\n", warm, definite());
    if (encode(model, out, dim, calls)) return 1;
    printf("after %ld: definite %lu\n", warm + calls, definite());
    free(out);
    tb_model_free(model);
    return 0;
}
