/* vmm-run: boot and control one virtual machine from the command line.
 * A thin client of libvmm's public API: it parses options, calls the API
 * and reports what happened. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
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
    "  --machine TYPE[,KEY=VALUE...]  machine type (default microvm; 'help' lists\n"
    "                       them, 'TYPE,help' lists a type's properties)\n"
    "  --serial MODE        stdio (default), file:PATH or none\n"
    "  --device SPEC        add a device: TYPE,key=value,... ('help' lists types,\n"
    "                       'TYPE,help' lists a type's properties)\n"
    "  --drive SPEC         a disk: file=F[,format=raw|qcow2][,if=virtio|none][,id=ID]\n"
    "                       [,cache=writeback|none|writethrough|directsync|unsafe]\n"
    "                       [,aio=threads|native][,readonly=on|off][,discard=ignore|unmap]\n"
    "                       [,serial=S][,werror=|rerror=report|ignore|stop];\n"
    "                       if=virtio (default) also adds a virtio-blk device, if=none\n"
    "                       only defines drive ID for --device virtio-blk-pci,drive=ID\n"
    "  --netdev SPEC        add a network backend: tap,id=ID,ifname=NAME|fd=N|fds=A:B\n"
    "                       [,queues=N][,vnet_hdr=on|off]; NICs use it with\n"
    "                       --device virtio-net-pci,netdev=ID[,mac=52:54:00:12:34:56]\n"
    "                       (virtio-net-device on microvm)\n"
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
    const char **drives;
    int nr_drives;
    const char **netdevs;
    int nr_netdevs;
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
       OPT_QMP, OPT_LOG, OPT_DRIVE, OPT_NETDEV, OPT_CHARDEV };

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
    { "drive", required_argument, NULL, OPT_DRIVE },
    { "netdev", required_argument, NULL, OPT_NETDEV },
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
    o->drives = calloc((size_t)argc, sizeof(*o->drives));
    o->netdevs = calloc((size_t)argc, sizeof(*o->netdevs));
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
        case OPT_DRIVE: o->drives[o->nr_drives++] = optarg; break;
        case OPT_NETDEV: o->netdevs[o->nr_netdevs++] = optarg; break;
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

/* The stdin reader and how main stops it: a byte on `stop` ends it, so the
 * machine can be freed after it is joined (freeing closes the drives: a
 * qcow2 image gives back the clusters it counted ahead for its writes). */
struct stdin_reader {
    vmm_machine *m;
    int stop[2];                   /* pipe: [0] polled by the reader */
    pthread_t thread;
};

/* Wait until stdin has input (1), or the reader is asked to stop (0). */
static int wait_for_input(const struct stdin_reader *r)
{
    struct pollfd fds[2] = { { STDIN_FILENO, POLLIN, 0 }, { r->stop[0], POLLIN, 0 } };
    for (;;) {
        int n = poll(fds, 2, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 || fds[1].revents)
            return 0;
        return 1;                  /* data, EOF or an error: read() tells */
    }
}

