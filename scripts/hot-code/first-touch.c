/*
 * Records, for each page of a program's code, the first address executed in it.
 *
 * Preloaded (LD_PRELOAD) into `wren agent` by scripts/hot-code.sh. At load it makes the
 * executable mapping of the binary named by FIRST_TOUCH_BINARY inaccessible; each page's
 * first instruction fetch faults, the handler notes the address and opens that page, and
 * the program runs on. After FIRST_TOUCH_SECONDS it writes one hexadecimal offset from the
 * start of the mapping per line to FIRST_TOUCH_OUT (the first line: the mapping's file
 * offset). Only the first function reached on each page is seen: moving it elsewhere and
 * running again finds the next, which is why the script repeats until nothing new appears.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_TOUCHES (1 << 18)

static unsigned long text_start, text_end, text_offset;
static unsigned long touches[MAX_TOUCHES];
static int touch_count;

static void on_fault(int sig, siginfo_t *info, void *context) {
    unsigned long addr = (unsigned long)info->si_addr;
    (void)context;
    if (addr < text_start || addr >= text_end) {
        /* Not ours: let the fault happen again with the default action. */
        signal(sig, SIG_DFL);
        return;
    }
    int i = __atomic_fetch_add(&touch_count, 1, __ATOMIC_RELAXED);
    if (i < MAX_TOUCHES)
        touches[i] = addr - text_start;
    mprotect((void *)(addr & ~4095UL), 4096, PROT_READ | PROT_EXEC);
}

static void write_touches(void) {
    const char *path = getenv("FIRST_TOUCH_OUT");
    FILE *out = fopen(path ? path : "/dev/stderr", "w");
    if (!out)
        return;
    int n = __atomic_load_n(&touch_count, __ATOMIC_RELAXED);
    fprintf(out, "offset %lx\n", text_offset);
    for (int i = 0; i < n && i < MAX_TOUCHES; i++)
        fprintf(out, "%lx\n", touches[i]);
    fclose(out);
}

static void *write_later(void *arg) {
    const char *seconds = getenv("FIRST_TOUCH_SECONDS");
    (void)arg;
    sleep(seconds ? atoi(seconds) : 40);
    write_touches();
    return NULL;
}

__attribute__((constructor)) static void start(void) {
    const char *binary = getenv("FIRST_TOUCH_BINARY");
    char line[4096];
    FILE *maps = fopen("/proc/self/maps", "r");
    if (!binary || !maps)
        return;
    while (fgets(line, sizeof line, maps)) {
        unsigned long start, end, offset;
        char perms[8], path[3072] = "";
        if (sscanf(line, "%lx-%lx %7s %lx %*s %*s %3071s", &start, &end, perms, &offset, path) >= 4 &&
            perms[2] == 'x' && strcmp(path, binary) == 0) {
            text_start = start;
            text_end = end;
            text_offset = offset;
        }
    }
    fclose(maps);
    if (!text_start)
        return;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_fault;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &action, NULL);
    pthread_t writer;
    pthread_create(&writer, NULL, write_later, NULL);
    pthread_detach(writer);
    mprotect((void *)text_start, text_end - text_start, PROT_NONE);
}
