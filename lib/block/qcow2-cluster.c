/* qcow2 guest data: L1/L2 lookup, reads, allocating writes with copy-on-write
 * of partial clusters, compressed clusters, discard, write-zeroes and
 * block status.
 *
 * Write ordering for an allocating write: refcounts of the new clusters and
 * the data (and a new L2 table holding the new entries), then one flush,
 * then the reference (L2 entry in an existing table, or the L1 entry of a
 * new table), then the old clusters' refcounts drop.  A crash between any
 * two steps leaves only clusters with too high a refcount (leaks). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <zlib.h>
#include "qcow2.h"

#define MAX_ALLOC_RUN_BYTES (8u << 20)

enum qcow2_cluster_type qcow2_entry_type(const struct qcow2_state *s, uint64_t e)
{
    (void)s;
    if (e & QCOW2_OFLAG_COMPRESSED)
        return QCOW2_COMPRESSED;
    uint64_t off = e & QCOW2_OFFSET_MASK;
    if (e & QCOW2_OFLAG_ZERO)
        return off ? QCOW2_ZERO_ALLOC : QCOW2_ZERO_PLAIN;
    return off ? QCOW2_NORMAL : QCOW2_UNALLOCATED;
}

int qcow2_compressed_extent(const struct qcow2_state *s, uint64_t e, uint64_t *host, uint64_t *len)
{
    uint64_t off = e & s->coffset_mask;
    uint64_t sectors = ((e >> s->csize_shift) & s->csize_mask) + 1;
    if (!off)
        return QCOW2_ERR(EIO, "qcow2: compressed cluster at offset 0 (corrupt image)");
    *host = off;
    *len = sectors * 512 - (off & 511);
    return 0;
}

/* ---- iovec helpers --------------------------------------------------------- */

/* A walk over the `len` bytes of an iovec array from byte `skip` on, piece by piece. */
struct iov_cursor {
    const struct iovec *iov;
    int cnt, i;
    uint64_t skip, len;
};

/* The next piece of the walk in *base and *n; false once the walk is over. */
static bool iov_next_piece(struct iov_cursor *c, uint8_t **base, uint64_t *n)
{
    while (c->i < c->cnt && c->len) {
        const struct iovec *e = &c->iov[c->i++];
        if (c->skip >= e->iov_len) {
            c->skip -= e->iov_len;
            continue;
        }
        *n = e->iov_len - c->skip;
        if (*n > c->len)
            *n = c->len;
        *base = (uint8_t *)e->iov_base + c->skip;
        c->len -= *n;
        c->skip = 0;
        return true;
    }
    return false;
}

/* Copy `len` bytes between the iovec's data from byte `skip` on and a flat buffer:
 * out of the iovec (to_iov false) or into it (to_iov true; a NULL buf writes zeroes). */
static void iov_copy_range(const struct iovec *iov, int cnt, uint64_t skip, uint8_t *buf,
                           uint64_t len, bool to_iov)
{
    struct iov_cursor c = { iov, cnt, 0, skip, len };
    uint8_t *seg;
    uint64_t n;
    while (iov_next_piece(&c, &seg, &n)) {
        if (!to_iov)
            memcpy(buf, seg, n);
        else if (buf)
            memcpy(seg, buf, n);
        else
            memset(seg, 0, n);
        if (buf)
            buf += n;
    }
}

static void iov_to_buf(const struct iovec *iov, int cnt, uint64_t skip, void *buf, uint64_t len)
{
    iov_copy_range(iov, cnt, skip, buf, len, false);
}

/* A NULL buf writes zeroes. */
static void buf_to_iov(const struct iovec *iov, int cnt, uint64_t skip, const void *buf, uint64_t len)
{
    iov_copy_range(iov, cnt, skip, (uint8_t *)buf, len, true);
}

/* A view of `len` bytes of an iovec array from `skip`. Caller frees *out. */
static int iov_slice(const struct iovec *iov, int cnt, uint64_t skip, uint64_t len,
                     struct iovec **out, int *outcnt)
{
    struct iovec *v = malloc(sizeof(*v) * (size_t)(cnt > 0 ? cnt : 1));
    if (!v)
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
    struct iov_cursor c = { iov, cnt, 0, skip, len };
    int n = 0;
    uint8_t *base;
    uint64_t l;
    while (iov_next_piece(&c, &base, &l)) {
        v[n].iov_base = base;
        v[n].iov_len = l;
        n++;
    }
    *out = v;
    *outcnt = n;
    return 0;
}

/* ---- L1/L2 lookup ------------------------------------------------------------ */

static uint64_t l1_index_of(const struct qcow2_state *s, uint64_t voff)
{
    return voff >> (s->l2_bits + s->cluster_bits);
}

static uint64_t l2_index_of(const struct qcow2_state *s, uint64_t voff)
{
    return (voff >> s->cluster_bits) & (s->l2_entries - 1);
}

/* Offset of the L2 table for `voff` (0: none), validated. */
static int l2_offset_of(struct block_node *bs, uint64_t voff, uint64_t *out)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t i = l1_index_of(s, voff);
    *out = 0;
    if (i >= s->l1_size)
        return 0;
    uint64_t off = s->l1[i] & QCOW2_OFFSET_MASK;
    if (off & (s->cluster_size - 1))
        return qcow2_mark_corrupt(bs, "L2 table offset %#" PRIx64 " unaligned (L1 index: %#"
                                  PRIx64 ")", off, i);
    *out = off;
    return 0;
}

