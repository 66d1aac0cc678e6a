/* qcow2 format driver: shared state and the functions its files share.
 * Format reference: qemu's docs/interop/qcow2.txt.  All on-disk numbers are
 * big-endian; in memory tables hold host-order values. */
#ifndef LIBVMM_QCOW2_H
#define LIBVMM_QCOW2_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include "block-int.h"

#define QCOW2_MAGIC 0x514649fbu
#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_V2_HEADER_SIZE 72
#define QCOW2_V3_HEADER_SIZE 104
#define QCOW2_HEADER_SIZE 112          /* what we write for v3 */
#define QCOW2_MAX_L1_BYTES (32u << 20)
#define QCOW2_MAX_REFTABLE_BYTES (8u << 20)
#define QCOW2_MAX_SNAPSHOTS 65536
#define QCOW2_MAX_SNAPSHOT_TABLE (64u << 20)
#define QCOW2_MAX_SNAPSHOT_EXTRA 1024
#define QCOW2_MAX_BACKING_NAME 1023

/* Feature bits. */
#define QCOW2_INCOMPAT_DIRTY        (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT      (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE    (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION  (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2        (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN (QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT | \
                              QCOW2_INCOMPAT_COMPRESSION)
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)
#define QCOW2_AUTOCLEAR_BITMAPS     (1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_RAW    (1ull << 1)

/* Header extension types. */
#define QCOW2_EXT_END          0x00000000u
#define QCOW2_EXT_BACKING_FMT  0xe2792acau
#define QCOW2_EXT_FEATURES     0x6803f857u
#define QCOW2_EXT_BITMAPS      0x23852875u
#define QCOW2_EXT_CRYPTO       0x0537be77u
#define QCOW2_EXT_DATA_FILE    0x44415441u

/* L1/L2 entry bits. */
#define QCOW2_OFLAG_COPIED     (UINT64_C(1) << 63)
#define QCOW2_OFLAG_COMPRESSED (UINT64_C(1) << 62)
#define QCOW2_OFLAG_ZERO       UINT64_C(1)
#define QCOW2_OFFSET_MASK      UINT64_C(0x00fffffffffffe00)
#define QCOW2_L1_RESERVED      0x7f000000000001ffull
#define QCOW2_L2_RESERVED      0x3f000000000001feull
#define QCOW2_RT_RESERVED      0x00000000000001ffull

enum qcow2_cluster_type {
    QCOW2_UNALLOCATED,      /* reads from backing or zeroes */
    QCOW2_ZERO_PLAIN,       /* zero flag, no host cluster */
    QCOW2_ZERO_ALLOC,       /* zero flag with a preallocated host cluster */
    QCOW2_NORMAL,
    QCOW2_COMPRESSED,
};

/* A cache of whole metadata clusters (L2 tables or refcount blocks).  It is
 * a read cache: every change is written to the file at once. */
struct qcow2_cache {
    uint32_t slots;
    uint32_t table_size;
    uint64_t *offsets;        /* 0: empty slot */
    uint64_t *last_use;
    uint8_t *tables;
    uint64_t tick;
};

struct qcow2_snapshot {
    uint64_t l1_offset;
    uint32_t l1_size;
    char *id, *name;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t vm_state_size;
    uint64_t disk_size;         /* from extra data; the image size when absent */
    uint64_t icount;            /* UINT64_MAX when absent */
    uint32_t extra_size;        /* as found (kept when rewriting) */
    uint8_t *extra;             /* raw extra data */
    const char *bad_l1;         /* why the L1 reference is unusable, or NULL */
};

struct qcow2_feature_name {
    uint8_t type, bit;
    char name[47];
};

struct qcow2_ext {
    uint32_t type, len;
    uint8_t *data;
};

struct qcow2_open_opts {
    uint64_t l2_cache_size;
    uint64_t refcount_cache_size;
    uint64_t cache_size;
    bool lazy_refcounts;
    bool lazy_refcounts_set;
    bool pass_discard_request;
};

struct qcow2_inflight {
    uint64_t start, end;                    /* guest range, whole clusters */
    struct qcow2_inflight *next;
};

struct qcow2_state {
    pthread_mutex_t lock;
    pthread_cond_t inflight_cond;
    struct qcow2_inflight *inflight;        /* allocating writes doing data I/O */
    bool lock_init;

    uint32_t version;
    uint32_t cluster_bits, cluster_size;
    uint32_t l2_bits, l2_entries;           /* entries per L2 table */
    uint32_t csize_shift;                   /* compressed descriptor layout */
    uint64_t csize_mask, coffset_mask;

    uint64_t l1_offset;
    uint32_t l1_size;
    uint64_t *l1;

