/* QMP commands, named and shaped as QEMU's, each built on the public API.
 * The dispatcher checks the envelope and the arguments the way QEMU does,
 * with QEMU's error classes and messages. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "control/control-int.h"
#include "libvmm/net.h"

void qmp_error(struct qmp_result *r, const char *cls, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_free(r->error_desc);
    r->error_desc = g_strdup_vprintf(fmt, ap);
    r->error_class = cls;
    va_end(ap);
}

/* The library's last error as a GenericError. */
static void api_error(struct qmp_result *r)
{
    qmp_error(r, "GenericError", "%s", vmm_get_error());
}

static JsonNode *object_node(JsonObject *obj)
{
    JsonNode *node = json_node_init_object(json_node_alloc(), obj);
    json_object_unref(obj);
    return node;
}

static JsonNode *array_node(JsonArray *arr)
{
    JsonNode *node = json_node_init_array(json_node_alloc(), arr);
    json_array_unref(arr);
    return node;
}

static JsonNode *empty_return(void)
{
    return object_node(json_object_new());
}

/* ---- arguments ------------------------------------------------------------ */

enum arg_type { ARG_STR, ARG_BOOL, ARG_INT, ARG_OBJECT, ARG_ARRAY };

struct arg {
    const char *name;
    enum arg_type type;
    bool required;
};

static const char *const arg_type_names[] = { "string", "boolean", "integer", "object", "array" };

static bool arg_has_type(JsonNode *node, enum arg_type type)
{
    switch (type) {
    case ARG_OBJECT: return JSON_NODE_HOLDS_OBJECT(node);
    case ARG_ARRAY: return JSON_NODE_HOLDS_ARRAY(node);
    default: break;
    }
    if (!JSON_NODE_HOLDS_VALUE(node))
        return false;
    GType t = json_node_get_value_type(node);
    return (type == ARG_STR && t == G_TYPE_STRING) || (type == ARG_BOOL && t == G_TYPE_BOOLEAN) ||
           (type == ARG_INT && t == G_TYPE_INT64);
}

static bool check_args(JsonObject *args, const struct arg *spec, bool extra_allowed,
                       struct qmp_result *r)
{
    for (const struct arg *a = spec; a && a->name; a++) {
        JsonNode *node = args ? json_object_get_member(args, a->name) : NULL;
        if (!node) {
            if (a->required) {
                qmp_error(r, "GenericError", "Parameter '%s' is missing", a->name);
                return false;
            }
            continue;
        }
        if (!arg_has_type(node, a->type)) {
            qmp_error(r, "GenericError", "Invalid parameter type for '%s', expected: %s", a->name,
                      arg_type_names[a->type]);
            return false;
        }
    }
    if (!args || extra_allowed)
        return true;
    GList *members = json_object_get_members(args);
    bool ok = true;
    for (GList *l = members; l && ok; l = l->next) {
        bool known = false;
        for (const struct arg *a = spec; a && a->name; a++)
            known |= !strcmp(a->name, l->data);
        if (!known) {
            qmp_error(r, "GenericError", "Parameter '%s' is unexpected", (const char *)l->data);
            ok = false;
        }
    }
    g_list_free(members);
    return ok;
}

static const char *opt_str(JsonObject *args, const char *name)
{
    return args && json_object_has_member(args, name) ? json_object_get_string_member(args, name)
                                                      : NULL;
}

/* ---- queries --------------------------------------------------------------- */

static JsonNode *cmd_query_status(struct control *ctl, JsonObject *args, struct qmp_result *r)
{
    (void)args;
    struct vmm_status st = { .size = sizeof(st) };
    if (vmm_machine_query_status(ctl->m, &st) < 0) {
        api_error(r);
        return NULL;
    }
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "status", st.status);
    json_object_set_boolean_member(o, "singlestep", FALSE);
    json_object_set_boolean_member(o, "running", st.running != 0);
    return object_node(o);
}

