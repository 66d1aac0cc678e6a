/* The NBD server (libvmm/nbd.h): exports vmm_block handles.
 *
 * Threads: vmm_nbd_server_start runs an accept thread (poll on the listening
 * sockets and a stop pipe).  Each client gets a thread that runs the
 * handshake and then reads requests; requests go to a queue served by
 * CLIENT_WORKERS worker threads of that client, which call the synchronous
 * vmm_block API (thread-safe) and send replies under the client's send
 * lock, so replies may come out of order.  The reader stops taking requests
 * while MAX_QUEUED are waiting.  No GLib: plain pthreads and poll.
 *
 * Hostile clients: everything is length-checked before it is allocated or
 * read.  A bad magic, an oversized write or option, or a violation that
 * leaves the stream unframed drops that client only; an out-of-range or
 * malformed request gets an error reply (structured, with a message, when
 * negotiated).  Requests on other connections and the export go on. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include "libvmm/nbd.h"
#include "nbd-proto.h"
#include "nbd-server.h"
#include "util/util.h"

#define CLIENT_WORKERS 8
#define MAX_QUEUED 64
#define MAX_LISTENERS 8
#define MAX_OPTIONS 256              /* per handshake: more is a denial of service */
#define SRV_MAX_PAYLOAD NBD_MAX_PAYLOAD
#define SRV_PREF_BLOCK 4096u
#define BASE_ALLOC_ID 1u
#define MAX_EXTENTS 2048             /* per block status reply */

struct srv_export {
    vmm_block *blk;
    char *name, *description;
    unsigned flags;
    uint64_t size;
    struct srv_export *next;
};

struct srv_req {
    uint16_t flags, type;
    uint64_t cookie, offset;
    uint32_t length;
    uint8_t *data;                    /* WRITE payload */
    struct srv_req *next;
};

struct srv_client {
    vmm_nbd_server *srv;
    int fd;
    struct srv_export *exp;
    bool structured, base_alloc, no_zeroes;
    pthread_t thread;
    pthread_mutex_t lock;             /* queue */
    pthread_cond_t cond;
    struct srv_req *head, *tail;
    unsigned queued;
    bool quit;
    pthread_mutex_t send_lock;
    pthread_t workers[CLIENT_WORKERS];
    unsigned nworkers;
    struct srv_client *next;
};

struct vmm_nbd_server {
    unsigned flags, max_clients;
    struct srv_export *exports;
    int listen_fds[MAX_LISTENERS];
    char *unix_paths[MAX_LISTENERS];
    unsigned nlisten;
    int stop_pipe[2];
    pthread_t accept_thread;
    bool started;
    pthread_mutex_t lock;             /* clients, counters, state */
    pthread_cond_t cond;
    struct srv_client *clients;
    unsigned nclients;
    bool had_client, stopping, stopped;
};

static void srv_log(const char *fmt, ...) VMM_PRINTF(1, 2);
static void srv_log(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    vmm_log(VMM_LOG_WARNING, "nbd-server", "%s", msg);
}

/* ---- handshake ----------------------------------------------------------- */

static int send_rep(struct srv_client *cl, uint32_t opt, uint32_t type, const void *data, uint32_t len)
{
    uint8_t hdr[20];
    nbd_put64(hdr, NBD_OPT_REPLY_MAGIC);
    nbd_put32(hdr + 8, opt);
    nbd_put32(hdr + 12, type);
    nbd_put32(hdr + 16, len);
    struct iovec iov[2] = { { hdr, 20 }, { (void *)data, len } };
    return nbd_writev_full(cl->fd, iov, len ? 2 : 1);
}

static int send_rep_err(struct srv_client *cl, uint32_t opt, uint32_t type, const char *msg)
{
    return send_rep(cl, opt, type, msg, (uint32_t)strlen(msg));
}

static struct srv_export *find_export(vmm_nbd_server *srv, const char *name)
{
    struct srv_export *e = srv->exports;
    if (!*name) /* the default export: "" or, failing that, the first one */
        for (struct srv_export *x = srv->exports; x; x = x->next)
            if (!*x->name)
                return x;
    for (; e; e = e->next)
        if (!*name || !strcmp(e->name, name))
            return e;
    return NULL;
}

static uint16_t export_flags(vmm_nbd_server *srv, const struct srv_export *e)
{
    uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_DF |
                 NBD_FLAG_SEND_CACHE;
    if (e->flags & VMM_NBD_EXPORT_WRITABLE)
        f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    else
        f |= NBD_FLAG_READ_ONLY;
    if (srv->max_clients != 1)
        f |= NBD_FLAG_CAN_MULTI_CONN;
    return f;
}

/* Parse "u32 len, name" at the start of an option's data. */
static int parse_name(const uint8_t *d, uint32_t len, char *name, uint32_t *used)
{
    if (len < 4)
        return -1;
    uint32_t n = nbd_get32(d);
    if (n > NBD_MAX_STRING || n > len - 4)
        return -1;
    memcpy(name, d + 4, n);
    name[n] = '\0';
    if (strlen(name) != n)
        return -1; /* NUL inside */
    *used = 4 + n;
    return 0;
}