static int check_entry(struct block_node *bs, uint64_t e, uint64_t l2_off, uint64_t idx)
{
    struct qcow2_state *s = bs->opaque;
    enum qcow2_cluster_type t = qcow2_entry_type(s, e);
    if ((t == QCOW2_NORMAL || t == QCOW2_ZERO_ALLOC) &&
        (e & QCOW2_OFFSET_MASK & (s->cluster_size - 1)))
        return qcow2_mark_corrupt(bs, "cluster allocation offset %#" PRIx64
                                  " unaligned (L2 offset: %#" PRIx64 ", L2 index: %#" PRIx64 ")",
                                  e & QCOW2_OFFSET_MASK, l2_off, idx);
    return 0;
}

int qcow2_get_l2_entry(struct block_node *bs, uint64_t voff, uint64_t *entry)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t l2_off;
    *entry = 0;
    int r = l2_offset_of(bs, voff, &l2_off);
    if (r < 0 || !l2_off)
        return r;
    uint8_t *t;
    r = qcow2_cache_get(bs, &s->l2_cache, l2_off, &t);
    if (r < 0)
        return r;
    uint64_t idx = l2_index_of(s, voff);
    *entry = qcow2_be64(t + idx * 8);
    return check_entry(bs, *entry, l2_off, idx);
}

/* The run of clusters from `voff` (up to `max` bytes, one L2 table) that
 * reads the same way; for normal clusters, contiguous on the host. */
static int get_run(struct block_node *bs, uint64_t voff, uint64_t max,
                   uint64_t *first_entry, uint64_t *bytes)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t in_cluster = qcow2_offset_into_cluster(s, voff);
    uint64_t idx = l2_index_of(s, voff);
    uint64_t avail = ((uint64_t)(s->l2_entries - idx) << s->cluster_bits) - in_cluster;
    if (avail > max)
        avail = max;
    uint64_t l2_off;
    int r = l2_offset_of(bs, voff, &l2_off);
    if (r < 0)
        return r;
    if (!l2_off) {
        *first_entry = 0;
        *bytes = avail;
        return 0;
    }
    uint8_t *t;
    r = qcow2_cache_get(bs, &s->l2_cache, l2_off, &t);
    if (r < 0)
        return r;
    uint64_t e0 = qcow2_be64(t + idx * 8);
    r = check_entry(bs, e0, l2_off, idx);
    if (r < 0)
        return r;
    enum qcow2_cluster_type t0 = qcow2_entry_type(s, e0);
    uint64_t len = s->cluster_size - in_cluster;
    if (t0 != QCOW2_COMPRESSED) {
        for (uint64_t i = 1; len < avail; i++) {
            uint64_t e = qcow2_be64(t + (idx + i) * 8);
            if (qcow2_entry_type(s, e) != t0)
                break;
            if ((t0 == QCOW2_NORMAL || t0 == QCOW2_ZERO_ALLOC) &&
                (e & QCOW2_OFFSET_MASK) != (e0 & QCOW2_OFFSET_MASK) + (i << s->cluster_bits))
                break;
            if (t0 == QCOW2_NORMAL && (e & QCOW2_OFLAG_COPIED) != (e0 & QCOW2_OFLAG_COPIED))
                break;
            r = check_entry(bs, e, l2_off, idx + i);
            if (r < 0)
                return r;
            len += s->cluster_size;
        }
    }
    *first_entry = e0;
    *bytes = len < avail ? len : avail;
    return 0;
}

/* ---- reading ------------------------------------------------------------------ */

static int read_backing(struct block_node *bs, uint64_t voff, uint64_t len,
                        const struct iovec *iov, int cnt, uint64_t skip)
{
    uint64_t have = 0;
    if (bs->backing && voff < bs->backing->size) {
        have = bs->backing->size - voff;
        if (have > len)
            have = len;
        struct iovec *v;
        int vc;
        int r = iov_slice(iov, cnt, skip, have, &v, &vc);
        if (r < 0)
            return r;
        r = block_node_preadv(bs->backing, voff, have, v, vc, 0);
        free(v);
        if (r < 0)
            return r;
    }
    if (have < len)
        buf_to_iov(iov, cnt, skip + have, NULL, len - have);
    return 0;
}

/* Inflate the compressed cluster `entry` into s->zcache (lock held). */
static int decompress_cluster(struct block_node *bs, uint64_t entry)
{
    struct qcow2_state *s = bs->opaque;
    if (s->zcache_entry == entry && s->zcache)
        return 0;
    if (!s->zcache && !(s->zcache = malloc(s->cluster_size)))
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
    s->zcache_entry = 0;
    uint64_t host, len;
    int r = qcow2_compressed_extent(s, entry, &host, &len);
    if (r < 0)
        return r;
    int64_t flen = block_node_getlength(bs->file);
    if (flen < 0)
        return (int)flen;
    if (host >= (uint64_t)flen)
        return qcow2_mark_corrupt(bs, "compressed cluster at %#" PRIx64 " is beyond the end "
                                  "of the file", host);
    if (len > (uint64_t)flen - host)
        len = (uint64_t)flen - host;  /* the last sector may be short */
    uint8_t *in = malloc(len);
    if (!in)
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
    r = block_node_pread(bs->file, host, in, len);
    if (r < 0) {
        free(in);
        return r;
    }
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, -12) != Z_OK) {
        free(in);
        return QCOW2_ERR(ENOMEM, "qcow2: cannot initialise zlib");
    }
    z.next_in = in;
    z.avail_in = (uInt)len;
    z.next_out = s->zcache;
    z.avail_out = s->cluster_size;
    int zr = inflate(&z, Z_FINISH);
    bool ok = (zr == Z_STREAM_END || zr == Z_BUF_ERROR) && z.avail_out == 0;
    inflateEnd(&z);
    free(in);
    if (!ok)
        return QCOW2_ERR(EIO, "qcow2: compressed cluster at %#" PRIx64 " does not decompress "
                         "to a whole cluster", host);
    s->zcache_entry = entry;
    return 0;
}

