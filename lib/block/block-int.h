/* The block layer's internal contract: block nodes and the driver ops table
 * that protocol drivers (file, host_device, nbd) and format drivers (raw,
 * qcow2) fill in.  See lib/block/README.md for the design.
 *
 * Threading model: driver I/O methods are blocking calls made from the block
 * layer's worker threads (or a tool's own thread through the synchronous
 * wrappers); many may run at once on one node, so a driver protects its own
 * metadata (qcow2: one mutex around metadata, dropped for data I/O).  The
 * asynchronous public API queues requests to the workers and completes them
 * through callbacks.
 *
 * Errors: every method returns 0 (or a non-negative count) on success and a
 * negative errno value on failure, after calling vmm_set_error() with a
 * message naming the problem (the message is per thread; the core carries it
 * to the request's completion). */
#ifndef LIBVMM_BLOCK_INT_H
#define LIBVMM_BLOCK_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>
#include "util/util.h"

struct block_node;
struct block_driver;

/* Open flags. */
#define BLOCK_O_RDWR         (1u << 0)
#define BLOCK_O_NO_BACKING   (1u << 1)  /* do not open the backing chain */
#define BLOCK_O_FORCE_SHARE  (1u << 2)  /* read-only open ignoring locks */
#define BLOCK_O_NOCACHE      (1u << 3)  /* cache=none: O_DIRECT */
#define BLOCK_O_NATIVE_AIO   (1u << 4)  /* aio=native: libaio */
#define BLOCK_O_CHECK        (1u << 5)  /* opened for check: tolerate damage */
#define BLOCK_O_NO_REPAIR    (1u << 6)  /* do not repair a dirty image on open */
#define BLOCK_O_BACKING_RW   (1u << 7)  /* open the first backing node read-write (commit) */
#define BLOCK_O_PROBED       (1u << 8)  /* the format was probed, not given (set by the core) */
#define BLOCK_O_NO_FLUSH     (1u << 9)  /* cache=unsafe: flushes are no-ops */

/* Request flags. */
#define BLOCK_REQ_FUA        (1u << 0)  /* write reaches stable storage */
#define BLOCK_REQ_MAY_UNMAP  (1u << 1)  /* write-zeroes may deallocate */
#define BLOCK_REQ_NO_FALLBACK (1u << 2) /* write-zeroes fails if not fast */
#define BLOCK_REQ_COMPRESSED (1u << 3)  /* write one compressed cluster */

/* block_status result flags (as qemu's map reports them). */
#define BLOCK_STATUS_DATA      (1u << 0)  /* reads come from data (not known zero) */
#define BLOCK_STATUS_ZERO      (1u << 1)  /* reads return zeroes */
#define BLOCK_STATUS_ALLOCATED (1u << 2)  /* this layer provides the content */
#define BLOCK_STATUS_OFFSET_VALID (1u << 3) /* *map_offset is where it lives in *file */

enum block_prealloc { PREALLOC_OFF, PREALLOC_METADATA, PREALLOC_FALLOC, PREALLOC_FULL };

/* One extent answered by block_status. */
struct block_status {
    uint64_t bytes;              /* length this answer covers (> 0) */
    unsigned flags;              /* BLOCK_STATUS_* */
    uint64_t map_offset;         /* with OFFSET_VALID: offset in `file` */
    struct block_node *file;     /* the node the data lives in, or NULL */
};

/* The node every driver sees. Fields other than `opaque` are the core's. */
struct block_node {
    const struct block_driver *drv;
    void *opaque;                 /* driver state, drv->state_size bytes */
    char *filename;               /* as given (or the child's for formats) */
    char *node_name;
    unsigned open_flags;
    bool read_only;
    uint64_t size;                /* virtual size in bytes, kept by the driver */
    uint32_t request_alignment;   /* smallest I/O unit the node accepts */
    struct block_node *file;      /* format drivers: the protocol child */
    struct block_node *backing;   /* the backing node, or NULL */
    char *backing_filename;       /* as recorded in the image */
    char *backing_format;         /* as recorded, NULL when not recorded */
    int refcount;
};

