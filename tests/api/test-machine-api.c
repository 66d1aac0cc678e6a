/* The public machine API: error paths (one test per path), introspection,
 * life-cycle control on running guests, and several machines in one
 * process.  argv[1] is the directory with the test guests' ELF files. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <libvmm/libvmm.h>

static const char *guest_dir;

static char *guest(const char *name)
{
    static char path[4096];
    snprintf(path, sizeof(path), "%s/%s.elf", guest_dir, name);
    return path;
}

#define assert_error(call, err, text)                                    \
    do {                                                                 \
        assert_int_equal((call), -1);                                    \
        assert_int_equal(vmm_get_errno(), (err));                        \
        if (!strstr(vmm_get_error(), (text)))                            \
            fail_msg("error '%s' lacks '%s'", vmm_get_error(), (text));  \
    } while (0)

/* ---- console capture ---------------------------------------------------- */

struct console {
    pthread_mutex_t lock;
    char text[65536];
    size_t len;
};

static void capture(void *user_data, const void *data, size_t len)
{
    struct console *c = user_data;
    pthread_mutex_lock(&c->lock);
    if (len > sizeof(c->text) - 1 - c->len)
        len = sizeof(c->text) - 1 - c->len;
    memcpy(c->text + c->len, data, len);
    c->len += len;
    c->text[c->len] = '\0';
    pthread_mutex_unlock(&c->lock);
}

static size_t console_count(struct console *c, const char *needle)
{
    pthread_mutex_lock(&c->lock);
    size_t n = 0;
    for (const char *p = c->text; (p = strstr(p, needle)); p++)
        n++;
    pthread_mutex_unlock(&c->lock);
    return n;
}

static void wait_for_text(struct console *c, const char *needle, size_t times)
{
    for (int i = 0; i < 3000 && console_count(c, needle) < times; i++)
        usleep(10000);
    if (console_count(c, needle) < times)
        fail_msg("console never showed '%s' %zu times: %s", needle, times, c->text);
}

static vmm_machine *guest_machine(const char *name, const char *cmdline, struct console *c)
{
    vmm_machine *m = vmm_machine_new("microvm");
    assert_non_null(m);
    assert_int_equal(vmm_machine_set(m, "kernel", guest(name)), 0);
    assert_int_equal(vmm_machine_set(m, "cmdline", cmdline), 0);
    assert_int_equal(vmm_machine_add_device(m, "isa-debug-exit,iobase=0xf4,iosize=4"), 0);
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->lock, NULL);
    assert_int_equal(vmm_machine_set_serial_callback(m, capture, c, NULL), 0);
    return m;
}

/* ---- error paths ---------------------------------------------------------- */

static void test_unknown_machine_type(void **s)
{
    (void)s;
    assert_null(vmm_machine_new("pdp11"));
    assert_int_equal(vmm_get_errno(), ENOENT);
    assert_non_null(strstr(vmm_get_error(), "unknown machine type 'pdp11' (known: microvm, pc)"));
}

static void test_property_errors(void **s)
{
    (void)s;
    vmm_machine *m = vmm_machine_new("microvm");
    assert_non_null(m);
    assert_error(vmm_machine_set(m, "colour", "blue"), ENOENT, "unknown property 'colour'");
    assert_error(vmm_machine_set(m, "memory", "12Q"), EINVAL, "unknown suffix 'Q'");
    assert_error(vmm_machine_set(m, "memory", "-1G"), EINVAL, "sign not allowed");
    assert_error(vmm_machine_set(m, "memory", "1K"), ERANGE, "out of range");
    assert_error(vmm_machine_set(m, "cpus", "0"), ERANGE, "cpus: 0 is out of range (1 to 255)");
    assert_error(vmm_machine_set(m, "cpus", "two"), EINVAL, "'two' is not a number");
    assert_error(vmm_machine_set(m, "reboot", "maybe"), EINVAL, "'maybe' is not on or off");
    assert_error(vmm_machine_set(m, "kernel", NULL), EINVAL, "no value given");
    assert_int_equal(vmm_machine_set(m, "memory", "1.5G"), 0);
    char *value = vmm_machine_get(m, "memory");
    assert_string_equal(value, "1610612736");
    free(value);
    assert_null(vmm_machine_get(m, "colour"));
    vmm_machine_free(m);
}

