/* Protocol driver `nbd`: an NBD client as a block node.
 *
 * Addressing: nbd://host[:port]/export, nbd+tcp://..., nbd+unix:///export?
 * socket=PATH (qemu's and libnbd's syntax), or options server.type=unix|inet,
 * server.path / server.host, server.port, export.
 *
 * Threads: the block layer calls the methods from many threads at once.
 * Each connection has one reader thread that parses replies and hands each
 * to the request it answers (cookie -> waiting thread, nbd-proto.c); a
 * sending thread holds the connection's send lock only while its request is
 * on the wire, so many requests are in flight per connection.  When the
 * server advertises multi-conn, up to `multi-conn` connections are opened
 * and requests go round-robin.
 *
 * Reconnect: with reconnect-delay=N, a lost connection makes the requests
 * on it wait while a requesting thread reconnects (every 100 ms up to 1 s
 * apart); requests are sent again on the new connection.  After N seconds
 * without a server they fail with EIO, and later requests each try one
 * connect.  The export's size must not change across a reconnect. */
#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "block-int.h"
#include "nbd-proto.h"

#define NBD_MAX_CONNS 8

struct nbd_opts {
    char *server_type, *server_path, *server_host, *server_port, *export;
    uint32_t reconnect_delay;
    uint32_t multi_conn;
    bool structured;
};