static int opt_info_go(struct srv_client *cl, uint32_t opt, const uint8_t *d, uint32_t len, bool *go)
{
    char name[NBD_MAX_STRING + 1];
    uint32_t at;
    if (parse_name(d, len, name, &at) < 0 || len - at < 2 || len - at - 2 != 2u * nbd_get16(d + at))
        return send_rep_err(cl, opt, NBD_REP_ERR_INVALID, "malformed INFO/GO request");
    struct srv_export *e = find_export(cl->srv, name);
    if (!e)
        return send_rep_err(cl, opt, NBD_REP_ERR_UNKNOWN, "no such export");
    uint16_t nreq = nbd_get16(d + at);
    uint8_t buf[14 + NBD_MAX_STRING];
    nbd_put16(buf, NBD_INFO_EXPORT);
    nbd_put64(buf + 2, e->size);
    nbd_put16(buf + 10, export_flags(cl->srv, e));
    int r = send_rep(cl, opt, NBD_REP_INFO, buf, 12);
    for (uint16_t i = 0; i < nreq && r >= 0; i++) {
        uint16_t t = nbd_get16(d + at + 2 + 2u * i);
        const char *s = t == NBD_INFO_NAME ? e->name : t == NBD_INFO_DESCRIPTION ? e->description : NULL;
        if (s && *s) {
            size_t n = strlen(s);
            nbd_put16(buf, t);
            memcpy(buf + 2, s, n);
            r = send_rep(cl, opt, NBD_REP_INFO, buf, (uint32_t)(2 + n));
        }
    }
    nbd_put16(buf, NBD_INFO_BLOCK_SIZE);
    nbd_put32(buf + 2, 1);
    nbd_put32(buf + 6, SRV_PREF_BLOCK);
    nbd_put32(buf + 10, SRV_MAX_PAYLOAD);
    if (r >= 0)
        r = send_rep(cl, opt, NBD_REP_INFO, buf, 14);
    if (r >= 0)
        r = send_rep(cl, opt, NBD_REP_ACK, NULL, 0);
    if (r >= 0 && opt == NBD_OPT_GO) {
        cl->exp = e;
        *go = true;
    }
    return r;
}

static int opt_list(struct srv_client *cl, uint32_t len)
{
    if (len)
        return send_rep_err(cl, NBD_OPT_LIST, NBD_REP_ERR_INVALID, "LIST takes no data");
    uint8_t buf[4 + 2 * NBD_MAX_STRING];
    for (struct srv_export *e = cl->srv->exports; e; e = e->next) {
        size_t n = strlen(e->name), dn = e->description ? strlen(e->description) : 0;
        nbd_put32(buf, (uint32_t)n);
        memcpy(buf + 4, e->name, n);
        memcpy(buf + 4 + n, e->description ? e->description : "", dn);
        if (send_rep(cl, NBD_OPT_LIST, NBD_REP_SERVER, buf, (uint32_t)(4 + n + dn)) < 0)
            return -1;
    }
    return send_rep(cl, NBD_OPT_LIST, NBD_REP_ACK, NULL, 0);
}

static int opt_meta(struct srv_client *cl, uint32_t opt, const uint8_t *d, uint32_t len)
{
    char name[NBD_MAX_STRING + 1];
    uint32_t at;
    if (parse_name(d, len, name, &at) < 0 || len - at < 4)
        return send_rep_err(cl, opt, NBD_REP_ERR_INVALID, "malformed meta context request");
    if (opt == NBD_OPT_SET_META_CONTEXT && !cl->structured)
        return send_rep_err(cl, opt, NBD_REP_ERR_INVALID, "structured replies must be negotiated first");
    if (!find_export(cl->srv, name))
        return send_rep_err(cl, opt, NBD_REP_ERR_UNKNOWN, "no such export");
    uint32_t nq = nbd_get32(d + at);
    at += 4;
    bool want = opt == NBD_OPT_LIST_META_CONTEXT && nq == 0;
    for (uint32_t i = 0; i < nq; i++) {
        if (len - at < 4 || nbd_get32(d + at) > len - at - 4)
            return send_rep_err(cl, opt, NBD_REP_ERR_INVALID, "malformed meta context query");
        uint32_t ql = nbd_get32(d + at);
        const char *q = (const char *)d + at + 4;
        size_t bl = strlen(NBD_META_BASE_ALLOCATION);
        if ((ql == bl && !memcmp(q, NBD_META_BASE_ALLOCATION, bl)) ||
            (opt == NBD_OPT_LIST_META_CONTEXT && ql == 5 && !memcmp(q, "base:", 5)))
            want = true;
        at += 4 + ql;
    }
    if (at != len)
        return send_rep_err(cl, opt, NBD_REP_ERR_INVALID, "trailing data in meta context request");
    if (opt == NBD_OPT_SET_META_CONTEXT)
        cl->base_alloc = want;
    if (want) {
        uint8_t buf[4 + 16];
        nbd_put32(buf, BASE_ALLOC_ID);
        memcpy(buf + 4, NBD_META_BASE_ALLOCATION, strlen(NBD_META_BASE_ALLOCATION));
        if (send_rep(cl, opt, NBD_REP_META_CONTEXT, buf, 4 + (uint32_t)strlen(NBD_META_BASE_ALLOCATION)) < 0)
            return -1;
    }
    return send_rep(cl, opt, NBD_REP_ACK, NULL, 0);
}

static int opt_export_name(struct srv_client *cl, const uint8_t *d, uint32_t len)
{
    char name[NBD_MAX_STRING + 1];
    memcpy(name, d, len);
    name[len] = '\0';
    struct srv_export *e = find_export(cl->srv, name);
    if (!e) {
        srv_log("client asked for unknown export '%s' with NBD_OPT_EXPORT_NAME: dropped", name);
        return -1; /* the protocol offers no error here: hang up */
    }
    uint8_t buf[10 + 124] = { 0 };
    nbd_put64(buf, e->size);
    nbd_put16(buf + 8, export_flags(cl->srv, e));
    cl->exp = e;
    cl->structured = cl->base_alloc = false; /* EXPORT_NAME keeps the old reply format */
    return nbd_write_full(cl->fd, buf, cl->no_zeroes ? 10 : sizeof(buf));
}