static void test_device_errors(void **s)
{
    (void)s;
    vmm_machine *m = vmm_machine_new("microvm");
    assert_error(vmm_machine_add_device(m, "floppy"), ENOENT, "unknown device type 'floppy' (known: ");
    assert_error(vmm_machine_add_device(m, "isa-debug-exit,colour=blue"), EINVAL,
                 "isa-debug-exit: unknown property 'colour'");
    assert_error(vmm_machine_add_device(m, "isa-debug-exit,iosize=9"), ERANGE, "iosize");
    assert_error(vmm_machine_add_device(m, "isa-debug-exit,iobase"), EINVAL, "not of the form key=value");
    assert_error(vmm_machine_add_device(m, "i8042"), EPERM, "the machine creates this device itself");
    assert_int_equal(vmm_machine_add_device(m, "isa-debug-exit,id=x"), 0);
    assert_error(vmm_machine_add_device(m, "isa-debug-exit,id=x,iobase=0xf4"), EEXIST, "'x' exists already");
    vmm_machine_free(m);
}

static void test_start_errors(void **s)
{
    (void)s;
    vmm_machine *m = vmm_machine_new("microvm");
    assert_error(vmm_machine_start(m), EINVAL, "no kernel given");
    assert_int_equal(vmm_machine_set(m, "kernel", "/nonexistent/kernel"), 0);
    assert_error(vmm_machine_start(m), ENOENT, "kernel /nonexistent/kernel: No such file or directory");
    assert_int_equal(vmm_machine_get_state(m), VMM_STATE_CREATED);
    char junk[] = "/tmp/libvmm-junk-XXXXXX";
    int fd = mkstemp(junk);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "not a kernel, just text\n", 24), 24);
    close(fd);
    vmm_machine_free(m);
    m = vmm_machine_new("microvm");
    assert_int_equal(vmm_machine_set(m, "kernel", junk), 0);
    assert_error(vmm_machine_start(m), ENOEXEC, "not a bootable image: libvmm boots a Linux bzImage");
    vmm_machine_free(m);
    unlink(junk);
    /* Two devices on one port: the second fails naming the first. */
    m = vmm_machine_new("microvm");
    assert_int_equal(vmm_machine_set(m, "kernel", guest("hello-exit")), 0);
    assert_int_equal(vmm_machine_add_device(m, "isa-debug-exit,iobase=0x3f8"), 0);
    assert_error(vmm_machine_start(m), EBUSY, "overlaps isa-serial");
    assert_error(vmm_machine_start(m), EINVAL, "an earlier start of this machine failed");
    vmm_machine_free(m);
    /* A kernel larger than RAM. */
    m = vmm_machine_new("microvm");
    assert_int_equal(vmm_machine_set(m, "kernel", guest("hello-exit")), 0);
    assert_int_equal(vmm_machine_set(m, "initrd", guest("demo")), 0);
    assert_int_equal(vmm_machine_set(m, "memory", "4M"), 0);
    assert_error(vmm_machine_start(m), ENOSPC, "does not fit in guest RAM");
    vmm_machine_free(m);
}

static void test_wrong_state(void **s)
{
    (void)s;
    vmm_machine *m = vmm_machine_new("microvm");
    assert_error(vmm_machine_pause(m), EBUSY, "the machine is created; this needs it running or paused");
    assert_error(vmm_machine_resume(m), EBUSY, "needs it running or paused");
    assert_error(vmm_machine_wait(m, 0), EBUSY, "the machine is created");
    assert_error(vmm_machine_stop(m), EBUSY, "has not started");
    assert_error(vmm_machine_serial_input(m, "x", 1), ENODEV, "no console yet");
    assert_error(vmm_machine_start(NULL), EINVAL, "no machine given");
    vmm_machine_free(m);
    vmm_machine_free(NULL);
}

/* ---- introspection -------------------------------------------------------- */

struct names {
    char list[4096];
};

static int collect_type(void *user_data, const char *name, const char *help)
{
    struct names *n = user_data;
    assert_non_null(help);
    strncat(n->list, name, sizeof(n->list) - strlen(n->list) - 2);
    strcat(n->list, " ");
    return 0;
}