/* Forward stdin to the guest, handling the Ctrl-A escapes. */
static void *stdin_thread(void *opaque)
{
    struct stdin_reader *r = opaque;
    vmm_machine *m = r->m;
    bool escape = false;
    unsigned char buf[256];
    ssize_t n = 0;
    while (wait_for_input(r) &&
           ((n = read(STDIN_FILENO, buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR))) {
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

/* ---- --drive ------------------------------------------------------------ */

/* --drive's keys sorted out: if= and id= for vmm-run, the device's own
 * (serial, werror, rerror) for its virtio-blk device, the rest for
 * vmm_machine_add_drive. */
struct drive_parts {
    char *iface, *id;
    char *drive, *device;          /* "k=v,..." */
};

static const char *const device_keys[] = { "serial", "werror", "rerror", NULL };

static void append_token(char *list, const char *token, size_t len)
{
    strncat(strcat(list, *list ? "," : ""), token, len);
}

static bool is_key(const char *token, size_t len, const char *key)
{
    size_t klen = strlen(key);
    return len > klen && !strncmp(token, key, klen) && token[klen] == '=';
}

static void split_drive_spec(const char *spec, struct drive_parts *parts)
{
    size_t room = strlen(spec) + 1;
    parts->drive = calloc(1, room);
    parts->device = calloc(1, room);
    for (const char *p = spec; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        bool for_device = false;
        for (int i = 0; device_keys[i]; i++)
            for_device |= is_key(p, len, device_keys[i]);
        char **own = is_key(p, len, "if") ? &parts->iface : is_key(p, len, "id") ? &parts->id : NULL;
        if (own) {
            free(*own);                 /* the last one counts */
            *own = strndup(p + 3, len - 3);
        } else if (len) {
            append_token(for_device ? parts->device : parts->drive, p, len);
        }
        p += len + (end ? 1 : 0);
    }
}

static int drive_error(char **why, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int drive_error(char **why, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(why, fmt, ap) < 0)
        *why = NULL;
    va_end(ap);
    return -1;
}

/* --drive SPEC: the drive, then (if=virtio) its virtio-blk device.  Fails
 * with the reason in *why (malloc'd). */
static int add_drive(vmm_machine *m, const char *spec, int index, const char *machine, char **why)
{
    struct drive_parts parts = { 0 };
    split_drive_spec(spec, &parts);
    char name[32], *full = NULL, *device = NULL;
    snprintf(name, sizeof(name), "drive%d", index);
    const char *id = parts.id ? parts.id : name;
    bool mmio = !machine || !strcmp(machine, "microvm");
    bool virtio = !parts.iface || !strcmp(parts.iface, "virtio");
    int ret = 0;
    *why = NULL;
    if (!virtio && strcmp(parts.iface, "none"))
        ret = drive_error(why, "--drive %s: if=%s: expected virtio or none", spec, parts.iface);
    else if (!virtio && *parts.device)
        ret = drive_error(why, "--drive %s: %s: only with if=virtio (else give it to --device)",
                          spec, parts.device);
    else if (asprintf(&full, "%s%sid=%s", parts.drive, *parts.drive ? "," : "", id) < 0 ||
             (virtio && asprintf(&device, "virtio-blk-%s,drive=%s%s%s", mmio ? "device" : "pci",
                                 id, *parts.device ? "," : "", parts.device) < 0))
        ret = drive_error(why, "out of memory");
    else if (vmm_machine_add_drive(m, full) < 0 || (device && vmm_machine_add_device(m, device) < 0))
        ret = drive_error(why, "--drive %s: %s", spec, vmm_get_error());
    free(device);
    free(full);
    free(parts.drive);
    free(parts.device);
    free(parts.iface);
    free(parts.id);
    return ret;
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

/* Chardevs before devices (devices name them); stdin has one reader.  On
 * an error the machine goes first, taking the sockets it listens on. */
static void add_chardevs(vmm_machine *m, const struct options *o)
{
    bool serial_stdio = !o->serial || !strcmp(o->serial, "stdio");
    for (int i = 0; i < o->nr_chardevs; i++) {
        const char *spec = o->chardevs[i];
        char *why = NULL;
        if (serial_stdio && (!strcmp(spec, "stdio") || !strncmp(spec, "stdio,", 6)))
            why = strdup("the serial console uses stdio already (add --serial none or "
                         "--serial file:PATH)");
        else if (vmm_machine_add_chardev(m, spec) == 0)
            continue;
        else
            why = strdup(vmm_get_error());
        vmm_machine_free(m);
        die("--chardev %s: %s", spec, why ? why : "out of memory");
    }
}

/* "--machine TYPE,key=value,...": everything after the type is machine
 * properties, set after --cpus/--memory and friends so they can be
 * overridden there. */
static void set_machine_properties(vmm_machine *m, const char *spec)
{
    for (const char *p = strchr(spec, ','); p; p = strchr(p, ',')) {
        p++;
        char pair[1024];
        snprintf(pair, sizeof(pair), "%.*s", (int)strcspn(p, ","), p);
        char *eq = strchr(pair, '=');
        if (!eq) {
            vmm_machine_free(m);
            die("--machine %s: '%s' is not KEY=VALUE", spec, pair);
        }
        *eq = '\0';
        if (vmm_machine_set(m, pair, eq + 1) < 0) {
            vmm_machine_free(m);
            die("--machine %s: %s", spec, vmm_get_error());
        }
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

    const char *machine_spec = o.machine ? o.machine : "microvm";
    char type[64];
    snprintf(type, sizeof(type), "%.*s", (int)strcspn(machine_spec, ","), machine_spec);
    vmm_machine *m = vmm_machine_new(type);
    if (!m)
        die_api();
    set_property(m, "kernel", o.kernel);
    set_property(m, "initrd", o.initrd);
    set_property(m, "cmdline", o.append);
    set_property(m, "cpus", o.cpus);
    set_property(m, "memory", o.memory);
    set_property(m, "cpu-model", o.cpu_model);
    set_property(m, "reboot", o.no_reboot ? "off" : NULL);
    set_machine_properties(m, machine_spec);
    for (int i = 0; i < o.nr_drives; i++) {
        char *why;
        if (add_drive(m, o.drives[i], i, type, &why) < 0) {
            vmm_machine_free(m);
            free(o.devices);
            free(o.drives);
            free(o.netdevs);
            die("%s", why ? why : "out of memory");
        }
    }
    for (int i = 0; i < o.nr_netdevs; i++) {   /* before the NICs that name them */
        if (vmm_machine_add_netdev(m, o.netdevs[i]) < 0) {
            const char *spec = o.netdevs[i];
            char *why = strdup(vmm_get_error());
            vmm_machine_free(m);
            free(o.devices);
            free(o.drives);
            free(o.netdevs);
            die("--netdev %s: %s", spec, why ? why : "out of memory");
        }
    }
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
    struct stdin_reader reader = { m, { -1, -1 }, 0 };
    bool reading = false;
    if (use_stdin) {
        make_terminal_raw();
        reading = pipe2(reader.stop, O_CLOEXEC) == 0 &&
                  pthread_create(&reader.thread, NULL, stdin_thread, &reader) == 0;
    }
    vmm_machine_wait(m, -1);
    restore_terminal();
    int status = exit_status(m);
    if (reading) {
        /* the reader uses the machine: it goes first */
        while (write(reader.stop[1], "", 1) < 0 && errno == EINTR)
            ;
        pthread_join(reader.thread, NULL);
    }
    if (reader.stop[0] >= 0) {
        close(reader.stop[0]);
        close(reader.stop[1]);
    }
    vmm_machine_free(m);
    free(o.devices);
    free(o.drives);
    free(o.netdevs);
    free(o.chardevs);
    return status;
}