int qcow2_preadv(struct block_node *bs, uint64_t offset, uint64_t bytes,
                 const struct iovec *iov, int iovcnt, unsigned flags)
{
    struct qcow2_state *s = bs->opaque;
    (void)flags;
    if (offset > bs->size || bytes > bs->size - offset)
        return QCOW2_ERR(EINVAL, "qcow2: read of %" PRIu64 " bytes at %" PRIu64
                         " is beyond the end of the image", bytes, offset);
    uint64_t pos = 0;
    while (pos < bytes) {
        uint64_t voff = offset + pos, e, n;
        pthread_mutex_lock(&s->lock);
        int r = get_run(bs, voff, bytes - pos, &e, &n);
        if (r >= 0 && qcow2_entry_type(s, e) == QCOW2_COMPRESSED) {
            r = decompress_cluster(bs, e);
            if (r >= 0)
                buf_to_iov(iov, iovcnt, pos, s->zcache + qcow2_offset_into_cluster(s, voff), n);
        }
        pthread_mutex_unlock(&s->lock);
        if (r < 0)
            return r;
        switch (qcow2_entry_type(s, e)) {
        case QCOW2_UNALLOCATED:
            r = read_backing(bs, voff, n, iov, iovcnt, pos);
            break;
        case QCOW2_ZERO_PLAIN:
        case QCOW2_ZERO_ALLOC:
            buf_to_iov(iov, iovcnt, pos, NULL, n);
            break;
        case QCOW2_NORMAL: {
            struct iovec *v;
            int vc;
            r = iov_slice(iov, iovcnt, pos, n, &v, &vc);
            if (r < 0)
                return r;
            r = block_node_preadv(bs->file, (e & QCOW2_OFFSET_MASK) +
                                  qcow2_offset_into_cluster(s, voff), n, v, vc, 0);
            free(v);
            break;
        }
        case QCOW2_COMPRESSED:
            break;
        }
        if (r < 0)
            return r;
        pos += n;
    }
    return 0;
}

/* The current content of the cluster at `vcluster` whose entry is `e`. */
static int read_cluster_content(struct block_node *bs, uint64_t vcluster, uint64_t e, uint8_t *buf)
{
    struct qcow2_state *s = bs->opaque;
    struct iovec v = { buf, s->cluster_size };
    switch (qcow2_entry_type(s, e)) {
    case QCOW2_UNALLOCATED:
        return read_backing(bs, vcluster, s->cluster_size, &v, 1, 0);
    case QCOW2_ZERO_PLAIN:
    case QCOW2_ZERO_ALLOC:
        memset(buf, 0, s->cluster_size);
        return 0;
    case QCOW2_NORMAL:
        return block_node_pread(bs->file, e & QCOW2_OFFSET_MASK, buf, s->cluster_size);
    case QCOW2_COMPRESSED: {
        int r = decompress_cluster(bs, e);
        if (r >= 0)
            memcpy(buf, s->zcache, s->cluster_size);
        return r;
    }
    }
    return 0;
}

/* ---- metadata overlap ------------------------------------------------------- */

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

int qcow2_check_metadata_overlap(struct block_node *bs, uint64_t off, uint64_t len)
{
    struct qcow2_state *s = bs->opaque;
    const char *what = NULL;
    if (overlaps(off, len, 0, s->cluster_size))
        what = "the header";
    else if (overlaps(off, len, s->l1_offset, (uint64_t)s->l1_size * 8))
        what = "the active L1 table";
    else if (overlaps(off, len, s->rt_offset, (uint64_t)s->rt_clusters << s->cluster_bits))
        what = "the refcount table";
    else if (s->nb_snapshots && overlaps(off, len, s->snapshots_offset, s->snapshots_size))
        what = "the snapshot table";
    for (uint64_t i = 0; !what && i < s->rt_size; i++)
        if (s->rt[i] && overlaps(off, len, s->rt[i] & ~511ull, s->cluster_size))
            what = "a refcount block";
    for (uint64_t i = 0; !what && i < s->l1_size; i++) {
        uint64_t l2 = s->l1[i] & QCOW2_OFFSET_MASK;
        if (l2 && overlaps(off, len, l2, s->cluster_size))
            what = "an active L2 table";
    }
    if (what)
        return qcow2_mark_corrupt(bs, "preventing a write of guest data at %#" PRIx64
                                  " that would overwrite %s", off, what);
    return 0;
}

/* A metadata table about to be written in place must not sit on the
 * header, the L1 table, the refcount table or the snapshot table. */
int qcow2_check_table_placement(struct block_node *bs, uint64_t off, const char *what)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    const char *hit = NULL;
    if (overlaps(off, cs, 0, cs))
        hit = "the header";
    else if (overlaps(off, cs, s->l1_offset, (uint64_t)s->l1_size * 8))
        hit = "the active L1 table";
    else if (overlaps(off, cs, s->rt_offset, (uint64_t)s->rt_clusters << s->cluster_bits))
        hit = "the refcount table";
    else if (s->nb_snapshots && overlaps(off, cs, s->snapshots_offset, s->snapshots_size))
        hit = "the snapshot table";
    if (hit)
        return qcow2_mark_corrupt(bs, "%s at %#" PRIx64 " overlaps %s", what, off, hit);
    return 0;
}