static int collect_prop(void *user_data, const struct vmm_property_info *p)
{
    struct names *n = user_data;
    assert_int_equal(p->size, sizeof(*p));
    char item[256];
    snprintf(item, sizeof(item), "%s:%s:%s ", p->name, p->type, p->default_value ? p->default_value : "-");
    strncat(n->list, item, sizeof(n->list) - strlen(n->list) - 1);
    return 0;
}

static void test_introspection(void **s)
{
    (void)s;
    struct names n = { "" };
    assert_int_equal(vmm_list_types("machine", collect_type, &n), 0);
    assert_string_equal(n.list, "microvm pc ");
    memset(&n, 0, sizeof(n));
    assert_int_equal(vmm_list_types("device", collect_type, &n), 0);
    assert_non_null(strstr(n.list, "isa-serial "));
    assert_non_null(strstr(n.list, "isa-debug-exit "));
    memset(&n, 0, sizeof(n));
    assert_int_equal(vmm_list_types("cpu-model", collect_type, &n), 0);
    assert_string_equal(n.list, "host x86-64 x86-64-v2 ");
    memset(&n, 0, sizeof(n));
    assert_int_equal(vmm_list_properties("device", "isa-debug-exit", collect_prop, &n), 0);
    assert_string_equal(n.list, "id:str:- iobase:u32:0x501 iosize:u32:2 ");
    memset(&n, 0, sizeof(n));
    assert_int_equal(vmm_list_properties("machine", "microvm", collect_prop, &n), 0);
    assert_non_null(strstr(n.list, "memory:size:256M "));
    assert_non_null(strstr(n.list, "reboot:bool:on "));
    assert_error(vmm_list_types("vegetable", collect_type, &n), ENOENT, "unknown kind 'vegetable'");
    assert_error(vmm_list_properties("device", "floppy", collect_prop, &n), ENOENT, "floppy");
}

/* ---- running guests ------------------------------------------------------- */

static void test_two_machines_at_once(void **s)
{
    (void)s;
    struct console c1, c2;
    vmm_machine *a = guest_machine("serial", "console-check", &c1);
    vmm_machine *b = guest_machine("smp", "", &c2);
    assert_int_equal(vmm_machine_set(b, "cpus", "2"), 0);
    assert_int_equal(vmm_machine_start(a), 0);
    assert_int_equal(vmm_machine_start(b), 0);
    assert_int_equal(vmm_machine_wait(a, 60000), 0);
    assert_int_equal(vmm_machine_wait(b, 60000), 0);
    assert_int_equal(vmm_machine_exit_reason(a), VMM_EXIT_TEST);
    assert_int_equal(vmm_machine_exit_code(a), 33);
    assert_int_equal(vmm_machine_exit_code(b), 33);
    assert_int_equal(console_count(&c1, "serial: ok"), 1);
    assert_int_equal(console_count(&c1, "cpus online"), 0);
    assert_int_equal(console_count(&c2, "smp: 2 cpus online"), 1);
    assert_int_equal(console_count(&c2, "hello from the guest"), 0);
    vmm_machine_free(a);
    vmm_machine_free(b);
}

static void test_pause_resume(void **s)
{
    (void)s;
    struct console c;
    vmm_machine *m = guest_machine("pio-loop", "count=400000", &c);
    assert_int_equal(vmm_machine_start(m), 0);
    assert_int_equal(vmm_machine_get_state(m), VMM_STATE_RUNNING);
    wait_for_text(&c, "outs to port", 1);
    assert_int_equal(vmm_machine_pause(m), 0);
    assert_int_equal(vmm_machine_get_state(m), VMM_STATE_PAUSED);
    assert_int_equal(vmm_machine_pause(m), 0); /* pausing twice is fine */
    size_t before = c.len;
    assert_error(vmm_machine_wait(m, 300), ETIMEDOUT, "still running after 300 ms");
    assert_int_equal(c.len, before);
    assert_int_equal(vmm_machine_exit_reason(m), VMM_EXIT_NONE);
    assert_int_equal(vmm_machine_resume(m), 0);
    assert_int_equal(vmm_machine_wait(m, 120000), 0);
    assert_int_equal(vmm_machine_exit_code(m), 33);
    assert_int_equal(console_count(&c, "pio-loop: done"), 1);
    assert_error(vmm_machine_pause(m), EBUSY, "the machine is ended");
    vmm_machine_free(m);
}

