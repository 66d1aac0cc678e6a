/* proc-stats: run a command several times and print the medians of its
 * whole-process wall time, CPU time (user + sys) and peak RSS, measured with
 * posix_spawn + wait4 (the child's own rusage, nothing of ours).
 *
 * Usage: proc-stats [--runs N] [--warmup N] [--status S] [--timeout SECONDS] -- COMMAND [ARG...]
 *
 * Wall time runs from just before posix_spawn to wait4's return.  The
 * command's stdout and stderr go to /dev/null.  Every run must end with exit
 * status S (default 0), else the tool fails: a benchmark of a broken run
 * would measure nothing; a run longer than --timeout (default 120 s) is
 * killed and fails too.  Failed runs are counted (failures=K, each reported
 * on stderr) and left out of the medians; the tool fails when no run
 * succeeded.  Output, one line of key=value pairs:
 *   failures=0 runs=20 wall_ms=... wall_min_ms=... cpu_ms=... user_ms=... sys_ms=... maxrss_kib=...
 */
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <spawn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static volatile sig_atomic_t child_pid;
static unsigned timeout_s = 120;

static void kill_child_on_alarm(int sig)
{
    (void)sig;
    if (child_pid > 0)
        kill(child_pid, SIGKILL);
}

struct sample {
    double wall_ms, user_ms, sys_ms, cpu_ms, maxrss_kib;
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static double tv_ms(struct timeval tv)
{
    return (double)tv.tv_sec * 1e3 + (double)tv.tv_usec / 1e3;
}

static int run_once(char **argv, int expected_status, struct sample *s)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
    double start = now_ms();
    pid_t pid;
    int err = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (err) {
        fprintf(stderr, "proc-stats: %s: %s\n", argv[0], strerror(err));
        return -1;
    }
    child_pid = pid;
    alarm(timeout_s);
    int status;
    struct rusage ru;
    while (wait4(pid, &status, 0, &ru) < 0) {
        if (errno != EINTR) {
            perror("proc-stats: wait4");
            return -1;
        }
    }
    s->wall_ms = now_ms() - start;
    alarm(0);
    child_pid = 0;
    s->user_ms = tv_ms(ru.ru_utime);
    s->sys_ms = tv_ms(ru.ru_stime);
    s->cpu_ms = s->user_ms + s->sys_ms;
    s->maxrss_kib = (double)ru.ru_maxrss;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != expected_status) {
        fprintf(stderr, "proc-stats: %s ended with %s %d%s, expected exit status %d\n", argv[0],
                WIFEXITED(status) ? "status" : "signal",
                WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
                s->wall_ms >= timeout_s * 1e3 ? " (killed: timeout)" : "", expected_status);
        return -1;
    }
    return 0;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of one field across the samples (sorts a scratch copy). */
static double median(const struct sample *s, int n, size_t field_offset, double *scratch)
{
    for (int i = 0; i < n; i++)
        scratch[i] = *(const double *)((const char *)&s[i] + field_offset);
    qsort(scratch, (size_t)n, sizeof(double), compare_doubles);
    return n % 2 ? scratch[n / 2] : (scratch[n / 2 - 1] + scratch[n / 2]) / 2;
}

static void usage(void)
{
    fprintf(stderr, "usage: proc-stats [--runs N] [--warmup N] [--status S] [--timeout SECONDS] "
                    "-- COMMAND [ARG...]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int runs = 20, warmup = 1, expected_status = 0, i = 1;
    for (; i < argc && strcmp(argv[i], "--"); i += 2) {
        if (i + 1 >= argc)
            usage();
        if (!strcmp(argv[i], "--runs"))
            runs = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--warmup"))
            warmup = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--status"))
            expected_status = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--timeout"))
            timeout_s = (unsigned)atoi(argv[i + 1]);
        else
            usage();
    }
    if (i + 1 >= argc || runs < 1 || warmup < 0)
        usage();
    char **command = &argv[i + 1];
    struct sigaction sa = { .sa_handler = kill_child_on_alarm, .sa_flags = SA_RESTART };
    sigaction(SIGALRM, &sa, NULL);

    struct sample *samples = calloc((size_t)runs, sizeof(*samples));
    double *scratch = calloc((size_t)runs, sizeof(double));
    if (!samples || !scratch)
        return 1;
    struct sample ignored;
    for (int w = 0; w < warmup; w++)
        if (run_once(command, expected_status, &ignored) < 0)
            return 1;
    int failures = 0, ok = 0;
    for (int r = 0; r < runs; r++) {
        if (run_once(command, expected_status, &samples[ok]) < 0)
            failures++;
        else
            ok++;
    }
    if (!ok)
        return 1;
    runs = ok;

    double wall_min = samples[0].wall_ms;
    for (int r = 1; r < runs; r++)
        if (samples[r].wall_ms < wall_min)
            wall_min = samples[r].wall_ms;
    printf("failures=%d runs=%d wall_ms=%.3f wall_min_ms=%.3f cpu_ms=%.3f user_ms=%.3f sys_ms=%.3f maxrss_kib=%.0f\n",
           failures, runs, median(samples, runs, offsetof(struct sample, wall_ms), scratch), wall_min,
           median(samples, runs, offsetof(struct sample, cpu_ms), scratch),
           median(samples, runs, offsetof(struct sample, user_ms), scratch),
           median(samples, runs, offsetof(struct sample, sys_ms), scratch),
           median(samples, runs, offsetof(struct sample, maxrss_kib), scratch));
    free(samples);
    free(scratch);
    return 0;
}
