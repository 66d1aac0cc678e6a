/* The C API of control.h: one test per error path of the queries, device
 * removal, per-machine logs and the QMP server, plus a machine serving QMP
 * to connected clients that is freed cleanly (run under valgrind too).
 * argv[1]: the directory with the test guests. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <cmocka.h>
#include <libvmm/libvmm.h>

static const char *guest_dir;

#define assert_error(call, err, text)                                    \
    do {                                                                 \
        assert_int_equal((call), -1);                                    \
        assert_int_equal(vmm_get_errno(), (err));                        \
        if (!strstr(vmm_get_error(), (text)))                            \
            fail_msg("error '%s' lacks '%s'", vmm_get_error(), (text));  \
    } while (0)

static vmm_machine *loop_machine(void)
{
    char kernel[4096];
    snprintf(kernel, sizeof(kernel), "%s/pio-loop.elf", guest_dir);
    vmm_machine *m = vmm_machine_new("microvm");
    assert_non_null(m);
    assert_int_equal(vmm_machine_set(m, "kernel", kernel), 0);
    assert_int_equal(vmm_machine_set(m, "cmdline", "count=100000000"), 0);
    assert_int_equal(vmm_machine_add_device(m, "isa-debug-exit,id=exit,iobase=0xf4,iosize=4"), 0);
    return m;
}

static void test_query_errors(void **state)
{
    (void)state;
    struct vmm_status st = { .size = sizeof(st) };
    assert_error(vmm_machine_query_status(NULL, &st), EINVAL, "vmm_machine_query_status");
    vmm_machine *m = vmm_machine_new("microvm");
    assert_error(vmm_machine_query_status(m, NULL), EINVAL, "required");
    st.size = 0;
    assert_error(vmm_machine_query_status(m, &st), EINVAL, "size");
    struct vmm_memory_info mem = { .size = sizeof(mem) };
    assert_error(vmm_machine_query_memory(NULL, &mem), EINVAL, "vmm_machine_query_memory");
    assert_error(vmm_machine_list_vcpus(m, NULL, NULL), EINVAL, "callback");
    assert_error(vmm_machine_list_devices(NULL, NULL, NULL), EINVAL, "vmm_machine_list_devices");
    vmm_machine_free(m);
}

static void test_status_fills_only_the_callers_size(void **state)
{
    (void)state;
    vmm_machine *m = vmm_machine_new("microvm");
    assert_int_equal(vmm_machine_set(m, "name", "small"), 0);
    /* An older caller's struct that ends after `status`. */
    struct vmm_status st;
    memset(&st, 0xa5, sizeof(st));
    st.size = offsetof(struct vmm_status, exit_reason);
    assert_int_equal(vmm_machine_query_status(m, &st), 0);
    assert_string_equal(st.status, "prelaunch");
    assert_int_equal(st.running, 0);
    unsigned char *tail = (unsigned char *)&st.exit_reason;
    assert_int_equal(tail[0], 0xa5); /* untouched */
    st.size = sizeof(st);
    assert_int_equal(vmm_machine_query_status(m, &st), 0);
    assert_string_equal(st.name, "small");
    assert_string_equal(st.type, "microvm");
    struct vmm_memory_info mem = { .size = sizeof(mem) };
    assert_int_equal(vmm_machine_query_memory(m, &mem), 0);
    assert_int_equal(mem.ram_size, 256u << 20);
    vmm_machine_free(m);
}

static void test_remove_device_errors(void **state)
{
    (void)state;
    vmm_machine *m = loop_machine();
    assert_error(vmm_machine_remove_device(m, NULL), EINVAL, "required");
    assert_error(vmm_machine_remove_device(m, "nope"), ENOENT, "no device with id 'nope'");
    assert_int_equal(vmm_machine_start(m), 0);
    assert_error(vmm_machine_remove_device(m, "exit"), ENOTSUP, "hot-unplug is not supported");
    vmm_machine_free(m);
}

