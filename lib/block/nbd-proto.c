/* NBD wire helpers, URIs, the client handshake and the client's reply
 * parser (see nbd-proto.h).  Everything received is checked against the
 * request it answers before a byte lands in a caller's buffer: a server
 * that sends a malformed or oversized message gets its connection dropped
 * with a message naming the violation. */
#include <errno.h>
#include <stdarg.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "nbd-proto.h"
#include "util/util.h"

/* ---- errors -------------------------------------------------------------- */

uint32_t nbd_errno_to_wire(int err)
{
    switch (err) {
    case EPERM: case EROFS: case EACCES: return NBD_EPERM;
    case EIO: return NBD_EIO;
    case ENOMEM: return NBD_ENOMEM;
    case ENOSPC: case EFBIG: return NBD_ENOSPC;
    case EOVERFLOW: return NBD_EOVERFLOW;
    case ENOTSUP: return NBD_ENOTSUP;
    case ESHUTDOWN: return NBD_ESHUTDOWN;
    case EINVAL: return NBD_EINVAL;
    default: return NBD_EIO;
    }
}

int nbd_wire_to_errno(uint32_t err)
{
    switch (err) {
    case NBD_EPERM: return EPERM;
    case NBD_EIO: return EIO;
    case NBD_ENOMEM: return ENOMEM;
    case NBD_ENOSPC: return ENOSPC;
    case NBD_EOVERFLOW: return EOVERFLOW;
    case NBD_ENOTSUP: return ENOTSUP;
    case NBD_ESHUTDOWN: return ESHUTDOWN;
    case NBD_EINVAL: return EINVAL;
    default: return EINVAL; /* proto.md: unknown values are treated as EINVAL */
    }
}

const char *nbd_cmd_name(unsigned type)
{
    static const char *const names[] = { "read", "write", "disconnect", "flush", "trim",
                                         "cache", "write-zeroes", "block-status" };
    return type < VMM_ARRAY_SIZE(names) ? names[type] : "unknown command";
}

/* ---- socket I/O ---------------------------------------------------------- */

int nbd_read_full(int fd, void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return -EPIPE;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int nbd_writev_full(int fd, const struct iovec *iov_in, int iovcnt)
{
    struct iovec local[64], *copy = local;
    if (iovcnt > 64 && !(copy = malloc(sizeof(*copy) * (size_t)iovcnt)))
        return -ENOMEM;
    memcpy(copy, iov_in, sizeof(*iov_in) * (size_t)iovcnt);
    struct iovec *iov = copy;
    int ret = 0;
    while (iovcnt > 0) {
        struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)(iovcnt < 1024 ? iovcnt : 1024) };
        ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == ENOTSOCK) /* a pipe or file (fuzzing, tests) */
            n = writev(fd, iov, iovcnt < 1024 ? iovcnt : 1024);
        if (n < 0) {
            ret = -errno;
            break;
        }
        while (iovcnt > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    if (copy != local)
        free(copy);
    return ret;
}

int nbd_write_full(int fd, const void *buf, size_t len)
{
    struct iovec iov = { (void *)buf, len };
    return nbd_writev_full(fd, &iov, 1);
}

int nbd_skip(int fd, uint64_t len)
{
    uint8_t junk[4096];
    while (len) {
        size_t n = len < sizeof(junk) ? (size_t)len : sizeof(junk);
        int r = nbd_read_full(fd, junk, n);
        if (r < 0)
            return r;
        len -= n;
    }
    return 0;
}

/* ---- URIs ---------------------------------------------------------------- */

void nbd_address_clear(struct nbd_address *a)
{
    free(a->host);
    free(a->port);
    free(a->path);
    free(a->export);
    memset(a, 0, sizeof(*a));
}