/* ---- making an L2 table writable ---------------------------------------------- */

/* The L2 table for `voff` prepared for changes.  An exclusive table is used
 * in place; a missing or shared one gets a new cluster whose content starts
 * as zeroes or as a copy (the caller writes it, flushes, then calls
 * commit_l2).  `*table` points at a private buffer of one cluster holding
 * the entries either way. */
struct l2_txn {
    uint64_t l1_index;
    uint64_t l2_off;          /* where the table lives (or will live) */
    uint64_t old_l1;          /* previous L1 entry when replaced */
    bool is_new;
    uint8_t *table;           /* private copy, cluster sized */
};

static int begin_l2(struct block_node *bs, uint64_t voff, bool create, struct l2_txn *t)
{
    struct qcow2_state *s = bs->opaque;
    memset(t, 0, sizeof(*t));
    t->l1_index = l1_index_of(s, voff);
    if (t->l1_index >= s->l1_size)
        return QCOW2_ERR(EIO, "qcow2: L1 table too small for offset %" PRIu64, voff);
    uint64_t old_off;
    int r = l2_offset_of(bs, voff, &old_off);
    if (r < 0)
        return r;
    t->old_l1 = s->l1[t->l1_index];
    if (!old_off && !create)
        return 0;
    t->table = malloc(s->cluster_size);
    if (!t->table)
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
    if (old_off) {
        uint8_t *cached;
        r = qcow2_cache_get(bs, &s->l2_cache, old_off, &cached);
        if (r < 0)
            goto fail;
        memcpy(t->table, cached, s->cluster_size);
        if (s->l1[t->l1_index] & QCOW2_OFLAG_COPIED) {
            r = qcow2_check_table_placement(bs, old_off, "L2 table");
            if (r < 0)
                goto fail;
            t->l2_off = old_off;
            return 0;
        }
    } else {
        memset(t->table, 0, s->cluster_size);
    }
    r = qcow2_alloc_clusters(bs, 1, &t->l2_off);
    if (r < 0)
        goto fail;
    t->is_new = true;
    return 0;
fail:
    free(t->table);
    t->table = NULL;
    return r;
}

/* Write the changed entries [first, first+n) of the table (a new table is
 * written whole). For an existing table this is the reference update. */
static int write_l2(struct block_node *bs, struct l2_txn *t, uint64_t first, uint64_t n)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t lo = 0, hi = s->cluster_size;
    if (!t->is_new) {
        lo = (first * 8) & ~511ull;
        hi = qcow2_align_up((first + n) * 8, 512);
        if (hi > s->cluster_size)
            hi = s->cluster_size;
    }
    int r = block_node_pwrite(bs->file, t->l2_off + lo, t->table + lo, hi - lo, 0);
    s->need_flush = true;     /* later L1 updates / refcount drops wait for it */
    if (r < 0) {
        qcow2_cache_drop(&s->l2_cache, t->l2_off);
        return r;
    }
    qcow2_cache_put(&s->l2_cache, t->l2_off, t->table);
    return 0;
}

/* For a new table (after the flush): point L1 at it, release the old one. */
static int commit_l2(struct block_node *bs, struct l2_txn *t)
{
    struct qcow2_state *s = bs->opaque;
    if (!t->is_new)
        return 0;
    uint8_t buf[8];
    uint64_t e = t->l2_off | QCOW2_OFLAG_COPIED;
    qcow2_put64(buf, e);
    int r = block_node_pwrite(bs->file, s->l1_offset + t->l1_index * 8, buf, 8, 0);
    if (r < 0)
        return r;
    s->l1[t->l1_index] = e;
    uint64_t old = t->old_l1 & QCOW2_OFFSET_MASK;
    if (old)
        r = qcow2_free_clusters(bs, old, s->cluster_size);
    return r;
}

static void end_l2(struct l2_txn *t)
{
    free(t->table);
    t->table = NULL;
}

static int ordering_flush(struct block_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    if (s->lazy || !s->need_flush)
        return 0;
    s->need_flush = false;
    return block_node_flush(bs->file);
}

/* ---- writing ------------------------------------------------------------------ */

static bool needs_alloc(uint64_t e)
{
    return !((e & QCOW2_OFLAG_COPIED) && !(e & (QCOW2_OFLAG_COMPRESSED | QCOW2_OFLAG_ZERO)) &&
             (e & QCOW2_OFFSET_MASK));
}

/* Drop the references the replaced entries held, once the new entries are
 * stable (a flush first, so a cluster is never reused while still referenced
 * on disk). */
static int free_old_entries(struct block_node *bs, const uint64_t *old, uint64_t n)
{
    struct qcow2_state *s = bs->opaque;
    bool any = false;
    for (uint64_t i = 0; i < n; i++)
        any |= qcow2_entry_type(s, old[i]) == QCOW2_NORMAL ||
               qcow2_entry_type(s, old[i]) == QCOW2_ZERO_ALLOC ||
               qcow2_entry_type(s, old[i]) == QCOW2_COMPRESSED;
    if (!any)
        return 0;
    int r = ordering_flush(bs);
    for (uint64_t i = 0; i < n && r >= 0; i++)
        r = qcow2_free_l2_entry(bs, old[i]);
    return r;
}

