/* Queries on a machine (status, vCPUs, devices, memory), device removal
 * before start, the per-machine log and the internal event listeners the
 * control server chains after the embedder's callback. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include "devices/device.h"
#include "libvmm/control.h"
#include "machine/machine.h"

/* ---- internal event listeners ------------------------------------------- */

struct machine_listener {
    vmm_event_fn fn;
    void *data;
    struct machine_listener *next;
};

int machine_add_listener(vmm_machine *m, vmm_event_fn fn, void *data)
{
    struct machine_listener *l = calloc(1, sizeof(*l));
    if (!l)
        return vmm_set_error(ENOMEM, "out of memory");
    l->fn = fn;
    l->data = data;
    pthread_mutex_lock(&m->event_lock);
    struct machine_listener **tail = &m->listeners;
    while (*tail)
        tail = &(*tail)->next;
    *tail = l;
    pthread_mutex_unlock(&m->event_lock);
    return 0;
}

void machine_remove_listener(vmm_machine *m, vmm_event_fn fn, void *data)
{
    pthread_mutex_lock(&m->event_lock);
    for (struct machine_listener **p = &m->listeners; *p; p = &(*p)->next) {
        if ((*p)->fn == fn && (*p)->data == data) {
            struct machine_listener *gone = *p;
            *p = gone->next;
            free(gone);
            break;
        }
    }
    pthread_mutex_unlock(&m->event_lock);
}

/* Called by machine_emit with event_lock held. */
void machine_call_listeners(vmm_machine *m, const struct vmm_event *ev)
{
    machine_log(m, VMM_LOG_INFO, "event", "%s%s%s%s%s", ev->name, ev->reason ? " reason=" : "",
                ev->reason ? ev->reason : "", ev->device ? " device=" : "",
                ev->device ? ev->device : "");
    for (struct machine_listener *l = m->listeners; l; l = l->next)
        l->fn(l->data, ev);
}

/* ---- the per-machine log ------------------------------------------------ */

struct machine_log {
    pthread_mutex_t lock;
    vmm_log_fn fn;
    void *data;
    vmm_free_fn free_fn;
    int max_level;
    FILE *file;
};

static const char *level_name(int level)
{
    return level <= VMM_LOG_ERROR ? "error" : level <= VMM_LOG_WARNING ? "warning"
         : level <= VMM_LOG_INFO ? "info" : "debug";
}

static void machine_log_sink(void *opaque, int level, const char *domain, const char *message)
{
    struct machine_log *log = opaque;
    pthread_mutex_lock(&log->lock);
    if (level <= log->max_level) {
        if (log->fn)
            log->fn(log->data, level, domain, message);
        if (log->file) {
            struct timeval tv;
            gettimeofday(&tv, NULL);
            struct tm tm;
            localtime_r(&tv.tv_sec, &tm);
            char stamp[32];
            strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", &tm);
            fprintf(log->file, "%s.%06ld %s %s: %s\n", stamp, (long)tv.tv_usec, level_name(level),
                    domain, message);
            fflush(log->file);
        }
    }
    pthread_mutex_unlock(&log->lock);
}

static struct machine_log *log_of(vmm_machine *m)
{
    /* Created once, under the machine lock, and kept until the machine is
     * freed so threads that attached to it never see it go away. */
    pthread_mutex_lock(&m->lock);
    if (!m->log) {
        struct machine_log *log = calloc(1, sizeof(*log));
        if (log) {
            pthread_mutex_init(&log->lock, NULL);
            __atomic_store_n(&m->log, log, __ATOMIC_RELEASE);
        }
    }
    struct machine_log *log = m->log;
    pthread_mutex_unlock(&m->lock);
    if (!log)
        vmm_set_error(ENOMEM, "out of memory");
    return log;
}

/* The sink attached to the machine's threads: the log is looked up per
 * message, so attaching allocates nothing on vCPU threads. */
static void machine_thread_sink(void *opaque, int level, const char *domain, const char *message)
{
    vmm_machine *m = opaque;
    struct machine_log *log = __atomic_load_n(&m->log, __ATOMIC_ACQUIRE);
    if (log)
        machine_log_sink(log, level, domain, message);
}

static __thread vmm_machine *thread_machine; /* what this thread is attached to */

void machine_log_attach_thread(vmm_machine *m)
{
    thread_machine = m;
    vmm_log_set_thread_sink(machine_thread_sink, m);
}