bool nbd_is_uri(const char *s)
{
    return !strncmp(s, "nbd://", 6) || !strncmp(s, "nbd+tcp://", 10) || !strncmp(s, "nbd+unix://", 11);
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Percent-decode [s, s+len) into a new string. */
static char *uri_decode(const char *s, size_t len)
{
    char *out = malloc(len + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%' && i + 2 < len && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            *o++ = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return out;
}

static int uri_error(const char *uri, const char *why)
{
    return vmm_set_error(EINVAL, "%s: invalid NBD URI: %s", uri, why);
}

int nbd_parse_uri(const char *uri, struct nbd_address *out)
{
    memset(out, 0, sizeof(*out));
    const char *p;
    if (!strncmp(uri, "nbd+unix://", 11)) {
        out->is_unix = true;
        p = uri + 11;
    } else if (!strncmp(uri, "nbd+tcp://", 10)) {
        p = uri + 10;
    } else if (!strncmp(uri, "nbd://", 6)) {
        p = uri + 6;
    } else {
        return uri_error(uri, "the scheme is not nbd, nbd+tcp or nbd+unix");
    }
    const char *auth_end = p + strcspn(p, "/?#");
    const char *path_end = auth_end + strcspn(auth_end, "?#");
    if (out->is_unix && auth_end != p)
        return uri_error(uri, "nbd+unix:// takes no host (nbd+unix:///export?socket=PATH)");
    if (!out->is_unix) {
        const char *host = p, *host_end, *colon;
        if (*p == '[') {
            host_end = memchr(p, ']', (size_t)(auth_end - p));
            if (!host_end)
                return uri_error(uri, "unterminated IPv6 address");
            host++;
            colon = host_end + 1 < auth_end && host_end[1] == ':' ? host_end + 1 : NULL;
        } else {
            colon = memchr(p, ':', (size_t)(auth_end - p));
            host_end = colon ? colon : auth_end;
        }
        out->host = host_end > host ? strndup(host, (size_t)(host_end - host)) : strdup("localhost");
        if (colon) {
            size_t plen = (size_t)(auth_end - colon - 1);
            if (!plen || strspn(colon + 1, "0123456789") < plen) {
                nbd_address_clear(out);
                return uri_error(uri, "the port is not a number");
            }
            out->port = strndup(colon + 1, plen);
        } else {
            char num[16];
            snprintf(num, sizeof(num), "%d", NBD_DEFAULT_PORT);
            out->port = strdup(num);
        }
    }
    /* The export is the path without its first slash. */
    const char *exp = auth_end < path_end && *auth_end == '/' ? auth_end + 1 : auth_end;
    out->export = uri_decode(exp, (size_t)(path_end - exp));
    /* Query: socket=PATH for nbd+unix. */
    if (*path_end == '?') {
        const char *q = path_end + 1, *q_end = q + strcspn(q, "#");
        while (q < q_end) {
            const char *amp = memchr(q, '&', (size_t)(q_end - q));
            const char *e = amp ? amp : q_end;
            if (out->is_unix && e - q > 7 && !strncmp(q, "socket=", 7)) {
                free(out->path);
                out->path = uri_decode(q + 7, (size_t)(e - q - 7));
            } else if (e > q) {
                nbd_address_clear(out);
                return uri_error(uri, "unknown query parameter (only socket= for nbd+unix)");
            }
            q = amp ? amp + 1 : q_end;
        }
    }
    if (out->is_unix && (!out->path || !*out->path)) {
        nbd_address_clear(out);
        return uri_error(uri, "nbd+unix:// needs ?socket=PATH");
    }
    if (!out->export || (!out->is_unix && (!out->host || !out->port))) {
        nbd_address_clear(out);
        return vmm_set_error(ENOMEM, "out of memory");
    }
    if (strlen(out->export) > NBD_MAX_STRING) {
        nbd_address_clear(out);
        return uri_error(uri, "the export name is longer than 4096 bytes");
    }
    return 0;
}

/* Percent-encode what a URI path or query value cannot hold literally. */
static void uri_encode(FILE *f, const char *s, bool path)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            strchr("-._~", c) || (path && c == '/'))
            fputc(c, f);
        else
            fprintf(f, "%%%02X", c);
    }
}

char *nbd_address_to_uri(const struct nbd_address *a)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    if (a->is_unix) {
        fputs("nbd+unix:///", f);
        uri_encode(f, a->export ? a->export : "", true);
        fputs("?socket=", f);
        uri_encode(f, a->path ? a->path : "", true);
    } else {
        bool v6 = a->host && strchr(a->host, ':');
        fprintf(f, "nbd://%s%s%s", v6 ? "[" : "", a->host ? a->host : "localhost", v6 ? "]" : "");
        if (a->port && atoi(a->port) != NBD_DEFAULT_PORT)
            fprintf(f, ":%s", a->port);
        fputc('/', f);
        uri_encode(f, a->export ? a->export : "", true);
    }
    fclose(f);
    return buf;
}