/* ---- allocating writes in flight ---------------------------------------------------
 * An allocating write into an existing L2 table drops the lock for its data
 * I/O.  Its guest range is registered here; anything else that would look at
 * or change those L2 entries waits until the entries are written. */

static bool inflight_overlaps(const struct qcow2_state *s, uint64_t start, uint64_t end)
{
    for (const struct qcow2_inflight *f = s->inflight; f; f = f->next)
        if (start < f->end && f->start < end)
            return true;
    return false;
}

void qcow2_wait_inflight(struct qcow2_state *s, uint64_t start, uint64_t end)
{
    while (inflight_overlaps(s, start, end))
        pthread_cond_wait(&s->inflight_cond, &s->lock);
}

static void inflight_remove(struct qcow2_state *s, struct qcow2_inflight *f)
{
    for (struct qcow2_inflight **p = &s->inflight; *p; p = &(*p)->next)
        if (*p == f) {
            *p = f->next;
            break;
        }
    pthread_cond_broadcast(&s->inflight_cond);
}

/* Write [voff, voff+len) (inside one L2 table) into new clusters. Lock held
 * on entry and on return; dropped for the data write into an existing
 * table. */
static int alloc_write(struct block_node *bs, uint64_t voff, uint64_t len,
                       const struct iovec *iov, int cnt, uint64_t skip, uint64_t nclusters)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    uint64_t vstart = voff & ~(cs - 1);
    uint64_t idx = l2_index_of(s, vstart);
    struct l2_txn t;
    int r = qcow2_mark_dirty(bs);
    if (r < 0)
        return r;
    r = begin_l2(bs, vstart, true, &t);
    if (r < 0)
        return r;
    uint64_t head = voff - vstart, tail_end = head + len;
    bool direct = !head && !(tail_end & (cs - 1));   /* whole clusters: no bounce */
    uint64_t *old = calloc(nclusters, 8);
    uint8_t *buf = direct ? NULL : malloc(nclusters * cs);
    uint64_t host = 0;
    struct qcow2_inflight fl = { vstart, vstart + nclusters * cs, NULL };
    bool unlocked = false;
    if (!old || (!direct && !buf)) {
        r = QCOW2_ERR(ENOMEM, "qcow2: out of memory");
        goto out;
    }
    for (uint64_t i = 0; i < nclusters; i++)
        old[i] = qcow2_be64(t.table + (idx + i) * 8);
    r = qcow2_alloc_clusters(bs, nclusters, &host);
    if (r < 0)
        goto out;
    if (!direct) {
        if (head)
            r = read_cluster_content(bs, vstart, old[0], buf);
        if (r >= 0 && (tail_end & (cs - 1)) && (tail_end > cs || !head))
            r = read_cluster_content(bs, vstart + (nclusters - 1) * cs, old[nclusters - 1],
                                     buf + (nclusters - 1) * cs);
        if (r < 0)
            goto undo;
        iov_to_buf(iov, cnt, skip, buf + head, len);
    }
    if (!t.is_new) {
        fl.next = s->inflight;
        s->inflight = &fl;
        unlocked = true;
        pthread_mutex_unlock(&s->lock);
    }
    if (direct) {
        struct iovec *v;
        int vc;
        r = iov_slice(iov, cnt, skip, len, &v, &vc);
        if (r >= 0) {
            r = block_node_pwritev(bs->file, host, len, v, vc, 0);
            free(v);
        }
    } else {
        r = block_node_pwrite(bs->file, host, buf, nclusters * cs, 0);
    }
    if (unlocked) {
        pthread_mutex_lock(&s->lock);
        /* other entries of the table may have changed meanwhile */
        uint8_t *cur;
        int r2 = qcow2_cache_get(bs, &s->l2_cache, t.l2_off, &cur);
        if (r2 >= 0)
            memcpy(t.table, cur, cs);
        else if (r >= 0)
            r = r2;
    }
    if (r < 0)
        goto undo;
    for (uint64_t i = 0; i < nclusters; i++)
        qcow2_put64(t.table + (idx + i) * 8, (host + i * cs) | QCOW2_OFLAG_COPIED);
    /* the new clusters' refcounts are stable already (reservation) */
    if (t.is_new) {
        r = write_l2(bs, &t, idx, nclusters);
        if (r >= 0)
            r = ordering_flush(bs);
        if (r >= 0)
            r = commit_l2(bs, &t);
    } else {
        r = write_l2(bs, &t, idx, nclusters);
    }
    if (r < 0)
        goto out;   /* new clusters may now be referenced: keep them */
    r = free_old_entries(bs, old, nclusters);
    goto out;
undo:
    qcow2_free_clusters(bs, host, nclusters * cs);
    if (t.is_new)
        qcow2_free_clusters(bs, t.l2_off, cs);
out:
    if (unlocked)
        inflight_remove(s, &fl);
    free(old);
    free(buf);
    end_l2(&t);
    return r < 0 ? r : 0;
}

