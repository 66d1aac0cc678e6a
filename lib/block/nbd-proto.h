/* NBD protocol pieces shared by the client driver (nbd.c) and the server
 * (nbd-server.c): wire constants from the NBD project's doc/proto.md,
 * big-endian encoders/decoders, full-length socket I/O, URIs and the
 * client's handshake and reply parser (exposed here so the fuzz harness
 * can drive them over a socketpair).  Internal. */
#ifndef LIBVMM_NBD_PROTO_H
#define LIBVMM_NBD_PROTO_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* ---- handshake ----------------------------------------------------------- */
#define NBD_MAGIC             0x4e42444d41474943ull  /* "NBDMAGIC" */
#define NBD_OLDSTYLE_MAGIC    0x00420281861253ull
#define NBD_IHAVEOPT          0x49484156454f5054ull  /* "IHAVEOPT" */
#define NBD_OPT_REPLY_MAGIC   0x3e889045565a9ull

#define NBD_FLAG_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_NO_ZEROES      (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE NBD_FLAG_FIXED_NEWSTYLE
#define NBD_FLAG_C_NO_ZEROES      NBD_FLAG_NO_ZEROES

enum {
    NBD_OPT_EXPORT_NAME = 1, NBD_OPT_ABORT = 2, NBD_OPT_LIST = 3, NBD_OPT_STARTTLS = 5,
    NBD_OPT_INFO = 6, NBD_OPT_GO = 7, NBD_OPT_STRUCTURED_REPLY = 8,
    NBD_OPT_LIST_META_CONTEXT = 9, NBD_OPT_SET_META_CONTEXT = 10,
};

#define NBD_REP_ERR_BIT (1u << 31)
enum {
    NBD_REP_ACK = 1, NBD_REP_SERVER = 2, NBD_REP_INFO = 3, NBD_REP_META_CONTEXT = 4,
};
#define NBD_REP_ERR_UNSUP    (NBD_REP_ERR_BIT | 1)
#define NBD_REP_ERR_POLICY   (NBD_REP_ERR_BIT | 2)
#define NBD_REP_ERR_INVALID  (NBD_REP_ERR_BIT | 3)
#define NBD_REP_ERR_PLATFORM (NBD_REP_ERR_BIT | 4)
#define NBD_REP_ERR_TLS_REQD (NBD_REP_ERR_BIT | 5)
#define NBD_REP_ERR_UNKNOWN  (NBD_REP_ERR_BIT | 6)
#define NBD_REP_ERR_SHUTDOWN (NBD_REP_ERR_BIT | 7)
#define NBD_REP_ERR_BLOCK_SIZE_REQD (NBD_REP_ERR_BIT | 8)
#define NBD_REP_ERR_TOO_BIG  (NBD_REP_ERR_BIT | 9)

enum { NBD_INFO_EXPORT = 0, NBD_INFO_NAME = 1, NBD_INFO_DESCRIPTION = 2, NBD_INFO_BLOCK_SIZE = 3 };

/* Transmission flags. */
#define NBD_FLAG_HAS_FLAGS        (1u << 0)
#define NBD_FLAG_READ_ONLY        (1u << 1)
#define NBD_FLAG_SEND_FLUSH       (1u << 2)
#define NBD_FLAG_SEND_FUA         (1u << 3)
#define NBD_FLAG_ROTATIONAL       (1u << 4)
#define NBD_FLAG_SEND_TRIM        (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_FLAG_SEND_DF          (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN   (1u << 8)
#define NBD_FLAG_SEND_RESIZE      (1u << 9)
#define NBD_FLAG_SEND_CACHE       (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO   (1u << 11)

/* ---- transmission -------------------------------------------------------- */
#define NBD_REQUEST_MAGIC      0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC 0x67446698u
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33efu
#define NBD_REQUEST_SIZE 28
#define NBD_SIMPLE_REPLY_SIZE 16
#define NBD_CHUNK_HEADER_SIZE 20

enum {
    NBD_CMD_READ = 0, NBD_CMD_WRITE = 1, NBD_CMD_DISC = 2, NBD_CMD_FLUSH = 3, NBD_CMD_TRIM = 4,
    NBD_CMD_CACHE = 5, NBD_CMD_WRITE_ZEROES = 6, NBD_CMD_BLOCK_STATUS = 7,
};
#define NBD_CMD_FLAG_FUA       (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE   (1u << 1)
#define NBD_CMD_FLAG_DF        (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE   (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO (1u << 4)

#define NBD_REPLY_FLAG_DONE (1u << 0)
enum {
    NBD_REPLY_TYPE_NONE = 0, NBD_REPLY_TYPE_OFFSET_DATA = 1, NBD_REPLY_TYPE_OFFSET_HOLE = 2,
    NBD_REPLY_TYPE_BLOCK_STATUS = 5,
};
#define NBD_REPLY_TYPE_ERROR_BIT    (1u << 15)
#define NBD_REPLY_TYPE_ERROR        (NBD_REPLY_TYPE_ERROR_BIT | 1)
#define NBD_REPLY_TYPE_ERROR_OFFSET (NBD_REPLY_TYPE_ERROR_BIT | 2)

