/* Parsing "-chardev" specs: "BACKEND,id=ID,key=value,..." with QEMU's
 * names.  Pure (no fds opened): the fuzzer drives it. */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include "chardev/chardev.h"
#include "util/util.h"

static const char *const backend_names[] = {
    [CHARDEV_NULL] = "null", [CHARDEV_STDIO] = "stdio", [CHARDEV_FD] = "fd",
    [CHARDEV_FILE] = "file", [CHARDEV_SOCKET] = "socket",
};

static int parse_backend(const char *name, enum chardev_backend *out)
{
    for (size_t i = 0; i < VMM_ARRAY_SIZE(backend_names); i++) {
        if (!strcmp(name, backend_names[i])) {
            *out = (enum chardev_backend)i;
            return 0;
        }
    }
    return vmm_set_error(EINVAL, "unknown chardev backend '%s' (known: null, stdio, fd, file, "
                         "socket)", name);
}

/* key=N with min <= N <= max; *out keeps `absent` when the key is not given. */
static int parse_number(vmm_opts *opts, const char *key, long min, long max, long absent,
                        const char *what, long *out)
{
    const char *text = vmm_opts_get(opts, key);
    *out = absent;
    if (!text)
        return 0;
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < min || v > max)
        return vmm_set_error(EINVAL, "%s=%s: %s", key, text, what);
    *out = v;
    return 0;
}

static int parse_fd(vmm_opts *opts, const char *key, int *out)
{
    long v;
    int ret = parse_number(opts, key, 0, INT_MAX, -1, "not a file descriptor number", &v);
    *out = (int)v;
    return ret;
}

static int parse_flag(vmm_opts *opts, const char *key, bool def, bool *out)
{
    const char *text = vmm_opts_get(opts, key);
    *out = def;
    if (text && !vmm_parse_bool(text, out))
        return vmm_set_error(EINVAL, "%s=%s: expected on or off", key, text);
    return 0;
}

static int need_path(vmm_opts *opts, struct chardev_config *cfg)
{
    const char *path = vmm_opts_get(opts, "path");
    if (!path || !*path)
        return vmm_set_error(EINVAL, "%s needs path=", backend_names[cfg->backend]);
    cfg->path = strdup(path);
    return cfg->path ? 0 : vmm_set_error(ENOMEM, "out of memory");
}

static int parse_socket(vmm_opts *opts, struct chardev_config *cfg)
{
    bool wait;
    long reconnect;
    if (need_path(opts, cfg) < 0 || parse_flag(opts, "server", false, &cfg->server) < 0 ||
        parse_flag(opts, "wait", false, &wait) < 0 ||
        parse_number(opts, "reconnect", 0, 3600, 0, "expected seconds (0 to 3600)", &reconnect) < 0)
        return -1;
    cfg->reconnect_s = (uint32_t)reconnect;
    if (strlen(cfg->path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return vmm_set_error(ENAMETOOLONG, "socket path '%s' is longer than %zu bytes", cfg->path,
                             sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
    if (wait)
        return vmm_set_error(EINVAL, "wait=on is not supported: the machine never blocks for a "
                             "client (use wait=off)");
    if (cfg->server && cfg->reconnect_s)
        return vmm_set_error(EINVAL, "reconnect= is for client sockets (server=off)");
    return 0;
}

static int parse_backend_keys(vmm_opts *opts, struct chardev_config *cfg)
{
    switch (cfg->backend) {
    case CHARDEV_NULL:
    case CHARDEV_STDIO:
        return 0;
    case CHARDEV_FD:
        if (parse_fd(opts, "in", &cfg->in_fd) < 0 || parse_fd(opts, "out", &cfg->out_fd) < 0)
            return -1;
        if (cfg->in_fd < 0 && cfg->out_fd < 0)
            return vmm_set_error(EINVAL, "fd needs in=FD and/or out=FD");
        return 0;
    case CHARDEV_FILE:
        return need_path(opts, cfg) < 0 ? -1 : parse_flag(opts, "append", false, &cfg->append);
    case CHARDEV_SOCKET:
        return parse_socket(opts, cfg);
    }
    return vmm_set_error(EINVAL, "bad backend");
}

static int parse_opts(vmm_opts *opts, struct chardev_config *cfg)
{
    const char *backend = vmm_opts_get(opts, "backend");
    const char *id = vmm_opts_get(opts, "id");
    if (!backend)
        return vmm_set_error(EINVAL, "no chardev backend given");
    if (parse_backend(backend, &cfg->backend) < 0)
        return -1;
    if (!id || !*id)
        return vmm_set_error(EINVAL, "%s: chardevs need id=", backend);
    cfg->id = strdup(id);
    if (!cfg->id)
        return vmm_set_error(ENOMEM, "out of memory");
    if (parse_backend_keys(opts, cfg) < 0)
        return vmm_error_prefix("chardev '%s'", cfg->id);
    return vmm_opts_check_all_used(opts, backend);
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