static int write_compressed(struct block_node *bs, uint64_t offset, uint64_t bytes,
                            const struct iovec *iov, int cnt)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    /* one whole cluster, or the start of the image's last, partial one */
    if ((offset & (cs - 1)) || bytes > cs || (bytes != cs && offset + cs < bs->size))
        return QCOW2_ERR(EINVAL, "qcow2: compressed writes must cover one whole cluster");
    uint8_t *in = calloc(1, cs), *out = malloc(cs);
    int r = 0;
    if (!in || !out) {
        r = QCOW2_ERR(ENOMEM, "qcow2: out of memory");
        goto done;
    }
    iov_to_buf(iov, cnt, 0, in, bytes);
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK) {
        r = QCOW2_ERR(ENOMEM, "qcow2: cannot initialise zlib");
        goto done;
    }
    z.next_in = in;
    z.avail_in = (uInt)cs;
    z.next_out = out;
    z.avail_out = (uInt)(cs - 512 > 0 ? cs - 512 : cs);
    int zr = deflate(&z, Z_FINISH);
    uint64_t clen = z.total_out;
    deflateEnd(&z);
    if (zr != Z_STREAM_END) {
        /* does not shrink: store it plainly, as qemu does */
        free(in);
        free(out);
        return qcow2_pwritev(bs, offset, bytes, iov, cnt, 0);
    }
    pthread_mutex_lock(&s->lock);
    qcow2_wait_inflight(s, offset, offset + cs);
    struct l2_txn t;
    r = qcow2_mark_dirty(bs);
    if (r >= 0)
        r = begin_l2(bs, offset, true, &t);
    if (r < 0) {
        pthread_mutex_unlock(&s->lock);
        goto done;
    }
    uint64_t idx = l2_index_of(s, offset), host;
    uint64_t old = qcow2_be64(t.table + idx * 8);
    r = qcow2_alloc_bytes(bs, (uint32_t)clen, &host);
    if (r >= 0)
        r = block_node_pwrite(bs->file, host, out, clen, 0);
    if (r >= 0) {
        uint64_t extra = ((host + clen - 1) >> 9) - (host >> 9);
        uint64_t e = QCOW2_OFLAG_COMPRESSED | host | (extra << s->csize_shift);
        qcow2_put64(t.table + idx * 8, e);
        if (t.is_new) {
            r = write_l2(bs, &t, idx, 1);
            if (r >= 0)
                r = ordering_flush(bs);
            if (r >= 0)
                r = commit_l2(bs, &t);
        } else {
            r = ordering_flush(bs);   /* a shared cluster's refcount went up */
            if (r >= 0)
                r = write_l2(bs, &t, idx, 1);
        }
        if (r >= 0)
            r = free_old_entries(bs, &old, 1);
    }
    end_l2(&t);
    pthread_mutex_unlock(&s->lock);
done:
    free(in);
    free(out);
    return r < 0 ? r : 0;
}

int qcow2_pwritev(struct block_node *bs, uint64_t offset, uint64_t bytes,
                  const struct iovec *iov, int iovcnt, unsigned flags)
{
    struct qcow2_state *s = bs->opaque;
    int refused = qcow2_refuse_writes(s);
    if (refused < 0)
        return refused;
    if (offset > bs->size || bytes > bs->size - offset)
        return QCOW2_ERR(EINVAL, "qcow2: write of %" PRIu64 " bytes at %" PRIu64
                         " is beyond the end of the image", bytes, offset);
    if (flags & BLOCK_REQ_COMPRESSED)
        return write_compressed(bs, offset, bytes, iov, iovcnt);
    uint64_t cs = s->cluster_size, pos = 0;
    while (pos < bytes) {
        uint64_t voff = offset + pos;
        uint64_t in_cluster = voff & (cs - 1);
        uint64_t idx = l2_index_of(s, voff);
        uint64_t max = ((uint64_t)(s->l2_entries - idx) * cs) - in_cluster;
        if (max > bytes - pos)
            max = bytes - pos;
        pthread_mutex_lock(&s->lock);
        qcow2_wait_inflight(s, voff & ~(cs - 1), qcow2_align_up(voff + max, cs));
        uint64_t e, n;
        int r = get_run(bs, voff, max, &e, &n);
        if (r < 0) {
            pthread_mutex_unlock(&s->lock);
            return r;
        }
        if (!needs_alloc(e)) {
            uint64_t host = (e & QCOW2_OFFSET_MASK) + in_cluster;
            r = qcow2_check_metadata_overlap(bs, host, n);
            pthread_mutex_unlock(&s->lock);
            struct iovec *v;
            int vc;
            if (r >= 0)
                r = iov_slice(iov, iovcnt, pos, n, &v, &vc);
            if (r < 0)
                return r;
            r = block_node_pwritev(bs->file, host, n, v, vc, flags & BLOCK_REQ_FUA);
            free(v);
            if (r < 0)
                return r;
        } else {
            /* extend over following clusters that also need allocation */
            uint64_t limit = max < MAX_ALLOC_RUN_BYTES ? max : MAX_ALLOC_RUN_BYTES;
            if (limit < cs - in_cluster)
                limit = cs - in_cluster < max ? cs - in_cluster : max;
            n = cs - in_cluster < limit ? cs - in_cluster : limit;
            while (n < limit) {
                uint64_t e2;
                r = qcow2_get_l2_entry(bs, voff + n, &e2);
                if (r < 0 || !needs_alloc(e2))
                    break;
                n += cs < limit - n ? cs : limit - n;
            }
            uint64_t nclusters = (in_cluster + n + cs - 1) / cs;
            r = alloc_write(bs, voff, n, iov, iovcnt, pos, nclusters);
            if (r >= 0 && (flags & BLOCK_REQ_FUA))
                r = block_node_flush(bs->file);
            pthread_mutex_unlock(&s->lock);
            if (r < 0)
                return r;
        }
        pos += n;
    }
    return 0;
}

/* ---- discard and zeroes ---------------------------------------------------- */

enum clear_mode { CLEAR_DISCARD, CLEAR_FULL, CLEAR_ZERO_UNMAP, CLEAR_ZERO_KEEP };