/* Option haggling; returns 0 with cl->exp set to enter transmission. */
int nbd_server_handshake(struct srv_client *cl)
{
    uint8_t hello[18];
    nbd_put64(hello, NBD_MAGIC);
    nbd_put64(hello + 8, NBD_IHAVEOPT);
    nbd_put16(hello + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    uint8_t cf[4];
    if (nbd_write_full(cl->fd, hello, sizeof(hello)) < 0 || nbd_read_full(cl->fd, cf, 4) < 0)
        return -1;
    uint32_t cflags = nbd_get32(cf);
    if (cflags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
        srv_log("client sent unknown handshake flags %#x: dropped", cflags);
        return -1;
    }
    cl->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;
    uint8_t *data = malloc(NBD_MAX_OPTION_DATA);
    if (!data)
        return -1;
    int ret = -1;
    for (int n = 0; n < MAX_OPTIONS; n++) {
        uint8_t hdr[16];
        if (nbd_read_full(cl->fd, hdr, 16) < 0)
            goto out;
        if (nbd_get64(hdr) != NBD_IHAVEOPT) {
            srv_log("client sent a bad option magic: dropped");
            goto out;
        }
        uint32_t opt = nbd_get32(hdr + 8), len = nbd_get32(hdr + 12);
        if (len > NBD_MAX_OPTION_DATA) {
            if (len > (1u << 20) || opt == NBD_OPT_EXPORT_NAME) {
                srv_log("client sent an oversized option (%u bytes): dropped", len);
                goto out;
            }
            if (nbd_skip(cl->fd, len) < 0 ||
                send_rep_err(cl, opt, NBD_REP_ERR_TOO_BIG, "option data too large") < 0)
                goto out;
            continue;
        }
        if (nbd_read_full(cl->fd, data, len) < 0)
            goto out;
        bool go = false;
        int r;
        switch (opt) {
        case NBD_OPT_EXPORT_NAME:
            if (len > NBD_MAX_STRING || opt_export_name(cl, data, len) < 0)
                goto out;
            ret = 0;
            goto out;
        case NBD_OPT_ABORT:
            send_rep(cl, opt, NBD_REP_ACK, NULL, 0);
            goto out;
        case NBD_OPT_LIST:
            r = opt_list(cl, len);
            break;
        case NBD_OPT_INFO:
        case NBD_OPT_GO:
            r = opt_info_go(cl, opt, data, len, &go);
            break;
        case NBD_OPT_STRUCTURED_REPLY:
            if (len) {
                r = send_rep_err(cl, opt, NBD_REP_ERR_INVALID, "STRUCTURED_REPLY takes no data");
            } else {
                cl->structured = true;
                r = send_rep(cl, opt, NBD_REP_ACK, NULL, 0);
            }
            break;
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT:
            r = opt_meta(cl, opt, data, len);
            break;
        case NBD_OPT_STARTTLS:
            r = send_rep_err(cl, opt, NBD_REP_ERR_UNSUP, "TLS is not supported");
            break;
        default:
            r = send_rep_err(cl, opt, NBD_REP_ERR_UNSUP, "unknown option");
        }
        if (r < 0)
            goto out;
        if (go) {
            ret = 0;
            goto out;
        }
    }
    srv_log("client sent more than %d options: dropped", MAX_OPTIONS);
out:
    free(data);
    return ret;
}

/* ---- replies ------------------------------------------------------------- */

static int send_locked(struct srv_client *cl, const struct iovec *iov, int n)
{
    pthread_mutex_lock(&cl->send_lock);
    int r = nbd_writev_full(cl->fd, iov, n);
    pthread_mutex_unlock(&cl->send_lock);
    if (r < 0)
        shutdown(cl->fd, SHUT_RDWR); /* the reader sees it and ends the session */
    return r;
}

static void put_chunk(uint8_t *h, uint16_t flags, uint16_t type, uint64_t cookie, uint32_t len)
{
    nbd_put32(h, NBD_STRUCTURED_REPLY_MAGIC);
    nbd_put16(h + 4, flags);
    nbd_put16(h + 6, type);
    nbd_put64(h + 8, cookie);
    nbd_put32(h + 16, len);
}

static int reply_simple(struct srv_client *cl, const struct srv_req *r, uint32_t err,
                        const void *data, uint32_t len)
{
    uint8_t h[NBD_SIMPLE_REPLY_SIZE];
    nbd_put32(h, NBD_SIMPLE_REPLY_MAGIC);
    nbd_put32(h + 4, err);
    nbd_put64(h + 8, r->cookie);
    struct iovec iov[2] = { { h, sizeof(h) }, { (void *)data, len } };
    return send_locked(cl, iov, len ? 2 : 1);
}

/* An error: a structured error chunk with the message when negotiated. */
static int reply_error(struct srv_client *cl, const struct srv_req *r, int err, const char *msg)
{
    uint32_t wire = nbd_errno_to_wire(err);
    if (!cl->structured)
        return reply_simple(cl, r, wire, NULL, 0);
    size_t n = strlen(msg);
    if (n > 1024)
        n = 1024;
    uint8_t h[NBD_CHUNK_HEADER_SIZE + 6];
    put_chunk(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, r->cookie, (uint32_t)(6 + n));
    nbd_put32(h + 20, wire);
    nbd_put16(h + 24, (uint16_t)n);
    struct iovec iov[2] = { { h, sizeof(h) }, { (void *)msg, n } };
    return send_locked(cl, iov, 2);
}

static int reply_api_error(struct srv_client *cl, const struct srv_req *r)
{
    int e = vmm_get_errno();
    return reply_error(cl, r, e ? e : EIO, vmm_get_error());
}

/* ---- commands ------------------------------------------------------------ */

struct extent {
    uint64_t len;
    uint32_t flags;                   /* NBD_STATE_* */
};

/* Up to `max` extents covering [off, off+len), merged by flags. */
static int get_extents(vmm_block *blk, uint64_t off, uint64_t len, struct extent *ex, int max)
{
    int n = 0;
    while (len && n <= max) {
        struct vmm_block_extent e = { .size = sizeof(e) };
        if (vmm_block_block_status(blk, off, len, &e) < 0)
            return -1;
        if (!e.length || e.length > len)
            e.length = len;
        uint32_t f = (e.flags & VMM_BLOCK_STATUS_DATA ? 0 : NBD_STATE_HOLE) |
                     (e.flags & VMM_BLOCK_STATUS_ZERO ? NBD_STATE_ZERO : 0);
        if (n && ex[n - 1].flags == f)
            ex[n - 1].len += e.length;
        else if (n < max)
            ex[n++] = (struct extent){ e.length, f };
        else
            break;
        off += e.length;
        len -= e.length;
    }
    return n;
}

static int cmd_read_simple(struct srv_client *cl, const struct srv_req *r, uint8_t *buf)
{
    if (vmm_block_read(cl->exp->blk, r->offset, buf, r->length) < 0)
        return reply_api_error(cl, r);
    return reply_simple(cl, r, 0, buf, r->length);
}

/* Structured read: holes as OFFSET_HOLE chunks, data as OFFSET_DATA. */
static int cmd_read_structured(struct srv_client *cl, const struct srv_req *r, uint8_t *buf)
{
    enum { MAXP = 64 };
    struct extent ex[MAXP];
    int n = 1;
    ex[0] = (struct extent){ r->length, 0 };
    if (!(r->flags & NBD_CMD_FLAG_DF) && (n = get_extents(cl->exp->blk, r->offset, r->length, ex, MAXP)) < 0)
        return reply_api_error(cl, r);
    uint64_t covered = 0;
    for (int i = 0; i < n; i++)
        covered += ex[i].len;
    if (covered < r->length) /* more pieces than fit: the rest is one data chunk */
        ex[n - 1] = (struct extent){ ex[n - 1].len + r->length - covered, 0 };
    uint8_t hdrs[MAXP][NBD_CHUNK_HEADER_SIZE + 12];
    struct iovec iov[2 * MAXP];
    int ni = 0;
    uint64_t at = 0;
    for (int i = 0; i < n; i++) {
        uint16_t fl = i == n - 1 ? NBD_REPLY_FLAG_DONE : 0;
        bool hole = (ex[i].flags & NBD_STATE_ZERO) && ex[i].len >= 512;
        if (hole) {
            put_chunk(hdrs[i], fl, NBD_REPLY_TYPE_OFFSET_HOLE, r->cookie, 12);
            nbd_put64(hdrs[i] + 20, r->offset + at);
            nbd_put32(hdrs[i] + 28, (uint32_t)ex[i].len);
            iov[ni++] = (struct iovec){ hdrs[i], NBD_CHUNK_HEADER_SIZE + 12 };
        } else {
            if (vmm_block_read(cl->exp->blk, r->offset + at, buf + at, ex[i].len) < 0)
                return reply_api_error(cl, r);
            put_chunk(hdrs[i], fl, NBD_REPLY_TYPE_OFFSET_DATA, r->cookie, (uint32_t)(8 + ex[i].len));
            nbd_put64(hdrs[i] + 20, r->offset + at);
            iov[ni++] = (struct iovec){ hdrs[i], NBD_CHUNK_HEADER_SIZE + 8 };
            iov[ni++] = (struct iovec){ buf + at, ex[i].len };
        }
        at += ex[i].len;
    }
    return send_locked(cl, iov, ni);
}

static int cmd_read(struct srv_client *cl, const struct srv_req *r)
{
    if (!r->length)
        return reply_error(cl, r, EINVAL, "zero-length read");
    uint8_t *buf = malloc(r->length);
    if (!buf)
        return reply_error(cl, r, ENOMEM, "out of memory");
    int ret = cl->structured ? cmd_read_structured(cl, r, buf) : cmd_read_simple(cl, r, buf);
    free(buf);
    return ret;
}

static bool all_zero(const uint8_t *p, size_t n)
{
    return !n || (!p[0] && !memcmp(p, p + 1, n - 1));
}

static int cmd_write(struct srv_client *cl, const struct srv_req *r)
{
    unsigned f = r->flags & NBD_CMD_FLAG_FUA ? VMM_BLOCK_REQ_FUA : 0;
    unsigned ef = cl->exp->flags;
    int ret;
    if ((ef & VMM_NBD_EXPORT_DETECT_ZEROES) && all_zero(r->data, r->length))
        ret = vmm_block_write_zeroes(cl->exp->blk, r->offset, r->length,
                                     f | (ef & VMM_NBD_EXPORT_DISCARD ? VMM_BLOCK_REQ_MAY_UNMAP : 0));
    else
        ret = vmm_block_write(cl->exp->blk, r->offset, r->data, r->length, f);
    return ret < 0 ? reply_api_error(cl, r) : reply_simple(cl, r, 0, NULL, 0);
}

static int cmd_zeroes(struct srv_client *cl, const struct srv_req *r)
{
    unsigned f = (r->flags & NBD_CMD_FLAG_FUA ? VMM_BLOCK_REQ_FUA : 0) |
                 (r->flags & NBD_CMD_FLAG_FAST_ZERO ? VMM_BLOCK_REQ_NO_FALLBACK : 0) |
                 (!(r->flags & NBD_CMD_FLAG_NO_HOLE) && (cl->exp->flags & VMM_NBD_EXPORT_DISCARD)
                      ? VMM_BLOCK_REQ_MAY_UNMAP : 0);
    if (vmm_block_write_zeroes(cl->exp->blk, r->offset, r->length, f) < 0)
        return reply_api_error(cl, r);
    return reply_simple(cl, r, 0, NULL, 0);
}

static int cmd_trim(struct srv_client *cl, const struct srv_req *r)
{
    if ((cl->exp->flags & VMM_NBD_EXPORT_DISCARD) && vmm_block_discard(cl->exp->blk, r->offset, r->length) < 0)
        return reply_api_error(cl, r);
    if ((r->flags & NBD_CMD_FLAG_FUA) && vmm_block_flush(cl->exp->blk) < 0)
        return reply_api_error(cl, r);
    return reply_simple(cl, r, 0, NULL, 0);
}

static int cmd_block_status(struct srv_client *cl, const struct srv_req *r)
{
    if (!cl->base_alloc)
        return reply_error(cl, r, EINVAL, "no metadata context negotiated");
    if (!r->length)
        return reply_error(cl, r, EINVAL, "zero-length block status");
    int max = r->flags & NBD_CMD_FLAG_REQ_ONE ? 1 : MAX_EXTENTS;
    struct extent *ex = malloc(sizeof(*ex) * (size_t)max);
    if (!ex)
        return reply_error(cl, r, ENOMEM, "out of memory");
    int n = get_extents(cl->exp->blk, r->offset, r->length, ex, max);
    if (n <= 0) {
        free(ex);
        return reply_api_error(cl, r);
    }
    size_t plen = 4 + 8 * (size_t)n;
    uint8_t *buf = malloc(NBD_CHUNK_HEADER_SIZE + plen);
    if (!buf) {
        free(ex);
        return reply_error(cl, r, ENOMEM, "out of memory");
    }
    put_chunk(buf, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, r->cookie, (uint32_t)plen);
    nbd_put32(buf + 20, BASE_ALLOC_ID);
    for (int i = 0; i < n; i++) {
        nbd_put32(buf + 24 + 8 * i, (uint32_t)ex[i].len);
        nbd_put32(buf + 28 + 8 * i, ex[i].flags);
    }
    struct iovec iov = { buf, NBD_CHUNK_HEADER_SIZE + plen };
    int ret = send_locked(cl, &iov, 1);
    free(buf);
    free(ex);
    return ret;
}

static int cmd_cache(struct srv_client *cl, const struct srv_req *r)
{
    /* Prefetch: read the range once so it sits in the host's cache. */
    uint8_t *buf = malloc(r->length ? r->length : 1);
    int ret = buf ? vmm_block_read(cl->exp->blk, r->offset, buf, r->length) : -1;
    free(buf);
    return ret < 0 ? reply_error(cl, r, EIO, "cache failed") : reply_simple(cl, r, 0, NULL, 0);
}

/* Validate a request; 0 to run it, or the errno to reply with. */
static int check_request(struct srv_client *cl, const struct srv_req *r, const char **why)
{
    const struct srv_export *e = cl->exp;
    static const uint16_t allowed[] = {
        [NBD_CMD_READ] = NBD_CMD_FLAG_DF, [NBD_CMD_WRITE] = NBD_CMD_FLAG_FUA,
        [NBD_CMD_DISC] = 0, [NBD_CMD_FLUSH] = 0,
        [NBD_CMD_TRIM] = NBD_CMD_FLAG_FUA, [NBD_CMD_CACHE] = 0,
        [NBD_CMD_WRITE_ZEROES] = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
        [NBD_CMD_BLOCK_STATUS] = NBD_CMD_FLAG_REQ_ONE,
    };
    if (r->type > NBD_CMD_BLOCK_STATUS) {
        *why = "unknown command";
        return EINVAL;
    }
    if (r->flags & ~allowed[r->type]) {
        *why = "unknown or misplaced command flags";
        return EINVAL;
    }
    if ((r->flags & NBD_CMD_FLAG_DF) && !cl->structured) {
        *why = "DF needs structured replies";
        return EINVAL;
    }
    bool writes = r->type == NBD_CMD_WRITE || r->type == NBD_CMD_TRIM || r->type == NBD_CMD_WRITE_ZEROES;
    if (writes && !(e->flags & VMM_NBD_EXPORT_WRITABLE)) {
        *why = "the export is read-only";
        return EPERM;
    }
    if (r->type == NBD_CMD_FLUSH) {
        if (r->offset || r->length) {
            *why = "flush with an offset or length";
            return EINVAL;
        }
        return 0;
    }
    if ((r->type == NBD_CMD_READ || r->type == NBD_CMD_CACHE) && r->length > SRV_MAX_PAYLOAD) {
        *why = "request larger than the maximum block size";
        return r->type == NBD_CMD_READ && cl->structured ? EOVERFLOW : EINVAL;
    }
    if (r->offset > e->size || r->length > e->size - r->offset) {
        *why = "request past the end of the export";
        return r->type == NBD_CMD_WRITE || r->type == NBD_CMD_WRITE_ZEROES ? ENOSPC : EINVAL;
    }
    return 0;
}

int nbd_server_run_request(struct srv_client *cl, struct srv_req *r)
{
    const char *why = NULL;
    int err = check_request(cl, r, &why);
    if (err)
        return reply_error(cl, r, err, why);
    switch (r->type) {
    case NBD_CMD_READ: return cmd_read(cl, r);
    case NBD_CMD_WRITE: return cmd_write(cl, r);
    case NBD_CMD_FLUSH:
        return vmm_block_flush(cl->exp->blk) < 0 ? reply_api_error(cl, r) : reply_simple(cl, r, 0, NULL, 0);
    case NBD_CMD_TRIM: return cmd_trim(cl, r);
    case NBD_CMD_CACHE: return cmd_cache(cl, r);
    case NBD_CMD_WRITE_ZEROES: return cmd_zeroes(cl, r);
    case NBD_CMD_BLOCK_STATUS: return cmd_block_status(cl, r);
    default: return reply_error(cl, r, EINVAL, "unknown command");
    }
}

/* ---- transmission: a reader and workers per client ------------------------ */

static void *worker_main(void *arg)
{
    struct srv_client *cl = arg;
    pthread_mutex_lock(&cl->lock);
    for (;;) {
        while (!cl->head && !cl->quit)
            pthread_cond_wait(&cl->cond, &cl->lock);
        struct srv_req *r = cl->head;
        if (!r)
            break;
        cl->head = r->next;
        if (!cl->head)
            cl->tail = NULL;
        pthread_mutex_unlock(&cl->lock);
        nbd_server_run_request(cl, r);
        free(r->data);
        free(r);
        pthread_mutex_lock(&cl->lock);
        cl->queued--;
        pthread_cond_broadcast(&cl->cond);
    }
    pthread_mutex_unlock(&cl->lock);
    return NULL;
}

/* Read one request; 1 when it was queued or answered, 0 at a clean end
 * (disconnect), -1 to drop the client. */
int nbd_server_read_request(struct srv_client *cl, struct srv_req **out)
{
    uint8_t h[NBD_REQUEST_SIZE];
    *out = NULL;
    if (nbd_read_full(cl->fd, h, sizeof(h)) < 0)
        return -1;
    if (nbd_get32(h) != NBD_REQUEST_MAGIC) {
        srv_log("client sent a bad request magic %#x: dropped", nbd_get32(h));
        return -1;
    }
    struct srv_req *r = calloc(1, sizeof(*r));
    if (!r)
        return -1;
    r->flags = nbd_get16(h + 4);
    r->type = nbd_get16(h + 6);
    r->cookie = nbd_get64(h + 8);
    r->offset = nbd_get64(h + 16);
    r->length = nbd_get32(h + 24);
    if (r->type == NBD_CMD_DISC) {
        free(r);
        return 0;
    }
    if (r->type == NBD_CMD_WRITE) {
        if (r->length > SRV_MAX_PAYLOAD) {
            srv_log("client sent an oversized write (%u bytes): dropped", r->length);
            free(r);
            return -1;
        }
        r->data = malloc(r->length ? r->length : 1);
        if (!r->data || nbd_read_full(cl->fd, r->data, r->length) < 0) {
            free(r->data);
            free(r);
            return -1;
        }
    }
    *out = r;
    return 1;
}

static void transmission(struct srv_client *cl)
{
    for (unsigned i = 0; i < CLIENT_WORKERS; i++)
        if (!pthread_create(&cl->workers[cl->nworkers], NULL, worker_main, cl))
            cl->nworkers++;
    if (!cl->nworkers)
        return;
    for (;;) {
        struct srv_req *r;
        if (nbd_server_read_request(cl, &r) <= 0)
            break;
        pthread_mutex_lock(&cl->lock);
        while (cl->queued >= MAX_QUEUED)
            pthread_cond_wait(&cl->cond, &cl->lock);
        cl->queued++;
        if (cl->tail)
            cl->tail->next = r;
        else
            cl->head = r;
        cl->tail = r;
        pthread_cond_signal(&cl->cond);
        pthread_mutex_unlock(&cl->lock);
    }
    /* Finish what was asked before the disconnect, then stop the workers. */
    pthread_mutex_lock(&cl->lock);
    while (cl->queued)
        pthread_cond_wait(&cl->cond, &cl->lock);
    cl->quit = true;
    pthread_cond_broadcast(&cl->cond);
    pthread_mutex_unlock(&cl->lock);
    for (unsigned i = 0; i < cl->nworkers; i++)
        pthread_join(cl->workers[i], NULL);
}

static void client_free(struct srv_client *cl)
{
    pthread_mutex_destroy(&cl->lock);
    pthread_mutex_destroy(&cl->send_lock);
    pthread_cond_destroy(&cl->cond);
    free(cl);
}

struct srv_client *nbd_server_client_new(vmm_nbd_server *srv, int fd)
{
    struct srv_client *cl = calloc(1, sizeof(*cl));
    if (!cl)
        return NULL;
    cl->srv = srv;
    cl->fd = fd;
    pthread_mutex_init(&cl->lock, NULL);
    pthread_mutex_init(&cl->send_lock, NULL);
    pthread_cond_init(&cl->cond, NULL);
    return cl;
}

void nbd_server_client_serve(struct srv_client *cl)
{
    if (nbd_server_handshake(cl) == 0)
        transmission(cl);
}

void nbd_server_client_free(struct srv_client *cl)
{
    client_free(cl);
}

static void *client_main(void *arg)
{
    struct srv_client *cl = arg;
    vmm_nbd_server *srv = cl->srv;
    nbd_server_client_serve(cl);
    pthread_mutex_lock(&srv->lock);
    for (struct srv_client **pp = &srv->clients; *pp; pp = &(*pp)->next) {
        if (*pp == cl) {
            *pp = cl->next;
            break;
        }
    }
    close(cl->fd);
    srv->nclients--;
    if (srv->nclients == 0 && (srv->flags & VMM_NBD_SERVER_ONESHOT)) {
        srv->stopping = true;
        if (write(srv->stop_pipe[1], "x", 1) < 0) { /* the accept loop also checks `stopping` */
        }
    }
    pthread_cond_broadcast(&srv->cond);
    pthread_mutex_unlock(&srv->lock);
    client_free(cl);
    return NULL;
}

/* ---- accepting ------------------------------------------------------------ */

static void accept_one(vmm_nbd_server *srv, int lfd)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    pthread_mutex_lock(&srv->lock);
    if (srv->stopping || (srv->max_clients && srv->nclients >= srv->max_clients)) {
        pthread_mutex_unlock(&srv->lock);
        close(fd); /* over the limit: refused */
        return;
    }
    struct srv_client *cl = nbd_server_client_new(srv, fd);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (!cl || pthread_create(&cl->thread, &attr, client_main, cl)) {
        pthread_mutex_unlock(&srv->lock);
        pthread_attr_destroy(&attr);
        if (cl)
            client_free(cl);
        close(fd);
        return;
    }
    pthread_attr_destroy(&attr);
    cl->next = srv->clients;
    srv->clients = cl;
    srv->nclients++;
    srv->had_client = true;
    pthread_mutex_unlock(&srv->lock);
}

