/* 4 threads x 50 calls of tb_encode on one model must give what one thread gives.
 * Usage: threads MODEL. Prints "mismatches N" and "calls N". */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tinybert.h"

#define THREADS 4
#define CALLS 50
#define TEXTS 5

static const char *TEXT[TEXTS] = {"The cat sits outside.", "A man is playing guitar.", "Ça va? 你好",
                                  "Do you like pizza?", "The new movie is awesome."};
static tb_model *model;
static int dim;
static float *expected;
static int mismatches, failures, calls;
static pthread_mutex_t count_lock = PTHREAD_MUTEX_INITIALIZER;

static void *worker(void *arg) {
    long id = (long)arg;
    float *out = malloc(sizeof(float) * dim);
    for (int i = 0; i < CALLS; i++) {
        int t = (int)((id + i) % TEXTS);
        const char *one[] = {TEXT[t]};
        int status = tb_encode(model, one, 1, out, (size_t)dim);
        pthread_mutex_lock(&count_lock);
        calls++;
        if (status != TB_OK) failures++;
        else if (memcmp(out, expected + (size_t)t * dim, sizeof(float) * dim) != 0) mismatches++;
        pthread_mutex_unlock(&count_lock);
    }
    free(out);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    model = tb_model_load(argv[1], 0);
    if (!model) {
        fprintf(stderr, "%s\n", tb_last_error());
        return 1;
    }
    dim = tb_embedding_dim(model);
    expected = malloc(sizeof(float) * dim * TEXTS);
    for (int t = 0; t < TEXTS; t++) {   /* one text per call, as the threads do */
        const char *one[] = {TEXT[t]};
        if (tb_encode(model, one, 1, expected + (size_t)t * dim, (size_t)dim) != TB_OK) return 1;
    }
    pthread_t threads[THREADS];
    for (long i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, worker, (void *)i);
    for (int i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);
    printf("mismatches %d\nfailures %d\ncalls %d\n", mismatches, failures, calls);
    tb_model_free(model);
    free(expected);
    return 0;
}