void machine_log(vmm_machine *m, int level, const char *domain, const char *fmt, ...)
{
    char message[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    /* The machine's sink directly, the process-wide log without this
     * thread's sink (which may be the same machine's). */
    machine_thread_sink(m, level, domain, message);
    vmm_log_set_thread_sink(NULL, NULL);
    vmm_log(level, domain, "%s", message);
    vmm_log_set_thread_sink(thread_machine ? machine_thread_sink : NULL, thread_machine);
}

static void log_replace(struct machine_log *log, vmm_log_fn fn, void *data, vmm_free_fn free_fn,
                        FILE *file, int max_level)
{
    pthread_mutex_lock(&log->lock);
    vmm_free_fn old_free = log->free_fn;
    void *old_data = log->data;
    FILE *old_file = log->file;
    log->fn = fn;
    log->data = data;
    log->free_fn = free_fn;
    log->file = file;
    log->max_level = max_level;
    pthread_mutex_unlock(&log->lock);
    if (old_free)
        old_free(old_data);
    if (old_file)
        fclose(old_file);
}

LIBVMM_EXPORT int vmm_machine_set_log_callback(vmm_machine *m, vmm_log_fn fn, void *user_data,
                                               vmm_free_fn free_fn, int max_level)
{
    vmm_clear_error();
    if (!m)
        return vmm_set_error(EINVAL, "vmm_machine_set_log_callback: no machine given");
    struct machine_log *log = log_of(m);
    if (!log)
        return vmm_error_prefix("vmm_machine_set_log_callback");
    pthread_mutex_lock(&log->lock);
    FILE *file = log->file;
    log->file = NULL; /* kept: only the callback changes */
    pthread_mutex_unlock(&log->lock);
    log_replace(log, fn, user_data, free_fn, file, max_level);
    return 0;
}

LIBVMM_EXPORT int vmm_machine_set_log_file(vmm_machine *m, const char *path, int max_level)
{
    vmm_clear_error();
    if (!m)
        return vmm_set_error(EINVAL, "vmm_machine_set_log_file: no machine given");
    struct machine_log *log = log_of(m);
    if (!log)
        return vmm_error_prefix("vmm_machine_set_log_file");
    FILE *file = NULL;
    if (path) {
        file = fopen(path, "ae");
        if (!file)
            return vmm_set_error_errno("vmm_machine_set_log_file: %s", path);
    }
    pthread_mutex_lock(&log->lock);
    vmm_log_fn fn = log->fn;
    void *data = log->data;
    vmm_free_fn free_fn = log->free_fn;
    log->free_fn = NULL; /* the callback stays: do not free its data */
    pthread_mutex_unlock(&log->lock);
    log_replace(log, fn, data, free_fn, file, max_level);
    return 0;
}

/* ---- vCPU threads -------------------------------------------------------- */

static __thread vmm_machine *thread_seen_for;

/* vCPU threads name themselves "vcpu N" before their first checkpoint:
 * the name gives the index without racing vcpu_start's bookkeeping. */
void machine_vcpu_thread_started(vmm_machine *m)
{
    if (thread_seen_for == m)
        return;
    thread_seen_for = m;
    machine_log_attach_thread(m);
    char name[16] = "";
    unsigned index;
    if (pthread_getname_np(pthread_self(), name, sizeof(name)) == 0 &&
        sscanf(name, "vcpu %u", &index) == 1 && index < m->nr_vcpus && m->vcpu_tids)
        atomic_store(&m->vcpu_tids[index], (int)gettid());
}

void machine_release_extras(vmm_machine *m)
{
    while (m->listeners) {
        struct machine_listener *next = m->listeners->next;
        free(m->listeners);
        m->listeners = next;
    }
    if (m->log) {
        log_replace(m->log, NULL, NULL, NULL, NULL, 0);
        pthread_mutex_destroy(&m->log->lock);
        free(m->log);
        m->log = NULL;
    }
    free((void *)m->vcpu_tids);
    m->vcpu_tids = NULL;
}

/* ---- queries ------------------------------------------------------------- */

/* Copy at most the caller's `size` bytes of a filled struct. */
static int fill_sized(void *out, const void *full, size_t full_size, const char *fn)
{
    size_t want = *(const size_t *)out;
    if (want < sizeof(size_t))
        return vmm_set_error(EINVAL, "%s: set the struct's size field", fn);
    memcpy((char *)out + sizeof(size_t), (const char *)full + sizeof(size_t),
           (want < full_size ? want : full_size) - sizeof(size_t));
    return 0;
}

static const char *run_state_name(enum vmm_machine_state state, enum vmm_exit_reason reason)
{
    switch (state) {
    case VMM_STATE_CREATED: return "prelaunch";
    case VMM_STATE_RUNNING: return "running";
    case VMM_STATE_PAUSED: return "paused";
    default: return reason == VMM_EXIT_ERROR ? "internal-error" : "shutdown";
    }
}

LIBVMM_EXPORT int vmm_machine_query_status(vmm_machine *m, struct vmm_status *out)
{
    vmm_clear_error();
    if (!m || !out)
        return vmm_set_error(EINVAL, "vmm_machine_query_status: machine and status are required");
    struct vmm_status s = { .size = sizeof(s) };
    pthread_mutex_lock(&m->lock);
    s.state = m->state;
    s.exit_reason = m->exit_reason;
    s.exit_code = m->exit_reason == VMM_EXIT_TEST ? m->exit_code : 0;
    pthread_mutex_unlock(&m->lock);
    s.running = s.state == VMM_STATE_RUNNING;
    s.status = run_state_name(s.state, s.exit_reason);
    s.exit_message = m->exit_message;
    s.name = m->cfg.name ? m->cfg.name : "";
    s.type = m->cls->name;
    return fill_sized(out, &s, sizeof(s), "vmm_machine_query_status");
}

LIBVMM_EXPORT int vmm_machine_query_memory(vmm_machine *m, struct vmm_memory_info *out)
{
    vmm_clear_error();
    if (!m || !out)
        return vmm_set_error(EINVAL, "vmm_machine_query_memory: machine and info are required");
    struct vmm_memory_info info = {
        .size = sizeof(info), .ram_size = m->cfg.memory,
        .ram_below_4g = m->ram_below_4g, .ram_above_4g = m->ram_above_4g,
    };
    return fill_sized(out, &info, sizeof(info), "vmm_machine_query_memory");
}

LIBVMM_EXPORT int vmm_machine_list_vcpus(vmm_machine *m, vmm_vcpu_fn fn, void *user_data)
{
    vmm_clear_error();
    if (!m || !fn)
        return vmm_set_error(EINVAL, "vmm_machine_list_vcpus: machine and callback are required");
    if (vmm_machine_get_state(m) == VMM_STATE_CREATED)
        return 0;
    for (unsigned i = 0; i < m->nr_vcpus; i++) {
        struct vmm_vcpu_info info = {
            .size = sizeof(info), .index = i,
            .thread_id = m->vcpu_tids ? atomic_load(&m->vcpu_tids[i]) : 0,
        };
        if (fn(user_data, &info))
            break;
    }
    return 0;
}

/* "key=value,..." with commas in values doubled, as vmm_opts_parse reads it. */
static void append_property(GString *out, const char *key, const char *value)
{
    if (out->len)
        g_string_append_c(out, ',');
    g_string_append_printf(out, "%s=", key);
    for (const char *p = value; *p; p++) {
        if (*p == ',')
            g_string_append_c(out, ',');
        g_string_append_c(out, *p);
    }
}

static char *format_device_properties(struct device *d)
{
    GString *out = g_string_new("");
    if (d->cls->props) {
        for (const struct vmm_prop *p = d->cls->props; p->name; p++) {
            char *value = vmm_props_format(d->cls->props, d, p->name);
            if (value) {
                append_property(out, p->name, value);
                free(value);
            }
        }
    }
    return g_string_free(out, FALSE);
}

LIBVMM_EXPORT int vmm_machine_list_devices(vmm_machine *m, vmm_device_fn fn, void *user_data)
{
    vmm_clear_error();
    if (!m || !fn)
        return vmm_set_error(EINVAL, "vmm_machine_list_devices: machine and callback are required");
    for (struct device *d = m->devices; d; d = d->next) {
        char *props = format_device_properties(d);
        struct vmm_device_info info = {
            .size = sizeof(info), .id = d->id, .type = d->cls->name, .properties = props,
            .platform = d->cls->platform, .realized = d->realized,
        };
        int stop = fn(user_data, &info);
        g_free(props);
        if (stop)
            break;
    }
    return 0;
}

LIBVMM_EXPORT int vmm_machine_remove_device(vmm_machine *m, const char *id)
{
    vmm_clear_error();
    if (!m || !id)
        return vmm_set_error(EINVAL, "vmm_machine_remove_device: machine and id are required");
    struct device *prev = NULL;
    for (struct device *d = m->devices; d; prev = d, d = d->next) {
        if (!d->id || strcmp(d->id, id))
            continue;
        if (vmm_machine_get_state(m) != VMM_STATE_CREATED)
            return vmm_set_error(ENOTSUP, "vmm_machine_remove_device: %s: hot-unplug is not "
                                 "supported yet (the machine is %s)", id,
                                 vmm_machine_state_name(vmm_machine_get_state(m)));
        if (d->cls->platform)
            return vmm_set_error(EPERM, "vmm_machine_remove_device: %s: the machine type created "
                                 "this device", id);
        if (prev)
            prev->next = d->next;
        else
            m->devices = d->next;
        if (m->devices_tail == d)
            m->devices_tail = prev;
        device_free(d);
        machine_emit(m, VMM_EVENT_DEVICE_DELETED, 0, NULL, id, NULL);
        return 0;
    }
    return vmm_set_error(ENOENT, "vmm_machine_remove_device: no device with id '%s'", id);
}
