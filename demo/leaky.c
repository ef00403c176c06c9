/*
 * leaky: a request handler with a leaky cache, leakscope's demo program.
 *
 * It serves 40 requests (or as many as its argument says), one every 100 ms
 * (about 4 s), then exits 0:
 *   build_response()     a per-request buffer, malloc'd and freed: healthy;
 *   remember_session()   a 256-byte session record added to a cache that
 *                        nothing ever evicts: leaks 256 bytes a request;
 *   grow_log()           every 10 requests, grows a log buffer with realloc
 *                        and keeps it: one 16 KiB block at the end;
 *   map_scratch_arena()  on the first request, a 64 KiB anonymous mapping
 *                        that is never unmapped.
 *
 * Build: gcc -O1 -g -fno-omit-frame-pointer -o leaky leaky.c -lpthread
 * The functions are noinline so that they show up in the stacks, and every
 * buffer is really used so that gcc cannot delete a malloc/free pair.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define REQUESTS 40
#define RESPONSE_SIZE 1024
#define LOG_CHUNK 4096
#define ARENA_SIZE (64 * 1024)

struct session {
    struct session *next;
    int id;
    char user[244];
};
_Static_assert(sizeof(struct session) == 256, "a session record is 256 bytes");

static struct session *sessions; /* the cache: grows forever */
static char *log_buf;
static size_t log_size;
static char *scratch_arena;
static volatile size_t bytes_served;

__attribute__((noinline)) void build_response(int id)
{
    char *buf = malloc(RESPONSE_SIZE);
    if (!buf)
        abort();
    snprintf(buf, RESPONSE_SIZE, "HTTP/1.1 200 OK\r\nX-Request: %d\r\n\r\n", id);
    bytes_served += strlen(buf); /* "sends" it */
    free(buf);
}

__attribute__((noinline)) struct session *find_session(int id)
{
    for (struct session *s = sessions; s; s = s->next)
        if (s->id == id)
            return s;
    return NULL;
}

/* The leak: every request adds a session, nothing ever removes one. */
__attribute__((noinline)) struct session *remember_session(int id)
{
    struct session *s = malloc(sizeof *s);
    if (!s)
        abort();
    s->id = id;
    snprintf(s->user, sizeof s->user, "user-%d", id);
    s->next = sessions;
    sessions = s;
    return s;
}

/* The second leak: the log only ever grows. */
__attribute__((noinline)) void grow_log(int id)
{
    char *bigger = realloc(log_buf, log_size + LOG_CHUNK);
    if (!bigger)
        abort();
    memset(bigger + log_size, ' ', LOG_CHUNK);
    snprintf(bigger + log_size, LOG_CHUNK, "checkpoint after request %d\n", id);
    log_buf = bigger;
    log_size += LOG_CHUNK;
}

/* The third leak: a scratch arena that is mapped and never unmapped. */
__attribute__((noinline)) void map_scratch_arena(void)
{
    char *arena = mmap(NULL, ARENA_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (arena == MAP_FAILED)
        abort();
    memset(arena, 0, ARENA_SIZE);
    scratch_arena = arena;
}

__attribute__((noinline)) void handle_request(int id)
{
    if (!scratch_arena)
        map_scratch_arena();
    build_response(id);
    struct session *s = find_session(id);
    if (!s)
        s = remember_session(id);
    bytes_served += strlen(s->user);
    if (id % 10 == 0)
        grow_log(id);
}

int main(int argc, char **argv)
{
    const struct timespec pause = { .tv_sec = 0, .tv_nsec = 100 * 1000 * 1000 };
    int requests = argc > 1 ? atoi(argv[1]) : REQUESTS;
    for (int id = 1; id <= requests; id++) {
        handle_request(id);
        nanosleep(&pause, NULL);
    }
    fprintf(stderr, "leaky: done\n");
    return 0;
}
