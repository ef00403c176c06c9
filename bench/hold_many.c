/* Many outstanding allocations: prints "waiting", then sleeps in read until a
 * line arrives on stdin (so a tracer can attach first), then mallocs COUNT
 * small blocks of mixed sizes (16..64 bytes), keeps them all, prints
 * "held COUNT" and sleeps until killed. Usage: hold_many [count] */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long count = argc > 1 ? atol(argv[1]) : 1000000;
    void **blocks = calloc(count, sizeof *blocks);
    char line[16];
    if (!blocks) return 1;
    puts("waiting");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 1;
    for (long i = 0; i < count; i++) blocks[i] = malloc(16 + (i % 4) * 16);
    printf("held %ld\n", count);
    fflush(stdout);
    for (;;) pause();
}