static void test_log_file_errors(void **state)
{
    (void)state;
    assert_error(vmm_machine_set_log_file(NULL, "/tmp/x", VMM_LOG_INFO), EINVAL, "no machine");
    vmm_machine *m = vmm_machine_new("microvm");
    assert_error(vmm_machine_set_log_file(m, "/nonexistent-dir/x.log", VMM_LOG_INFO), ENOENT,
                 "/nonexistent-dir/x.log");
    assert_int_equal(vmm_machine_set_log_file(m, NULL, VMM_LOG_INFO), 0);
    assert_error(vmm_machine_set_log_callback(NULL, NULL, NULL, NULL, 0), EINVAL, "no machine");
    vmm_machine_free(m);
}

static void test_serve_errors(void **state)
{
    (void)state;
    vmm_machine *m = vmm_machine_new("microvm");
    assert_error(vmm_control_serve(NULL, "unix:/tmp/x"), EINVAL, "required");
    assert_error(vmm_control_serve(m, "tcp:localhost:4444"), EINVAL, "expected unix:PATH");
    assert_error(vmm_control_serve(m, "unix:/tmp/x,bogus"), EINVAL, "expected unix:PATH");
    assert_error(vmm_control_serve(m, "unix:/nonexistent-dir/q.sock"), ENOENT, "q.sock");
    char longpath[200];
    memset(longpath, 'a', sizeof(longpath) - 1);
    longpath[sizeof(longpath) - 1] = '\0';
    assert_error(vmm_control_serve(m, longpath), ENAMETOOLONG, "too long");
    assert_null(vmm_control_execute(NULL, "{}"));
    assert_int_equal(vmm_get_errno(), EINVAL);
    vmm_machine_free(m);
}

static int connect_to(const char *path)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    return fd;
}

static void read_line(int fd, char *buf, size_t len)
{
    size_t n = 0;
    while (n + 1 < len && read(fd, buf + n, 1) == 1 && buf[n] != '\n')
        n++;
    buf[n] = '\0';
}

static void test_serving_machine_frees_cleanly(void **state)
{
    (void)state;
    char path[64];
    snprintf(path, sizeof(path), "/tmp/vmm-ctl-test-%d.sock", (int)getpid());
    vmm_machine *m = loop_machine();
    assert_int_equal(vmm_control_serve(m, path), 0);
    int a = connect_to(path), b = connect_to(path);
    char line[4096];
    read_line(a, line, sizeof(line));
    assert_non_null(strstr(line, "\"QMP\""));
    const char *caps = "{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-status\"}\n";
    assert_int_equal(write(a, caps, strlen(caps)), (ssize_t)strlen(caps));
    read_line(a, line, sizeof(line));
    assert_string_equal(line, "{\"return\":{}}\r");
    read_line(a, line, sizeof(line));
    assert_non_null(strstr(line, "\"prelaunch\""));
    char *reply = vmm_control_execute(m, "{\"execute\":\"cont\",\"id\":1}");
    assert_string_equal(reply, "{\"return\":{},\"id\":1}");
    free(reply);
    reply = vmm_control_execute(m, "not json");
    assert_non_null(strstr(reply, "GenericError"));
    free(reply);
    assert_int_equal(write(b, "{\"execute\":", 11), 11); /* half a message left behind */
    vmm_machine_free(m);
    struct stat st;
    assert_int_equal(stat(path, &st), -1); /* the socket file is gone */
    read_line(a, line, sizeof(line)); /* freeing stopped it: SHUTDOWN still arrives */
    assert_non_null(strstr(line, "\"event\":\"SHUTDOWN\""));
    assert_non_null(strstr(line, "host-qmp-quit"));
    assert_int_equal(read(a, line, sizeof(line)), 0); /* then the server closes */
    close(a);
    close(b);
}

int main(int argc, char **argv)
{
    guest_dir = argc > 1 ? argv[1] : "build/tests/guest";
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_errors),
        cmocka_unit_test(test_status_fills_only_the_callers_size),
        cmocka_unit_test(test_remove_device_errors),
        cmocka_unit_test(test_log_file_errors),
        cmocka_unit_test(test_serve_errors),
        cmocka_unit_test(test_serving_machine_frees_cleanly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