/* Result of a consistency check, as qemu-img check reports it. */
struct block_check_result {
    int64_t corruptions, leaks, check_errors;
    int64_t corruptions_fixed, leaks_fixed;
    int64_t allocated_clusters, total_clusters, fragmented_clusters, compressed_clusters;
    int64_t image_end_offset;
    char *messages;               /* human-readable lines, one per finding */
};

/* Snapshot table entry (qcow2 internal snapshots). */
struct block_snapshot {
    char *id;
    char *name;
    uint64_t vm_state_size;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t icount;              /* UINT64_MAX when absent */
};

/* Format-specific key/value facts for `info` (e.g. "compat"="1.1"). The
 * driver appends with block_info_add(); JSON typing follows the kind. */
enum block_info_kind { INFO_STR, INFO_INT, INFO_BOOL };
struct block_info_item {
    const char *key;              /* qemu-img's JSON name, e.g. "refcount-bits" */
    enum block_info_kind kind;
    char *str;
    int64_t num;
};
struct block_info {
    struct block_info_item *items;
    size_t count;
    int64_t cluster_size;         /* 0 when not applicable */
    bool dirty_flag, corrupt;     /* corrupt: qcow2 corrupt bit */
};
int block_info_add_str(struct block_info *info, const char *key, const char *value);
int block_info_add_int(struct block_info *info, const char *key, int64_t value);
int block_info_add_bool(struct block_info *info, const char *key, bool value);
void block_info_clear(struct block_info *info);

struct block_driver {
    const char *name;             /* "file", "raw", "qcow2", ... */
    const char *help;
    bool is_format;               /* sits on a protocol child */
    size_t state_size;            /* bytes allocated for bs->opaque */
    const struct vmm_prop *open_props;   /* runtime options, NULL: none */
    const struct vmm_prop *create_props; /* `create -o` options, NULL: none */

    /* Format probing: score 0 (not this format) to 100 from the first
     * bytes of the file. Never consulted when a format is given. */
    int (*probe)(const uint8_t *buf, size_t len);

    /* Open: protocol drivers use bs->filename; format drivers read through
     * bs->file (already open). `opts` holds this driver's options; mark what
     * you use with vmm_opts_get. Must leave nothing allocated on failure. */
    int (*open)(struct block_node *bs, vmm_opts *opts, unsigned flags);
    void (*close)(struct block_node *bs);

    /* Create an image. Protocol drivers create `filename`; format drivers
     * get the protocol child already created, open and empty (`file`), the
     * options as parsed from create_props into `create_opts` (a struct of
     * the driver's own layout, set up by vmm_props_*), and `size`. */
    size_t create_opts_size;
    int (*create)(const char *filename, struct block_node *file, void *create_opts);

    int (*preadv)(struct block_node *bs, uint64_t offset, uint64_t bytes,
                  const struct iovec *iov, int iovcnt, unsigned flags);
    int (*pwritev)(struct block_node *bs, uint64_t offset, uint64_t bytes,
                   const struct iovec *iov, int iovcnt, unsigned flags);
    int (*flush)(struct block_node *bs);
    int (*pdiscard)(struct block_node *bs, uint64_t offset, uint64_t bytes);
    int (*pwrite_zeroes)(struct block_node *bs, uint64_t offset, uint64_t bytes, unsigned flags);
    int (*block_status)(struct block_node *bs, uint64_t offset, uint64_t bytes,
                        struct block_status *out);
    int (*truncate)(struct block_node *bs, uint64_t size, bool allow_shrink,
                    enum block_prealloc prealloc);
    /* Host bytes used by the image (qemu-img's "disk size"). */
    int64_t (*allocated_size)(struct block_node *bs);