static void *accept_main(void *arg)
{
    vmm_nbd_server *srv = arg;
    struct pollfd pfd[MAX_LISTENERS + 1];
    for (;;) {
        pthread_mutex_lock(&srv->lock);
        bool stop = srv->stopping;
        pthread_mutex_unlock(&srv->lock);
        if (stop)
            break;
        for (unsigned i = 0; i < srv->nlisten; i++)
            pfd[i] = (struct pollfd){ srv->listen_fds[i], POLLIN, 0 };
        pfd[srv->nlisten] = (struct pollfd){ srv->stop_pipe[0], POLLIN, 0 };
        if (poll(pfd, srv->nlisten + 1, -1) < 0)
            continue;
        if (pfd[srv->nlisten].revents)
            continue; /* re-check `stopping` */
        for (unsigned i = 0; i < srv->nlisten; i++)
            if (pfd[i].revents & POLLIN)
                accept_one(srv, srv->listen_fds[i]);
    }
    /* Disconnect the clients and wait for them. */
    pthread_mutex_lock(&srv->lock);
    for (struct srv_client *cl = srv->clients; cl; cl = cl->next)
        shutdown(cl->fd, SHUT_RDWR);
    while (srv->nclients)
        pthread_cond_wait(&srv->cond, &srv->lock);
    srv->stopped = true;
    pthread_cond_broadcast(&srv->cond);
    pthread_mutex_unlock(&srv->lock);
    return NULL;
}

