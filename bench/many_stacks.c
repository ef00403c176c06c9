/* Distinct allocation stacks: a binary call tree whose first LEAVES leaves
 * each malloc one block. Every level calls down through one of two call sites,
 * so each leaf is reached by its own chain of return addresses: LEAVES
 * distinct stacks. Round 0 keeps its blocks (LEAVES sites, one block per
 * thread each); later rounds malloc and free at every leaf, a busy allocator
 * whose stacks outnumber a small stack map. THREADS threads walk the tree at
 * once. Prints "done" at the end.
 * Usage: many_stacks [leaves] [rounds] [threads] */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static long leaves = 10000, rounds = 1;
static void *volatile sink;

__attribute__((noinline)) static void leaf(long idx, long round) {
    void *p = malloc(16 + idx % 64);
    if (round > 0)
        free(p);
    else
        sink = p;
}

__attribute__((noinline)) static void branch(int depth, long idx, long round) {
    if (idx << depth >= leaves) return; /* no leaf below is in range */
    if (depth == 0) {
        leaf(idx, round);
        return;
    }
    branch(depth - 1, 2 * idx, round);
    branch(depth - 1, 2 * idx + 1, round);
    /* Work after the second call keeps it a call, not a jump that would drop
     * this frame from the stack. */
    __asm__ volatile("" ::: "memory");
}

static void *walk(void *unused) {
    int depth = 0;
    while (1L << depth < leaves) depth++;
    for (long round = 0; round < rounds; round++) branch(depth, 0, round);
    return unused;
}

int main(int argc, char **argv) {
    if (argc > 1) leaves = atol(argv[1]);
    if (argc > 2) rounds = atol(argv[2]);
    int threads = argc > 3 ? atoi(argv[3]) : 1;
    pthread_t tids[64];
    if (threads < 1 || threads > 64) return 2;
    for (int i = 1; i < threads; i++) pthread_create(&tids[i], NULL, walk, NULL);
    walk(NULL);
    for (int i = 1; i < threads; i++) pthread_join(tids[i], NULL);
    puts("done");
    return 0;
}