    uint64_t rt_offset;
    uint32_t rt_clusters;
    uint64_t rt_size;                       /* entries */
    uint64_t *rt;
    uint32_t refcount_order, refcount_bits;
    uint64_t refcount_max;
    uint32_t rb_bits;                       /* log2 entries per refcount block */

    uint64_t incompat, compat, autoclear;
    uint32_t header_length;
    uint8_t compression_type;

    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t snapshots_size;                /* bytes of the table */
    struct qcow2_snapshot *snapshots;

    char *backing_file, *backing_format;
    struct qcow2_feature_name *features;
    uint32_t nb_features;
    struct qcow2_ext *exts;                 /* extensions we keep as found */
    uint32_t nb_exts;

    struct qcow2_cache l2_cache, rb_cache;
    uint64_t free_cluster_index;
    uint64_t free_byte_offset;              /* for packing compressed clusters */
    uint64_t resv_start, resv_count;        /* counted, unused clusters */
    uint64_t alloc_end;                     /* end of what we allocated (clusters) */
    uint64_t pack_cluster;                  /* host cluster being packed, 0: none */
    uint64_t pack_used, pack_budget;

    struct qcow2_open_opts opts;
    bool writable;
    bool lazy;                              /* lazy refcounts in use */
    bool dirty_written;                     /* dirty bit set by us */
    bool need_flush;                        /* refcounts written, not yet flushed */

    /* last decompressed cluster */
    uint64_t zcache_entry;
    uint8_t *zcache;
};

/* Endianness helpers. */
static inline uint64_t qcow2_be64(const void *p)
{
    const uint8_t *b = p;
    return ((uint64_t)b[0] << 56) | ((uint64_t)b[1] << 48) | ((uint64_t)b[2] << 40) |
           ((uint64_t)b[3] << 32) | ((uint64_t)b[4] << 24) | ((uint64_t)b[5] << 16) |
           ((uint64_t)b[6] << 8) | b[7];
}
static inline uint32_t qcow2_be32(const void *p)
{
    const uint8_t *b = p;
    return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
}
static inline uint16_t qcow2_be16(const void *p)
{
    const uint8_t *b = p;
    return (uint16_t)((b[0] << 8) | b[1]);
}
static inline void qcow2_put64(void *p, uint64_t v)
{
    uint8_t *b = p;
    for (int i = 7; i >= 0; i--, v >>= 8)
        b[i] = (uint8_t)v;
}
static inline void qcow2_put32(void *p, uint32_t v)
{
    uint8_t *b = p;
    b[0] = (uint8_t)(v >> 24); b[1] = (uint8_t)(v >> 16);
    b[2] = (uint8_t)(v >> 8); b[3] = (uint8_t)v;
}
static inline void qcow2_put16(void *p, uint16_t v)
{
    uint8_t *b = p;
    b[0] = (uint8_t)(v >> 8); b[1] = (uint8_t)v;
}

/* Set the per-thread error and return -errnum (the driver contract). */
#define QCOW2_ERR(errnum, ...) (vmm_set_error((errnum), __VA_ARGS__), -(errnum))

/* 0 when writes may proceed; else the error for a read-only or corrupt image. */
static inline int qcow2_refuse_writes(const struct qcow2_state *s)
{
    if (!s->writable)
        return QCOW2_ERR(EROFS, "qcow2: image is read-only");
    if (s->incompat & QCOW2_INCOMPAT_CORRUPT)
        return QCOW2_ERR(EIO, "qcow2: image is marked corrupt; writes are refused");
    return 0;
}

static inline uint64_t qcow2_align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }
static inline uint64_t qcow2_size_to_clusters(const struct qcow2_state *s, uint64_t bytes)
{
    return (bytes + s->cluster_size - 1) >> s->cluster_bits;
}
static inline uint64_t qcow2_offset_into_cluster(const struct qcow2_state *s, uint64_t off)
{
    return off & (s->cluster_size - 1);
}

/* qcow2.c */
int qcow2_write_header(struct block_node *bs);
int qcow2_mark_corrupt(struct block_node *bs, const char *fmt, ...) VMM_PRINTF(2, 3);
int qcow2_mark_dirty(struct block_node *bs);
int qcow2_flush_if_needed(struct block_node *bs);
uint32_t qcow2_l1_size_for(const struct qcow2_state *s, uint64_t size);
int qcow2_grow_l1(struct block_node *bs, uint32_t min_size);

/* cache */
int qcow2_cache_init(struct qcow2_cache *c, uint32_t slots, uint32_t table_size);
void qcow2_cache_destroy(struct qcow2_cache *c);
int qcow2_cache_get(struct block_node *bs, struct qcow2_cache *c, uint64_t offset, uint8_t **table);
/* Install a freshly written table without reading it back. */
int qcow2_cache_put(struct qcow2_cache *c, uint64_t offset, const uint8_t *table);
void qcow2_cache_drop(struct qcow2_cache *c, uint64_t offset);
void qcow2_cache_clear(struct qcow2_cache *c);