static void test_reset_restarts_guest(void **s)
{
    (void)s;
    struct console c;
    vmm_machine *m = guest_machine("pio-loop", "count=400000", &c);
    assert_int_equal(vmm_machine_start(m), 0);
    wait_for_text(&c, "outs to port", 1);
    assert_int_equal(vmm_machine_reset(m), 0);
    assert_int_equal(vmm_machine_wait(m, 120000), 0);
    assert_int_equal(vmm_machine_exit_code(m), 33);
    /* The guest booted twice and finished once. */
    assert_int_equal(console_count(&c, "outs to port"), 2);
    assert_int_equal(console_count(&c, "pio-loop: done"), 1);
    vmm_machine_free(m);
}

static void test_reset_while_paused_stays_paused(void **s)
{
    (void)s;
    struct console c;
    vmm_machine *m = guest_machine("pio-loop", "count=400000", &c);
    assert_int_equal(vmm_machine_start(m), 0);
    wait_for_text(&c, "outs to port", 1);
    assert_int_equal(vmm_machine_pause(m), 0);
    assert_int_equal(vmm_machine_reset(m), 0);
    assert_int_equal(vmm_machine_get_state(m), VMM_STATE_PAUSED);
    assert_error(vmm_machine_wait(m, 300), ETIMEDOUT, "still running");
    assert_int_equal(console_count(&c, "outs to port"), 1); /* nothing ran */
    assert_int_equal(vmm_machine_resume(m), 0);
    assert_int_equal(vmm_machine_wait(m, 120000), 0);
    assert_int_equal(console_count(&c, "outs to port"), 2);
    assert_int_equal(vmm_machine_exit_code(m), 33);
    vmm_machine_free(m);
}

static void test_stop_and_free_running(void **s)
{
    (void)s;
    struct console c;
    vmm_machine *m = guest_machine("pio-loop", "count=100000000", &c);
    assert_int_equal(vmm_machine_start(m), 0);
    wait_for_text(&c, "outs to port", 1);
    assert_int_equal(vmm_machine_stop(m), 0);
    assert_int_equal(vmm_machine_wait(m, 10000), 0);
    assert_int_equal(vmm_machine_exit_reason(m), VMM_EXIT_STOPPED);
    assert_int_equal(vmm_machine_exit_code(m), 0);
    vmm_machine_free(m);
    /* Freeing a running machine stops it. */
    m = guest_machine("pio-loop", "count=100000000", &c);
    assert_int_equal(vmm_machine_start(m), 0);
    wait_for_text(&c, "outs to port", 1);
    vmm_machine_free(m);
}

/* ---- events --------------------------------------------------------------- */

struct event_log {
    pthread_mutex_t lock;
    char text[4096];
    int freed;
};

static void record_event(void *user_data, const struct vmm_event *ev)
{
    struct event_log *log = user_data;
    assert_true(ev->size >= sizeof(*ev));
    assert_true(ev->seconds > 1600000000);
    char item[128];
    snprintf(item, sizeof(item), "%s%s%s%s ", ev->name, ev->reason ? "(" : "",
             ev->reason ? ev->reason : "", ev->reason ? (ev->guest ? ",guest)" : ",host)") : "");
    pthread_mutex_lock(&log->lock);
    strncat(log->text, item, sizeof(log->text) - strlen(log->text) - 1);
    pthread_mutex_unlock(&log->lock);
}

static void free_event_log(void *user_data)
{
    ((struct event_log *)user_data)->freed++;
}