/* Error values on the wire. */
enum {
    NBD_EPERM = 1, NBD_EIO = 5, NBD_ENOMEM = 12, NBD_EINVAL = 22, NBD_ENOSPC = 28,
    NBD_EOVERFLOW = 75, NBD_ENOTSUP = 95, NBD_ESHUTDOWN = 108,
};

#define NBD_STATE_HOLE 1u
#define NBD_STATE_ZERO 2u
#define NBD_META_BASE_ALLOCATION "base:allocation"

#define NBD_DEFAULT_PORT 10809
#define NBD_MAX_STRING 4096
#define NBD_MAX_PAYLOAD (32u << 20)  /* largest read/write without block-size info */
#define NBD_MAX_OPTION_DATA (64u << 10)

/* ---- byte order ---------------------------------------------------------- */
static inline void nbd_put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void nbd_put32(uint8_t *p, uint32_t v)
{
    nbd_put16(p, (uint16_t)(v >> 16));
    nbd_put16(p + 2, (uint16_t)v);
}
static inline void nbd_put64(uint8_t *p, uint64_t v)
{
    nbd_put32(p, (uint32_t)(v >> 32));
    nbd_put32(p + 4, (uint32_t)v);
}
static inline uint16_t nbd_get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t nbd_get32(const uint8_t *p)
{
    return (uint32_t)nbd_get16(p) << 16 | nbd_get16(p + 2);
}
static inline uint64_t nbd_get64(const uint8_t *p)
{
    return (uint64_t)nbd_get32(p) << 32 | nbd_get32(p + 4);
}

/* errno <-> wire error (unknown errno values become EINVAL / EIO). */
uint32_t nbd_errno_to_wire(int err);
int nbd_wire_to_errno(uint32_t err);
const char *nbd_cmd_name(unsigned type);

/* ---- socket I/O: all or nothing; 0 or -errno (-EPIPE for EOF) ------------ */
int nbd_read_full(int fd, void *buf, size_t len);
int nbd_write_full(int fd, const void *buf, size_t len);
/* Write every iovec (the array is not modified). */
int nbd_writev_full(int fd, const struct iovec *iov, int iovcnt);
/* Read and drop `len` bytes. */
int nbd_skip(int fd, uint64_t len);

/* ---- addresses ----------------------------------------------------------- */
struct nbd_address {
    bool is_unix;
    char *host;      /* TCP */
    char *port;      /* TCP, as text */
    char *path;      /* Unix socket */
    char *export;    /* export name ("" default) */
};
void nbd_address_clear(struct nbd_address *a);
/* Whether `s` is an nbd:// / nbd+tcp:// / nbd+unix:// URI. */
bool nbd_is_uri(const char *s);
/* Parse an NBD URI; -1 with vmm_set_error on a malformed one. */
int nbd_parse_uri(const char *uri, struct nbd_address *out);
/* The URI naming an address (caller frees). */
char *nbd_address_to_uri(const struct nbd_address *a);
/* Connect a stream socket; returns the fd or -errno (error set). */
int nbd_connect(const struct nbd_address *a);

/* ---- client side --------------------------------------------------------- */
struct nbd_export_info {
    uint64_t size;
    uint16_t flags;            /* NBD_FLAG_* transmission flags */
    uint32_t min_block, pref_block, max_block;
    bool structured;           /* structured replies negotiated */
    bool base_allocation;      /* base:allocation context negotiated */
    uint32_t base_allocation_id;
};

/* Run the client side of the handshake on a connected socket.  `want_sr`
 * asks for structured replies (and then base:allocation).  Fails with a
 * message (oldstyle servers, unknown exports, malformed replies). */
int nbd_client_handshake(int fd, const char *export, bool want_sr, struct nbd_export_info *info);

/* One request waiting for its reply. */
struct nbd_req {
    uint64_t cookie;
    uint16_t type, flags;
    uint64_t offset;
    uint32_t length;
    const struct iovec *iov;   /* READ: where the data goes */
    int iovcnt;
    uint64_t covered;          /* READ: bytes of data/hole chunks received */
    uint32_t status_len, status_flags; /* BLOCK_STATUS: the first extent */
    bool got_status;
    int err;                   /* -errno once known */
    char msg[256];             /* the server's or our message with err */
    bool done, lost;           /* lost: the connection went away first */
    pthread_cond_t cond;
    struct nbd_req *next;
};

/* A connection in the transmission phase: a table of requests in flight
 * (cookie -> waiting thread), one reader. */
struct nbd_conn {
    int fd;
    struct nbd_export_info info;
    pthread_mutex_t lock;      /* the request list and the state below */
    pthread_mutex_t send_lock; /* one request on the wire at a time */
    struct nbd_req *inflight;  /* singly linked */
    uint64_t next_cookie;
    bool dead;                 /* the reader stopped: no more replies */
    char dead_msg[256];
};

/* Read and dispatch one reply (or structured chunk) from the server,
 * completing the matching request.  0 on success, -1 on a protocol
 * violation or a dead socket with the reason in c->dead_msg. */
int nbd_conn_process_reply(struct nbd_conn *c);
/* Mark the connection dead and every request in flight lost. */
void nbd_conn_fail_all(struct nbd_conn *c, const char *msg);

#endif