int nbd_connect(const struct nbd_address *a)
{
    if (a->is_unix) {
        struct sockaddr_un sun = { .sun_family = AF_UNIX };
        if (strlen(a->path) >= sizeof(sun.sun_path)) {
            vmm_set_error(ENAMETOOLONG, "%s: socket path too long", a->path);
            return -ENAMETOOLONG;
        }
        strcpy(sun.sun_path, a->path);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
            int e = errno;
            vmm_set_error_errno("Failed to connect to '%s'", a->path);
            if (fd >= 0)
                close(fd);
            return -e;
        }
        return fd;
    }
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res = NULL;
    int gai = getaddrinfo(a->host, a->port, &hints, &res);
    if (gai) {
        vmm_set_error(EHOSTUNREACH, "address resolution failed for %s:%s: %s", a->host, a->port,
                      gai_strerror(gai));
        return -EHOSTUNREACH;
    }
    int fd = -1, e = ECONNREFUSED;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        e = errno;
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        errno = e;
        vmm_set_error_errno("Failed to connect to '%s:%s'", a->host, a->port);
        return -e;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

/* ---- client handshake ---------------------------------------------------- */

static int io_error(int ret, const char *what)
{
    if (ret == -EPIPE)
        vmm_set_error(ECONNRESET, "the server closed the connection during %s", what);
    else
        vmm_set_error(-ret, "%s: %s", what, strerror(-ret));
    return -1;
}

static int send_option(int fd, uint32_t opt, const void *data, uint32_t len)
{
    uint8_t hdr[16];
    nbd_put64(hdr, NBD_IHAVEOPT);
    nbd_put32(hdr + 8, opt);
    nbd_put32(hdr + 12, len);
    struct iovec iov[2] = { { hdr, 16 }, { (void *)data, len } };
    int r = nbd_writev_full(fd, iov, len ? 2 : 1);
    return r < 0 ? io_error(r, "the handshake") : 0;
}

struct opt_reply {
    uint32_t type, len;
    uint8_t *data;             /* len bytes, NUL-terminated, owned */
};

static int read_option_reply(int fd, uint32_t opt, struct opt_reply *rep)
{
    uint8_t hdr[20];
    int r = nbd_read_full(fd, hdr, sizeof(hdr));
    if (r < 0)
        return io_error(r, "the handshake");
    if (nbd_get64(hdr) != NBD_OPT_REPLY_MAGIC)
        return vmm_set_error(EPROTO, "the server sent a bad option reply magic");
    if (nbd_get32(hdr + 8) != opt)
        return vmm_set_error(EPROTO, "the server replied to option %u while %u was asked",
                             nbd_get32(hdr + 8), opt);
    rep->type = nbd_get32(hdr + 12);
    rep->len = nbd_get32(hdr + 16);
    if (rep->len > NBD_MAX_OPTION_DATA)
        return vmm_set_error(EPROTO, "the server sent an oversized option reply (%u bytes)", rep->len);
    rep->data = calloc(1, rep->len + 1);
    if (!rep->data)
        return vmm_set_error(ENOMEM, "out of memory");
    if ((r = nbd_read_full(fd, rep->data, rep->len)) < 0) {
        free(rep->data);
        rep->data = NULL;
        return io_error(r, "the handshake");
    }
    return 0;
}

static const char *rep_error_name(uint32_t type)
{
    switch (type) {
    case NBD_REP_ERR_UNSUP: return "unsupported option";
    case NBD_REP_ERR_POLICY: return "denied by policy";
    case NBD_REP_ERR_INVALID: return "invalid request";
    case NBD_REP_ERR_PLATFORM: return "not supported on this platform";
    case NBD_REP_ERR_TLS_REQD: return "TLS required";
    case NBD_REP_ERR_UNKNOWN: return "export unknown";
    case NBD_REP_ERR_SHUTDOWN: return "server shutting down";
    case NBD_REP_ERR_BLOCK_SIZE_REQD: return "block size constraints required";
    case NBD_REP_ERR_TOO_BIG: return "request too big";
    default: return "error";
    }
}