/* The "version" object QEMU reports (query-version, the greeting); libvmm's own version. */
JsonObject *qmp_version_object(void)
{
    unsigned major = 0, minor = 0, micro = 0;
    sscanf(vmm_version(), "%u.%u.%u", &major, &minor, &micro);
    JsonObject *q = json_object_new();
    json_object_set_int_member(q, "micro", micro);
    json_object_set_int_member(q, "minor", minor);
    json_object_set_int_member(q, "major", major);
    JsonObject *o = json_object_new();
    json_object_set_object_member(o, "qemu", q);
    char *package = g_strdup_printf("libvmm %s", vmm_version());
    json_object_set_string_member(o, "package", package);
    g_free(package);
    return o;
}

static JsonNode *cmd_query_version(struct control *ctl, JsonObject *args, struct qmp_result *r)
{
    (void)ctl;
    (void)args;
    (void)r;
    return object_node(qmp_version_object());
}

static JsonNode *cmd_query_name(struct control *ctl, JsonObject *args, struct qmp_result *r)
{
    (void)args;
    struct vmm_status st = { .size = sizeof(st) };
    if (vmm_machine_query_status(ctl->m, &st) < 0) {
        api_error(r);
        return NULL;
    }
    JsonObject *o = json_object_new();
    if (*st.name)
        json_object_set_string_member(o, "name", st.name);
    return object_node(o);
}

static JsonNode *cmd_query_kvm(struct control *ctl, JsonObject *args, struct qmp_result *r)
{
    (void)ctl;
    (void)args;
    (void)r;
    JsonObject *o = json_object_new();
    json_object_set_boolean_member(o, "enabled", TRUE);
    json_object_set_boolean_member(o, "present", TRUE);
    return object_node(o);
}

static int add_cpu(void *opaque, const struct vmm_vcpu_info *info)
{
    JsonArray *arr = opaque;
    JsonObject *props = json_object_new();
    /* QEMU 7.2's default topology for -smp N: one socket of N cores. */
    json_object_set_int_member(props, "core-id", info->index);
    json_object_set_int_member(props, "thread-id", 0);
    json_object_set_int_member(props, "socket-id", 0);
    JsonObject *o = json_object_new();
    json_object_set_int_member(o, "thread-id", info->thread_id);
    json_object_set_object_member(o, "props", props);
    char *path = g_strdup_printf("/machine/unattached/device[%u]", info->index);
    json_object_set_string_member(o, "qom-path", path);
    g_free(path);
    json_object_set_int_member(o, "cpu-index", info->index);
    json_object_set_string_member(o, "target", "x86_64");
    json_array_add_object_element(arr, o);
    return 0;
}

static JsonNode *cmd_query_cpus_fast(struct control *ctl, JsonObject *args, struct qmp_result *r)
{
    (void)args;
    JsonArray *arr = json_array_new();
    if (vmm_machine_list_vcpus(ctl->m, add_cpu, arr) < 0) {
        json_array_unref(arr);
        api_error(r);
        return NULL;
    }
    return array_node(arr);
}


static JsonNode *cmd_query_pci(struct control *ctl, JsonObject *args, struct qmp_result *r)
{
    (void)ctl;
    (void)args;
    (void)r;
    return array_node(json_array_new()); /* no PCI host bridge yet */
}

static int add_named_node(void *opaque, const struct vmm_block_node_info *n)
{
    JsonObject *image = json_object_new();
    json_object_set_string_member(image, "filename", n->filename);
    json_object_set_string_member(image, "format", n->driver);
    json_object_set_int_member(image, "virtual-size", vmm_block_size(n->block));
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "node-name", n->name);
    json_object_set_string_member(o, "drv", n->driver);
    json_object_set_boolean_member(o, "ro", n->read_only);
    json_object_set_string_member(o, "file", n->filename);
    json_object_set_object_member(o, "image", image);
    json_array_add_object_element(opaque, o);
    return 0;
}

/* query-block: the drives devices use, as QEMU lists a device's backend
 * (nodes no device uses are not listed, as in QEMU). */
