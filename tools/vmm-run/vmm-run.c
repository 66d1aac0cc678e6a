/* vmm-run: boot and control one virtual machine from the command line.
 * A thin client of libvmm's public API: it parses options, calls the API
 * and reports what happened. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>
#include <libvmm/libvmm.h>

#define CTRL_A 0x01

static const char usage_text[] =
    "Usage: vmm-run --kernel FILE [options]\n"
    "Boot a virtual machine with libvmm.\n"
    "\n"
    "  --kernel FILE        kernel: Linux bzImage, or ELF (PVH note or x86-64 entry)\n"
    "  --initrd FILE        initial ramdisk\n"
    "  --append STRING      kernel command line\n"
    "  --cpus N             number of vCPUs (default 1)\n"
    "  --memory SIZE        guest RAM, e.g. 512M or 2G (default 256M)\n"
    "  --cpu-model MODEL    host, x86-64, x86-64-v2 (default host)\n"
    "  --machine TYPE       machine type (default microvm; 'help' lists them)\n"
    "  --serial MODE        stdio (default), file:PATH or none\n"
    "  --device SPEC        add a device: TYPE,key=value,... ('help' lists types,\n"
    "                       'TYPE,help' lists a type's properties)\n"
    "  --chardev SPEC       add a host end for a device: BACKEND,id=ID,... with\n"
    "                       BACKEND null, stdio, fd (in=FD,out=FD), file (path=P)\n"
    "                       or socket (path=P,server=on,wait=off | path=P[,reconnect=S]);\n"
    "                       ('help' lists backends, 'BACKEND,help' their keys);\n"
    "                       e.g. --device virtio-serial-pci --device\n"
    "                       virtserialport,chardev=ID,name=org.qemu.guest_agent.0\n"
    "  --no-reboot          end when the guest resets instead of restarting it\n"
    "  --qmp unix:PATH[,server,nowait]  serve QMP (QEMU's control protocol) there\n"
    "  --log FILE           append this machine's log (events, errors) to FILE\n"
    "  --verbose            log what the library does to stderr\n"
    "  --version            print the version and exit\n"
    "  --help               print this help and exit\n"
    "\n"
    "With --serial stdio, Ctrl-A x quits and Ctrl-A Ctrl-A sends Ctrl-A.\n"
    "Exit status: the guest's test-exit status when it wrote the test-exit port,\n"
    "0 when it powered off (or reset with --no-reboot), 1 on errors.\n";

struct options {
    const char *kernel, *initrd, *append, *cpus, *memory, *cpu_model, *machine, *serial;
    const char *qmp, *log;
    const char **devices;
    int nr_devices;
    const char **chardevs;
    int nr_chardevs;
    bool no_reboot, verbose;
};

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void restore_terminal(void);

static void die(const char *fmt, ...)
{
    restore_terminal();
    va_list ap;
    va_start(ap, fmt);
    fputs("vmm-run: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void die_api(void)
{
    die("%s", vmm_get_error());
}

static void log_to_stderr(void *user_data, int level, const char *domain, const char *message)
{
    (void)user_data;
    const char *tag = level <= VMM_LOG_ERROR ? "error" : level <= VMM_LOG_WARNING ? "warning" : "info";
    fprintf(stderr, "vmm-run: %s: %s: %s\n", domain, tag, message);
}

/* ---- help listings from the library's introspection ------------------- */

static int print_type(void *user_data, const char *name, const char *help)
{
    (void)user_data;
    printf("  %-20s %s\n", name, help ? help : "");
    return 0;
}

static int print_property(void *user_data, const struct vmm_property_info *p)
{
    (void)user_data;
    printf("  %-12s %-5s %s%s%s%s%s\n", p->name, p->type, p->help ? p->help : "",
           p->default_value ? " (default " : "", p->default_value ? p->default_value : "",
           p->default_value ? ")" : "", "");
    if (p->choices)
        printf("  %-12s       one of: %s\n", "", p->choices);
    return 0;
}

static void list_and_exit(const char *kind, const char *spec)
{
    if (!strcmp(spec, "help")) {
        printf("Available %s types:\n", kind);
        if (vmm_list_types(kind, print_type, NULL) < 0)
            die_api();
        exit(0);
    }
    char *type = strdup(spec);
    char *comma = strchr(type, ',');
    if (comma)
        *comma = '\0';
    printf("%s properties:\n", type);
    if (vmm_list_properties(kind, type, print_property, NULL) < 0)
        die_api();
    free(type);
    exit(0);
}

static bool asks_for_help(const char *spec)
{
    if (!strcmp(spec, "help"))
        return true;
    size_t len = strlen(spec);
    return len > 5 && !strcmp(spec + len - 5, ",help");
}