/* Ask for structured replies; *ok tells whether the server agreed. */
static int negotiate_structured(int fd, bool *ok)
{
    if (send_option(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0) < 0)
        return -1;
    struct opt_reply rep;
    if (read_option_reply(fd, NBD_OPT_STRUCTURED_REPLY, &rep) < 0)
        return -1;
    free(rep.data);
    if (rep.type == NBD_REP_ACK && rep.len == 0) {
        *ok = true;
        return 0;
    }
    if (!(rep.type & NBD_REP_ERR_BIT))
        return vmm_set_error(EPROTO, "unexpected reply %#x to the structured reply option", rep.type);
    *ok = false;
    return 0;
}

static int negotiate_meta(int fd, const char *export, struct nbd_export_info *info)
{
    size_t elen = strlen(export), qlen = strlen(NBD_META_BASE_ALLOCATION);
    uint32_t len = (uint32_t)(4 + elen + 4 + 4 + qlen);
    uint8_t *buf = malloc(len);
    if (!buf)
        return vmm_set_error(ENOMEM, "out of memory");
    nbd_put32(buf, (uint32_t)elen);
    memcpy(buf + 4, export, elen);
    nbd_put32(buf + 4 + elen, 1);
    nbd_put32(buf + 8 + elen, (uint32_t)qlen);
    memcpy(buf + 12 + elen, NBD_META_BASE_ALLOCATION, qlen);
    int r = send_option(fd, NBD_OPT_SET_META_CONTEXT, buf, len);
    free(buf);
    if (r < 0)
        return -1;
    for (;;) {
        struct opt_reply rep;
        if (read_option_reply(fd, NBD_OPT_SET_META_CONTEXT, &rep) < 0)
            return -1;
        if (rep.type == NBD_REP_META_CONTEXT) {
            if (rep.len < 4) {
                free(rep.data);
                return vmm_set_error(EPROTO, "the server sent a short meta context reply");
            }
            if (rep.len - 4 == qlen && !memcmp(rep.data + 4, NBD_META_BASE_ALLOCATION, qlen)) {
                info->base_allocation = true;
                info->base_allocation_id = nbd_get32(rep.data);
            }
            free(rep.data);
            continue;
        }
        free(rep.data);
        if (rep.type == NBD_REP_ACK)
            return 0;
        if (rep.type & NBD_REP_ERR_BIT) {
            info->base_allocation = false;
            return 0; /* no block status: everything reads as data */
        }
        return vmm_set_error(EPROTO, "unexpected reply %#x to the meta context option", rep.type);
    }
}

/* NBD_OPT_EXPORT_NAME: the old way in, for servers without NBD_OPT_GO. */
static int export_name(int fd, const char *export, uint16_t hflags, struct nbd_export_info *info)
{
    if (send_option(fd, NBD_OPT_EXPORT_NAME, export, (uint32_t)strlen(export)) < 0)
        return -1;
    uint8_t buf[10 + 124];
    size_t n = hflags & NBD_FLAG_NO_ZEROES ? 10 : sizeof(buf);
    int r = nbd_read_full(fd, buf, n);
    if (r == -EPIPE)
        return vmm_set_error(ENOENT, "the server closed the connection: export '%s' not available",
                             export);
    if (r < 0)
        return io_error(r, "the handshake");
    info->size = nbd_get64(buf);
    info->flags = nbd_get16(buf + 8);
    info->structured = info->base_allocation = false;
    return 0;
}