static int add_attached_node(void *opaque, const struct vmm_block_node_info *n)
{
    if (!n->device)
        return 0;
    JsonArray *named = json_array_new();
    add_named_node(named, n);
    JsonObject *o = json_object_new();
    char *qdev = g_strdup_printf("/machine/peripheral/%s/virtio-backend", n->device);
    json_object_set_string_member(o, "device", "");
    json_object_set_string_member(o, "qdev", qdev);
    json_object_set_boolean_member(o, "locked", false);
    json_object_set_boolean_member(o, "removable", false);
    json_object_set_string_member(o, "type", "unknown");
    json_object_set_object_member(o, "inserted",
                                  json_object_ref(json_array_get_object_element(named, 0)));
    json_array_add_object_element(opaque, o);
    json_array_unref(named);
    g_free(qdev);
    return 0;
}

/* A JSON array of what `add` makes of each block node. */
static JsonNode *block_node_list(struct control *ctl, vmm_block_node_fn add)
{
    JsonArray *arr = json_array_new();
    vmm_machine_list_block_nodes(ctl->m, add, arr);
    return array_node(arr);
}

static JsonNode *cmd_query_block(struct control *ctl, JsonObject *args, struct qmp_result *r)
{
    (void)args;
    (void)r;
    return block_node_list(ctl, add_attached_node);
}

/* query-blockstats: every drive with the counters its device keeps, in
 * QEMU's BlockStats shape ("device" is "" for named nodes, as QEMU). */
static JsonObject *blockstats_object(const struct vmm_block_stats *st)
{
    static const struct vmm_block_stats none;
    if (!st)
        st = &none;
    const struct { const char *name; uint64_t value; } fields[] = {
        { "rd_bytes", st->rd_bytes }, { "wr_bytes", st->wr_bytes },
        { "unmap_bytes", st->unmap_bytes }, { "rd_operations", st->rd_operations },
        { "wr_operations", st->wr_operations }, { "flush_operations", st->flush_operations },
        { "unmap_operations", st->unmap_operations }, { "rd_merged", st->rd_merged },
        { "wr_merged", st->wr_merged }, { "unmap_merged", 0 },
        { "failed_rd_operations", st->failed_rd_operations },
        { "failed_wr_operations", st->failed_wr_operations },
        { "failed_flush_operations", st->failed_flush_operations },
        { "failed_unmap_operations", st->failed_unmap_operations },
    };
    JsonObject *o = json_object_new();
    for (size_t i = 0; i < G_N_ELEMENTS(fields); i++)
        json_object_set_int_member(o, fields[i].name, (gint64)fields[i].value);
    json_object_set_boolean_member(o, "account_invalid", false);
    json_object_set_boolean_member(o, "account_failed", true);
    json_object_set_array_member(o, "timed_stats", json_array_new());
    return o;
}

static int add_blockstats(void *opaque, const struct vmm_block_node_info *n)
{
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "device", "");
    json_object_set_string_member(o, "node-name", n->name);
    if (n->device) {
        char *qdev = g_strdup_printf("/machine/peripheral/%s/virtio-backend", n->device);
        json_object_set_string_member(o, "qdev", qdev);
        g_free(qdev);
    }
    const struct vmm_block_stats *st =
        n->size >= offsetof(struct vmm_block_node_info, stats) + sizeof(n->stats) ? n->stats : NULL;
    json_object_set_object_member(o, "stats", blockstats_object(st));
    json_array_add_object_element(opaque, o);
    return 0;
}

static JsonNode *cmd_query_blockstats(struct control *ctl, JsonObject *args, struct qmp_result *r)
{
    (void)args;
    (void)r;
    return block_node_list(ctl, add_blockstats);
}

static JsonNode *cmd_query_named_block_nodes(struct control *ctl, JsonObject *args,
                                             struct qmp_result *r)
{
    (void)args;
    (void)r;
    return block_node_list(ctl, add_named_node);
}

/* ---- run control ------------------------------------------------------------ */

/* The reply of a command that only runs one machine action: empty, or the API's error. */
static JsonNode *action_reply(int ret, struct qmp_result *r)
{
    if (ret < 0) {
        api_error(r);
        return NULL;
    }
    return empty_return();
}

static JsonNode *cmd_stop(struct control *ctl, JsonObject *args, struct qmp_result *r)
{
    (void)args;
    return action_reply(vmm_machine_pause(ctl->m), r);
}