/* ---- public API ------------------------------------------------------------ */

LIBVMM_EXPORT vmm_nbd_server *vmm_nbd_server_new(unsigned flags)
{
    vmm_clear_error();
    if (flags & ~VMM_NBD_SERVER_ONESHOT) {
        vmm_set_error(EINVAL, "vmm_nbd_server_new: unknown flags");
        return NULL;
    }
    vmm_nbd_server *srv = calloc(1, sizeof(*srv));
    if (!srv || pipe2(srv->stop_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        vmm_set_error_errno("vmm_nbd_server_new");
        free(srv);
        return NULL;
    }
    srv->flags = flags;
    srv->max_clients = 1;
    pthread_mutex_init(&srv->lock, NULL);
    pthread_cond_init(&srv->cond, NULL);
    return srv;
}

LIBVMM_EXPORT int vmm_nbd_server_set_max_clients(vmm_nbd_server *srv, unsigned max_clients)
{
    if (!srv)
        return vmm_set_error(EINVAL, "vmm_nbd_server_set_max_clients: no server");
    srv->max_clients = max_clients;
    return 0;
}

LIBVMM_EXPORT int vmm_nbd_server_add_export(vmm_nbd_server *srv, vmm_block *blk, const char *name,
                                            const char *description, unsigned flags)
{
    if (!srv || !blk || !name)
        return vmm_set_error(EINVAL, "vmm_nbd_server_add_export: no server, handle or name");
    if (srv->started)
        return vmm_set_error(EBUSY, "vmm_nbd_server_add_export: the server is already running");
    if (flags & ~(VMM_NBD_EXPORT_WRITABLE | VMM_NBD_EXPORT_DISCARD | VMM_NBD_EXPORT_DETECT_ZEROES))
        return vmm_set_error(EINVAL, "vmm_nbd_server_add_export: unknown flags");
    if (strlen(name) > NBD_MAX_STRING || (description && strlen(description) > NBD_MAX_STRING))
        return vmm_set_error(EINVAL, "vmm_nbd_server_add_export: name or description over 4096 bytes");
    for (struct srv_export *e = srv->exports; e; e = e->next)
        if (!strcmp(e->name, name))
            return vmm_set_error(EEXIST, "vmm_nbd_server_add_export: export '%s' exists", name);
    int64_t size = vmm_block_size(blk);
    if (size < 0)
        return vmm_error_prefix("vmm_nbd_server_add_export");
    struct srv_export *e = calloc(1, sizeof(*e));
    if (!e || !(e->name = strdup(name)) || (description && !(e->description = strdup(description)))) {
        if (e)
            free(e->name);
        free(e);
        return vmm_set_error(ENOMEM, "out of memory");
    }
    e->blk = blk;
    e->flags = flags;
    e->size = (uint64_t)size;
    struct srv_export **pp = &srv->exports; /* keep the order exports were added in */
    while (*pp)
        pp = &(*pp)->next;
    *pp = e;
    return 0;
}

static int add_listener(vmm_nbd_server *srv, int fd, const char *path)
{
    if (listen(fd, 16) < 0) {
        vmm_set_error_errno("vmm_nbd_server: listen");
        close(fd);
        return -1;
    }
    srv->listen_fds[srv->nlisten] = fd;
    srv->unix_paths[srv->nlisten] = path ? strdup(path) : NULL;
    srv->nlisten++;
    return 0;
}

LIBVMM_EXPORT int vmm_nbd_server_listen_unix(vmm_nbd_server *srv, const char *path)
{
    if (!srv || !path)
        return vmm_set_error(EINVAL, "vmm_nbd_server_listen_unix: no server or path");
    if (srv->nlisten >= MAX_LISTENERS || srv->started)
        return vmm_set_error(EBUSY, "vmm_nbd_server_listen_unix: too many listeners or already running");
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(sun.sun_path))
        return vmm_set_error(ENAMETOOLONG, "vmm_nbd_server_listen_unix: %s: path too long", path);
    strcpy(sun.sun_path, path);
    struct stat st;
    if (!lstat(path, &st) && S_ISSOCK(st.st_mode))
        unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
        vmm_set_error_errno("vmm_nbd_server_listen_unix: %s", path);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return add_listener(srv, fd, path);
}