static void test_events_in_order(void **s)
{
    (void)s;
    struct console c;
    struct event_log log = { .lock = PTHREAD_MUTEX_INITIALIZER };
    vmm_machine *m = guest_machine("pio-loop", "count=400000", &c);
    assert_int_equal(vmm_machine_set_event_callback(m, record_event, &log, free_event_log), 0);
    assert_int_equal(vmm_machine_start(m), 0);
    assert_error(vmm_machine_set_event_callback(m, record_event, &log, NULL), EBUSY, "needs it created");
    wait_for_text(&c, "outs to port", 1);
    assert_int_equal(vmm_machine_pause(m), 0);
    assert_int_equal(vmm_machine_resume(m), 0);
    assert_int_equal(vmm_machine_reset(m), 0);
    assert_int_equal(vmm_machine_request_poweroff(m), 0);
    assert_int_equal(vmm_machine_wait(m, 120000), 0);
    assert_string_equal(log.text, "STOP RESUME RESET(host-qmp-system-reset,host) POWERDOWN "
                                  "SHUTDOWN(guest-shutdown,guest) ");
    vmm_machine_free(m);
    assert_int_equal(log.freed, 1);

    memset(log.text, 0, sizeof(log.text));
    m = guest_machine("pio-loop", "count=100000000", &c);
    assert_int_equal(vmm_machine_set_event_callback(m, record_event, &log, NULL), 0);
    assert_int_equal(vmm_machine_start(m), 0);
    assert_int_equal(vmm_machine_stop(m), 0);
    assert_int_equal(vmm_machine_stop(m), 0); /* a second stop changes nothing */
    assert_int_equal(vmm_machine_wait(m, 10000), 0);
    vmm_machine_free(m);
    assert_string_equal(log.text, "SHUTDOWN(host-qmp-quit,host) ");
}

static void test_poweroff_without_acpi_guest(void **s)
{
    (void)s;
    struct console c;
    vmm_machine *m = guest_machine("pio-loop", "count=400000", &c);
    assert_int_equal(vmm_machine_start(m), 0);
    /* The guest ignores the power button: the request is made, the guest
     * runs on and ends by itself. */
    assert_int_equal(vmm_machine_request_poweroff(m), 0);
    assert_int_equal(vmm_machine_wait(m, 120000), 0);
    assert_int_equal(vmm_machine_exit_reason(m), VMM_EXIT_TEST);
    vmm_machine_free(m);
}

/* virtio-mmio-cmdline=on appends Linux's virtio_mmio.device= for each
 * device after the user's command line (the serial guest prints it). */
static void test_virtio_mmio_cmdline(void **s)
{
    (void)s;
    struct console c;
    vmm_machine *m = guest_machine("serial", "keep=me", &c);
    assert_int_equal(vmm_machine_set(m, "virtio-mmio-cmdline", "on"), 0);
    assert_int_equal(vmm_machine_add_device(m, "virtio-rng-device"), 0);
    assert_int_equal(vmm_machine_add_device(m, "virtio-rng-device"), 0);
    assert_int_equal(vmm_machine_start(m), 0);
    assert_int_equal(vmm_machine_wait(m, 120000), 0);
    wait_for_text(&c, "cmdline \"keep=me virtio_mmio.device=512@0xfeb00000:16 "
                      "virtio_mmio.device=512@0xfeb00200:17\"", 1);
    vmm_machine_free(m);

    m = guest_machine("serial", "", &c);
    assert_int_equal(vmm_machine_add_device(m, "virtio-rng-device"), 0);
    assert_int_equal(vmm_machine_start(m), 0);
    assert_int_equal(vmm_machine_wait(m, 120000), 0);
    wait_for_text(&c, "cmdline \"\"", 1); /* off by default: the DSDT lists them */
    vmm_machine_free(m);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s GUEST_DIR\n", argv[0]);
        return 2;
    }
    guest_dir = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unknown_machine_type),
        cmocka_unit_test(test_property_errors),
        cmocka_unit_test(test_device_errors),
        cmocka_unit_test(test_start_errors),
        cmocka_unit_test(test_wrong_state),
        cmocka_unit_test(test_introspection),
        cmocka_unit_test(test_two_machines_at_once),
        cmocka_unit_test(test_pause_resume),
        cmocka_unit_test(test_reset_restarts_guest),
        cmocka_unit_test(test_reset_while_paused_stays_paused),
        cmocka_unit_test(test_stop_and_free_running),
        cmocka_unit_test(test_poweroff_without_acpi_guest),
        cmocka_unit_test(test_events_in_order),
        cmocka_unit_test(test_virtio_mmio_cmdline),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
