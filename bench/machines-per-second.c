/* machines-per-second: how many machines one process can create, boot to the
 * guest's first serial byte and tear down per second, through the public C
 * API only.
 *
 * Usage: machines-per-second [--threads T] [--seconds S] GUEST.ELF
 *
 * Each of T threads loops for about S seconds: vmm_machine_new("microvm"),
 * set "kernel", add isa-debug-exit at 0xf4, a serial callback that notes
 * when the first byte arrives, start, wait for the guest's test exit, free.
 * Every machine must end through the test-exit port with status 33 (the
 * guest's success code), else the tool fails.  Output, one line:
 *   threads=T machines=N seconds=... per_s=... cycle_ms=... first_output_ms=... start_ms=... free_ms=...
 * (per-machine medians: the whole cycle, new -> first serial byte,
 * vmm_machine_start's own duration, and vmm_machine_free's).
 *
 * A watchdog ends the process with status 3 when a thread makes no progress
 * for STALL_MS: the line then also says stalled_in=CALL (the libvmm call that
 * did not return), and per_s counts up to the last completed machine.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <libvmm/libvmm.h>

#define MAX_SAMPLES 100000
#define GUEST_SUCCESS_STATUS 33
#define STALL_MS 10000.0

struct sample {
    double cycle_ms, first_output_ms, start_ms, free_ms;
};

struct worker {
    pthread_t thread;
    const char *kernel;
    double deadline_ms;
    _Atomic int count;
    _Atomic int done;
    int failed;
    _Atomic double progress_ms;     /* when the last call returned */
    const char *_Atomic phase;      /* the libvmm call under way */
    struct sample *samples;
};

static _Atomic double last_completion_ms;