static const struct vmm_prop nbd_open_props[] = {
    { "server.type", VMM_PROP_STR, offsetof(struct nbd_opts, server_type), NULL,
      "unix or inet (options form; a filename takes an nbd:// or nbd+unix:// URI)", NULL, 0, 0 },
    { "server.path", VMM_PROP_STR, offsetof(struct nbd_opts, server_path), NULL,
      "Unix socket path (server.type=unix)", NULL, 0, 0 },
    { "server.host", VMM_PROP_STR, offsetof(struct nbd_opts, server_host), NULL,
      "host name or address (server.type=inet)", NULL, 0, 0 },
    { "server.port", VMM_PROP_STR, offsetof(struct nbd_opts, server_port), "10809",
      "TCP port (server.type=inet)", NULL, 0, 0 },
    { "export", VMM_PROP_STR, offsetof(struct nbd_opts, export), NULL, "export name", NULL, 0, 0 },
    { "reconnect-delay", VMM_PROP_U32, offsetof(struct nbd_opts, reconnect_delay), "0",
      "seconds to pause I/O and retry after losing the server (0: fail at once)", NULL, 0, 3600 },
    { "multi-conn", VMM_PROP_U32, offsetof(struct nbd_opts, multi_conn), "4",
      "connections to open when the server allows multi-conn", NULL, 1, NBD_MAX_CONNS },
    { "structured-replies", VMM_PROP_BOOL, offsetof(struct nbd_opts, structured), "on",
      "negotiate structured replies (and base:allocation block status)", NULL, 0, 0 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

struct client_conn {
    struct nbd_conn c;
    pthread_t reader;
    bool reader_started;
    bool reconnecting;
    bool closing;
    pthread_cond_t state_cond;
    struct timespec dead_since;
};

struct nbd_state {
    struct nbd_address addr;
    struct nbd_export_info info;
    bool want_sr;
    uint32_t reconnect_delay;
    unsigned nconns;
    atomic_uint next_conn;
    struct client_conn conns[NBD_MAX_CONNS];
    pthread_mutex_t rmw_lock;   /* unaligned writes: read-modify-write */
};

/* ---- connections --------------------------------------------------------- */

static double elapsed_since(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t->tv_sec) + (double)(now.tv_nsec - t->tv_nsec) / 1e9;
}

static void *reader_main(void *arg)
{
    struct client_conn *cc = arg;
    while (nbd_conn_process_reply(&cc->c) == 0)
        ;
    if (!cc->closing)
        vmm_log(VMM_LOG_WARNING, "nbd", "%s", cc->c.dead_msg);
    shutdown(cc->c.fd, SHUT_RDWR);
    pthread_mutex_lock(&cc->c.lock);
    clock_gettime(CLOCK_MONOTONIC, &cc->dead_since);
    pthread_mutex_unlock(&cc->c.lock);
    nbd_conn_fail_all(&cc->c, NULL);
    return NULL;
}

/* Connect and shake hands; on success the fd and info are filled in. */
static int dial(struct nbd_state *s, int *fd_out, struct nbd_export_info *info)
{
    int fd = nbd_connect(&s->addr);
    if (fd < 0)
        return fd;
    if (nbd_client_handshake(fd, s->addr.export, s->want_sr, info) < 0) {
        int e = vmm_get_errno();
        close(fd);
        return -(e ? e : EIO);
    }
    *fd_out = fd;
    return 0;
}

static int conn_start(struct client_conn *cc, int fd, const struct nbd_export_info *info)
{
    cc->c.fd = fd;
    cc->c.info = *info;
    cc->c.dead = false;
    cc->c.dead_msg[0] = '\0';
    int e = pthread_create(&cc->reader, NULL, reader_main, cc);
    if (e) {
        cc->c.dead = true;
        errno = e;
        return vmm_set_error_errno("nbd: cannot start the reply reader");
    }
    cc->reader_started = true;
    return 0;
}

static void conn_init(struct client_conn *cc)
{
    memset(cc, 0, sizeof(*cc));
    cc->c.fd = -1;
    cc->c.dead = true;
    pthread_mutex_init(&cc->c.lock, NULL);
    pthread_mutex_init(&cc->c.send_lock, NULL);
    pthread_cond_init(&cc->state_cond, NULL);
}

/* Join the reader of a dead connection and close its socket. */
static void conn_reap(struct client_conn *cc)
{
    if (cc->reader_started) {
        pthread_join(cc->reader, NULL);
        cc->reader_started = false;
    }
    if (cc->c.fd >= 0)
        close(cc->c.fd);
    cc->c.fd = -1;
}

static int reconnect(struct block_node *bs, struct client_conn *cc)
{
    struct nbd_state *s = bs->opaque;
    conn_reap(cc);
    unsigned wait_ms = 100;
    for (;;) {
        int fd;
        struct nbd_export_info info;
        int ret = dial(s, &fd, &info);
        if (ret >= 0 && info.size != s->info.size) {
            close(fd);
            vmm_set_error(EIO, "%s: the export changed size across a reconnect (%" PRIu64 " -> %" PRIu64 ")",
                          bs->filename, s->info.size, info.size);
            return -EIO;
        }
        if (ret >= 0) {
            vmm_log(VMM_LOG_INFO, "nbd", "%s: reconnected", bs->filename);
            return conn_start(cc, fd, &info) < 0 ? -EIO : 0;
        }
        double left = (double)s->reconnect_delay - elapsed_since(&cc->dead_since);
        if (left <= 0) {
            vmm_error_prefix("%s: connection lost and reconnecting failed", bs->filename);
            return -EIO;
        }
        unsigned ms = left * 1000 < wait_ms ? (unsigned)(left * 1000) + 1 : wait_ms;
        nanosleep(&(struct timespec){ ms / 1000, (long)(ms % 1000) * 1000000L }, NULL);
        if (wait_ms < 1000)
            wait_ms *= 2;
    }
}

/* Make sure the connection is usable, reconnecting when allowed. */
static int conn_ensure_up(struct block_node *bs, struct client_conn *cc)
{
    struct nbd_state *s = bs->opaque;
    pthread_mutex_lock(&cc->c.lock);
    for (;;) {
        if (!cc->c.dead) {
            pthread_mutex_unlock(&cc->c.lock);
            return 0;
        }
        if (cc->closing || !s->reconnect_delay) {
            vmm_set_error(EIO, "%s: %s", bs->filename,
                          cc->c.dead_msg[0] ? cc->c.dead_msg : "not connected to the NBD server");
            pthread_mutex_unlock(&cc->c.lock);
            return -EIO;
        }
        if (cc->reconnecting) {
            pthread_cond_wait(&cc->state_cond, &cc->c.lock);
            continue;
        }
        cc->reconnecting = true;
        pthread_mutex_unlock(&cc->c.lock);
        int ret = reconnect(bs, cc);
        pthread_mutex_lock(&cc->c.lock);
        cc->reconnecting = false;
        pthread_cond_broadcast(&cc->state_cond);
        if (ret < 0) {
            pthread_mutex_unlock(&cc->c.lock);
            return ret;
        }
    }
}

/* ---- requests ------------------------------------------------------------ */

struct status_out {
    uint32_t len, flags;
};

static int send_request(struct client_conn *cc, struct nbd_req *r, const struct iovec *payload, int n)
{
    uint8_t hdr[NBD_REQUEST_SIZE];
    nbd_put32(hdr, NBD_REQUEST_MAGIC);
    nbd_put16(hdr + 4, r->flags);
    nbd_put16(hdr + 6, r->type);
    nbd_put64(hdr + 8, r->cookie);
    nbd_put64(hdr + 16, r->offset);
    nbd_put32(hdr + 24, r->length);
    struct iovec small[9], *iov = n + 1 <= 9 ? small : malloc(sizeof(*iov) * (size_t)(n + 1));
    if (!iov)
        return -ENOMEM;
    iov[0] = (struct iovec){ hdr, sizeof(hdr) };
    for (int i = 0; i < n; i++)
        iov[i + 1] = payload[i];
    pthread_mutex_lock(&cc->c.send_lock);
    int ret = nbd_writev_full(cc->c.fd, iov, n + 1);
    pthread_mutex_unlock(&cc->c.send_lock);
    if (iov != small)
        free(iov);
    return ret;
}

/* One request, waited for; retried after a reconnect. */
static int request(struct block_node *bs, uint16_t type, uint16_t flags, uint64_t offset,
                   uint32_t length, const struct iovec *iov, int iovcnt, struct status_out *st)
{
    struct nbd_state *s = bs->opaque;
    struct client_conn *cc = &s->conns[atomic_fetch_add(&s->next_conn, 1) % s->nconns];
    for (;;) {
        int ret = conn_ensure_up(bs, cc);
        if (ret < 0)
            return ret;
        struct nbd_req r = { .type = type, .flags = flags, .offset = offset, .length = length };
        if (type == NBD_CMD_READ) {
            r.iov = iov;
            r.iovcnt = iovcnt;
        }
        pthread_cond_init(&r.cond, NULL);
        pthread_mutex_lock(&cc->c.lock);
        if (cc->c.dead) {
            pthread_mutex_unlock(&cc->c.lock);
            pthread_cond_destroy(&r.cond);
            continue;
        }
        r.cookie = ++cc->c.next_cookie;
        r.next = cc->c.inflight;
        cc->c.inflight = &r;
        pthread_mutex_unlock(&cc->c.lock);
        if (send_request(cc, &r, iov, type == NBD_CMD_WRITE ? iovcnt : 0) < 0)
            shutdown(cc->c.fd, SHUT_RDWR); /* the reader fails everything in flight */
        pthread_mutex_lock(&cc->c.lock);
        while (!r.done)
            pthread_cond_wait(&r.cond, &cc->c.lock);
        pthread_mutex_unlock(&cc->c.lock);
        pthread_cond_destroy(&r.cond);
        if (r.lost && s->reconnect_delay && !cc->closing)
            continue;
        if (r.lost) {
            vmm_set_error(EIO, "%s: %s request failed: %s", bs->filename, nbd_cmd_name(type),
                          cc->c.dead_msg);
            return -EIO;
        }
        if (r.err) {
            vmm_set_error(-r.err, "%s: %s at %" PRIu64 "+%u failed on the NBD server: %s", bs->filename,
                          nbd_cmd_name(type), offset, length, r.msg);
            return r.err;
        }
        if (st) {
            st->len = r.got_status ? r.status_len : length;
            st->flags = r.got_status ? r.status_flags : 0;
        }
        return 0;
    }
}

/* The iovec entries covering [off, off+len) of `iov`. */
static int iov_slice(const struct iovec *iov, int cnt, uint64_t off, uint64_t len,
                     struct iovec *out)
{
    int n = 0;
    for (int i = 0; i < cnt && len; i++) {
        if (off >= iov[i].iov_len) {
            off -= iov[i].iov_len;
            continue;
        }
        uint64_t l = iov[i].iov_len - off < len ? iov[i].iov_len - off : len;
        out[n++] = (struct iovec){ (uint8_t *)iov[i].iov_base + off, (size_t)l };
        len -= l;
        off = 0;
    }
    return n;
}

static void iov_copy(const struct iovec *iov, int cnt, uint8_t *buf, uint64_t len, bool to_iov)
{
    for (int i = 0; i < cnt && len; i++) {
        size_t n = iov[i].iov_len < len ? iov[i].iov_len : (size_t)len;
        if (to_iov)
            memcpy(iov[i].iov_base, buf, n);
        else
            memcpy(buf, iov[i].iov_base, n);
        buf += n;
        len -= n;
    }
}

/* Reads and writes, split at the server's maximum block size. */
static int rw_aligned(struct block_node *bs, uint16_t type, uint16_t flags, uint64_t offset,
                      uint64_t bytes, const struct iovec *iov, int iovcnt)
{
    struct nbd_state *s = bs->opaque;
    uint64_t max = s->info.max_block & ~(uint64_t)(s->info.min_block - 1);
    if (bytes <= max)
        return request(bs, type, flags, offset, (uint32_t)bytes, iov, iovcnt, NULL);
    struct iovec *part = malloc(sizeof(*part) * (size_t)iovcnt);
    if (!part) {
        vmm_set_error(ENOMEM, "out of memory");
        return -ENOMEM;
    }
    int ret = 0;
    for (uint64_t done = 0; done < bytes && ret >= 0; done += max) {
        uint64_t n = bytes - done < max ? bytes - done : max;
        int pc = iov_slice(iov, iovcnt, done, n, part);
        ret = request(bs, type, flags, offset + done, (uint32_t)n, part, pc, NULL);
    }
    free(part);
    return ret;
}

/* A request the server's minimum block size does not allow: go through an
 * aligned bounce buffer (writes: read-modify-write under a lock). */
static int rw_bounce(struct block_node *bs, bool write, uint16_t flags, uint64_t offset, uint64_t bytes,
                     const struct iovec *iov, int iovcnt)
{
    struct nbd_state *s = bs->opaque;
    uint64_t a = s->info.min_block;
    uint64_t start = offset / a * a, end = (offset + bytes + a - 1) / a * a;
    if (end > bs->size)
        end = bs->size;
    uint8_t *buf = malloc(end - start);
    if (!buf) {
        vmm_set_error(ENOMEM, "out of memory");
        return -ENOMEM;
    }
    struct iovec whole = { buf, end - start };
    if (write)
        pthread_mutex_lock(&s->rmw_lock);
    int ret = rw_aligned(bs, NBD_CMD_READ, 0, start, end - start, &whole, 1);
    if (ret >= 0 && !write)
        iov_copy(iov, iovcnt, buf + (offset - start), bytes, true);
    if (ret >= 0 && write) {
        iov_copy(iov, iovcnt, buf + (offset - start), bytes, false);
        ret = rw_aligned(bs, NBD_CMD_WRITE, flags, start, end - start, &whole, 1);
    }
    if (write)
        pthread_mutex_unlock(&s->rmw_lock);
    free(buf);
    return ret;
}

static bool aligned(struct nbd_state *s, struct block_node *bs, uint64_t offset, uint64_t bytes)
{
    uint64_t a = s->info.min_block;
    return !(offset % a) && (!(bytes % a) || offset + bytes == bs->size);
}

static int nbd_preadv(struct block_node *bs, uint64_t offset, uint64_t bytes,
                      const struct iovec *iov, int iovcnt, unsigned flags)
{
    (void)flags;
    struct nbd_state *s = bs->opaque;
    if (!aligned(s, bs, offset, bytes))
        return rw_bounce(bs, false, 0, offset, bytes, iov, iovcnt);
    return rw_aligned(bs, NBD_CMD_READ, 0, offset, bytes, iov, iovcnt);
}

static uint16_t fua_flag(struct nbd_state *s, unsigned flags)
{
    return (flags & BLOCK_REQ_FUA) && (s->info.flags & NBD_FLAG_SEND_FUA) ? NBD_CMD_FLAG_FUA : 0;
}

/* FUA the server cannot honour becomes a flush after the request. */
static int fua_fallback(struct block_node *bs, unsigned flags, int ret);

static int nbd_pwritev(struct block_node *bs, uint64_t offset, uint64_t bytes,
                       const struct iovec *iov, int iovcnt, unsigned flags)
{
    struct nbd_state *s = bs->opaque;
    uint16_t f = fua_flag(s, flags);
    int ret = aligned(s, bs, offset, bytes) ? rw_aligned(bs, NBD_CMD_WRITE, f, offset, bytes, iov, iovcnt)
                                            : rw_bounce(bs, true, f, offset, bytes, iov, iovcnt);
    return fua_fallback(bs, flags, ret);
}

static int nbd_flush(struct block_node *bs)
{
    struct nbd_state *s = bs->opaque;
    if (!(s->info.flags & NBD_FLAG_SEND_FLUSH))
        return 0;
    return request(bs, NBD_CMD_FLUSH, 0, 0, 0, NULL, 0, NULL);
}

static int fua_fallback(struct block_node *bs, unsigned flags, int ret)
{
    struct nbd_state *s = bs->opaque;
    if (ret >= 0 && (flags & BLOCK_REQ_FUA) && !(s->info.flags & NBD_FLAG_SEND_FUA))
        ret = nbd_flush(bs);
    return ret;
}

/* Largest trim / write-zeroes request: 1 GiB, a multiple of any block size. */
#define NBD_MAX_ZERO_CHUNK (1ull << 30)

/* Send a payload-less command over [offset, offset+bytes) in chunks. */
static int ranged_chunks(struct block_node *bs, uint16_t type, uint16_t flags, uint64_t offset,
                         uint64_t bytes, uint64_t chunk)
{
    int ret = 0;
    while (bytes && ret >= 0) {
        uint64_t n = bytes < chunk ? bytes : chunk;
        ret = request(bs, type, flags, offset, (uint32_t)n, NULL, 0, NULL);
        offset += n;
        bytes -= n;
    }
    return ret;
}

static int ranged(struct block_node *bs, uint16_t type, uint16_t flags, uint64_t offset, uint64_t bytes)
{
    return ranged_chunks(bs, type, flags, offset, bytes, NBD_MAX_ZERO_CHUNK);
}

static int nbd_pdiscard(struct block_node *bs, uint64_t offset, uint64_t bytes)
{
    struct nbd_state *s = bs->opaque;
    if (!(s->info.flags & NBD_FLAG_SEND_TRIM))
        return -ENOTSUP;
    /* Trim is advisory: only the aligned middle is sent. */
    uint64_t a = s->info.min_block;
    uint64_t start = (offset + a - 1) / a * a;
    uint64_t end = offset + bytes == bs->size ? bs->size : (offset + bytes) / a * a;
    return end > start ? ranged(bs, NBD_CMD_TRIM, 0, start, end - start) : 0;
}

/* Largest prefetch request: well inside any server's payload limit. */
#define NBD_MAX_CACHE_CHUNK (32u << 20)

static int nbd_cache(struct block_node *bs, uint64_t offset, uint64_t bytes)
{
    struct nbd_state *s = bs->opaque;
    if (!(s->info.flags & NBD_FLAG_SEND_CACHE))
        return -ENOTSUP;
    return ranged_chunks(bs, NBD_CMD_CACHE, 0, offset, bytes, NBD_MAX_CACHE_CHUNK);
}

static int nbd_pwrite_zeroes(struct block_node *bs, uint64_t offset, uint64_t bytes, unsigned flags)
{
    struct nbd_state *s = bs->opaque;
    if (!(s->info.flags & NBD_FLAG_SEND_WRITE_ZEROES) ||
        ((flags & BLOCK_REQ_NO_FALLBACK) && !(s->info.flags & NBD_FLAG_SEND_FAST_ZERO))) {
        vmm_set_error(ENOTSUP, "%s: the NBD server cannot write zeroes%s", bs->filename,
                      flags & BLOCK_REQ_NO_FALLBACK ? " fast" : "");
        return -ENOTSUP;
    }
    if (!aligned(s, bs, offset, bytes)) {
        if (flags & BLOCK_REQ_NO_FALLBACK) {
            vmm_set_error(ENOTSUP, "%s: unaligned fast zeroing", bs->filename);
            return -ENOTSUP;
        }
        return -ENOTSUP; /* the core writes zero buffers (read-modify-write here) */
    }
    uint16_t f = fua_flag(s, flags) | (flags & BLOCK_REQ_MAY_UNMAP ? 0 : NBD_CMD_FLAG_NO_HOLE) |
                 (flags & BLOCK_REQ_NO_FALLBACK ? NBD_CMD_FLAG_FAST_ZERO : 0);
    return fua_fallback(bs, flags, ranged(bs, NBD_CMD_WRITE_ZEROES, f, offset, bytes));
}

static int nbd_block_status(struct block_node *bs, uint64_t offset, uint64_t bytes,
                            struct block_status *out)
{
    struct nbd_state *s = bs->opaque;
    out->map_offset = offset;
    out->file = bs;
    out->bytes = bytes;
    out->flags = BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_OFFSET_VALID;
    if (!s->info.base_allocation)
        return 0;
    uint64_t a = s->info.min_block;
    uint64_t max = (UINT32_MAX / a) * a;
    uint64_t len = bytes < max ? bytes : max;
    struct status_out st;
    int ret = request(bs, NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE, offset, (uint32_t)len, NULL, 0, &st);
    if (ret < 0)
        return ret;
    out->bytes = st.len;
    out->flags = BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_OFFSET_VALID |
                 (st.flags & NBD_STATE_HOLE ? 0 : BLOCK_STATUS_DATA) |
                 (st.flags & NBD_STATE_ZERO ? BLOCK_STATUS_ZERO : 0);
    return 0;
}

/* ---- open / close ------------------------------------------------------- */

static int address_from_opts(struct block_node *bs, struct nbd_opts *o, struct nbd_address *a)
{
    if (bs->filename[0]) {
        if (o->server_type || o->server_path || o->server_host)
            return vmm_set_error(EINVAL, "nbd: give either a URI or server.* options, not both");
        if (nbd_parse_uri(bs->filename, a) < 0)
            return -1;
        if (o->export) {
            free(a->export);
            a->export = strdup(o->export);
        }
        return 0;
    }
    memset(a, 0, sizeof(*a));
    const char *type = o->server_type ? o->server_type : o->server_path ? "unix" : "inet";
    if (!strcmp(type, "unix")) {
        if (!o->server_path)
            return vmm_set_error(EINVAL, "nbd: server.type=unix needs server.path");
        a->is_unix = true;
        a->path = strdup(o->server_path);
    } else if (!strcmp(type, "inet")) {
        if (!o->server_host)
            return vmm_set_error(EINVAL, "nbd: needs a URI (nbd://host/export) or server.host / server.path");
        a->host = strdup(o->server_host);
        a->port = strdup(o->server_port ? o->server_port : "10809");
    } else {
        return vmm_set_error(EINVAL, "nbd: server.type: '%s' is not unix or inet", type);
    }
    a->export = strdup(o->export ? o->export : "");
    char *uri = nbd_address_to_uri(a);
    if (!uri)
        return vmm_set_error(ENOMEM, "out of memory");
    free(bs->filename);
    bs->filename = uri;
    return 0;
}

static void nbd_close(struct block_node *bs)
{
    struct nbd_state *s = bs->opaque;
    for (unsigned i = 0; i < s->nconns; i++) {
        struct client_conn *cc = &s->conns[i];
        pthread_mutex_lock(&cc->c.lock);
        cc->closing = true;
        bool up = !cc->c.dead;
        pthread_mutex_unlock(&cc->c.lock);
        if (up) {
            struct nbd_req disc = { .type = NBD_CMD_DISC };
            send_request(cc, &disc, NULL, 0);
            shutdown(cc->c.fd, SHUT_RDWR);
        }
        conn_reap(cc);
        pthread_mutex_destroy(&cc->c.lock);
        pthread_mutex_destroy(&cc->c.send_lock);
        pthread_cond_destroy(&cc->state_cond);
    }
    pthread_mutex_destroy(&s->rmw_lock);
    nbd_address_clear(&s->addr);
}

static int nbd_open(struct block_node *bs, vmm_opts *opts, unsigned flags)
{
    struct nbd_state *s = bs->opaque;
    struct nbd_opts o = { 0 };
    vmm_props_init(nbd_open_props, &o, "nbd");
    int ret = -EINVAL;
    if (opts && vmm_props_apply(nbd_open_props, &o, "nbd", opts) < 0)
        goto out;
    if (address_from_opts(bs, &o, &s->addr) < 0)
        goto out;
    s->want_sr = o.structured;
    s->reconnect_delay = o.reconnect_delay;
    pthread_mutex_init(&s->rmw_lock, NULL);
    int fd;
    if ((ret = dial(s, &fd, &s->info)) < 0) {
        vmm_error_prefix("%s", bs->filename);
        goto fail;
    }
    if ((flags & BLOCK_O_RDWR) && (s->info.flags & NBD_FLAG_READ_ONLY)) {
        close(fd);
        ret = -EACCES;
        vmm_set_error(EACCES, "%s: the NBD export is read-only", bs->filename);
        goto fail;
    }
    unsigned want = s->info.flags & NBD_FLAG_CAN_MULTI_CONN ? o.multi_conn : 1;
    conn_init(&s->conns[0]);
    s->nconns = 1;
    if (conn_start(&s->conns[0], fd, &s->info) < 0) {
        close(fd);
        s->conns[0].c.fd = -1;
        ret = -EIO;
        nbd_close(bs);
        goto out;
    }
    while (s->nconns < want) {
        struct nbd_export_info info;
        struct client_conn *cc = &s->conns[s->nconns];
        if (dial(s, &fd, &info) < 0 || info.size != s->info.size)
            break; /* fewer connections: still correct */
        conn_init(cc);
        s->nconns++;
        if (conn_start(cc, fd, &info) < 0)
            break;
    }
    vmm_clear_error();
    bs->size = s->info.size;
    bs->request_alignment = s->info.min_block;
    ret = 0;
    goto out;
fail:
    pthread_mutex_destroy(&s->rmw_lock);
    nbd_address_clear(&s->addr);
out:
    vmm_props_release(nbd_open_props, &o);
    return ret;
}

static int nbd_get_info(struct block_node *bs, struct block_info *info)
{
    (void)bs;
    (void)info;
    return 0;
}

const struct block_driver block_driver_nbd = {
    .name = "nbd",
    .help = "NBD client: nbd://host[:port]/export, nbd+unix:///export?socket=PATH",
    .is_format = false,
    .state_size = sizeof(struct nbd_state),
    .open_props = nbd_open_props,
    .filename_optional = true,
    .write_flags = BLOCK_REQ_FUA,
    .cache = nbd_cache,
    .open = nbd_open,
    .close = nbd_close,
    .preadv = nbd_preadv,
    .pwritev = nbd_pwritev,
    .flush = nbd_flush,
    .pdiscard = nbd_pdiscard,
    .pwrite_zeroes = nbd_pwrite_zeroes,
    .block_status = nbd_block_status,
    .get_info = nbd_get_info,
};
