/* The trap floor: empty BPF programs on uprobe multi-links (as leakscope
 * attaches its own) at given file offsets of one module, for one command.
 * What a pair costs here is what the kernel's uprobe machinery costs at those
 * places, before any program does work.
 * Usage: empty_probes MODULE KIND:OFFSET... -- COMMAND [ARGS...]
 * KIND: `entry` (a uprobe), `return` (a uretprobe), or `session`, a session
 * uprobe (kernel 6.13+) whose program asks for no return probe (returns 1), as
 * a sampler would for a call it does not sample. Offsets are file offsets. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

enum { PROG_LOAD = 5, LINK_CREATE = 28, PROG_TYPE_KPROBE = 2 };
enum { UPROBE_MULTI = 48, UPROBE_SESSION = 57, UPROBE_MULTI_RETURN = 1 };

struct insn {
    uint8_t code, regs;
    int16_t off;
    int32_t imm;
};

/* The members of union bpf_attr used here (Debian 12's headers predate
 * uprobe multi-links). */
union attr {
    struct {
        uint32_t prog_type, insn_cnt;
        uint64_t insns, license;
        uint32_t log_level, log_size;
        uint64_t log_buf;
        uint32_t kern_version, prog_flags;
        char prog_name[16];
        uint32_t prog_ifindex, expected_attach_type;
    } load;
    struct {
        uint32_t prog_fd, target_fd, attach_type, flags;
        uint64_t path, offsets, ref_ctr_offsets, cookies;
        uint32_t cnt, flags_multi, pid;
    } link;
    char zero[128];
};

static int bpf(int cmd, union attr *attr) { return syscall(SYS_bpf, cmd, attr, sizeof *attr); }

/* r0 = value; exit */
static int empty_program(uint32_t attach_type, int32_t value) {
    struct insn code[] = {{0xb7, 0, 0, value}, {0x95, 0, 0, 0}};
    union attr attr = {0};
    attr.load.prog_type = PROG_TYPE_KPROBE;
    attr.load.insn_cnt = 2;
    attr.load.insns = (uintptr_t)code;
    attr.load.license = (uintptr_t)"GPL";
    attr.load.expected_attach_type = attach_type;
    return bpf(PROG_LOAD, &attr);
}

#define MAX_POINTS 16

struct kind {
    const char *name;
    uint32_t attach_type, flags;
    int32_t value;
    uint64_t offsets[MAX_POINTS];
    uint32_t cnt;
};

int main(int argc, char **argv) {
    struct kind kinds[] = {
        {"entry", UPROBE_MULTI, 0, 0, {0}, 0},
        {"return", UPROBE_MULTI, UPROBE_MULTI_RETURN, 0, {0}, 0},
        {"session", UPROBE_SESSION, 0, 1, {0}, 0},
    };
    int nkinds = sizeof kinds / sizeof kinds[0], i = 2;
    if (argc < 4) goto usage;
    for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
        char *colon = strchr(argv[i], ':');
        int k = 0;
        while (colon && k < nkinds && strncmp(argv[i], kinds[k].name, colon - argv[i]) != 0) k++;
        if (!colon || k == nkinds || kinds[k].cnt == MAX_POINTS) goto usage;
        kinds[k].offsets[kinds[k].cnt++] = strtoull(colon + 1, NULL, 0);
    }
    if (i + 1 >= argc) goto usage;
    int go[2];
    if (pipe(go) != 0) return perror("pipe"), 2;
    pid_t child = fork();
    if (child == 0) {
        char byte;
        close(go[1]);
        if (read(go[0], &byte, 1) != 1) _exit(2); /* the tracer gave up */
        execvp(argv[i + 1], argv + i + 1);
        perror("exec");
        _exit(127);
    }
    close(go[0]);
    for (int k = 0; k < nkinds; k++) {
        if (kinds[k].cnt == 0) continue;
        int prog = empty_program(kinds[k].attach_type, kinds[k].value);
        union attr attr = {0};
        attr.link.prog_fd = prog;
        attr.link.attach_type = kinds[k].attach_type;
        attr.link.path = (uintptr_t)argv[1];
        attr.link.offsets = (uintptr_t)kinds[k].offsets;
        attr.link.cnt = kinds[k].cnt;
        attr.link.flags_multi = kinds[k].flags;
        attr.link.pid = child;
        if (prog < 0 || bpf(LINK_CREATE, &attr) < 0) {
            fprintf(stderr, "empty_probes: cannot attach the %s probes: %s\n", kinds[k].name, strerror(errno));
            return 2;
        }
    }
    if (write(go[1], "", 1) != 1) return perror("write"), 2;
    int status;
    if (waitpid(child, &status, 0) != child) return perror("waitpid"), 2;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
usage:
    fprintf(stderr, "usage: empty_probes MODULE entry|return|session:OFFSET... -- COMMAND [ARGS...]\n");
    return 2;
}