/* cont starts a machine still in "prelaunch" (as QEMU's -S). */
static JsonNode *cmd_cont(struct control *ctl, JsonObject *args, struct qmp_result *r)
{
    (void)args;
    vmm_machine *m = ctl->m;
    int ret = vmm_machine_get_state(m) == VMM_STATE_CREATED ? vmm_machine_start(m)
                                                            : vmm_machine_resume(m);
    return action_reply(ret, r);
}

static JsonNode *cmd_system_reset(struct control *ctl, JsonObject *args, struct qmp_result *r)
{
    (void)args;
    return action_reply(vmm_machine_reset(ctl->m), r);
}

static JsonNode *cmd_system_powerdown(struct control *ctl, JsonObject *args, struct qmp_result *r)
{
    (void)args;
    return action_reply(vmm_machine_request_poweroff(ctl->m), r);
}

/* QEMU's set_link: name is a netdev id or a NIC's device id. */
static JsonNode *cmd_set_link(struct control *ctl, JsonObject *args, struct qmp_result *r)
{
    const char *name = json_object_get_string_member(args, "name");
    bool up = json_object_get_boolean_member(args, "up");
    return action_reply(vmm_machine_set_link(ctl->m, name, up), r);
}

static JsonNode *cmd_quit(struct control *ctl, JsonObject *args, struct qmp_result *r)
{
    (void)args;
    if (vmm_machine_get_state(ctl->m) == VMM_STATE_CREATED) {
        qmp_error(r, "GenericError", "quit: the machine has not started (free it instead)");
        return NULL;
    }
    r->quit = true;
    return empty_return();
}

/* ---- types and devices --------------------------------------------------------- */

struct type_walk {
    JsonArray *arr;
    const char *parent;
    const char *suffix;
};

static int add_type(void *opaque, const char *name, const char *help)
{
    (void)help;
    struct type_walk *w = opaque;
    JsonObject *o = json_object_new();
    char *full = g_strconcat(name, w->suffix, NULL);
    json_object_set_string_member(o, "name", full);
    g_free(full);
    json_object_set_string_member(o, "parent", w->parent);
    json_array_add_object_element(w->arr, o);
    return 0;
}

static JsonNode *cmd_qom_list_types(struct control *ctl, JsonObject *args, struct qmp_result *r)
{
    (void)ctl;
    (void)r;
    const char *implements = opt_str(args, "implements");
    bool abstract = args && json_object_has_member(args, "abstract") &&
                    json_object_get_boolean_member(args, "abstract");
    JsonArray *arr = json_array_new();
    struct type_walk devices = { arr, "device", "" };
    struct type_walk machines = { arr, "machine", "-machine" };
    if (!implements || !strcmp(implements, "device"))
        vmm_list_types("device", add_type, &devices);
    if (!implements || !strcmp(implements, "machine"))
        vmm_list_types("machine", add_type, &machines);
    if (abstract && !implements) {
        struct type_walk root = { arr, "object", "" };
        add_type(&root, "device", NULL);
        add_type(&root, "machine", NULL);
    }
    return array_node(arr);
}

static const char *qom_property_type(const char *type)
{
    if (!strcmp(type, "u32"))
        return "uint32";
    if (!strcmp(type, "u64"))
        return "uint64";
    if (!strcmp(type, "enum"))
        return "str";
    return type; /* str, bool, size */
}

static void set_default_value(JsonObject *o, const struct vmm_property_info *p)
{
    if (!p->default_value)
        return;
    const char *t = p->type;
    if (!strcmp(t, "bool")) {
        json_object_set_boolean_member(o, "default-value", !strcmp(p->default_value, "on") ||
                                       !strcmp(p->default_value, "true"));
    } else if (!strcmp(t, "u32") || !strcmp(t, "u64") || !strcmp(t, "size")) {
        uint64_t v = 0;
        if (vmm_parse_size(p->default_value, &v) == 0)
            json_object_set_int_member(o, "default-value", (gint64)v);
    } else {
        json_object_set_string_member(o, "default-value", p->default_value);
    }
}