LIBVMM_EXPORT int vmm_nbd_server_listen_tcp(vmm_nbd_server *srv, const char *host, const char *port)
{
    if (!srv)
        return vmm_set_error(EINVAL, "vmm_nbd_server_listen_tcp: no server");
    if (srv->nlisten >= MAX_LISTENERS || srv->started)
        return vmm_set_error(EBUSY, "vmm_nbd_server_listen_tcp: too many listeners or already running");
    host = host ? host : "127.0.0.1";
    port = port ? port : "10809";
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE },
                    *res = NULL;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai)
        return vmm_set_error(EINVAL, "vmm_nbd_server_listen_tcp: %s:%s: %s", host, port, gai_strerror(gai));
    int fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, res->ai_protocol), one = 1;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) < 0) {
        vmm_set_error_errno("vmm_nbd_server_listen_tcp: %s:%s", host, port);
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    return add_listener(srv, fd, NULL);
}

LIBVMM_EXPORT int vmm_nbd_server_start(vmm_nbd_server *srv)
{
    if (!srv)
        return vmm_set_error(EINVAL, "vmm_nbd_server_start: no server");
    if (srv->started)
        return vmm_set_error(EBUSY, "vmm_nbd_server_start: already started");
    if (!srv->nlisten || !srv->exports)
        return vmm_set_error(EINVAL, "vmm_nbd_server_start: needs an export and a listening socket");
    int e = pthread_create(&srv->accept_thread, NULL, accept_main, srv);
    if (e) {
        errno = e;
        return vmm_set_error_errno("vmm_nbd_server_start");
    }
    srv->started = true;
    return 0;
}