/* ---- options ------------------------------------------------------------ */

enum { OPT_KERNEL = 256, OPT_INITRD, OPT_APPEND, OPT_CPUS, OPT_MEMORY, OPT_CPU_MODEL,
       OPT_MACHINE, OPT_SERIAL, OPT_DEVICE, OPT_NO_REBOOT, OPT_VERBOSE, OPT_VERSION,
       OPT_QMP, OPT_LOG, OPT_CHARDEV };

static const struct option long_options[] = {
    { "kernel", required_argument, NULL, OPT_KERNEL },
    { "initrd", required_argument, NULL, OPT_INITRD },
    { "append", required_argument, NULL, OPT_APPEND },
    { "cpus", required_argument, NULL, OPT_CPUS },
    { "memory", required_argument, NULL, OPT_MEMORY },
    { "cpu-model", required_argument, NULL, OPT_CPU_MODEL },
    { "machine", required_argument, NULL, OPT_MACHINE },
    { "serial", required_argument, NULL, OPT_SERIAL },
    { "device", required_argument, NULL, OPT_DEVICE },
    { "chardev", required_argument, NULL, OPT_CHARDEV },
    { "no-reboot", no_argument, NULL, OPT_NO_REBOOT },
    { "verbose", no_argument, NULL, OPT_VERBOSE },
    { "version", no_argument, NULL, OPT_VERSION },
    { "qmp", required_argument, NULL, OPT_QMP },
    { "log", required_argument, NULL, OPT_LOG },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
};

static void parse_options(int argc, char **argv, struct options *o)
{
    opterr = 0;
    o->devices = calloc((size_t)argc, sizeof(*o->devices));
    o->chardevs = calloc((size_t)argc, sizeof(*o->chardevs));
    int c;
    while ((c = getopt_long(argc, argv, ":h", long_options, NULL)) != -1) {
        switch (c) {
        case OPT_KERNEL: o->kernel = optarg; break;
        case OPT_INITRD: o->initrd = optarg; break;
        case OPT_APPEND: o->append = optarg; break;
        case OPT_CPUS: o->cpus = optarg; break;
        case OPT_MEMORY: o->memory = optarg; break;
        case OPT_CPU_MODEL: o->cpu_model = optarg; break;
        case OPT_MACHINE: o->machine = optarg; break;
        case OPT_SERIAL: o->serial = optarg; break;
        case OPT_DEVICE: o->devices[o->nr_devices++] = optarg; break;
        case OPT_CHARDEV: o->chardevs[o->nr_chardevs++] = optarg; break;
        case OPT_NO_REBOOT: o->no_reboot = true; break;
        case OPT_VERBOSE: o->verbose = true; break;
        case OPT_QMP: o->qmp = optarg; break;
        case OPT_LOG: o->log = optarg; break;
        case OPT_VERSION: printf("vmm-run (libvmm) %s\n", vmm_version()); exit(0);
        case 'h': fputs(usage_text, stdout); exit(0);
        case ':': die("option '%s' needs a value", argv[optind - 1]);
        default: die("unknown option '%s' (see --help)", argv[optind - 1]);
        }
    }
    if (optind < argc)
        die("unexpected argument '%s' (see --help)", argv[optind]);
}

/* ---- the console on stdio --------------------------------------------- */

static struct termios saved_termios;
static bool terminal_raw;

static void restore_terminal(void)
{
    if (terminal_raw) {
        tcsetattr(STDIN_FILENO, TCSANOW, &saved_termios);
        terminal_raw = false;
    }
}

static void make_terminal_raw(void)
{
    if (!isatty(STDIN_FILENO) || tcgetattr(STDIN_FILENO, &saved_termios) < 0)
        return;
    struct termios raw = saved_termios;
    cfmakeraw(&raw);
    raw.c_oflag |= OPOST | ONLCR; /* keep newline translation for output */
    if (tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0) {
        terminal_raw = true;
        atexit(restore_terminal);
    }
}