static int add_property(void *opaque, const struct vmm_property_info *p)
{
    JsonArray *arr = opaque;
    if (!strcmp(p->name, "id"))
        return 0; /* as QEMU: an option of device_add, not a property */
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "name", p->name);
    json_object_set_string_member(o, "type", qom_property_type(p->type));
    if (p->help)
        json_object_set_string_member(o, "description", p->help);
    set_default_value(o, p);
    json_array_add_object_element(arr, o);
    return 0;
}

static JsonNode *cmd_device_list_properties(struct control *ctl, JsonObject *args,
                                            struct qmp_result *r)
{
    (void)ctl;
    const char *type = json_object_get_string_member(args, "typename");
    JsonArray *arr = json_array_new();
    if (vmm_list_properties("device", type, add_property, arr) < 0) {
        json_array_unref(arr);
        qmp_error(r, "DeviceNotFound", "Device '%s' not found", type);
        return NULL;
    }
    return array_node(arr);
}

/* Append ",key=value" with commas in the value doubled. */
static void append_opt(GString *spec, const char *key, const char *value)
{
    g_string_append_printf(spec, ",%s=", key);
    for (const char *p = value; *p; p++) {
        if (*p == ',')
            g_string_append_c(spec, ',');
        g_string_append_c(spec, *p);
    }
}

/* A scalar argument as option text; false for objects and arrays. */
static bool scalar_text(JsonNode *node, char *buf, size_t len, const char **out)
{
    if (!JSON_NODE_HOLDS_VALUE(node))
        return false;
    GType t = json_node_get_value_type(node);
    if (t == G_TYPE_STRING)
        *out = json_node_get_string(node);
    else if (t == G_TYPE_BOOLEAN)
        *out = json_node_get_boolean(node) ? "on" : "off";
    else if (t == G_TYPE_INT64) {
        snprintf(buf, len, "%" G_GINT64_FORMAT, json_node_get_int(node));
        *out = buf;
    } else
        return false;
    return true;
}

static int no_op_property(void *opaque, const struct vmm_property_info *p)
{
    (void)opaque;
    (void)p;
    return 1;
}

static JsonNode *cmd_device_add(struct control *ctl, JsonObject *args, struct qmp_result *r)
{
    const char *driver = json_object_get_string_member(args, "driver");
    if (vmm_list_properties("device", driver, no_op_property, NULL) < 0) {
        qmp_error(r, "GenericError", "'%s' is not a valid device model name", driver);
        return NULL;
    }
    if (vmm_machine_get_state(ctl->m) != VMM_STATE_CREATED) {
        qmp_error(r, "GenericError", "hot-plug is not supported yet (the machine is %s): add "
                  "devices before it starts", vmm_machine_state_name(vmm_machine_get_state(ctl->m)));
        return NULL;
    }
    GString *spec = g_string_new(driver);
    GList *members = json_object_get_members(args);
    bool ok = true;
    for (GList *l = members; l && ok; l = l->next) {
        const char *key = l->data;
        if (!strcmp(key, "driver"))
            continue;
        char buf[32];
        const char *value;
        ok = scalar_text(json_object_get_member(args, key), buf, sizeof(buf), &value);
        if (ok)
            append_opt(spec, key, value);
        else
            qmp_error(r, "GenericError", "Invalid parameter type for '%s', expected: string", key);
    }
    g_list_free(members);
    if (ok && vmm_machine_add_device(ctl->m, spec->str) < 0) {
        api_error(r);
        ok = false;
    }
    g_string_free(spec, TRUE);
    return ok ? empty_return() : NULL;
}

static JsonNode *cmd_device_del(struct control *ctl, JsonObject *args, struct qmp_result *r)
{
    const char *id = json_object_get_string_member(args, "id");
    if (vmm_machine_remove_device(ctl->m, id) < 0) {
        if (vmm_get_errno() == ENOENT)
            qmp_error(r, "DeviceNotFound", "Device '%s' not found", id);
        else
            api_error(r);
        return NULL;
    }
    return empty_return();
}

/* ---- block nodes ---------------------------------------------------------------- */

/* blockdev-add's nested arguments as the block layer's flat options
 * ("file.filename=..."). */
