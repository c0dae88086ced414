/* embed.c — semantic search with tinybert's C API: embed a few sentences and a query, rank by cosine.
 *
 *   gcc embed.c -o embed $(pkg-config --cflags --libs /path/to/tinybert.pc)
 *   ./embed model.safetensors "a query" [repeat]
 *
 * Prints the sentences best first as "score<TAB>sentence" (scores with 9 significant digits), then
 * "dim N". With a third argument it embeds the query that many times (a leak check under valgrind).
 */
#include <stdio.h>
#include <stdlib.h>

#include "tinybert.h"

static const char *SENTENCES[] = {
    "The cat sits outside.",
    "A man is playing guitar.",
    "The new movie is awesome.",
    "A woman watches TV.",
    "The new film is so great.",
    "Do you like pizza?",
};
#define N_SENTENCES (sizeof SENTENCES / sizeof SENTENCES[0])

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL QUERY [REPEAT]\n", argv[0]);
        return 2;
    }
    tb_model *model = tb_model_load(argv[1], 0);
    if (model == NULL) {
        fprintf(stderr, "load failed: %s\n", tb_last_error());
        return 1;
    }
    int dim = tb_embedding_dim(model);
    if (dim <= 0) {
        fprintf(stderr, "tb_embedding_dim: %d %s\n", dim, tb_last_error());
        tb_model_free(model);
        return 1;
    }
    float *vectors = malloc(sizeof(float) * (size_t)dim * (N_SENTENCES + 1));
    int status = tb_encode(model, SENTENCES, N_SENTENCES, vectors, (size_t)dim * N_SENTENCES);
    const char *query[] = {argv[2]};
    long repeat = argc > 3 ? strtol(argv[3], NULL, 10) : 1;
    for (long i = 0; status == TB_OK && i < repeat; i++)
        status = tb_encode(model, query, 1, vectors + (size_t)dim * N_SENTENCES, (size_t)dim);
    if (status != TB_OK) {
        fprintf(stderr, "tb_encode: %d %s\n", status, tb_last_error());
        free(vectors);
        tb_model_free(model);
        return 1;
    }
    /* Embeddings are L2-normalised (as the model file says), so the dot product is the cosine. */
    double scores[N_SENTENCES];
    int order[N_SENTENCES];
    for (size_t s = 0; s < N_SENTENCES; s++) {
        double dot = 0.0;
        for (int e = 0; e < dim; e++) dot += (double)vectors[s * dim + e] * vectors[N_SENTENCES * dim + e];
        scores[s] = dot;
        order[s] = (int)s;
    }
    for (size_t i = 1; i < N_SENTENCES; i++)      /* insertion sort, best first */
        for (size_t j = i; j > 0 && scores[order[j]] > scores[order[j - 1]]; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    for (size_t i = 0; i < N_SENTENCES; i++) printf("%.9g\t%s\n", scores[order[i]], SENTENCES[order[i]]);
    printf("dim %d\n", dim);
    free(vectors);
    tb_model_free(model);
    return 0;
}
