/* The public machine API and its life cycle. */
#include <errno.h>
#include <stdio.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "devices/acpi-pm.h"
#include "chardev/chardev.h"
#include "devices/device.h"
#include "net/net.h"
#include "machine/drives.h"
#include "introspect.h"
#include "machine/machine.h"

static const struct machine_class *const machine_classes[] = { &machine_microvm, &machine_pc };

#define MAX_CPUS 255

static const struct vmm_prop machine_props[] = {
    { "memory", VMM_PROP_SIZE, offsetof(struct machine_config, memory), "256M",
      "guest RAM size (suffixes K, M, G)", NULL, 2u << 20, 1ull << 46 },
    { "cpus", VMM_PROP_U32, offsetof(struct machine_config, cpus), "1", "number of vCPUs",
      NULL, 1, MAX_CPUS },
    { "kernel", VMM_PROP_STR, offsetof(struct machine_config, kernel), NULL,
      "kernel to boot: Linux bzImage, or ELF (PVH note or x86-64 entry)", NULL, 0, 0 },
    { "initrd", VMM_PROP_STR, offsetof(struct machine_config, initrd), NULL,
      "initial ramdisk", NULL, 0, 0 },
    { "cmdline", VMM_PROP_STR, offsetof(struct machine_config, cmdline), "",
      "kernel command line", NULL, 0, 0 },
    { "cpu-model", VMM_PROP_STR, offsetof(struct machine_config, cpu_model), "host",
      "CPU model: host, x86-64, x86-64-v2", NULL, 0, 0 },
    { "reboot", VMM_PROP_BOOL, offsetof(struct machine_config, reboot), "on",
      "on: a guest reset restarts the machine; off: it ends the machine", NULL, 0, 0 },
    { "name", VMM_PROP_STR, offsetof(struct machine_config, name), "",
      "the machine's name", NULL, 0, 0 },
    { "virtio-mmio-cmdline", VMM_PROP_BOOL, offsetof(struct machine_config, virtio_mmio_cmdline),
      "off", "on: also announce virtio-mmio devices on the kernel command line "
      "(virtio_mmio.device=), for kernels without ACPI; the DSDT always lists them", NULL, 0, 0 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

static const struct machine_class *find_class(const char *name)
{
    for (size_t i = 0; i < VMM_ARRAY_SIZE(machine_classes); i++)
        if (!strcmp(machine_classes[i]->name, name))
            return machine_classes[i];
    return NULL;
}

int machine_list_types(vmm_type_fn fn, void *user_data)
{
    for (size_t i = 0; i < VMM_ARRAY_SIZE(machine_classes); i++)
        if (fn(user_data, machine_classes[i]->name, machine_classes[i]->help))
            break;
    return 0;
}

int machine_list_properties(const char *name, vmm_property_fn fn, void *user_data)
{
    if (!find_class(name))
        return vmm_set_error(ENOENT, "unknown machine type '%s' (known: microvm, pc)", name);
    return vmm_props_list(machine_props, fn, user_data);
}

LIBVMM_EXPORT const char *vmm_machine_state_name(enum vmm_machine_state state)
{
    static const char *const names[] = { "created", "running", "paused", "ended" };
    return (unsigned)state < VMM_ARRAY_SIZE(names) ? names[state] : "unknown";
}

/* Fail unless the machine is in one of `allowed` (a bit per state). */
static int check_state(vmm_machine *m, const char *fn, unsigned allowed)
{
    if (!m)
        return vmm_set_error(EINVAL, "%s: no machine given", fn);
    pthread_mutex_lock(&m->lock);
    enum vmm_machine_state state = m->state;
    pthread_mutex_unlock(&m->lock);
    if (allowed & (1u << state))
        return 0;
    char list[64] = "";
    for (unsigned s = 0; s <= VMM_STATE_ENDED; s++) {
        if (!(allowed & (1u << s)))
            continue;
        size_t len = strlen(list);
        snprintf(list + len, sizeof(list) - len, "%s%s", len ? " or " : "", vmm_machine_state_name(s));
    }
    return vmm_set_error(EBUSY, "%s: the machine is %s; this needs it %s", fn,
                         vmm_machine_state_name(state), list);
}

#define IN(s) (1u << (s))

LIBVMM_EXPORT vmm_machine *vmm_machine_new(const char *type)
{
    vmm_clear_error();
    const struct machine_class *cls = find_class(type ? type : "microvm");
    if (!cls) {
        vmm_set_error(ENOENT, "vmm_machine_new: unknown machine type '%s' (known: microvm, pc)", type);
        return NULL;
    }
    vmm_machine *m = calloc(1, sizeof(*m));
    if (!m) {
        vmm_set_error(ENOMEM, "vmm_machine_new: out of memory");
        return NULL;
    }
    m->cls = cls;
    m->serial_in_fd = m->serial_out_fd = -1;
    m->vm.sys_fd = m->vm.vm_fd = -1;
    m->mem.fd = -1;
    pthread_mutex_init(&m->lock, NULL);
    pthread_mutex_init(&m->event_lock, NULL);
    pthread_mutex_init(&m->transition_lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&m->cond, &attr);
    pthread_condattr_destroy(&attr);
    address_space_init(&m->pio, "pio");
    address_space_init(&m->mmio, "mmio");
    if (vmm_props_init(machine_props, &m->cfg, "machine") < 0) {
        vmm_error_prefix("vmm_machine_new");
        vmm_machine_free(m);
        return NULL;
    }
    return m;
}

LIBVMM_EXPORT int vmm_machine_set(vmm_machine *m, const char *key, const char *value)
{
    vmm_clear_error();
    if (check_state(m, "vmm_machine_set", IN(VMM_STATE_CREATED)) < 0)
        return -1;
    if (!key)
        return vmm_set_error(EINVAL, "vmm_machine_set: no property name given");
    if (vmm_props_set(machine_props, &m->cfg, "machine", key, value) < 0)
        return vmm_error_prefix("vmm_machine_set");
    return 0;
}

LIBVMM_EXPORT char *vmm_machine_get(vmm_machine *m, const char *key)
{
    vmm_clear_error();
    if (!m || !key) {
        vmm_set_error(EINVAL, "vmm_machine_get: machine and property name are required");
        return NULL;
    }
    char *value = vmm_props_format(machine_props, &m->cfg, key);
    if (!value)
        vmm_error_prefix("vmm_machine_get");
    return value;
}

int machine_add_device_opts(vmm_machine *m, const char *spec, bool platform)
{
    vmm_opts *opts = vmm_opts_parse(spec, "driver");
    if (!opts)
        return -1;
    struct device *dev = device_create(m, opts, platform);
    vmm_opts_free(opts);
    if (!dev)
        return -1;
    for (struct device *d = m->devices; d && dev->id; d = d->next) {
        if (d->id && !strcmp(d->id, dev->id)) {
            vmm_set_error(EEXIST, "a device with id '%s' exists already", dev->id);
            device_free(dev);
            return -1;
        }
    }
    if (m->devices_tail)
        m->devices_tail->next = dev;
    else
        m->devices = dev;
    m->devices_tail = dev;
    return 0;
}

LIBVMM_EXPORT int vmm_machine_add_device(vmm_machine *m, const char *spec)
{
    vmm_clear_error();
    if (check_state(m, "vmm_machine_add_device", IN(VMM_STATE_CREATED)) < 0)
        return -1;
    if (machine_add_device_opts(m, spec, false) < 0)
        return vmm_error_prefix("vmm_machine_add_device");
    return 0;
}

struct device *machine_find_device(vmm_machine *m, const char *type)
{
    for (struct device *d = m->devices; d; d = d->next)
        if (!strcmp(d->cls->name, type))
            return d;
    return NULL;
}

LIBVMM_EXPORT int vmm_machine_set_serial_callback(vmm_machine *m, vmm_output_fn fn,
                                                  void *user_data, vmm_free_fn free_fn)
{
    vmm_clear_error();
    if (check_state(m, "vmm_machine_set_serial_callback", IN(VMM_STATE_CREATED)) < 0)
        return -1;
    if (m->serial_free)
        m->serial_free(m->serial_data);
    m->serial_fn = fn;
    m->serial_data = user_data;
    m->serial_free = free_fn;
    return 0;
}

LIBVMM_EXPORT int vmm_machine_set_serial_fds(vmm_machine *m, int in_fd, int out_fd)
{
    vmm_clear_error();
    if (check_state(m, "vmm_machine_set_serial_fds", IN(VMM_STATE_CREATED)) < 0)
        return -1;
    m->serial_in_fd = in_fd;
    m->serial_out_fd = out_fd;
    return 0;
}

void machine_console_output(vmm_machine *m, const void *data, size_t len)
{
    if (m->serial_fn)
        m->serial_fn(m->serial_data, data, len);
    if (m->serial_out_fd >= 0) {
        const char *p = data;
        while (len) {
            ssize_t n = write(m->serial_out_fd, p, len);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break; /* a console that went away must not stop the guest */
            p += n;
            len -= (size_t)n;
        }
    }
}

LIBVMM_EXPORT int vmm_machine_serial_input(vmm_machine *m, const void *data, size_t len)
{
    vmm_clear_error();
    if (check_state(m, "vmm_machine_serial_input",
                    IN(VMM_STATE_CREATED) | IN(VMM_STATE_RUNNING) | IN(VMM_STATE_PAUSED)) < 0)
        return -1;
    if (!m->console)
        return vmm_set_error(ENODEV, "vmm_machine_serial_input: the machine has no console yet "
                             "(it is wired when the machine starts)");
    serial_receive(m->console, data, len);
    return 0;
}

int machine_set_irq(vmm_machine *m, unsigned gsi, bool level)
{
    if (m->vm.vm_fd < 0)
        return 0; /* before the VM exists (device reset at creation) */
    return kvm_vm_irq_line(&m->vm, gsi, level);
}

/* ---- events ------------------------------------------------------------- */

LIBVMM_EXPORT int vmm_machine_set_event_callback(vmm_machine *m, vmm_event_fn fn,
                                                 void *user_data, vmm_free_fn free_fn)
{
    vmm_clear_error();
    if (check_state(m, "vmm_machine_set_event_callback", IN(VMM_STATE_CREATED)) < 0)
        return -1;
    if (m->event_free)
        m->event_free(m->event_data);
    m->event_fn = fn;
    m->event_data = user_data;
    m->event_free = free_fn;
    return 0;
}

static const char *event_name(enum vmm_event_type type)
{
    static const char *const names[] = {
        NULL, "STOP", "RESUME", "SHUTDOWN", "RESET", "POWERDOWN", "DEVICE_DELETED",
        "BLOCK_IO_ERROR", "VSERPORT_CHANGE",
    };
    return (unsigned)type < VMM_ARRAY_SIZE(names) ? names[type] : "UNKNOWN";
}

static void deliver_event(vmm_machine *m, const struct vmm_event *ev)
{
    pthread_mutex_lock(&m->event_lock);
    if (m->event_fn)
        m->event_fn(m->event_data, ev);
    machine_call_listeners(m, ev);
    pthread_mutex_unlock(&m->event_lock);
}

void machine_emit(vmm_machine *m, enum vmm_event_type type, int guest, const char *reason,
                  const char *device, const char *message)
{
    if (!m->event_fn && !m->listeners)
        return;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct vmm_event ev = {
        .size = sizeof(ev), .type = type, .name = event_name(type),
        .seconds = now.tv_sec, .microseconds = now.tv_nsec / 1000,
        .guest = guest, .reason = reason, .device = device, .message = message,
    };
    deliver_event(m, &ev);
}

void machine_emit_block_io_error(vmm_machine *m, const char *device, const char *node,
                                 const char *operation, const char *action, bool nospace,
                                 const char *reason)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct vmm_event ev = {
        .size = sizeof(ev), .type = VMM_EVENT_BLOCK_IO_ERROR,
        .name = event_name(VMM_EVENT_BLOCK_IO_ERROR), .seconds = now.tv_sec,
        .microseconds = now.tv_nsec / 1000, .device = device, .message = reason,
        .node_name = node, .operation = operation, .action = action, .nospace = nospace,
    };
    deliver_event(m, &ev);
}

/* ---- ending, pausing, resetting --------------------------------------- */

static void kick_all(vmm_machine *m)
{
    for (unsigned i = 0; i < m->nr_vcpus; i++)
        if (m->vcpus[i])
            vcpu_kick(m->vcpus[i]);
}

static const char *shutdown_reason(enum vmm_exit_reason reason)
{
    switch (reason) {
    case VMM_EXIT_POWEROFF:
    case VMM_EXIT_TEST: return "guest-shutdown";
    case VMM_EXIT_RESET: return "guest-reset";
    case VMM_EXIT_ERROR: return "host-error";
    default: return "host-qmp-quit";
    }
}

void machine_end(vmm_machine *m, enum vmm_exit_reason reason, int code, const char *fmt, ...)
{
    bool ended_now = false;
    pthread_mutex_lock(&m->lock);
    if (m->state != VMM_STATE_ENDED) {
        ended_now = true;
        m->state = VMM_STATE_ENDED;
        m->exit_reason = reason;
        m->exit_code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(m->exit_message, sizeof(m->exit_message), fmt, ap);
        va_end(ap);
        pthread_cond_broadcast(&m->cond);
        machine_log(m, reason == VMM_EXIT_ERROR ? VMM_LOG_ERROR : VMM_LOG_INFO, "machine", "%s",
                    m->exit_message);
    }
    pthread_mutex_unlock(&m->lock);
    kick_all(m);
    if (!ended_now)
        return;
    machine_emit(m, VMM_EVENT_SHUTDOWN, reason != VMM_EXIT_STOPPED && reason != VMM_EXIT_ERROR,
                 shutdown_reason(reason), NULL, m->exit_message);
    /* Waiters return only once the SHUTDOWN event was delivered. */
    pthread_mutex_lock(&m->lock);
    m->end_reported = true;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
}

bool machine_vcpu_checkpoint(vmm_machine *m)
{
    machine_vcpu_thread_started(m);
    pthread_mutex_lock(&m->lock);
    while (m->pause_wanted && m->state != VMM_STATE_ENDED) {
        m->parked++;
        pthread_cond_broadcast(&m->cond);
        pthread_cond_wait(&m->cond, &m->lock);
        m->parked--;
    }
    bool go_on = m->state != VMM_STATE_ENDED;
    pthread_mutex_unlock(&m->lock);
    return go_on;
}

/* Stop every vCPU at its checkpoint; returns false if the machine ended. */
static bool park_vcpus(vmm_machine *m)
{
    pthread_mutex_lock(&m->lock);
    m->pause_wanted = true;
    pthread_mutex_unlock(&m->lock);
    kick_all(m);
    pthread_mutex_lock(&m->lock);
    while (m->parked < m->nr_vcpus && m->state != VMM_STATE_ENDED)
        pthread_cond_wait(&m->cond, &m->lock);
    bool ok = m->state != VMM_STATE_ENDED;
    pthread_mutex_unlock(&m->lock);
    return ok;
}

static void unpark_vcpus(vmm_machine *m)
{
    pthread_mutex_lock(&m->lock);
    m->pause_wanted = false;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
}

static int reset_platform(vmm_machine *m)
{
    if (kvm_vm_reset_irqchip(&m->vm) < 0)
        return -1;
    for (struct device *d = m->devices; d; d = d->next)
        device_reset(d);
    for (unsigned i = 0; i < m->nr_vcpus; i++)
        if (vcpu_reset(m->vcpus[i]) < 0)
            return -1;
    return m->cls->load(m);
}

/* Runs in the I/O thread so the vCPU that asked can park. */
static gboolean do_guest_reset(gpointer opaque)
{
    vmm_machine *m = opaque;
    atomic_store(&m->reset_pending, false);
    pthread_mutex_lock(&m->transition_lock);
    bool parked = park_vcpus(m);
    int ret = parked ? reset_platform(m) : 0;
    /* A pause that came in between keeps the machine paused. */
    if (parked && vmm_machine_get_state(m) != VMM_STATE_PAUSED)
        unpark_vcpus(m);
    pthread_mutex_unlock(&m->transition_lock);
    if (ret < 0)
        machine_end(m, VMM_EXIT_ERROR, 0, "reset failed: %s", vmm_get_error());
    else if (parked)
        machine_emit(m, VMM_EVENT_RESET, 1, "guest-reset", NULL, NULL);
    return G_SOURCE_REMOVE;
}

void machine_guest_reset(vmm_machine *m, const char *why)
{
    if (!m->cfg.reboot) {
        machine_end(m, VMM_EXIT_RESET, 0, "guest reset (%s) with reboot=off", why);
        return;
    }
    vmm_log(VMM_LOG_INFO, "machine", "guest reset (%s)", why);
    if (!atomic_exchange(&m->reset_pending, true))
        machine_run_in_io_thread(m, do_guest_reset, m);
}

void machine_run_in_io_thread(vmm_machine *m, GSourceFunc fn, void *data)
{
    g_main_context_invoke(m->io_context, fn, data);
}

/* ---- start ------------------------------------------------------------- */

static gpointer io_thread_main(gpointer opaque)
{
    vmm_machine *m = opaque;
    machine_log_attach_thread(m);
    g_main_context_push_thread_default(m->io_context);
    g_main_loop_run(m->io_loop);
    g_main_context_pop_thread_default(m->io_context);
    return NULL;
}

static gboolean serial_fd_ready(gint fd, GIOCondition cond, gpointer opaque)
{
    vmm_machine *m = opaque;
    uint8_t buf[256];
    ssize_t n = (cond & G_IO_IN) ? read(fd, buf, sizeof(buf)) : 0;
    if (n > 0) {
        serial_receive(m->console, buf, (size_t)n);
        return G_SOURCE_CONTINUE;
    }
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return G_SOURCE_CONTINUE;
    return G_SOURCE_REMOVE; /* end of input */
}

static int start_io_thread(vmm_machine *m)
{
    if (machine_ensure_io_thread(m) < 0)
        return -1;
    if (m->serial_in_fd >= 0 && m->console) {
        GSource *src = g_unix_fd_source_new(m->serial_in_fd, G_IO_IN | G_IO_HUP | G_IO_ERR);
        g_source_set_callback(src, (GSourceFunc)(void (*)(void))serial_fd_ready, m, NULL);
        g_source_attach(src, m->io_context);
        g_source_unref(src);
    }
    return 0;
}

/* Serializes the I/O thread's creation between vmm_machine_start and a
 * control server started from another thread. */
static pthread_mutex_t io_start_lock = PTHREAD_MUTEX_INITIALIZER;

static int ensure_io_thread_locked(vmm_machine *m);

int machine_ensure_io_thread(vmm_machine *m)
{
    pthread_mutex_lock(&io_start_lock);
    int ret = ensure_io_thread_locked(m);
    pthread_mutex_unlock(&io_start_lock);
    return ret;
}

static int ensure_io_thread_locked(vmm_machine *m)
{
    if (m->io_thread)
        return 0;
    if (!m->io_context)
        m->io_context = g_main_context_new();
    if (!m->io_loop)
        m->io_loop = g_main_loop_new(m->io_context, FALSE);
    GError *err = NULL;
    m->io_thread = g_thread_try_new("vmm io", io_thread_main, m, &err);
    if (!m->io_thread) {
        vmm_set_error(EAGAIN, "cannot start the I/O thread: %s", err->message);
        g_error_free(err);
        return -1;
    }
    return 0;
}

static int create_vcpus(vmm_machine *m)
{
    const struct cpu_model *model = cpu_model_find(m->cfg.cpu_model);
    if (!model)
        return vmm_set_error(ENOENT, "unknown cpu model '%s' (known: %s)", m->cfg.cpu_model,
                             cpu_model_names());
    m->vcpus = calloc(m->cfg.cpus, sizeof(*m->vcpus));
    m->vcpu_tids = calloc(m->cfg.cpus, sizeof(*m->vcpu_tids));
    if (!m->vcpus || !m->vcpu_tids)
        return vmm_set_error(ENOMEM, "out of memory");
    m->nr_vcpus = m->cfg.cpus;
    for (unsigned i = 0; i < m->nr_vcpus; i++) {
        if (vcpu_create(m, i, model, &m->vcpus[i]) < 0 || vcpu_reset(m->vcpus[i]) < 0)
            return -1;
    }
    return 0;
}

static int realize_devices(vmm_machine *m)
{
    for (struct device *d = m->devices; d; d = d->next)
        if (device_realize(d) < 0)
            return -1;
    m->console = machine_find_device(m, "isa-serial");
    return 0;
}

static int build_machine(vmm_machine *m)
{
    if (kvm_vm_create(&m->vm) < 0)
        return -1;
    if (m->cls->init(m) < 0 || create_vcpus(m) < 0 || realize_devices(m) < 0)
        return -1;
    return m->cls->load(m);
}

LIBVMM_EXPORT int vmm_machine_start(vmm_machine *m)
{
    vmm_clear_error();
    if (check_state(m, "vmm_machine_start", IN(VMM_STATE_CREATED)) < 0)
        return -1;
    if (!m->cfg.kernel)
        return vmm_set_error(EINVAL, "vmm_machine_start: no kernel given (set the 'kernel' property)");
    if (m->start_failed)
        return vmm_set_error(EINVAL, "vmm_machine_start: an earlier start of this machine failed "
                             "part-way; free it and build a new one");
    if (build_machine(m) < 0 || start_io_thread(m) < 0) {
        m->start_failed = true;
        return vmm_error_prefix("vmm_machine_start");
    }
    pthread_mutex_lock(&m->lock);
    m->state = VMM_STATE_RUNNING;
    pthread_mutex_unlock(&m->lock);
    for (unsigned i = 0; i < m->nr_vcpus; i++) {
        if (vcpu_start(m->vcpus[i]) < 0) {
            machine_end(m, VMM_EXIT_ERROR, 0, "%s", vmm_get_error());
            return vmm_error_prefix("vmm_machine_start");
        }
    }
    return 0;
}

LIBVMM_EXPORT int vmm_machine_pause(vmm_machine *m)
{
    vmm_clear_error();
    if (check_state(m, "vmm_machine_pause", IN(VMM_STATE_RUNNING) | IN(VMM_STATE_PAUSED)) < 0)
        return -1;
    pthread_mutex_lock(&m->transition_lock);
    if (!park_vcpus(m)) {
        pthread_mutex_unlock(&m->transition_lock);
        return vmm_set_error(ESRCH, "vmm_machine_pause: the machine ended");
    }
    pthread_mutex_lock(&m->lock);
    bool paused_now = m->state == VMM_STATE_RUNNING;
    if (paused_now)
        m->state = VMM_STATE_PAUSED;
    pthread_mutex_unlock(&m->lock);
    pthread_mutex_unlock(&m->transition_lock);
    if (paused_now)
        machine_emit(m, VMM_EVENT_STOP, 0, NULL, NULL, NULL);
    return 0;
}

LIBVMM_EXPORT int vmm_machine_resume(vmm_machine *m)
{
    vmm_clear_error();
    if (check_state(m, "vmm_machine_resume", IN(VMM_STATE_PAUSED) | IN(VMM_STATE_RUNNING)) < 0)
        return -1;
    pthread_mutex_lock(&m->transition_lock);
    pthread_mutex_lock(&m->lock);
    bool resumed_now = m->state == VMM_STATE_PAUSED;
    if (resumed_now)
        m->state = VMM_STATE_RUNNING;
    pthread_mutex_unlock(&m->lock);
    unpark_vcpus(m);
    pthread_mutex_unlock(&m->transition_lock);
    if (resumed_now)
        machine_emit(m, VMM_EVENT_RESUME, 0, NULL, NULL, NULL);
    return 0;
}

LIBVMM_EXPORT int vmm_machine_reset(vmm_machine *m)
{
    vmm_clear_error();
    if (check_state(m, "vmm_machine_reset", IN(VMM_STATE_RUNNING) | IN(VMM_STATE_PAUSED)) < 0)
        return -1;
    pthread_mutex_lock(&m->transition_lock);
    if (!park_vcpus(m)) {
        pthread_mutex_unlock(&m->transition_lock);
        return vmm_set_error(ESRCH, "vmm_machine_reset: the machine ended");
    }
    int ret = reset_platform(m);
    if (vmm_machine_get_state(m) != VMM_STATE_PAUSED)
        unpark_vcpus(m);
    pthread_mutex_unlock(&m->transition_lock);
    if (ret < 0)
        return vmm_error_prefix("vmm_machine_reset");
    machine_emit(m, VMM_EVENT_RESET, 0, "host-qmp-system-reset", NULL, NULL);
    return 0;
}

LIBVMM_EXPORT int vmm_machine_request_poweroff(vmm_machine *m)
{
    vmm_clear_error();
    if (check_state(m, "vmm_machine_request_poweroff", IN(VMM_STATE_RUNNING) | IN(VMM_STATE_PAUSED)) < 0)
        return -1;
    struct device *pm = machine_find_device(m, "acpi-pm");
    if (!pm)
        return vmm_set_error(ENODEV, "vmm_machine_request_poweroff: the machine has no ACPI power button");
    acpi_pm_press_power_button(pm);
    machine_emit(m, VMM_EVENT_POWERDOWN, 0, NULL, NULL, NULL);
    return 0;
}

LIBVMM_EXPORT int vmm_machine_stop(vmm_machine *m)
{
    vmm_clear_error();
    if (!m)
        return vmm_set_error(EINVAL, "vmm_machine_stop: no machine given");
    if (vmm_machine_get_state(m) == VMM_STATE_CREATED)
        return vmm_set_error(EBUSY, "vmm_machine_stop: the machine has not started");
    machine_end(m, VMM_EXIT_STOPPED, 0, "stopped by request");
    return 0;
}

LIBVMM_EXPORT int vmm_machine_wait(vmm_machine *m, int timeout_ms)
{
    vmm_clear_error();
    if (check_state(m, "vmm_machine_wait",
                    IN(VMM_STATE_RUNNING) | IN(VMM_STATE_PAUSED) | IN(VMM_STATE_ENDED)) < 0)
        return -1;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    if (timeout_ms >= 0) {
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
    }
    int ret = 0;
    pthread_mutex_lock(&m->lock);
    while (!m->end_reported && ret == 0) {
        if (timeout_ms < 0)
            pthread_cond_wait(&m->cond, &m->lock);
        else if (pthread_cond_timedwait(&m->cond, &m->lock, &deadline) == ETIMEDOUT)
            ret = m->end_reported ? 0 : -1;
    }
    pthread_mutex_unlock(&m->lock);
    if (ret < 0)
        return vmm_set_error(ETIMEDOUT, "vmm_machine_wait: the machine is still running after %d ms",
                             timeout_ms);
    return 0;
}

LIBVMM_EXPORT enum vmm_machine_state vmm_machine_get_state(vmm_machine *m)
{
    if (!m)
        return VMM_STATE_ENDED;
    pthread_mutex_lock(&m->lock);
    enum vmm_machine_state s = m->state;
    pthread_mutex_unlock(&m->lock);
    return s;
}

LIBVMM_EXPORT enum vmm_exit_reason vmm_machine_exit_reason(vmm_machine *m)
{
    if (!m)
        return VMM_EXIT_NONE;
    pthread_mutex_lock(&m->lock);
    enum vmm_exit_reason r = m->exit_reason;
    pthread_mutex_unlock(&m->lock);
    return r;
}

LIBVMM_EXPORT int vmm_machine_exit_code(vmm_machine *m)
{
    if (!m)
        return 0;
    pthread_mutex_lock(&m->lock);
    int code = m->exit_reason == VMM_EXIT_TEST ? m->exit_code : 0;
    pthread_mutex_unlock(&m->lock);
    return code;
}

LIBVMM_EXPORT const char *vmm_machine_exit_message(vmm_machine *m)
{
    return m ? m->exit_message : "";
}

/* ---- teardown ---------------------------------------------------------- */

static gboolean quit_io_loop(gpointer loop)
{
    g_main_loop_quit(loop);
    return G_SOURCE_REMOVE;
}

static void stop_io_thread(vmm_machine *m)
{
    if (m->io_thread) {
        /* Quit from inside the loop: a quit issued before the thread
         * entered g_main_loop_run() would be forgotten. */
        g_main_context_invoke(m->io_context, quit_io_loop, m->io_loop);
        g_thread_join(m->io_thread);
        m->io_thread = NULL;
    }
    if (m->control_free)
        m->control_free(m->control); /* its sources leave the context here */
    m->control = NULL;
    m->control_free = NULL;
    if (m->io_loop)
        g_main_loop_unref(m->io_loop);
    if (m->io_context)
        g_main_context_unref(m->io_context);
    m->io_loop = NULL;
    m->io_context = NULL;
}

LIBVMM_EXPORT void vmm_machine_free(vmm_machine *m)
{
    if (!m)
        return;
    if (m->state == VMM_STATE_RUNNING || m->state == VMM_STATE_PAUSED)
        machine_end(m, VMM_EXIT_STOPPED, 0, "stopped: the machine was freed");
    for (unsigned i = 0; i < m->nr_vcpus; i++)
        if (m->vcpus[i])
            vcpu_join(m->vcpus[i]);
    stop_io_thread(m);
    while (m->devices) {
        struct device *next = m->devices->next;
        device_free(m->devices);
        m->devices = next;
    }
    net_release_all(m);              /* after the NICs that used them */
    chardev_free_all(m);   /* after the devices, their frontends */
    for (unsigned i = 0; i < m->nr_vcpus; i++)
        vcpu_destroy(m->vcpus[i]);
    free(m->vcpus);
    kvm_vm_destroy(&m->vm);
    guest_memory_destroy(&m->mem);
    address_space_destroy(&m->pio);
    address_space_destroy(&m->mmio);
    if (m->serial_free)
        m->serial_free(m->serial_data);
    if (m->event_free)
        m->event_free(m->event_data);
    machine_release_extras(m);
    machine_drives_free(m);   /* after the devices that used them */
    vmm_props_release(machine_props, &m->cfg);
    pthread_mutex_destroy(&m->event_lock);
    pthread_mutex_destroy(&m->transition_lock);
    pthread_cond_destroy(&m->cond);
    pthread_mutex_destroy(&m->lock);
    free(m);
}
