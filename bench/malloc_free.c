/* malloc/free microbenchmark: a constant working set of SLOTS blocks of mixed
 * sizes; each step frees one slot and refills it. Prints ns per malloc+free
 * pair on stdout. Usage: malloc_free [pairs] */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define SLOTS 1024

static const size_t sizes[] = {16, 32, 48, 64, 96, 128, 256, 512, 1024, 4000};

int main(int argc, char **argv) {
    long pairs = argc > 1 ? atol(argv[1]) : 200000;
    void *volatile slots[SLOTS] = {0};
    unsigned rng = 12345;
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < pairs; i++) {
        rng = rng * 1103515245u + 12345u;
        unsigned slot = (rng >> 8) % SLOTS;
        free(slots[slot]);
        slots[slot] = malloc(sizes[(rng >> 20) % (sizeof sizes / sizeof sizes[0])]);
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    for (int i = 0; i < SLOTS; i++) free(slots[i]);
    double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
    printf("%.1f\n", ns / pairs);
    return 0;
}