static bool flatten_options(JsonObject *obj, const char *prefix, GString *out,
                            struct qmp_result *r)
{
    GList *members = json_object_get_members(obj);
    bool ok = true;
    for (GList *l = members; l && ok; l = l->next) {
        const char *key = l->data;
        if (!*prefix && (!strcmp(key, "read-only") || !strcmp(key, "discard")))
            continue; /* an open flag; the drive's discard policy */
        char *full = *prefix ? g_strdup_printf("%s.%s", prefix, key) : g_strdup(key);
        JsonNode *node = json_object_get_member(obj, key);
        char buf[32];
        const char *value;
        if (JSON_NODE_HOLDS_OBJECT(node)) {
            ok = flatten_options(json_node_get_object(node), full, out, r);
        } else if (scalar_text(node, buf, sizeof(buf), &value)) {
            if (!*prefix && !strcmp(key, "file")) {
                qmp_error(r, "GenericError", "file: references to other nodes ('%s') are not "
                          "supported yet; give the protocol node inline", value);
                ok = false;
            } else {
                append_opt(out, full, value);
            }
        } else {
            qmp_error(r, "GenericError", "Invalid parameter type for '%s', expected: string",
                      full);
            ok = false;
        }
        g_free(full);
    }
    g_list_free(members);
    return ok;
}

static const char *node_filename(JsonObject *args)
{
    JsonObject *file = json_object_has_member(args, "file") &&
                       JSON_NODE_HOLDS_OBJECT(json_object_get_member(args, "file"))
                       ? json_object_get_object_member(args, "file") : NULL;
    const char *name = file ? opt_str(file, "filename") : NULL;
    return name ? name : opt_str(args, "filename");
}

static JsonNode *cmd_blockdev_add(struct control *ctl, JsonObject *args, struct qmp_result *r)
{
    const char *name = opt_str(args, "node-name");
    if (!name) {
        qmp_error(r, "GenericError", "'node-name' must be specified for the root node");
        return NULL;
    }
    if (machine_drive_exists(ctl->m, name)) {
        qmp_error(r, "GenericError", "Duplicate nodes with node-name='%s'", name);
        return NULL;
    }
    bool read_only = json_object_has_member(args, "read-only") &&
                     json_object_get_boolean_member(args, "read-only");
    GString *spec = g_string_new(NULL);
    bool ok = flatten_options(args, "", spec, r);
    vmm_block *blk = NULL;
    if (ok) {
        blk = vmm_block_open(spec->str + 1, NULL, VMM_BLOCK_IMAGE_OPTS |
                             (read_only ? 0 : VMM_BLOCK_RDWR));
        if (!blk)
            api_error(r);
    }
    g_string_free(spec, TRUE);
    if (!blk)
        return NULL;
    const char *discard = opt_str(args, "discard");
    bool unmap = discard && (!strcmp(discard, "unmap") || !strcmp(discard, "on"));
    if (!machine_drive_insert(ctl->m, name, blk, node_filename(args), read_only, unmap)) {
        vmm_block_close(blk);
        api_error(r);
        return NULL;
    }
    return empty_return();
}

static JsonNode *cmd_blockdev_del(struct control *ctl, JsonObject *args, struct qmp_result *r)
{
    const char *name = json_object_get_string_member(args, "node-name");
    if (!machine_drive_exists(ctl->m, name)) {
        qmp_error(r, "GenericError", "Failed to find node with node-name='%s'", name);
        return NULL;
    }
    if (machine_drive_remove(ctl->m, name) < 0) {
        qmp_error(r, "GenericError", "Node '%s' is busy: %s", name, vmm_get_error());
        return NULL;
    }
    return empty_return();
}

/* ---- the human monitor and the command list ------------------------------------ */

static JsonNode *cmd_human_monitor_command(struct control *ctl, JsonObject *args,
                                           struct qmp_result *r)
{
    char *out = hmp_run(ctl, json_object_get_string_member(args, "command-line"), r);
    if (!out)
        return NULL;
    JsonNode *node = json_node_init_string(json_node_alloc(), out);
    g_free(out);
    return node;
}

