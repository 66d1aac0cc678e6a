/* A small human monitor for human-monitor-command: QEMU's "info" commands
 * that libvmm has something to say for, and a few run-control commands.
 * Output uses QEMU's wording and "\r\n" line ends. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include "control/control-int.h"
#include "net/net.h"

struct hmp_command {
    const char *name;
    const char *help;
    void (*fn)(struct control *ctl, const char *arg, GString *out, struct qmp_result *r);
};

static void info_status(struct control *ctl, const char *arg, GString *out, struct qmp_result *r)
{
    (void)arg;
    (void)r;
    struct vmm_status st = { .size = sizeof(st) };
    vmm_machine_query_status(ctl->m, &st);
    if (st.running || !strcmp(st.status, "paused"))
        g_string_append_printf(out, "VM status: %s\r\n", st.status);
    else
        g_string_append_printf(out, "VM status: paused (%s)\r\n", st.status);
}

static int print_cpu(void *opaque, const struct vmm_vcpu_info *info)
{
    GString *out = opaque;
    g_string_append_printf(out, "%c CPU #%u: thread_id=%" G_GINT64_FORMAT "\r\n",
                           info->index == 0 ? '*' : ' ', info->index, info->thread_id);
    return 0;
}

static void info_cpus(struct control *ctl, const char *arg, GString *out, struct qmp_result *r)
{
    (void)arg;
    (void)r;
    vmm_machine_list_vcpus(ctl->m, print_cpu, out);
}

static int print_block_node(void *opaque, const struct vmm_block_node_info *n)
{
    g_string_append_printf(opaque, "%s: %s (%s%s)\r\n", n->name, n->filename, n->driver,
                           n->read_only ? ", read-only" : "");
    return 0;
}

static void info_block(struct control *ctl, const char *arg, GString *out, struct qmp_result *r)
{
    (void)arg;
    (void)r;
    vmm_machine_list_block_nodes(ctl->m, print_block_node, out);
}

/* As QEMU's "info blockstats": one line per drive. */
static int print_blockstats(void *opaque, const struct vmm_block_node_info *n)
{
    static const struct vmm_block_stats none;
    const struct vmm_block_stats *st = n->stats ? n->stats : &none;
    g_string_append_printf(opaque,
                           "%s: rd_bytes=%" PRIu64 " wr_bytes=%" PRIu64 " rd_operations=%" PRIu64
                           " wr_operations=%" PRIu64 " flush_operations=%" PRIu64
                           " unmap_operations=%" PRIu64 " rd_merged=%" PRIu64
                           " wr_merged=%" PRIu64 "\r\n",
                           n->name, st->rd_bytes, st->wr_bytes, st->rd_operations,
                           st->wr_operations, st->flush_operations, st->unmap_operations,
                           st->rd_merged, st->wr_merged);
    return 0;
}

static void info_blockstats(struct control *ctl, const char *arg, GString *out,
                            struct qmp_result *r)
{
    (void)arg;
    (void)r;
    vmm_machine_list_block_nodes(ctl->m, print_blockstats, out);
}

static void info_pci(struct control *ctl, const char *arg, GString *out, struct qmp_result *r)
{
    (void)ctl;
    (void)arg;
    (void)out;
    (void)r; /* no PCI bus yet: QEMU prints nothing for a machine without one */
}

static int print_device(void *opaque, const struct vmm_device_info *info)
{
    GString *out = opaque;
    g_string_append_printf(out, "dev: %s, id \"%s\"%s\r\n", info->type, info->id ? info->id : "",
                           info->platform ? " (platform)" : "");
    if (*info->properties)
        g_string_append_printf(out, "  %s\r\n", info->properties);
    return 0;
}

static void info_qtree(struct control *ctl, const char *arg, GString *out, struct qmp_result *r)
{
    (void)arg;
    (void)r;
    vmm_machine_list_devices(ctl->m, print_device, out);
}

static void info_version(struct control *ctl, const char *arg, GString *out, struct qmp_result *r)
{
    (void)ctl;
    (void)arg;
    (void)r;
    g_string_append_printf(out, "%s (libvmm %s)\r\n", vmm_version(), vmm_version());
}

static void info_network(struct control *ctl, const char *arg, GString *out, struct qmp_result *r)
{
    (void)arg;
    (void)r;
    for (struct net_backend *nb = ctl->m->netdevs; nb; nb = nb->next) {
        char *line = net_backend_describe(nb);
        g_string_append_printf(out, "%s\r\n", line);
        g_free(line);
    }
}