    int (*get_info)(struct block_node *bs, struct block_info *info);
    int (*check)(struct block_node *bs, struct block_check_result *res, unsigned fix);
#define BLOCK_FIX_LEAKS  1u
#define BLOCK_FIX_ERRORS 2u
    int (*snapshot_create)(struct block_node *bs, const struct block_snapshot *sn);
    int (*snapshot_list)(struct block_node *bs, struct block_snapshot **list, int *count);
    int (*snapshot_goto)(struct block_node *bs, const char *id_or_name);
    int (*snapshot_delete)(struct block_node *bs, const char *id_or_name);
    /* Change image options in place (qemu-img amend). */
    int (*amend)(struct block_node *bs, vmm_opts *opts);
    /* Rewrite the recorded backing file name/format (rebase, commit). */
    int (*change_backing_file)(struct block_node *bs, const char *filename, const char *format);
    /* Mark the image empty (commit -d uses it on the top layer). */
    int (*make_empty)(struct block_node *bs);
    /* qemu-img measure: bytes a new image with `create_opts` needs to hold
     * the allocated content of `src` (NULL: an empty image of
     * create_opts' size), and when fully allocated. Optional. */
    int (*measure)(void *create_opts, struct block_node *src,
                   uint64_t *required, uint64_t *fully_allocated);
    /* Protocol drivers addressed by options alone (nbd's server.*): the
     * filename may be empty and the driver names the node itself.  Such a
     * node is never created, only opened (create checks its size). */
    bool filename_optional;
    /* Request flags the driver honours itself (BLOCK_REQ_FUA: nbd sends
     * it to the server); the core emulates the others (FUA: a flush). */
    unsigned write_flags;
    /* Prefetch a range into the server's or device's cache (NBD_CMD_CACHE).
     * Advisory and optional: drivers without it ignore the hint. */
    int (*cache)(struct block_node *bs, uint64_t offset, uint64_t bytes);
};

/* ---- what drivers call: synchronous, thread-safe I/O on a child node ---- */
int block_node_pread(struct block_node *bs, uint64_t offset, void *buf, uint64_t bytes);
int block_node_pwrite(struct block_node *bs, uint64_t offset, const void *buf,
                      uint64_t bytes, unsigned flags);
int block_node_preadv(struct block_node *bs, uint64_t offset, uint64_t bytes,
                      const struct iovec *iov, int iovcnt, unsigned flags);
int block_node_pwritev(struct block_node *bs, uint64_t offset, uint64_t bytes,
                       const struct iovec *iov, int iovcnt, unsigned flags);
int block_node_flush(struct block_node *bs);
int block_node_pdiscard(struct block_node *bs, uint64_t offset, uint64_t bytes);
/* Advisory prefetch; 0 where the node has no cache to fill. */
int block_node_cache(struct block_node *bs, uint64_t offset, uint64_t bytes);
int block_node_pwrite_zeroes(struct block_node *bs, uint64_t offset, uint64_t bytes, unsigned flags);
int block_node_truncate(struct block_node *bs, uint64_t size, bool allow_shrink,
                        enum block_prealloc prealloc);
int64_t block_node_getlength(struct block_node *bs);
int block_node_block_status(struct block_node *bs, uint64_t offset, uint64_t bytes,
                            struct block_status *out);

/* Open a backing node for a format driver (honours BLOCK_O_NO_BACKING and
 * the recorded format; a missing format is probed but never as a format
 * with a backing file of its own if it came out as raw). */
int block_node_open_backing(struct block_node *bs, const char *filename,
                            const char *format, unsigned flags);

const struct block_driver *block_driver_find(const char *name);

extern const struct block_driver block_driver_file;
extern const struct block_driver block_driver_host_device;
extern const struct block_driver block_driver_raw;
extern const struct block_driver block_driver_qcow2;
extern const struct block_driver block_driver_nbd;

#endif