struct first_output {
    _Atomic double at_ms; /* 0 until the first byte */
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void note_first_byte(void *user_data, const void *data, size_t len)
{
    (void)data;
    struct first_output *fo = user_data;
    double expected = 0;
    if (len)
        atomic_compare_exchange_strong(&fo->at_ms, &expected, now_ms());
}

static int fail_api(vmm_machine *m, const char *what)
{
    fprintf(stderr, "machines-per-second: %s: %s\n", what, vmm_get_error());
    vmm_machine_free(m);
    return -1;
}

/* One machine from creation to teardown. */
static void enter(struct worker *w, const char *call)
{
    w->progress_ms = now_ms();
    w->phase = call;
}

static int one_machine(struct worker *w, struct sample *s)
{
    const char *kernel = w->kernel;
    struct first_output fo = { 0 };
    double t0 = now_ms();
    enter(w, "vmm_machine_new");
    vmm_machine *m = vmm_machine_new("microvm");
    if (!m)
        return fail_api(NULL, "vmm_machine_new");
    if (vmm_machine_set(m, "kernel", kernel) < 0)
        return fail_api(m, "kernel");
    if (vmm_machine_add_device(m, "isa-debug-exit,iobase=0xf4,iosize=4") < 0)
        return fail_api(m, "isa-debug-exit");
    if (vmm_machine_set_serial_callback(m, note_first_byte, &fo, NULL) < 0)
        return fail_api(m, "serial callback");
    enter(w, "vmm_machine_start");
    double t_start = now_ms();
    if (vmm_machine_start(m) < 0)
        return fail_api(m, "start");
    s->start_ms = now_ms() - t_start;
    enter(w, "vmm_machine_wait");
    if (vmm_machine_wait(m, 30000) < 0)
        return fail_api(m, "wait");
    if (vmm_machine_exit_reason(m) != VMM_EXIT_TEST ||
        vmm_machine_exit_code(m) != GUEST_SUCCESS_STATUS || fo.at_ms == 0) {
        fprintf(stderr, "machines-per-second: the guest ended with reason %d, status %d (%s)%s\n",
                vmm_machine_exit_reason(m), vmm_machine_exit_code(m), vmm_machine_exit_message(m),
                fo.at_ms == 0 ? ", no serial output" : "");
        vmm_machine_free(m);
        return -1;
    }
    enter(w, "vmm_machine_free");
    double t_free = now_ms();
    vmm_machine_free(m);
    double t_end = now_ms();
    enter(w, "none");
    last_completion_ms = t_end;
    s->free_ms = t_end - t_free;
    s->first_output_ms = fo.at_ms - t0;
    s->cycle_ms = t_end - t0;
    return 0;
}

static void *worker_main(void *opaque)
{
    struct worker *w = opaque;
    while (now_ms() < w->deadline_ms && w->count < MAX_SAMPLES) {
        if (one_machine(w, &w->samples[w->count]) < 0) {
            w->failed = 1;
            break;
        }
        w->count++;
    }
    w->done = 1;
    return NULL;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median_of(struct worker *workers, int nr_workers, size_t offset)
{
    int total = 0;
    for (int i = 0; i < nr_workers; i++)
        total += workers[i].count;
    double *v = malloc((size_t)total * sizeof(double) + 1);
    int k = 0;
    for (int i = 0; i < nr_workers; i++)
        for (int j = 0; j < workers[i].count; j++)
            v[k++] = *(const double *)((const char *)&workers[i].samples[j] + offset);
    qsort(v, (size_t)total, sizeof(double), compare_doubles);
    double m = total == 0 ? 0 : total % 2 ? v[total / 2] : (v[total / 2 - 1] + v[total / 2]) / 2;
    free(v);
    return m;
}

/* Waits for the workers; returns the call a stuck worker is in, or NULL. */
static const char *watch(struct worker *workers, int nr_workers)
{
    for (;;) {
        int running = 0;
        for (int t = 0; t < nr_workers; t++) {
            if (workers[t].done)
                continue;
            running++;
            if (now_ms() - workers[t].progress_ms > STALL_MS)
                return workers[t].phase;
        }
        if (!running)
            return NULL;
        usleep(50000);
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: machines-per-second [--threads T] [--seconds S] GUEST.ELF\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int threads = 1;
    double seconds = 3;
    int i = 1;
    for (; i + 1 < argc && argv[i][0] == '-'; i += 2) {
        if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seconds"))
            seconds = atof(argv[i + 1]);
        else
            usage();
    }
    if (i + 1 != argc || threads < 1 || threads > 64 || seconds <= 0)
        usage();

    struct worker *workers = calloc((size_t)threads, sizeof(*workers));
    double begin = now_ms();
    for (int t = 0; t < threads; t++) {
        workers[t].kernel = argv[i];
        workers[t].deadline_ms = begin + seconds * 1e3;
        workers[t].samples = calloc(MAX_SAMPLES, sizeof(struct sample));
        workers[t].progress_ms = begin;
        workers[t].phase = "none";
        if (!workers[t].samples || pthread_create(&workers[t].thread, NULL, worker_main, &workers[t])) {
            fprintf(stderr, "machines-per-second: cannot start thread %d\n", t);
            return 1;
        }
    }
    const char *stalled_in = watch(workers, threads);
    int total = 0, failed = 0;
    for (int t = 0; t < threads; t++) {
        if (!stalled_in)
            pthread_join(workers[t].thread, NULL);
        total += workers[t].count;
        failed |= workers[t].failed;
    }
    double end = stalled_in ? (last_completion_ms > begin ? last_completion_ms : begin) : now_ms();
    double elapsed_s = (end - begin) / 1e3;
    if (failed)
        return 1;
    printf("threads=%d machines=%d seconds=%.3f per_s=%.2f cycle_ms=%.3f first_output_ms=%.3f "
           "start_ms=%.3f free_ms=%.3f%s%s\n",
           threads, total, elapsed_s, elapsed_s > 0 ? total / elapsed_s : 0,
           median_of(workers, threads, offsetof(struct sample, cycle_ms)),
           median_of(workers, threads, offsetof(struct sample, first_output_ms)),
           median_of(workers, threads, offsetof(struct sample, start_ms)),
           median_of(workers, threads, offsetof(struct sample, free_ms)),
           stalled_in ? " stalled_in=" : "", stalled_in ? stalled_in : "");
    if (stalled_in) {
        fflush(stdout);
        fprintf(stderr, "machines-per-second: a thread has been in %s for %.0f s\n", stalled_in,
                STALL_MS / 1e3);
        _exit(3); /* the stuck thread cannot be joined */
    }
    for (int t = 0; t < threads; t++)
        free(workers[t].samples);
    free(workers);
    return 0;
}