LIBVMM_EXPORT int vmm_nbd_server_wait(vmm_nbd_server *srv)
{
    if (!srv || !srv->started)
        return vmm_set_error(EINVAL, "vmm_nbd_server_wait: the server is not running");
    pthread_mutex_lock(&srv->lock);
    while (!srv->stopped)
        pthread_cond_wait(&srv->cond, &srv->lock);
    pthread_mutex_unlock(&srv->lock);
    return 0;
}

LIBVMM_EXPORT int vmm_nbd_server_stop(vmm_nbd_server *srv)
{
    if (!srv)
        return vmm_set_error(EINVAL, "vmm_nbd_server_stop: no server");
    pthread_mutex_lock(&srv->lock);
    srv->stopping = true;
    pthread_mutex_unlock(&srv->lock);
    if (write(srv->stop_pipe[1], "x", 1) < 0 && errno != EAGAIN)
        return vmm_set_error_errno("vmm_nbd_server_stop");
    return 0;
}

LIBVMM_EXPORT void vmm_nbd_server_free(vmm_nbd_server *srv)
{
    if (!srv)
        return;
    if (srv->started) {
        vmm_nbd_server_stop(srv);
        pthread_join(srv->accept_thread, NULL);
    }
    for (unsigned i = 0; i < srv->nlisten; i++) {
        close(srv->listen_fds[i]);
        if (srv->unix_paths[i])
            unlink(srv->unix_paths[i]);
        free(srv->unix_paths[i]);
    }
    while (srv->exports) {
        struct srv_export *e = srv->exports;
        srv->exports = e->next;
        free(e->name);
        free(e->description);
        free(e);
    }
    close(srv->stop_pipe[0]);
    close(srv->stop_pipe[1]);
    pthread_mutex_destroy(&srv->lock);
    pthread_cond_destroy(&srv->cond);
    free(srv);
}

/* For the fuzz harness: a server with one export and no sockets. */
vmm_nbd_server *nbd_server_new_for_fd(vmm_block *blk, unsigned export_flags)
{
    vmm_nbd_server *srv = vmm_nbd_server_new(0);
    if (srv && vmm_nbd_server_add_export(srv, blk, "", NULL, export_flags) < 0) {
        vmm_nbd_server_free(srv);
        return NULL;
    }
    return srv;
}
