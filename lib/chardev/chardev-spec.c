/* Parsing "-chardev" specs, "BACKEND,id=ID,key=value,..." with QEMU's
 * names, through a typed property table per backend (also what
 * vmm_list_types("chardev") and vmm_list_properties("chardev", B) show).
 * Pure (no fds opened): the fuzzer drives it. */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include "chardev/chardev.h"
#include "introspect.h"
#include "util/util.h"

#define CFG(field) offsetof(struct chardev_config, field)
#define SUN_PATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)

static const struct vmm_prop id_prop[] = {
    { "id", VMM_PROP_STR, CFG(id), NULL, "the name devices use (chardev=ID)", NULL, 0, 0 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

static const struct vmm_prop no_props[] = { { NULL, 0, 0, NULL, NULL, NULL, 0, 0 } };

/* in/out land in int fields (-1 until given): U32 within INT_MAX. */
static const struct vmm_prop fd_props[] = {
    { "in", VMM_PROP_U32, CFG(in_fd), NULL, "descriptor the guest's input is read from", NULL,
      0, INT_MAX },
    { "out", VMM_PROP_U32, CFG(out_fd), NULL, "descriptor the guest's output is written to", NULL,
      0, INT_MAX },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

static const struct vmm_prop file_props[] = {
    { "path", VMM_PROP_STR, CFG(path), NULL, "file the guest's output goes to", NULL, 0, 0 },
    { "append", VMM_PROP_BOOL, CFG(append), "off", "append instead of truncating", NULL, 0, 0 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

static const struct vmm_prop socket_props[] = {
    { "path", VMM_PROP_STR, CFG(path), NULL, "Unix socket path", NULL, 0, 0 },
    { "server", VMM_PROP_BOOL, CFG(server), "off",
      "on: listen (one client at a time); off: connect", NULL, 0, 0 },
    { "wait", VMM_PROP_BOOL, CFG(wait), "off",
      "block until a client connects (only off is supported)", NULL, 0, 0 },
    { "reconnect", VMM_PROP_U32, CFG(reconnect_s), "0",
      "client: retry a failed or lost connection every N seconds (0: never)", NULL, 0, 3600 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

static int check_fd(const struct chardev_config *cfg)
{
    if (cfg->in_fd < 0 && cfg->out_fd < 0)
        return vmm_set_error(EINVAL, "fd needs in=FD and/or out=FD");
    return 0;
}

static int check_path(const struct chardev_config *cfg)
{
    if (!cfg->path || !*cfg->path)
        return vmm_set_error(EINVAL, "%s needs path=",
                             cfg->backend == CHARDEV_FILE ? "file" : "socket");
    return 0;
}

static int check_socket(const struct chardev_config *cfg)
{
    if (check_path(cfg) < 0)
        return -1;
    if (strlen(cfg->path) > SUN_PATH_MAX)
        return vmm_set_error(ENAMETOOLONG, "socket path '%s' is longer than %zu bytes", cfg->path,
                             SUN_PATH_MAX);
    if (cfg->wait)
        return vmm_set_error(EINVAL, "wait=on is not supported: the machine never blocks for a "
                             "client (use wait=off)");
    if (cfg->server && cfg->reconnect_s)
        return vmm_set_error(EINVAL, "reconnect= is for client sockets (server=off)");
    return 0;
}

static const struct backend {
    const char *name;
    const char *help;
    const struct vmm_prop *props;
    int (*check)(const struct chardev_config *cfg);
} backends[] = {
    [CHARDEV_NULL] = { "null", "discards output, never any input", no_props, NULL },
    [CHARDEV_STDIO] = { "stdio", "the process's stdin and stdout", no_props, NULL },
    [CHARDEV_FD] = { "fd", "descriptors passed in (in=, out=; not closed)", fd_props, check_fd },
    [CHARDEV_FILE] = { "file", "output to a file", file_props, check_path },
    [CHARDEV_SOCKET] = { "socket", "Unix socket, listening or connecting", socket_props,
                         check_socket },
};

static const struct backend *find_backend(const char *name)
{
    for (size_t i = 0; i < VMM_ARRAY_SIZE(backends); i++)
        if (!strcmp(name, backends[i].name))
            return &backends[i];
    vmm_set_error(ENOENT, "unknown chardev backend '%s' (known: null, stdio, fd, file, socket)",
                  name);
    return NULL;
}

int chardev_list_types(vmm_type_fn fn, void *user_data)
{
    for (size_t i = 0; i < VMM_ARRAY_SIZE(backends); i++)
        if (fn(user_data, backends[i].name, backends[i].help))
            break;
    return 0;
}

int chardev_list_properties(const char *name, vmm_property_fn fn, void *user_data)
{
    const struct backend *b = find_backend(name);
    if (!b)
        return -1;
    vmm_props_list(id_prop, fn, user_data);
    return vmm_props_list(b->props, fn, user_data);
}

static int parse_opts(vmm_opts *opts, struct chardev_config *cfg)
{
    const char *name = vmm_opts_get(opts, "backend");
    if (!name)
        return vmm_set_error(EINVAL, "no chardev backend given");
    const struct backend *b = find_backend(name);
    if (!b)
        return -1;
    cfg->backend = (enum chardev_backend)(b - backends);
    if (vmm_props_init(b->props, cfg, name) < 0 || vmm_props_apply(id_prop, cfg, name, opts) < 0)
        return -1;
    if (!cfg->id || !*cfg->id)
        return vmm_set_error(EINVAL, "%s: chardevs need id=", name);
    if (vmm_props_apply(b->props, cfg, name, opts) < 0 || (b->check && b->check(cfg) < 0))
        return vmm_error_prefix("chardev '%s'", cfg->id);
    return vmm_opts_check_all_used(opts, name);
}

int chardev_parse(const char *spec, struct chardev_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->in_fd = cfg->out_fd = -1;
    if (!spec)
        return vmm_set_error(EINVAL, "no chardev spec given");
    vmm_opts *opts = vmm_opts_parse(spec, "backend");
    if (!opts)
        return -1;
    int ret = parse_opts(opts, cfg);
    vmm_opts_free(opts);
    if (ret < 0)
        chardev_config_release(cfg);
    return ret;
}

void chardev_config_release(struct chardev_config *cfg)
{
    free(cfg->id);
    free(cfg->path);
    cfg->id = cfg->path = NULL;
}