/* NBD_OPT_GO; *unsupported is set when the server does not know it. */
static int go(int fd, const char *export, struct nbd_export_info *info, bool *unsupported)
{
    size_t elen = strlen(export);
    uint32_t len = (uint32_t)(4 + elen + 2 + 2);
    uint8_t *buf = malloc(len);
    if (!buf)
        return vmm_set_error(ENOMEM, "out of memory");
    nbd_put32(buf, (uint32_t)elen);
    memcpy(buf + 4, export, elen);
    nbd_put16(buf + 4 + elen, 1);
    nbd_put16(buf + 6 + elen, NBD_INFO_BLOCK_SIZE);
    int r = send_option(fd, NBD_OPT_GO, buf, len);
    free(buf);
    if (r < 0)
        return -1;
    bool got_export = false;
    *unsupported = false;
    for (;;) {
        struct opt_reply rep;
        if (read_option_reply(fd, NBD_OPT_GO, &rep) < 0)
            return -1;
        uint32_t t = rep.type;
        if (t == NBD_REP_INFO && rep.len >= 2) {
            uint16_t it = nbd_get16(rep.data);
            if (it == NBD_INFO_EXPORT && rep.len == 12) {
                info->size = nbd_get64(rep.data + 2);
                info->flags = nbd_get16(rep.data + 10);
                got_export = true;
            } else if (it == NBD_INFO_BLOCK_SIZE && rep.len == 14) {
                info->min_block = nbd_get32(rep.data + 2);
                info->pref_block = nbd_get32(rep.data + 6);
                info->max_block = nbd_get32(rep.data + 10);
            } else if (it == NBD_INFO_EXPORT || it == NBD_INFO_BLOCK_SIZE) {
                free(rep.data);
                return vmm_set_error(EPROTO, "the server sent a malformed export information reply");
            }
            free(rep.data);
            continue;
        }
        if (t == NBD_REP_ACK) {
            free(rep.data);
            if (!got_export)
                return vmm_set_error(EPROTO, "the server accepted the export without giving its size");
            return 0;
        }
        if (t == NBD_REP_ERR_UNSUP) {
            free(rep.data);
            *unsupported = true;
            return 0;
        }
        if (t & NBD_REP_ERR_BIT) {
            int e = t == NBD_REP_ERR_UNKNOWN ? ENOENT : t == NBD_REP_ERR_POLICY ? EACCES : EINVAL;
            vmm_set_error(e, "Requested export '%s' not available: %s%s%s", export,
                          rep_error_name(t), rep.len ? ": " : "", rep.len ? (char *)rep.data : "");
            free(rep.data);
            return -1;
        }
        free(rep.data);
        return vmm_set_error(EPROTO, "unexpected reply %#x to NBD_OPT_GO", t);
    }
}

static bool is_pow2(uint32_t v)
{
    return v && !(v & (v - 1));
}

static int check_block_sizes(struct nbd_export_info *info)
{
    if (!info->min_block && !info->pref_block && !info->max_block) {
        info->min_block = 1;
        info->pref_block = 4096;
        info->max_block = NBD_MAX_PAYLOAD;
        return 0;
    }
    if (!is_pow2(info->min_block) || info->min_block > 65536 || !is_pow2(info->pref_block) ||
        info->pref_block < info->min_block || info->max_block < info->min_block ||
        (info->max_block != UINT32_MAX && info->max_block % info->min_block))
        return vmm_set_error(EPROTO, "the server sent invalid block size constraints "
                             "(minimum %u, preferred %u, maximum %u)",
                             info->min_block, info->pref_block, info->max_block);
    if (info->max_block > NBD_MAX_PAYLOAD)
        info->max_block = NBD_MAX_PAYLOAD;
    return 0;
}