/* qcow2-refcount.c */
int qcow2_get_refcount(struct block_node *bs, uint64_t cluster, uint64_t *out);
int qcow2_alloc_clusters(struct block_node *bs, uint64_t n, uint64_t *offset);
/* Give back the clusters counted ahead for allocations. */
int qcow2_release_reservation(struct block_node *bs);
int qcow2_alloc_bytes(struct block_node *bs, uint32_t len, uint64_t *offset);
/* Add `addend` to the refcount of every cluster touching [offset, offset+len). */
int qcow2_update_refcount(struct block_node *bs, uint64_t offset, uint64_t len, int64_t addend);
int qcow2_free_clusters(struct block_node *bs, uint64_t offset, uint64_t len);
int qcow2_set_refcount(struct block_node *bs, uint64_t cluster, uint64_t value);
/* Release what one L2 entry references. */
int qcow2_free_l2_entry(struct block_node *bs, uint64_t entry);
uint64_t qcow2_refcount_read(const struct qcow2_state *s, const uint8_t *block, uint64_t index);
void qcow2_refcount_write(const struct qcow2_state *s, uint8_t *block, uint64_t index, uint64_t v);
int qcow2_load_refcount_table(struct block_node *bs);

/* qcow2-cluster.c */
enum qcow2_cluster_type qcow2_entry_type(const struct qcow2_state *s, uint64_t entry);
int qcow2_get_l2_entry(struct block_node *bs, uint64_t voff, uint64_t *entry);
/* Wait (lock held) until no allocating write covers [start, end). */
void qcow2_wait_inflight(struct qcow2_state *s, uint64_t start, uint64_t end);
int qcow2_preadv(struct block_node *bs, uint64_t offset, uint64_t bytes,
                 const struct iovec *iov, int iovcnt, unsigned flags);
int qcow2_pwritev(struct block_node *bs, uint64_t offset, uint64_t bytes,
                  const struct iovec *iov, int iovcnt, unsigned flags);
int qcow2_pdiscard(struct block_node *bs, uint64_t offset, uint64_t bytes);
int qcow2_pwrite_zeroes(struct block_node *bs, uint64_t offset, uint64_t bytes, unsigned flags);
int qcow2_block_status(struct block_node *bs, uint64_t offset, uint64_t bytes,
                       struct block_status *out);
int qcow2_compressed_extent(const struct qcow2_state *s, uint64_t entry,
                            uint64_t *host, uint64_t *len);
int qcow2_preallocate(struct block_node *bs, uint64_t from, uint64_t to);
/* Clear the given virtual range (whole clusters) to unallocated; used by
 * shrink and make_empty.  `full`: entries become 0 even with a backing file. */
int qcow2_discard_clusters(struct block_node *bs, uint64_t offset, uint64_t bytes, bool full);
int qcow2_check_metadata_overlap(struct block_node *bs, uint64_t offset, uint64_t len);
int qcow2_check_table_placement(struct block_node *bs, uint64_t off, const char *what);

/* qcow2-snapshot.c */
int qcow2_read_snapshots(struct block_node *bs);
void qcow2_free_snapshots(struct qcow2_state *s);
int qcow2_snapshot_create(struct block_node *bs, const struct block_snapshot *sn);
int qcow2_snapshot_list(struct block_node *bs, struct block_snapshot **list, int *count);
int qcow2_snapshot_goto(struct block_node *bs, const char *id_or_name);
int qcow2_snapshot_delete(struct block_node *bs, const char *id_or_name);
int qcow2_snapshot_table_bytes(struct qcow2_state *s, const struct qcow2_snapshot *sn,
                               uint32_t nb, uint8_t **buf, uint64_t *len);

/* qcow2-bitmap.c */
typedef int (*qcow2_range_fn)(void *opaque, uint64_t offset, uint64_t len);
int qcow2_bitmaps_foreach(struct block_node *bs, qcow2_range_fn fn, void *opaque);
int qcow2_drop_bitmaps(struct block_node *bs);

/* qcow2-check.c */
int qcow2_check(struct block_node *bs, struct block_check_result *res, unsigned fix);
int qcow2_repair_on_open(struct block_node *bs);
/* Make `snaps` the snapshot table and `l1` (L2 table offsets) the active L1
 * with one header write; see qcow2-check.c. Adopts `snaps` on success. */
int qcow2_switch_state(struct block_node *bs, struct qcow2_snapshot *snaps, uint32_t nb,
                       const uint64_t *l1, uint32_t l1_size, uint64_t size);

#endif
