/* vmm-img serve: export an image over NBD (qemu-nbd's role and options),
 * through libvmm's public NBD server API (libvmm/nbd.h). */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "img.h"
#include "libvmm/nbd.h"

enum { OPT_DISCARD = 300, OPT_DETECT_ZEROES, OPT_PID_FILE, OPT_IMAGE_OPTS, OPT_CACHE, OPT_AIO };

struct serve_opts {
    const char *fmt, *name, *desc, *socket, *port, *bind, *pid_file, *cache, *aio;
    bool read_only, persistent, image_opts, discard, detect_zeroes, detect_unmap;
    unsigned shared;
};

static int parse_serve_args(int argc, char **argv, struct serve_opts *o)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' }, { "format", required_argument, NULL, 'f' },
        { "read-only", no_argument, NULL, 'r' }, { "export-name", required_argument, NULL, 'x' },
        { "description", required_argument, NULL, 'D' }, { "persistent", no_argument, NULL, 't' },
        { "socket", required_argument, NULL, 'k' }, { "port", required_argument, NULL, 'p' },
        { "bind", required_argument, NULL, 'b' }, { "shared", required_argument, NULL, 'e' },
        { "discard", required_argument, NULL, OPT_DISCARD },
        { "detect-zeroes", required_argument, NULL, OPT_DETECT_ZEROES },
        { "pid-file", required_argument, NULL, OPT_PID_FILE },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS }, { "cache", required_argument, NULL, OPT_CACHE },
        { "aio", required_argument, NULL, OPT_AIO }, { "nocache", no_argument, NULL, 'n' }, { 0 } };
    int c;
    o->shared = 1;
    while ((c = getopt_long(argc, argv, ":f:rx:D:tk:p:b:e:nh", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': o->fmt = optarg; break;
        case 'r': o->read_only = true; break;
        case 'x': o->name = optarg; break;
        case 'D': o->desc = optarg; break;
        case 't': o->persistent = true; break;
        case 'k': o->socket = optarg; break;
        case 'p': o->port = optarg; break;
        case 'b': o->bind = optarg; break;
        case 'n': o->cache = "none"; break;
        case 'e': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end || n < 0 || n > 65536)
                return err(1, "Invalid shared device number '%s'", optarg);
            o->shared = (unsigned)n;
            break;
        }
        case OPT_DISCARD:
            if (!strcmp(optarg, "unmap") || !strcmp(optarg, "on"))
                o->discard = true;
            else if (strcmp(optarg, "ignore") && strcmp(optarg, "off"))
                return err(1, "Invalid discard mode '%s' (ignore or unmap)", optarg);
            break;
        case OPT_DETECT_ZEROES:
            if (!strcmp(optarg, "on") || !strcmp(optarg, "unmap")) {
                o->detect_zeroes = true;
                o->detect_unmap = !strcmp(optarg, "unmap");
            } else if (strcmp(optarg, "off")) {
                return err(1, "Invalid detect-zeroes mode '%s' (off, on or unmap)", optarg);
            }
            break;
        case OPT_PID_FILE: o->pid_file = optarg; break;
        case OPT_IMAGE_OPTS: o->image_opts = true; break;
        case OPT_CACHE: o->cache = optarg; break;
        case OPT_AIO: o->aio = optarg; break;
        case 'h': return usage_ok() + 2;
        default: return usage_bad_opt(c);
        }
    }
    if (optind != argc - 1)
        return usage_bad();
    if (o->detect_unmap && !o->discard)
        return err(1, "--detect-zeroes=unmap needs --discard=unmap");
    if (o->socket && (o->port || o->bind))
        return err(1, "-k cannot be combined with -p or -b");
    return 0;
}

static unsigned open_flags(const struct serve_opts *o)
{
    unsigned f = o->read_only ? 0 : VMM_BLOCK_RDWR;
    if (o->cache && (!strcmp(o->cache, "none") || !strcmp(o->cache, "directsync")))
        f |= VMM_BLOCK_NOCACHE;
    if (o->cache && !strcmp(o->cache, "unsafe"))
        f |= VMM_BLOCK_NO_FLUSH;
    if (o->aio && !strcmp(o->aio, "native"))
        f |= VMM_BLOCK_NATIVE_AIO;
    return f;
}

static void *signal_thread(void *arg)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    int sig;
    if (!sigwait(&set, &sig))
        vmm_nbd_server_stop(arg);
    return NULL;
}

/* Written whole under a temporary name and renamed, so whoever waits for
 * the file never reads it half-written. */
static int write_pid_file(const char *path)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, (int)getpid()) >= (int)sizeof(tmp))
        return err(-1, "Failed to write pid file '%s': %s", path, strerror(ENAMETOOLONG));
    FILE *f = fopen(tmp, "w");
    if (!f)
        return err(-1, "Failed to write pid file '%s': %s", path, strerror(errno));
    bool ok = fprintf(f, "%d\n", (int)getpid()) > 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) < 0) {
        int e = errno;
        unlink(tmp);
        return err(-1, "Failed to write pid file '%s': %s", path, strerror(e));
    }
    return 0;
}

int cmd_serve(int argc, char **argv)
{
    struct serve_opts o = { 0 };
    int r = parse_serve_args(argc, argv, &o);
    if (r)
        return r == 2 ? 0 : r;
    vmm_block *blk = open_image(argv[optind], o.fmt, open_flags(&o), o.image_opts);
    if (!blk)
        return 1;
    int ret = 1;
    vmm_nbd_server *srv = vmm_nbd_server_new(o.persistent ? 0 : VMM_NBD_SERVER_ONESHOT);
    unsigned ef = (o.read_only ? 0 : VMM_NBD_EXPORT_WRITABLE) | (o.discard ? VMM_NBD_EXPORT_DISCARD : 0) |
                  (o.detect_zeroes ? VMM_NBD_EXPORT_DETECT_ZEROES : 0);
    if (!srv || vmm_nbd_server_set_max_clients(srv, o.shared) < 0 ||
        vmm_nbd_server_add_export(srv, blk, o.name ? o.name : "", o.desc, ef) < 0 ||
        (o.socket ? vmm_nbd_server_listen_unix(srv, o.socket)
                  : vmm_nbd_server_listen_tcp(srv, o.bind, o.port)) < 0) {
        api_err(1);
        goto out;
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* every thread: only signal_thread takes them */
    signal(SIGPIPE, SIG_IGN);
    pthread_t sig;
    if (pthread_create(&sig, NULL, signal_thread, srv)) {
        err(1, "cannot start the signal thread");
        goto out;
    }
    pthread_detach(sig);
    if (vmm_nbd_server_start(srv) < 0) {
        api_err(1);
        goto out;
    }
    if (o.pid_file && write_pid_file(o.pid_file) < 0)
        goto out;
    vmm_nbd_server_wait(srv);
    ret = 0;
out:
    vmm_nbd_server_free(srv);
    if (vmm_block_close(blk) < 0 && !ret)
        ret = api_err(1);
    if (o.pid_file)
        unlink(o.pid_file);
    return ret;
}