int nbd_client_handshake(int fd, const char *export, bool want_sr, struct nbd_export_info *info)
{
    memset(info, 0, sizeof(*info));
    if (strlen(export) > NBD_MAX_STRING)
        return vmm_set_error(EINVAL, "the export name is longer than 4096 bytes");
    uint8_t hello[18];
    int r = nbd_read_full(fd, hello, 16);
    if (r < 0)
        return io_error(r, "the handshake");
    if (nbd_get64(hello) != NBD_MAGIC)
        return vmm_set_error(EPROTO, "not an NBD server (bad magic in the greeting)");
    uint64_t magic = nbd_get64(hello + 8);
    if (magic == NBD_OLDSTYLE_MAGIC)
        return vmm_set_error(EPROTO, "the server uses the oldstyle NBD handshake, which is not supported "
                             "(serve with a newstyle server: nbd-server >= 3.10, qemu-nbd, nbdkit)");
    if (magic != NBD_IHAVEOPT)
        return vmm_set_error(EPROTO, "not an NBD server (unknown handshake magic %#llx)",
                             (unsigned long long)magic);
    if ((r = nbd_read_full(fd, hello + 16, 2)) < 0)
        return io_error(r, "the handshake");
    uint16_t hflags = nbd_get16(hello + 16);
    uint8_t cflags[4];
    nbd_put32(cflags, hflags & (NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
    if ((r = nbd_write_full(fd, cflags, 4)) < 0)
        return io_error(r, "the handshake");
    if (!(hflags & NBD_FLAG_FIXED_NEWSTYLE)) /* plain newstyle: only EXPORT_NAME */
        return export_name(fd, export, hflags, info) < 0 ? -1 : check_block_sizes(info);
    if (want_sr && negotiate_structured(fd, &info->structured) < 0)
        return -1;
    if (info->structured && negotiate_meta(fd, export, info) < 0)
        return -1;
    bool unsupported;
    if (go(fd, export, info, &unsupported) < 0)
        return -1;
    if (unsupported && export_name(fd, export, hflags, info) < 0)
        return -1;
    if (info->size > INT64_MAX)
        return vmm_set_error(EPROTO, "the server announced an export larger than 8 EiB");
    return check_block_sizes(info);
}

/* ---- the client's reply parser ------------------------------------------- */

static struct nbd_req *find_req(struct nbd_conn *c, uint64_t cookie)
{
    pthread_mutex_lock(&c->lock);
    struct nbd_req *r = c->inflight;
    while (r && r->cookie != cookie)
        r = r->next;
    pthread_mutex_unlock(&c->lock);
    return r;
}

static void complete(struct nbd_conn *c, struct nbd_req *r)
{
    pthread_mutex_lock(&c->lock);
    for (struct nbd_req **pp = &c->inflight; *pp; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    }
    r->done = true;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&c->lock);
}

static int violation(struct nbd_conn *c, const char *fmt, ...) VMM_PRINTF(2, 3);
static int violation(struct nbd_conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(c->dead_msg, sizeof(c->dead_msg), "protocol error from the NBD server: ");
    vsnprintf(c->dead_msg + n, sizeof(c->dead_msg) - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

static int lost(struct nbd_conn *c, int ret)
{
    snprintf(c->dead_msg, sizeof(c->dead_msg), "%s",
             ret == -EPIPE ? "the NBD server closed the connection"
                           : "reading from the NBD server failed");
    if (ret != -EPIPE) {
        size_t n = strlen(c->dead_msg);
        snprintf(c->dead_msg + n, sizeof(c->dead_msg) - n, ": %s", strerror(-ret));
    }
    return -1;
}

static void set_req_error(struct nbd_req *r, uint32_t wire, const char *msg, size_t len)
{
    if (r->err)
        return; /* keep the first error */
    r->err = -nbd_wire_to_errno(wire ? wire : NBD_EIO);
    if (len)
        snprintf(r->msg, sizeof(r->msg), "%.*s", (int)len, msg);
    else
        snprintf(r->msg, sizeof(r->msg), "%s", strerror(-r->err));
}

/* Read `len` bytes from the socket into the request's iovec at `at`. */
static int read_into_iov(struct nbd_conn *c, struct nbd_req *r, uint64_t at, uint64_t len)
{
    for (int i = 0; i < r->iovcnt && len; i++) {
        uint64_t l = r->iov[i].iov_len;
        if (at >= l) {
            at -= l;
            continue;
        }
        uint64_t n = l - at < len ? l - at : len;
        int ret = nbd_read_full(c->fd, (uint8_t *)r->iov[i].iov_base + at, (size_t)n);
        if (ret < 0)
            return ret;
        len -= n;
        at = 0;
    }
    return len ? nbd_skip(c->fd, len) : 0;
}

static void zero_iov(struct nbd_req *r, uint64_t at, uint64_t len)
{
    for (int i = 0; i < r->iovcnt && len; i++) {
        uint64_t l = r->iov[i].iov_len;
        if (at >= l) {
            at -= l;
            continue;
        }
        uint64_t n = l - at < len ? l - at : len;
        memset((uint8_t *)r->iov[i].iov_base + at, 0, (size_t)n);
        len -= n;
        at = 0;
    }
}

static int simple_reply(struct nbd_conn *c, const uint8_t *hdr)
{
    uint32_t error = nbd_get32(hdr + 4);
    uint64_t cookie = nbd_get64(hdr + 8);
    struct nbd_req *r = find_req(c, cookie);
    if (!r)
        return violation(c, "reply to an unknown request (cookie %#llx)", (unsigned long long)cookie);
    if (r->type == NBD_CMD_READ && !error) {
        if (c->info.structured)
            return violation(c, "simple reply carrying data after structured replies were negotiated");
        int ret = read_into_iov(c, r, 0, r->length);
        if (ret < 0)
            return lost(c, ret);
        r->covered = r->length;
    }
    if (r->type == NBD_CMD_BLOCK_STATUS && !error)
        return violation(c, "simple reply to a block status request");
    if (error)
        set_req_error(r, error, NULL, 0);
    complete(c, r);
    return 0;
}

static int chunk_data(struct nbd_conn *c, struct nbd_req *r, uint16_t type, uint32_t len)
{
    if (r->type != NBD_CMD_READ)
        return violation(c, "data chunk in reply to a %s request", nbd_cmd_name(r->type));
    uint8_t off[12];
    uint32_t fixed = type == NBD_REPLY_TYPE_OFFSET_DATA ? 8 : 12;
    if (type == NBD_REPLY_TYPE_OFFSET_DATA ? len <= 8 : len != 12)
        return violation(c, "%s chunk of bad length %u",
                         type == NBD_REPLY_TYPE_OFFSET_DATA ? "data" : "hole", len);
    int ret = nbd_read_full(c->fd, off, fixed);
    if (ret < 0)
        return lost(c, ret);
    uint64_t offset = nbd_get64(off);
    uint64_t n = type == NBD_REPLY_TYPE_OFFSET_DATA ? len - 8u : nbd_get32(off + 8);
    if (offset < r->offset || offset - r->offset > r->length || n > r->length - (offset - r->offset) || !n)
        return violation(c, "chunk %llu+%llu outside the read request %llu+%u",
                         (unsigned long long)offset, (unsigned long long)n,
                         (unsigned long long)r->offset, r->length);
    if (r->covered + n > r->length)
        return violation(c, "read reply chunks overlap");
    if (type == NBD_REPLY_TYPE_OFFSET_DATA) {
        if ((ret = read_into_iov(c, r, offset - r->offset, n)) < 0)
            return lost(c, ret);
    } else {
        zero_iov(r, offset - r->offset, n);
    }
    r->covered += n;
    return 0;
}

static int chunk_status(struct nbd_conn *c, struct nbd_req *r, uint32_t len)
{
    if (r->type != NBD_CMD_BLOCK_STATUS)
        return violation(c, "block status chunk in reply to a %s request", nbd_cmd_name(r->type));
    if (len < 12 || (len - 4) % 8 || len > (1u << 20))
        return violation(c, "block status chunk of bad length %u", len);
    uint8_t head[12];
    int ret = nbd_read_full(c->fd, head, 12);
    if (ret < 0 || (ret = nbd_skip(c->fd, len - 12)) < 0)
        return lost(c, ret);
    if (!c->info.base_allocation || nbd_get32(head) != c->info.base_allocation_id)
        return violation(c, "block status for a metadata context that was not negotiated");
    uint32_t elen = nbd_get32(head + 4);
    if (!elen)
        return violation(c, "block status extent of length 0");
    if (r->got_status)
        return violation(c, "two block status chunks for one context");
    r->got_status = true;
    r->status_len = elen < r->length ? elen : r->length;
    r->status_flags = nbd_get32(head + 8);
    return 0;
}

static int chunk_error(struct nbd_conn *c, struct nbd_req *r, uint16_t type, uint32_t len)
{
    if (len < 6 || len > 6 + NBD_MAX_STRING + 8)
        return violation(c, "error chunk of bad length %u", len);
    uint8_t buf[6 + NBD_MAX_STRING + 8];
    int ret = nbd_read_full(c->fd, buf, len);
    if (ret < 0)
        return lost(c, ret);
    uint32_t err = nbd_get32(buf);
    uint16_t mlen = nbd_get16(buf + 4);
    uint32_t need = 6u + mlen + (type == NBD_REPLY_TYPE_ERROR_OFFSET ? 8u : 0u);
    if (!err)
        return violation(c, "error chunk with error value 0");
    if (need > len || (type == NBD_REPLY_TYPE_ERROR_OFFSET && need != len))
        return violation(c, "error chunk whose message does not fit (%u > %u)", need, len);
    if (type == NBD_REPLY_TYPE_ERROR_OFFSET) {
        uint64_t off = nbd_get64(buf + 6 + mlen);
        if (r->type != NBD_CMD_READ || off < r->offset || off - r->offset >= r->length)
            return violation(c, "error offset %llu outside the request", (unsigned long long)off);
    }
    set_req_error(r, err, (const char *)buf + 6, mlen);
    return 0;
}

static int structured_chunk(struct nbd_conn *c, const uint8_t *hdr)
{
    uint16_t flags = nbd_get16(hdr + 4), type = nbd_get16(hdr + 6);
    uint64_t cookie = nbd_get64(hdr + 8);
    uint32_t len = nbd_get32(hdr + 16);
    if (!c->info.structured)
        return violation(c, "structured reply without negotiating it");
    struct nbd_req *r = find_req(c, cookie);
    if (!r)
        return violation(c, "reply to an unknown request (cookie %#llx)", (unsigned long long)cookie);
    int ret;
    switch (type) {
    case NBD_REPLY_TYPE_NONE:
        if (len || !(flags & NBD_REPLY_FLAG_DONE))
            return violation(c, "NONE chunk with a payload or without the DONE flag");
        ret = 0;
        break;
    case NBD_REPLY_TYPE_OFFSET_DATA:
    case NBD_REPLY_TYPE_OFFSET_HOLE:
        ret = chunk_data(c, r, type, len);
        break;
    case NBD_REPLY_TYPE_BLOCK_STATUS:
        ret = chunk_status(c, r, len);
        break;
    case NBD_REPLY_TYPE_ERROR:
    case NBD_REPLY_TYPE_ERROR_OFFSET:
        ret = chunk_error(c, r, type, len);
        break;
    default:
        if (!(type & NBD_REPLY_TYPE_ERROR_BIT))
            return violation(c, "unknown reply chunk type %u", type);
        if (len < 4 || len > 65536)
            return violation(c, "error chunk of bad length %u", len);
        uint8_t e[4];
        if ((ret = nbd_read_full(c->fd, e, 4)) < 0 || (ret = nbd_skip(c->fd, len - 4)) < 0)
            return lost(c, ret);
        set_req_error(r, nbd_get32(e), NULL, 0);
        ret = 0;
    }
    if (ret < 0)
        return ret;
    if (!(flags & NBD_REPLY_FLAG_DONE))
        return 0;
    if (!r->err && r->type == NBD_CMD_READ && r->covered != r->length)
        return violation(c, "read reply covered %llu of %u bytes", (unsigned long long)r->covered,
                         r->length);
    if (!r->err && r->type == NBD_CMD_BLOCK_STATUS && !r->got_status)
        return violation(c, "block status reply without an extent");
    complete(c, r);
    return 0;
}

int nbd_conn_process_reply(struct nbd_conn *c)
{
    uint8_t hdr[NBD_CHUNK_HEADER_SIZE];
    int ret = nbd_read_full(c->fd, hdr, 4);
    if (ret < 0)
        return lost(c, ret);
    uint32_t magic = nbd_get32(hdr);
    if (magic == NBD_SIMPLE_REPLY_MAGIC) {
        if ((ret = nbd_read_full(c->fd, hdr + 4, NBD_SIMPLE_REPLY_SIZE - 4)) < 0)
            return lost(c, ret);
        return simple_reply(c, hdr);
    }
    if (magic == NBD_STRUCTURED_REPLY_MAGIC) {
        if ((ret = nbd_read_full(c->fd, hdr + 4, NBD_CHUNK_HEADER_SIZE - 4)) < 0)
            return lost(c, ret);
        return structured_chunk(c, hdr);
    }
    return violation(c, "bad reply magic %#x", magic);
}

void nbd_conn_fail_all(struct nbd_conn *c, const char *msg)
{
    pthread_mutex_lock(&c->lock);
    c->dead = true;
    if (msg && msg != c->dead_msg)
        snprintf(c->dead_msg, sizeof(c->dead_msg), "%s", msg);
    for (struct nbd_req *r = c->inflight; r; r = r->next) {
        r->lost = true;
        r->done = true;
        pthread_cond_signal(&r->cond);
    }
    c->inflight = NULL;
    pthread_mutex_unlock(&c->lock);
}