/* Rewrite the entries of whole clusters [voff, voff+n clusters) inside one
 * L2 table as `mode` asks; then release what they referenced. Lock held. */
static int clear_in_l2(struct block_node *bs, uint64_t voff, uint64_t n, enum clear_mode mode)
{
    struct qcow2_state *s = bs->opaque;
    bool zero = mode == CLEAR_ZERO_UNMAP || mode == CLEAR_ZERO_KEEP;
    uint64_t plain = 0;
    if (mode == CLEAR_DISCARD && bs->backing && s->version >= 3)
        plain = QCOW2_OFLAG_ZERO;
    if (zero)
        plain = QCOW2_OFLAG_ZERO;
    struct l2_txn t;
    int r = begin_l2(bs, voff, plain != 0, &t);
    if (r < 0)
        return r;
    if (!t.table)
        return 0;                 /* no table, nothing allocated */
    uint64_t idx = l2_index_of(s, voff);
    uint64_t *old = calloc(n, 8);
    if (!old) {
        end_l2(&t);
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
    }
    bool changed = false;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t e = qcow2_be64(t.table + (idx + i) * 8), ne = plain;
        if (mode == CLEAR_ZERO_KEEP && (e & QCOW2_OFLAG_COPIED) &&
            (qcow2_entry_type(s, e) == QCOW2_NORMAL || qcow2_entry_type(s, e) == QCOW2_ZERO_ALLOC))
            ne = (e & (QCOW2_OFFSET_MASK | QCOW2_OFLAG_COPIED)) | QCOW2_OFLAG_ZERO;
        old[i] = ne == e || (ne & QCOW2_OFFSET_MASK) ? 0 : e;
        if (ne != e) {
            qcow2_put64(t.table + (idx + i) * 8, ne);
            changed = true;
        }
    }
    if (changed) {
        r = qcow2_mark_dirty(bs);
        if (r >= 0 && t.is_new) {
            r = write_l2(bs, &t, idx, n);
            if (r >= 0)
                r = ordering_flush(bs);
            if (r >= 0)
                r = commit_l2(bs, &t);
        } else if (r >= 0) {
            r = write_l2(bs, &t, idx, n);
        }
        /* the references are gone before the refcounts drop */
        if (r >= 0)
            r = ordering_flush(bs);
        for (uint64_t i = 0; i < n && r >= 0; i++) {
            if (!old[i])
                continue;
            r = qcow2_free_l2_entry(bs, old[i]);
            uint64_t rc = 1, host = old[i] & QCOW2_OFFSET_MASK;
            if (r >= 0 && s->opts.pass_discard_request &&
                qcow2_entry_type(s, old[i]) == QCOW2_NORMAL &&
                qcow2_get_refcount(bs, host >> s->cluster_bits, &rc) >= 0 && rc == 0)
                block_node_pdiscard(bs->file, host, s->cluster_size);
        }
    } else if (t.is_new) {
        qcow2_free_clusters(bs, t.l2_off, s->cluster_size);
    }
    free(old);
    end_l2(&t);
    return r < 0 ? r : 0;
}

static int clear_range(struct block_node *bs, uint64_t offset, uint64_t bytes, enum clear_mode mode)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    while (bytes) {
        uint64_t idx = l2_index_of(s, offset);
        uint64_t n = s->l2_entries - idx;
        if (n > bytes / cs)
            n = bytes / cs;
        int r = clear_in_l2(bs, offset, n, mode);
        if (r < 0)
            return r;
        offset += n * cs;
        bytes -= n * cs;
    }
    return 0;
}

int qcow2_discard_clusters(struct block_node *bs, uint64_t offset, uint64_t bytes, bool full)
{
    return clear_range(bs, offset, bytes, full ? CLEAR_FULL : CLEAR_DISCARD);
}

int qcow2_pdiscard(struct block_node *bs, uint64_t offset, uint64_t bytes)
{
    struct qcow2_state *s = bs->opaque;
    int refused = qcow2_refuse_writes(s);
    if (refused < 0)
        return refused;
    if (offset > bs->size || bytes > bs->size - offset)
        return QCOW2_ERR(EINVAL, "qcow2: discard beyond the end of the image");
    uint64_t cs = s->cluster_size;
    uint64_t start = qcow2_align_up(offset, cs);
    uint64_t end = offset + bytes;
    if (end == bs->size)
        end = qcow2_align_up(end, cs);   /* the partial last cluster counts whole */
    end &= ~(cs - 1);
    if (end <= start)
        return 0;
    pthread_mutex_lock(&s->lock);
    qcow2_wait_inflight(s, start, end);
    int r = clear_range(bs, start, end - start, CLEAR_DISCARD);
    pthread_mutex_unlock(&s->lock);
    return r;
}

static int write_zero_bytes(struct block_node *bs, uint64_t offset, uint64_t bytes)
{
    uint64_t chunk = bytes < (1u << 20) ? bytes : (1u << 20);
    uint8_t *z = calloc(1, chunk ? chunk : 1);
    if (!z)
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
    int r = 0;
    while (bytes && r >= 0) {
        uint64_t n = bytes < chunk ? bytes : chunk;
        struct iovec v = { z, n };
        r = qcow2_pwritev(bs, offset, n, &v, 1, 0);
        offset += n;
        bytes -= n;
    }
    free(z);
    return r;
}

