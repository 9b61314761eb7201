/*
 * Records, for each page of a program's code, the first address executed in it.
 *
 * Preloaded (LD_PRELOAD) into `wren agent` by scripts/hot-code.sh. At load it makes the
 * executable mapping of the binary named by FIRST_TOUCH_BINARY inaccessible; each page's
 * first instruction fetch faults, the handler notes the address and opens that page, and
 * the program runs on. After FIRST_TOUCH_SECONDS it writes one hexadecimal offset from the
 * start of the mapping per line to FIRST_TOUCH_OUT (the first line: the mapping's file
 * offset; a "%d" in the path is replaced by the process id).
 *
 * With FIRST_TOUCH_OPEN_PAGES=K, only the K pages opened last stay open: opening another
 * closes the oldest, so an entry into any other page faults and is seen, not only the first
 * one. That finds in one run most of the functions a page holds (each entry from outside the
 * open pages is recorded) at the price of a fault per such entry. Without it, each page
 * shows only the first function reached on it: moving that one elsewhere and running again
 * finds the next, which is why the script repeats until nothing new appears.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Distinct addresses kept (an open-addressing set; a full set records no more). */
#define MAX_TOUCHES (1 << 20)
/* The most pages FIRST_TOUCH_OPEN_PAGES may keep open. */
#define MAX_OPEN 4096

static unsigned long text_start, text_end, text_offset;
static unsigned long touches[MAX_TOUCHES];
static int touch_count;
static unsigned long open_pages[MAX_OPEN];
static int open_limit, open_next, open_lock;

/* Adds an address to the set once; lock-free, as the handler runs on any thread. */
static void record(unsigned long offset) {
    unsigned long key = offset + 1; /* 0 marks a free slot */
    unsigned long i = (key * 0x9E3779B97F4A7C15UL) >> 44;
    for (int probes = 0; probes < MAX_TOUCHES; probes++, i = (i + 1) & (MAX_TOUCHES - 1)) {
        unsigned long seen = 0;
        if (__atomic_compare_exchange_n(&touches[i], &seen, key, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            __atomic_fetch_add(&touch_count, 1, __ATOMIC_RELAXED);
            return;
        }
        if (seen == key || touch_count >= MAX_TOUCHES / 2)
            return;
    }
}

static void on_fault(int sig, siginfo_t *info, void *context) {
    unsigned long addr = (unsigned long)info->si_addr;
    (void)context;
    if (addr < text_start || addr >= text_end) {
        /* Not ours: let the fault happen again with the default action. */
        signal(sig, SIG_DFL);
        return;
    }
    unsigned long page = addr & ~4095UL;
    record(addr - text_start);
    if (open_limit) {
        /* Threads fault at once: one at a time changes which pages are open. */
        while (__atomic_exchange_n(&open_lock, 1, __ATOMIC_ACQUIRE))
            ;
        mprotect((void *)page, 4096, PROT_READ | PROT_EXEC);
        unsigned long oldest = open_pages[open_next];
        if (oldest && oldest != page)
            mprotect((void *)oldest, 4096, PROT_NONE);
        open_pages[open_next] = page;
        open_next = (open_next + 1) % open_limit;
        __atomic_store_n(&open_lock, 0, __ATOMIC_RELEASE);
    } else {
        mprotect((void *)page, 4096, PROT_READ | PROT_EXEC);
    }
}

static void write_touches(void) {
    const char *path = getenv("FIRST_TOUCH_OUT");
    char named[4096];
    /* A "%d" in the path takes the process id: each of several processes writes its own. */
    if (path && strstr(path, "%d")) {
        snprintf(named, sizeof named, path, (int)getpid());
        path = named;
    }
    FILE *out = fopen(path ? path : "/dev/stderr", "w");
    if (!out)
        return;
    fprintf(out, "offset %lx\n", text_offset);
    for (int i = 0; i < MAX_TOUCHES; i++)
        if (touches[i])
            fprintf(out, "%lx\n", touches[i] - 1);
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
    const char *open = getenv("FIRST_TOUCH_OPEN_PAGES");
    open_limit = open ? atoi(open) : 0;
    if (open_limit < 0 || open_limit > MAX_OPEN)
        open_limit = MAX_OPEN;
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
