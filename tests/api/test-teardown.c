/* Teardown leaves nothing behind: after machines are created, booted and
 * freed, the process has the same file descriptors, threads and memory
 * mappings as before (counted after one warm-up machine, which lets
 * process-wide one-time state such as GLib's default context settle).
 * Run under valgrind as well, for heap leaks. argv[1]: a guest ELF. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libvmm/libvmm.h>

static int count_dir(const char *path)
{
    DIR *d = opendir(path);
    int n = 0;
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

static int count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    int n = 0, c;
    if (!f)
        return -1;
    while ((c = fgetc(f)) != EOF)
        n += c == '\n';
    fclose(f);
    return n;
}

static void ignore_output(void *user_data, const void *data, size_t len)
{
    (void)user_data, (void)data, (void)len;
}

static int run_machine(const char *kernel, const char *cpus)
{
    vmm_machine *m = vmm_machine_new("microvm");
    if (!m || vmm_machine_set(m, "kernel", kernel) < 0 || vmm_machine_set(m, "cpus", cpus) < 0 ||
        vmm_machine_add_device(m, "isa-debug-exit,iobase=0xf4,iosize=4") < 0 ||
        vmm_machine_set_serial_callback(m, ignore_output, NULL, NULL) < 0 ||
        vmm_machine_start(m) < 0 || vmm_machine_wait(m, 60000) < 0) {
        fprintf(stderr, "machine failed: %s\n", vmm_get_error());
        vmm_machine_free(m);
        return -1;
    }
    int code = vmm_machine_exit_code(m);
    vmm_machine_free(m);
    if (code != 33) {
        fprintf(stderr, "guest exited with %d, expected 33\n", code);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test-teardown GUEST_ELF\n");
        return 2;
    }
    if (run_machine(argv[1], "2") < 0)
        return 1;
    int fds = count_dir("/proc/self/fd"), threads = count_dir("/proc/self/task");
    int maps = count_lines("/proc/self/maps");
    for (int i = 0; i < 5; i++)
        if (run_machine(argv[1], i % 2 ? "2" : "1") < 0)
            return 1;
    int fds_after = count_dir("/proc/self/fd"), threads_after = count_dir("/proc/self/task");
    int maps_after = count_lines("/proc/self/maps");
    printf("fds %d -> %d, threads %d -> %d, mappings %d -> %d\n", fds, fds_after, threads,
           threads_after, maps, maps_after);
    if (fds != fds_after || threads != threads_after || maps != maps_after) {
        printf("FAIL: teardown leaked\n");
        return 1;
    }
    printf("teardown: nothing leaked\n");
    return 0;
}