int qcow2_pwrite_zeroes(struct block_node *bs, uint64_t offset, uint64_t bytes, unsigned flags)
{
    struct qcow2_state *s = bs->opaque;
    int refused = qcow2_refuse_writes(s);
    if (refused < 0)
        return refused;
    if (offset > bs->size || bytes > bs->size - offset)
        return QCOW2_ERR(EINVAL, "qcow2: write-zeroes beyond the end of the image");
    uint64_t cs = s->cluster_size;
    uint64_t start = qcow2_align_up(offset, cs), end = offset + bytes;
    uint64_t aligned_end = end == bs->size ? qcow2_align_up(end, cs) : end & ~(cs - 1);
    bool can_clear = s->version >= 3 || !bs->backing;
    if (!can_clear || aligned_end <= start) {
        if (flags & BLOCK_REQ_NO_FALLBACK)
            return QCOW2_ERR(ENOTSUP, "qcow2: cannot write zeroes without writing data here");
        return write_zero_bytes(bs, offset, bytes);
    }
    if ((flags & BLOCK_REQ_NO_FALLBACK) && (start > offset || aligned_end < end))
        return QCOW2_ERR(ENOTSUP, "qcow2: unaligned write-zeroes needs data writes");
    int r = 0;
    if (start > offset)
        r = write_zero_bytes(bs, offset, start - offset);
    if (r >= 0 && aligned_end < end)
        r = write_zero_bytes(bs, aligned_end, end - aligned_end);
    if (r < 0)
        return r;
    enum clear_mode mode;
    if (s->version < 3)
        mode = CLEAR_FULL;      /* no backing: unallocated reads as zeroes */
    else
        mode = (flags & BLOCK_REQ_MAY_UNMAP) ? CLEAR_ZERO_UNMAP : CLEAR_ZERO_KEEP;
    pthread_mutex_lock(&s->lock);
    qcow2_wait_inflight(s, start, aligned_end);
    r = clear_range(bs, start, aligned_end - start, mode);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* ---- block status ------------------------------------------------------------ */

int qcow2_block_status(struct block_node *bs, uint64_t offset, uint64_t bytes,
                       struct block_status *out)
{
    struct qcow2_state *s = bs->opaque;
    if (offset >= bs->size || !bytes)
        return QCOW2_ERR(EINVAL, "qcow2: block status beyond the end of the image");
    if (bytes > bs->size - offset)
        bytes = bs->size - offset;
    uint64_t e, n;
    pthread_mutex_lock(&s->lock);
    int r = get_run(bs, offset, bytes, &e, &n);
    pthread_mutex_unlock(&s->lock);
    if (r < 0)
        return r;
    memset(out, 0, sizeof(*out));
    out->bytes = n;
    switch (qcow2_entry_type(s, e)) {
    case QCOW2_UNALLOCATED:
        break;
    case QCOW2_ZERO_PLAIN:
        out->flags = BLOCK_STATUS_ZERO | BLOCK_STATUS_ALLOCATED;
        break;
    case QCOW2_ZERO_ALLOC:
        out->flags = BLOCK_STATUS_ZERO | BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_OFFSET_VALID;
        out->map_offset = (e & QCOW2_OFFSET_MASK) + qcow2_offset_into_cluster(s, offset);
        out->file = bs->file;
        break;
    case QCOW2_NORMAL:
        out->flags = BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_OFFSET_VALID;
        out->map_offset = (e & QCOW2_OFFSET_MASK) + qcow2_offset_into_cluster(s, offset);
        out->file = bs->file;
        break;
    case QCOW2_COMPRESSED:
        out->flags = BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED;
        break;
    }
    return 0;
}

/* ---- preallocation ------------------------------------------------------------ */

/* Give every unallocated cluster of [from, to) a host cluster. Lock held. */
int qcow2_preallocate(struct block_node *bs, uint64_t from, uint64_t to)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    from &= ~(cs - 1);
    to = qcow2_align_up(to, cs);
    while (from < to) {
        uint64_t idx = l2_index_of(s, from);
        uint64_t n = s->l2_entries - idx;
        if (n > (to - from) / cs)
            n = (to - from) / cs;
        struct l2_txn t;
        int r = begin_l2(bs, from, true, &t);
        if (r < 0)
            return r;
        uint64_t need = 0;
        for (uint64_t i = 0; i < n; i++) {
            enum qcow2_cluster_type ty = qcow2_entry_type(s, qcow2_be64(t.table + (idx + i) * 8));
            if (ty == QCOW2_UNALLOCATED || ty == QCOW2_ZERO_PLAIN)
                need++;
        }
        uint64_t host = 0;
        if (need)
            r = qcow2_alloc_clusters(bs, need, &host);
        for (uint64_t i = 0; i < n && r >= 0 && need; i++) {
            uint8_t *p = t.table + (idx + i) * 8;
            enum qcow2_cluster_type ty = qcow2_entry_type(s, qcow2_be64(p));
            if (ty == QCOW2_UNALLOCATED || ty == QCOW2_ZERO_PLAIN) {
                /* a zero cluster stays zero; an unallocated one reads
                 * zeroes from a sparse file */
                qcow2_put64(p, host | QCOW2_OFLAG_COPIED |
                            (ty == QCOW2_ZERO_PLAIN ? QCOW2_OFLAG_ZERO : 0));
                host += cs;
            }
        }
        if (r >= 0 && (need || t.is_new)) {
            r = write_l2(bs, &t, idx, n);
            if (r >= 0)
                r = ordering_flush(bs);
            if (r >= 0)
                r = commit_l2(bs, &t);
        }
        end_l2(&t);
        if (r < 0)
            return r;
        from += n * cs;
    }
    return 0;
}