static const struct hmp_command info_commands[] = {
    { "status", "show the current VM status (running|paused)", info_status },
    { "cpus", "show infos for each CPU", info_cpus },
    { "block", "show the block devices", info_block },
    { "blockstats", "show block device statistics", info_blockstats },
    { "pci", "show PCI info", info_pci },
    { "network", "show the network state", info_network },
    { "qtree", "show device tree", info_qtree },
    { "version", "show the version of QEMU", info_version },
};

static void do_info(struct control *ctl, const char *arg, GString *out, struct qmp_result *r)
{
    for (size_t i = 0; arg && i < G_N_ELEMENTS(info_commands); i++) {
        if (!strcmp(arg, info_commands[i].name)) {
            info_commands[i].fn(ctl, NULL, out, r);
            return;
        }
    }
    if (arg && *arg)
        g_string_append_printf(out, "unknown info command: '%s'\r\n", arg);
    for (size_t i = 0; i < G_N_ELEMENTS(info_commands); i++)
        g_string_append_printf(out, "info %s  -- %s\r\n", info_commands[i].name,
                               info_commands[i].help);
}

/* Run-control commands go through the QMP handlers; failures print. */
static void run_qmp(struct control *ctl, const char *name, JsonObject *args, GString *out,
                    struct qmp_result *r)
{
    struct qmp_result sub = { 0 };
    JsonNode *ret = qmp_call(ctl, name, args, &sub);
    if (ret)
        json_node_unref(ret);
    if (sub.error_class)
        g_string_append_printf(out, "Error: %s\r\n", sub.error_desc);
    r->quit = sub.quit;
    g_free(sub.error_desc);
}

#define SIMPLE_QMP(fn_name, qmp_name)                                                    \
    static void fn_name(struct control *ctl, const char *arg, GString *out,              \
                        struct qmp_result *r)                                            \
    {                                                                                    \
        (void)arg;                                                                       \
        run_qmp(ctl, qmp_name, NULL, out, r);                                            \
    }
SIMPLE_QMP(do_stop, "stop")
SIMPLE_QMP(do_cont, "cont")
SIMPLE_QMP(do_system_reset, "system_reset")
SIMPLE_QMP(do_system_powerdown, "system_powerdown")
SIMPLE_QMP(do_quit, "quit")

static void do_device_del(struct control *ctl, const char *arg, GString *out, struct qmp_result *r)
{
    JsonObject *args = json_object_new();
    json_object_set_string_member(args, "id", arg ? arg : "");
    run_qmp(ctl, "device_del", args, out, r);
    json_object_unref(args);
}

static void do_help(struct control *ctl, const char *arg, GString *out, struct qmp_result *r);

static const struct hmp_command hmp_commands[] = {
    { "info", "info [subcommand] -- show various information about the system state", do_info },
    { "stop", "stop -- stop emulation", do_stop },
    { "cont", "cont|c -- resume emulation", do_cont },
    { "c", NULL, do_cont },
    { "system_reset", "system_reset -- reset the system", do_system_reset },
    { "system_powerdown", "system_powerdown -- send system power down event", do_system_powerdown },
    { "device_del", "device_del device -- remove device", do_device_del },
    { "quit", "quit|q -- quit the emulator", do_quit },
    { "q", NULL, do_quit },
    { "help", "help|? [cmd] -- show the help", do_help },
    { "?", NULL, do_help },
};

static void do_help(struct control *ctl, const char *arg, GString *out, struct qmp_result *r)
{
    (void)ctl;
    (void)arg;
    (void)r;
    for (size_t i = 0; i < G_N_ELEMENTS(hmp_commands); i++)
        if (hmp_commands[i].help)
            g_string_append_printf(out, "%s\r\n", hmp_commands[i].help);
}

char *hmp_run(struct control *ctl, const char *line, struct qmp_result *r)
{
    char **words = g_strsplit_set(line, " \t", 3);
    const char *name = NULL, *arg = NULL;
    for (int i = 0; words[i]; i++) {
        if (!*words[i])
            continue;
        if (!name)
            name = words[i];
        else if (!arg)
            arg = words[i];
    }
    GString *out = g_string_new(NULL);
    bool found = false;
    for (size_t i = 0; name && i < G_N_ELEMENTS(hmp_commands); i++) {
        if (!strcmp(name, hmp_commands[i].name)) {
            hmp_commands[i].fn(ctl, arg, out, r);
            found = true;
            break;
        }
    }
    if (name && !found)
        g_string_append_printf(out, "unknown command: '%s'\r\n", name);
    g_strfreev(words);
    return g_string_free(out, FALSE);
}