/* Forward stdin to the guest, handling the Ctrl-A escapes. */
static void *stdin_thread(void *opaque)
{
    vmm_machine *m = opaque;
    bool escape = false;
    unsigned char buf[256];
    ssize_t n;
    while ((n = read(STDIN_FILENO, buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR)) {
        for (ssize_t i = 0; i < n; i++) {
            unsigned char ch = buf[i];
            if (escape) {
                escape = false;
                if (ch == 'x' || ch == 'X') {
                    vmm_machine_stop(m);
                    return NULL;
                }
                if (ch == 'h' || ch == '?')
                    fputs("\r\nC-a x  quit\r\nC-a C-a  send C-a\r\n", stderr);
                if (ch != CTRL_A)
                    continue;
            } else if (ch == CTRL_A) {
                escape = true;
                continue;
            }
            vmm_machine_serial_input(m, &ch, 1);
        }
    }
    return NULL;
}

static void setup_serial(vmm_machine *m, const char *mode, bool *use_stdin)
{
    *use_stdin = false;
    if (!mode || !strcmp(mode, "stdio")) {
        if (vmm_machine_set_serial_fds(m, -1, STDOUT_FILENO) < 0)
            die_api();
        *use_stdin = true;
    } else if (!strncmp(mode, "file:", 5)) {
        int fd = open(mode + 5, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
            die("--serial %s: %s", mode, strerror(errno));
        if (vmm_machine_set_serial_fds(m, -1, fd) < 0)
            die_api();
    } else if (strcmp(mode, "none")) {
        die("--serial '%s': expected stdio, file:PATH or none", mode);
    }
}

static void set_property(vmm_machine *m, const char *key, const char *value)
{
    if (value && vmm_machine_set(m, key, value) < 0)
        die_api();
}

static int exit_status(vmm_machine *m)
{
    switch (vmm_machine_exit_reason(m)) {
    case VMM_EXIT_TEST:
        return vmm_machine_exit_code(m) & 0xff;
    case VMM_EXIT_ERROR:
        fprintf(stderr, "vmm-run: %s\n", vmm_machine_exit_message(m));
        return 1;
    default:
        return 0;
    }
}

/* Chardevs before devices (devices name them); stdin has one reader. */
static void add_chardevs(vmm_machine *m, const struct options *o)
{
    bool serial_stdio = !o->serial || !strcmp(o->serial, "stdio");
    for (int i = 0; i < o->nr_chardevs; i++) {
        const char *spec = o->chardevs[i];
        if (serial_stdio && (!strcmp(spec, "stdio") || !strncmp(spec, "stdio,", 6)))
            die("--chardev %s: the serial console uses stdio already (add --serial none or "
                "--serial file:PATH)", spec);
        if (vmm_machine_add_chardev(m, spec) < 0)
            die("--chardev %s: %s", spec, vmm_get_error());
    }
}

int main(int argc, char **argv)
{
    struct options o = { 0 };
    parse_options(argc, argv, &o);
    if (o.machine && asks_for_help(o.machine))
        list_and_exit("machine", o.machine);
    for (int i = 0; i < o.nr_devices; i++)
        if (asks_for_help(o.devices[i]))
            list_and_exit("device", o.devices[i]);
    for (int i = 0; i < o.nr_chardevs; i++)
        if (asks_for_help(o.chardevs[i]))
            list_and_exit("chardev", o.chardevs[i]);
    if (o.cpu_model && !strcmp(o.cpu_model, "help"))
        list_and_exit("cpu-model", "help");
    if (!o.kernel)
        die("no kernel given: use --kernel FILE (see --help)");
    vmm_set_log_callback(log_to_stderr, NULL, NULL, o.verbose ? VMM_LOG_DEBUG : VMM_LOG_WARNING);

    vmm_machine *m = vmm_machine_new(o.machine ? o.machine : "microvm");
    if (!m)
        die_api();
    set_property(m, "kernel", o.kernel);
    set_property(m, "initrd", o.initrd);
    set_property(m, "cmdline", o.append);
    set_property(m, "cpus", o.cpus);
    set_property(m, "memory", o.memory);
    set_property(m, "cpu-model", o.cpu_model);
    set_property(m, "reboot", o.no_reboot ? "off" : NULL);
    add_chardevs(m, &o);
    for (int i = 0; i < o.nr_devices; i++)
        if (vmm_machine_add_device(m, o.devices[i]) < 0)
            die_api();
    if (o.log && vmm_machine_set_log_file(m, o.log, o.verbose ? VMM_LOG_DEBUG : VMM_LOG_INFO) < 0)
        die_api();
    bool use_stdin;
    setup_serial(m, o.serial, &use_stdin);
    if (vmm_machine_start(m) < 0 || (o.qmp && vmm_control_serve(m, o.qmp) < 0))
        die_api();
    if (use_stdin) {
        make_terminal_raw();
        pthread_t reader;
        if (pthread_create(&reader, NULL, stdin_thread, m) == 0)
            pthread_detach(reader);
    }
    vmm_machine_wait(m, -1);
    restore_terminal();
    int status = exit_status(m);
    /* The stdin reader may still be blocked in read(): leave without
     * freeing the machine it uses; the process exit releases everything. */
    if (!use_stdin)
        vmm_machine_free(m);
    free(o.devices);
    free(o.chardevs);
    return status;
}