static JsonNode *cmd_qmp_capabilities(struct control *ctl, JsonObject *args, struct qmp_result *r);
static JsonNode *cmd_query_commands(struct control *ctl, JsonObject *args, struct qmp_result *r);

typedef JsonNode *(*command_fn)(struct control *ctl, JsonObject *args, struct qmp_result *r);

struct qmp_command {
    const char *name;
    command_fn fn;
    struct arg args[4];
    bool extra_args;       /* device_add, blockdev-add: properties of the object */
};

static const struct qmp_command commands[] = {
    { "qmp_capabilities", cmd_qmp_capabilities, { { "enable", ARG_ARRAY, false } }, false },
    { "query-commands", cmd_query_commands, { { 0 } }, false },
    { "query-status", cmd_query_status, { { 0 } }, false },
    { "query-version", cmd_query_version, { { 0 } }, false },
    { "query-name", cmd_query_name, { { 0 } }, false },
    { "query-kvm", cmd_query_kvm, { { 0 } }, false },
    { "query-cpus-fast", cmd_query_cpus_fast, { { 0 } }, false },
    { "query-block", cmd_query_block, { { 0 } }, false },
    { "query-blockstats", cmd_query_blockstats, { { "query-nodes", ARG_BOOL, false } }, false },
    { "query-named-block-nodes", cmd_query_named_block_nodes, { { "flat", ARG_BOOL, false } }, false },
    { "query-pci", cmd_query_pci, { { 0 } }, false },
    { "stop", cmd_stop, { { 0 } }, false },
    { "cont", cmd_cont, { { 0 } }, false },
    { "system_reset", cmd_system_reset, { { 0 } }, false },
    { "system_powerdown", cmd_system_powerdown, { { 0 } }, false },
    { "quit", cmd_quit, { { 0 } }, false },
    { "set_link", cmd_set_link, { { "name", ARG_STR, true }, { "up", ARG_BOOL, true } }, false },
    { "qom-list-types", cmd_qom_list_types,
      { { "implements", ARG_STR, false }, { "abstract", ARG_BOOL, false } }, false },
    { "device-list-properties", cmd_device_list_properties, { { "typename", ARG_STR, true } }, false },
    { "device_add", cmd_device_add, { { "driver", ARG_STR, true }, { "id", ARG_STR, false } }, true },
    { "device_del", cmd_device_del, { { "id", ARG_STR, true } }, false },
    { "blockdev-add", cmd_blockdev_add,
      { { "driver", ARG_STR, true }, { "node-name", ARG_STR, false }, { "read-only", ARG_BOOL, false } },
      true },
    { "blockdev-del", cmd_blockdev_del, { { "node-name", ARG_STR, true } }, false },
    { "human-monitor-command", cmd_human_monitor_command,
      { { "command-line", ARG_STR, true }, { "cpu-index", ARG_INT, false } }, false },
};

static JsonNode *cmd_qmp_capabilities(struct control *ctl, JsonObject *args, struct qmp_result *r)
{
    (void)ctl;
    JsonArray *enable = args && json_object_has_member(args, "enable")
                        ? json_object_get_array_member(args, "enable") : NULL;
    if (enable && json_array_get_length(enable)) {
        JsonNode *cap = json_array_get_element(enable, 0);
        qmp_error(r, "GenericError", "Capability '%s' not available",
                  JSON_NODE_HOLDS_VALUE(cap) && json_node_get_value_type(cap) == G_TYPE_STRING
                  ? json_node_get_string(cap) : "?");
        return NULL;
    }
    return empty_return();
}

static JsonNode *cmd_query_commands(struct control *ctl, JsonObject *args, struct qmp_result *r)
{
    (void)ctl;
    (void)args;
    (void)r;
    JsonArray *arr = json_array_new();
    for (size_t i = 0; i < G_N_ELEMENTS(commands); i++) {
        JsonObject *o = json_object_new();
        json_object_set_string_member(o, "name", commands[i].name);
        json_array_add_object_element(arr, o);
    }
    return array_node(arr);
}

static const struct qmp_command *find_command(const char *name)
{
    for (size_t i = 0; i < G_N_ELEMENTS(commands); i++)
        if (!strcmp(commands[i].name, name))
            return &commands[i];
    return NULL;
}

