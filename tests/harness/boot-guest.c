/* Boot one guest through the public API with the console on a callback,
 * and exit with the machine's status: what the guest suite runs.
 * Usage: boot-guest KERNEL CPUS MEMORY CMDLINE TIMEOUT_S [OPTION...]
 * Options: no-exit-device, machine=TYPE, drive=SPEC and device=SPEC (repeatable),
 * netdev=SPEC and chardev=SPEC (repeatable, added before the devices),
 * log (libvmm's warnings and errors to stderr as "libvmm: DOMAIN: message").
 * Exit status: the test-exit status, 0 on guest power-off, 1 on errors. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <libvmm/libvmm.h>

static void console(void *user_data, const void *data, size_t len)
{
    (void)user_data;
    fwrite(data, 1, len, stdout);
    fflush(stdout); /* the runner reacts to what the guest printed */
}

static void log_to_stderr(void *user_data, int level, const char *domain, const char *message)
{
    (void)user_data;
    (void)level;
    fprintf(stderr, "libvmm: %s: %s\n", domain, message);
}

static vmm_machine *the_machine;

static int fail(const char *what)
{
    fprintf(stderr, "boot-guest: %s: %s (errno %d)\n", what, vmm_get_error(), vmm_get_errno());
    vmm_machine_free(the_machine); /* so leak checkers see a clean exit */
    return 1;
}

int main(int argc, char **argv)
{
    static const char usage[] = "usage: boot-guest KERNEL CPUS MEMORY CMDLINE TIMEOUT_S "
                                "[no-exit-device] [machine=TYPE] [drive=SPEC]... [netdev=SPEC]... "
                                "[chardev=SPEC]... [device=SPEC]... [log]\n";
    if (argc < 6) {
        fputs(usage, stderr);
        return 2;
    }
    const char *machine = "microvm";
    bool exit_device = true;
    for (int i = 6; i < argc; i++) {
        if (!strcmp(argv[i], "no-exit-device"))
            exit_device = false;
        else if (!strncmp(argv[i], "machine=", 8))
            machine = argv[i] + 8;
        else if (!strcmp(argv[i], "log"))
            vmm_set_log_callback(log_to_stderr, NULL, NULL, VMM_LOG_WARNING);
        else if (strncmp(argv[i], "device=", 7) && strncmp(argv[i], "drive=", 6) &&
                 strncmp(argv[i], "netdev=", 7) && strncmp(argv[i], "chardev=", 8)) {
            fputs(usage, stderr);
            return 2;
        }
    }
    vmm_machine *m = the_machine = vmm_machine_new(machine);
    if (!m)
        return fail("new");
    if (vmm_machine_set(m, "kernel", argv[1]) < 0 || vmm_machine_set(m, "cpus", argv[2]) < 0 ||
        vmm_machine_set(m, "memory", argv[3]) < 0 || vmm_machine_set(m, "cmdline", argv[4]) < 0 ||
        vmm_machine_set(m, "reboot", "off") < 0)
        return fail("set");
    if (exit_device && vmm_machine_add_device(m, "isa-debug-exit,iobase=0xf4,iosize=4") < 0)
        return fail("add_device");
    for (int i = 6; i < argc; i++)
        if (!strncmp(argv[i], "drive=", 6) && vmm_machine_add_drive(m, argv[i] + 6) < 0)
            return fail(argv[i]);
    for (int i = 6; i < argc; i++)
        if (!strncmp(argv[i], "netdev=", 7) && vmm_machine_add_netdev(m, argv[i] + 7) < 0)
            return fail(argv[i]);
    for (int i = 6; i < argc; i++)
        if (!strncmp(argv[i], "chardev=", 8) && vmm_machine_add_chardev(m, argv[i] + 8) < 0)
            return fail(argv[i]);
    for (int i = 6; i < argc; i++)
        if (!strncmp(argv[i], "device=", 7) && vmm_machine_add_device(m, argv[i] + 7) < 0)
            return fail(argv[i]);
    /* Output through the callback, input from our stdin through the
     * machine's I/O thread. */
    if (vmm_machine_set_serial_callback(m, console, NULL, NULL) < 0 ||
        vmm_machine_set_serial_fds(m, STDIN_FILENO, -1) < 0)
        return fail("serial");
    if (vmm_machine_start(m) < 0)
        return fail("start");
    if (vmm_machine_wait(m, atoi(argv[5]) * 1000) < 0) {
        fflush(stdout);
        fprintf(stderr, "boot-guest: %s\n", vmm_get_error());
        vmm_machine_free(m);
        return 124;
    }
    fflush(stdout);
    enum vmm_exit_reason reason = vmm_machine_exit_reason(m);
    int status = reason == VMM_EXIT_TEST ? vmm_machine_exit_code(m) & 0xff : reason == VMM_EXIT_ERROR;
    if (reason != VMM_EXIT_TEST && reason != VMM_EXIT_POWEROFF)
        fprintf(stderr, "boot-guest: %s\n", vmm_machine_exit_message(m));
    vmm_machine_free(m);
    return status;
}
