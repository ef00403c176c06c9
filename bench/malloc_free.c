/* malloc/free microbenchmark: a constant working set of SLOTS blocks of mixed
 * sizes; each step frees one slot and refills it. Prints ns per malloc+free
 * pair on stdout; with `cpu`, the process's CPU ns per pair instead (user and
 * system time: a tracer's traps and programs run in the latter).
 * Usage: malloc_free [pairs] [cpu] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SLOTS 1024

static const size_t sizes[] = {16, 32, 48, 64, 96, 128, 256, 512, 1024, 4000};

int main(int argc, char **argv) {
    long pairs = argc > 1 ? atol(argv[1]) : 200000;
    void *volatile slots[SLOTS] = {0};
    unsigned rng = 12345;
    clockid_t clock = argc > 2 && strcmp(argv[2], "cpu") == 0 ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC;
    struct timespec start, end;
    clock_gettime(clock, &start);
    for (long i = 0; i < pairs; i++) {
        rng = rng * 1103515245u + 12345u;
        unsigned slot = (rng >> 8) % SLOTS;
        free(slots[slot]);
        slots[slot] = malloc(sizes[(rng >> 20) % (sizeof sizes / sizeof sizes[0])]);
    }
    clock_gettime(clock, &end);
    for (int i = 0; i < SLOTS; i++) free(slots[i]);
    double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
    printf("%.1f\n", ns / pairs);
    return 0;
}