JsonNode *qmp_call(struct control *ctl, const char *name, JsonObject *args, struct qmp_result *r)
{
    const struct qmp_command *cmd = find_command(name);
    if (!cmd) {
        qmp_error(r, "CommandNotFound", "The command %s has not been found", name);
        return NULL;
    }
    if (!check_args(args, cmd->args, cmd->extra_args, r))
        return NULL;
    if (!args && cmd->extra_args) {
        qmp_error(r, "GenericError", "Parameter '%s' is missing", cmd->args[0].name);
        return NULL;
    }
    machine_log(ctl->m, VMM_LOG_DEBUG, "qmp", "command %s", name);
    return cmd->fn(ctl, args, r);
}

/* ---- the envelope ------------------------------------------------------------------ */

static JsonNode *check_envelope(JsonObject *obj, const char **name, JsonObject **args,
                                struct qmp_result *r)
{
    GList *members = json_object_get_members(obj);
    for (GList *l = members; l; l = l->next) {
        const char *key = l->data;
        if (strcmp(key, "execute") && strcmp(key, "arguments") && strcmp(key, "id")) {
            if (!strcmp(key, "exec-oob"))
                qmp_error(r, "GenericError", "QMP input member 'exec-oob' is not supported");
            else
                qmp_error(r, "GenericError", "QMP input member '%s' is unexpected", key);
            g_list_free(members);
            return NULL;
        }
    }
    g_list_free(members);
    JsonNode *exec = json_object_get_member(obj, "execute");
    if (!exec) {
        qmp_error(r, "GenericError", "QMP input lacks member 'execute'");
        return NULL;
    }
    if (!JSON_NODE_HOLDS_VALUE(exec) || json_node_get_value_type(exec) != G_TYPE_STRING) {
        qmp_error(r, "GenericError", "QMP input member 'execute' must be a string");
        return NULL;
    }
    JsonNode *arg_node = json_object_get_member(obj, "arguments");
    if (arg_node && !JSON_NODE_HOLDS_OBJECT(arg_node)) {
        qmp_error(r, "GenericError", "QMP input member 'arguments' must be an object");
        return NULL;
    }
    *name = json_node_get_string(exec);
    *args = arg_node ? json_node_get_object(arg_node) : NULL;
    return exec;
}

JsonObject *qmp_dispatch(struct control *ctl, JsonNode *root, bool *negotiated, bool *quit)
{
    struct qmp_result r = { 0 };
    JsonObject *reply = json_object_new();
    JsonNode *id = NULL;
    const char *name = NULL;
    JsonObject *args = NULL;
    if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
        qmp_error(&r, "GenericError", "QMP input must be a JSON object");
    } else {
        JsonObject *obj = json_node_get_object(root);
        id = json_object_get_member(obj, "id");
        if (check_envelope(obj, &name, &args, &r)) {
            bool is_caps = !strcmp(name, "qmp_capabilities");
            if (!*negotiated && !is_caps)
                qmp_error(&r, "CommandNotFound",
                          "Expecting capabilities negotiation with 'qmp_capabilities'");
            else if (*negotiated && is_caps)
                qmp_error(&r, "CommandNotFound",
                          "Capabilities negotiation is already complete, command ignored");
            else
                r.ret = qmp_call(ctl, name, args, &r);
            if (is_caps && r.ret)
                *negotiated = true;
        }
    }
    if (r.error_class) {
        if (r.ret)
            json_node_unref(r.ret);
        JsonObject *err = json_object_new();
        json_object_set_string_member(err, "class", r.error_class);
        json_object_set_string_member(err, "desc", r.error_desc);
        json_object_set_object_member(reply, "error", err);
        machine_log(ctl->m, VMM_LOG_DEBUG, "qmp", "%s: %s: %s", name ? name : "?", r.error_class,
                    r.error_desc);
    } else {
        json_object_set_member(reply, "return", r.ret ? r.ret : empty_return());
        *quit = r.quit;
    }
    if (id)
        json_object_set_member(reply, "id", json_node_copy(id));
    g_free(r.error_desc);
    return reply;
}
