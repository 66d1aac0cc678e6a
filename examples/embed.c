/* Embedding libvmm in a C program: build a machine from the API alone (no
 * command line), run a test guest, react to its events and shut it down.
 *
 *   embed GUEST_DIR        (GUEST_DIR holds pio-loop.elf and demo.elf)
 *
 * Part 1 boots pio-loop.elf (a long loop of port writes), waits for its
 * first console line, pauses it, looks at it (status, vCPU threads, devices,
 * a QMP query), resumes it and stops it.  Part 2 boots demo.elf, which
 * powers off through the test-exit device; the event callback sees why. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libvmm/libvmm.h>

/* What the callbacks share with main(): they run on libvmm's threads. */
struct watch {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    char console[4096];
    size_t console_len;
    int stops, resumes;
    int shutdown_seen;
    char shutdown_reason[64];
};

static void on_serial(void *user_data, const void *data, size_t len)
{
    struct watch *w = user_data;
    pthread_mutex_lock(&w->lock);
    size_t room = sizeof(w->console) - 1 - w->console_len;
    if (len > room)
        len = room;
    memcpy(w->console + w->console_len, data, len);
    w->console_len += len;
    w->console[w->console_len] = '\0';
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static void on_event(void *user_data, const struct vmm_event *ev)
{
    struct watch *w = user_data;
    printf("event: %s%s%s\n", ev->name, ev->reason ? " reason=" : "", ev->reason ? ev->reason : "");
    pthread_mutex_lock(&w->lock);
    if (ev->type == VMM_EVENT_STOP)
        w->stops++;
    else if (ev->type == VMM_EVENT_RESUME)
        w->resumes++;
    else if (ev->type == VMM_EVENT_SHUTDOWN) {
        w->shutdown_seen = 1;
        snprintf(w->shutdown_reason, sizeof(w->shutdown_reason), "%s", ev->reason);
    }
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static void watch_free(void *user_data)
{
    struct watch *w = user_data;
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    free(w);
}

static int fail(const char *what)
{
    fprintf(stderr, "embed: %s: %s\n", what, vmm_get_error());
    return 1;
}

/* A machine with a watch on its console and events; the machine frees the
 * watch (the callbacks' {fn, user_data, free} triples). */
static vmm_machine *build(const char *kernel, const char *cmdline, struct watch **out)
{
    vmm_machine *m = vmm_machine_new("microvm");
    if (!m)
        return NULL;
    struct watch *w = calloc(1, sizeof(*w));
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    if (vmm_machine_set_serial_callback(m, on_serial, w, NULL) < 0 ||
        vmm_machine_set_event_callback(m, on_event, w, watch_free) < 0) {
        watch_free(w);
        vmm_machine_free(m);
        return NULL;
    }
    if (vmm_machine_set(m, "kernel", kernel) < 0 || vmm_machine_set(m, "cmdline", cmdline) < 0 ||
        vmm_machine_set(m, "memory", "128M") < 0 || vmm_machine_set(m, "name", "embedded") < 0 ||
        vmm_machine_add_device(m, "isa-debug-exit,id=exit,iobase=0xf4,iosize=4") < 0) {
        vmm_machine_free(m);
        return NULL;
    }
    *out = w;
    return m;
}

static int print_vcpu(void *user_data, const struct vmm_vcpu_info *info)
{
    (void)user_data;
    printf("vcpu %u: host thread %lld\n", info->index, (long long)info->thread_id);
    return 0;
}

static int print_device(void *user_data, const struct vmm_device_info *info)
{
    (void)user_data;
    printf("device %s%s%s %s\n", info->type, info->id ? " id=" : "", info->id ? info->id : "",
           info->properties);
    return 0;
}

static int part1(const char *dir)
{
    char kernel[4096];
    snprintf(kernel, sizeof(kernel), "%s/pio-loop.elf", dir);
    struct watch *w;
    vmm_machine *m = build(kernel, "count=100000000", &w);
    if (!m)
        return fail("building the machine");
    if (vmm_machine_start(m) < 0) {
        vmm_machine_free(m);
        return fail("vmm_machine_start");
    }
    /* React to the guest: wait for its first line before looking at it. */
    pthread_mutex_lock(&w->lock);
    while (!strchr(w->console, '\n') && !w->shutdown_seen)
        pthread_cond_wait(&w->cond, &w->lock);
    pthread_mutex_unlock(&w->lock);
    printf("guest says: %s", w->console);

    int ret = 0;
    if (vmm_machine_pause(m) < 0)
        ret = fail("vmm_machine_pause");
    struct vmm_status st = { .size = sizeof(st) };
    vmm_machine_query_status(m, &st);
    printf("status: %s (machine '%s', type %s)\n", st.status, st.name, st.type);
    vmm_machine_list_vcpus(m, print_vcpu, NULL);
    vmm_machine_list_devices(m, print_device, NULL);
    char *reply = vmm_control_execute(m, "{\"execute\": \"query-status\"}");
    printf("qmp query-status: %s\n", reply ? reply : vmm_get_error());
    free(reply);
    if (vmm_machine_resume(m) < 0)
        ret = fail("vmm_machine_resume");
    if (vmm_machine_stop(m) < 0 || vmm_machine_wait(m, 30000) < 0)
        ret = fail("stopping");
    pthread_mutex_lock(&w->lock);
    int ok = w->stops == 1 && w->resumes == 1 && w->shutdown_seen &&
             !strcmp(w->shutdown_reason, "host-qmp-quit") && !strcmp(st.status, "paused");
    pthread_mutex_unlock(&w->lock);
    printf("part 1: %s (exit: %s)\n", ok ? "ok" : "FAILED", vmm_machine_exit_message(m));
    vmm_machine_free(m);
    return ret || !ok;
}

static int part2(const char *dir)
{
    char kernel[4096];
    snprintf(kernel, sizeof(kernel), "%s/demo.elf", dir);
    struct watch *w;
    vmm_machine *m = build(kernel, "", &w);
    if (!m)
        return fail("building the machine");
    if (vmm_machine_start(m) < 0 || vmm_machine_wait(m, 120000) < 0) {
        vmm_machine_free(m);
        return fail("running demo.elf");
    }
    int ok = vmm_machine_exit_reason(m) == VMM_EXIT_TEST && vmm_machine_exit_code(m) == 33 &&
             w->shutdown_seen && !strcmp(w->shutdown_reason, "guest-shutdown");
    printf("demo console:\n%s", w->console);
    printf("part 2: %s (exit status %d: %s)\n", ok ? "ok" : "FAILED", vmm_machine_exit_code(m),
           vmm_machine_exit_message(m));
    vmm_machine_free(m);
    return !ok;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s GUEST_DIR\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("libvmm %s\n", vmm_version());
    int failed = part1(argv[1]);
    failed |= part2(argv[1]);
    return failed ? 1 : 0;
}
