/* qcow2 consistency: count every reference the metadata makes (as qemu-img
 * check does), compare with the stored refcounts, repair, and the
 * "switch" used by snapshot operations and repairs: new metadata is written
 * to unused space at the end of the file and takes effect with one write of
 * header bytes 24..71, so a crash leaves either the old or the new state. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include "qcow2.h"

/* Reference counts computed from the metadata. */
struct refmap {
    uint64_t *c;
    uint64_t n;
    uint64_t limit;       /* clusters beyond this are never counted */
    uint64_t file_len;    /* check: references past it are errors */
};

struct check_ctx {
    struct block_check_result *res;
    char *msg;
    size_t msg_len, msg_cap;
    bool stats;           /* counting the active L1 */
    uint64_t next_contiguous;
};

static void note(struct check_ctx *ctx, const char *fmt, ...) VMM_PRINTF(2, 3);
static void note(struct check_ctx *ctx, const char *fmt, ...)
{
    if (!ctx)
        return;
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(line))
        n = sizeof(line) - 1;
    if (ctx->msg_len + (size_t)n + 2 > ctx->msg_cap) {
        size_t cap = (ctx->msg_cap + (size_t)n + 2) * 2;
        char *m = realloc(ctx->msg, cap);
        if (!m)
            return;
        ctx->msg = m;
        ctx->msg_cap = cap;
    }
    memcpy(ctx->msg + ctx->msg_len, line, (size_t)n);
    ctx->msg_len += (size_t)n;
    ctx->msg[ctx->msg_len++] = '\n';
    ctx->msg[ctx->msg_len] = 0;
}

static int refmap_grow(struct refmap *m, uint64_t need)
{
    if (need <= m->n)
        return 0;
    uint64_t n = m->n ? m->n : 64;
    while (n < need)
        n *= 2;
    uint64_t *c = realloc(m->c, n * sizeof(*c));
    if (!c)
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory counting references");
    memset(c + m->n, 0, (n - m->n) * sizeof(*c));
    m->c = c;
    m->n = n;
    return 0;
}

/* Count one reference to every cluster in [offset, offset+len). */
static int refmap_add(struct block_node *bs, struct refmap *m, struct check_ctx *ctx,
                      uint64_t offset, uint64_t len)
{
    struct qcow2_state *s = bs->opaque;
    if (!len)
        return 0;
    uint64_t first = offset >> s->cluster_bits, last = (offset + len - 1) >> s->cluster_bits;
    if (ctx && offset + len > m->file_len && offset + len - m->file_len >= s->cluster_size) {
        /* the last cluster may be partly past the end, not more */
        note(ctx, "ERROR: counting reference for region exceeding the end of the file by one "
             "cluster or more: offset 0x%" PRIx64 " size 0x%" PRIx64, offset, len);
        ctx->res->corruptions++;
        return 0;
    }
    if (last >= m->limit) {
        note(ctx, "ERROR: invalid cluster offset=0x%" PRIx64, offset);
        if (ctx)
            ctx->res->corruptions++;
        return ctx ? 0 : QCOW2_ERR(EIO, "qcow2: metadata references offset %#" PRIx64
                                   " far beyond the end of the file", offset);
    }
    int r = refmap_grow(m, last + 1);
    if (r < 0)
        return r;
    for (uint64_t c = first; c <= last; c++)
        m->c[c]++;
    return 0;
}

static int read_l1(struct block_node *bs, uint64_t off, uint32_t size, uint64_t **out)
{
    uint64_t *l1 = calloc(size ? size : 1, 8);
    if (!l1)
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
    int r = size ? block_node_pread(bs->file, off, l1, (uint64_t)size * 8) : 0;
    if (r < 0) {
        free(l1);
        return r;
    }
    for (uint32_t i = 0; i < size; i++)
        l1[i] = qcow2_be64(&l1[i]);
    *out = l1;
    return 0;
}

/* Count the L2 table at l2_off and what its entries reference. */
static int walk_l2(struct block_node *bs, struct refmap *m, struct check_ctx *ctx,
                   uint64_t l2_off, unsigned fix)
{
    struct qcow2_state *s = bs->opaque;
    uint8_t *t = malloc(s->cluster_size);
    if (!t)
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
    int r = block_node_pread(bs->file, l2_off, t, s->cluster_size);
    if (r < 0) {
        if (ctx) {
            note(ctx, "ERROR: I/O error in check_refcounts_l2");
            ctx->res->check_errors++;
            r = 0;
        }
        free(t);
        return r;
    }
    bool dirty_table = false;
    for (uint32_t i = 0; i < s->l2_entries && r >= 0; i++) {
        uint64_t e = qcow2_be64(t + (size_t)i * 8);
        switch (qcow2_entry_type(s, e)) {
        case QCOW2_COMPRESSED: {
            if (e & QCOW2_OFLAG_COPIED) {
                note(ctx, "ERROR: coffset=0x%" PRIx64 ": copied flag must never be set for "
                     "compressed clusters", e & s->coffset_mask);
                if (ctx)
                    ctx->res->corruptions++;
                else
                    r = QCOW2_ERR(EIO, "qcow2: compressed cluster with the copied flag");
            }
            uint64_t host, len;
            if (qcow2_compressed_extent(s, e, &host, &len) < 0)
                break;
            r = refmap_add(bs, m, ctx, host, len);
            if (ctx && ctx->stats) {
                ctx->res->allocated_clusters++;
                ctx->res->compressed_clusters++;
                ctx->next_contiguous = 0;
            }
            break;
        }
        case QCOW2_NORMAL:
        case QCOW2_ZERO_ALLOC: {
            uint64_t off = e & QCOW2_OFFSET_MASK;
            if (off & (s->cluster_size - 1)) {
                note(ctx, "%s offset=%" PRIx64 ": Data cluster is not properly aligned; "
                     "L2 entry corrupted.", (fix & BLOCK_FIX_ERRORS) ? "Repairing" : "ERROR", off);
                if (!ctx) {
                    r = QCOW2_ERR(EIO, "qcow2: unaligned cluster offset %#" PRIx64, off);
                    break;
                }
                if (fix & BLOCK_FIX_ERRORS) {
                    qcow2_put64(t + (size_t)i * 8, s->version >= 3 ? QCOW2_OFLAG_ZERO : 0);
                    dirty_table = true;
                    ctx->res->corruptions_fixed++;
                    break;
                }
                ctx->res->corruptions++;   /* still counted, as qemu does */
            }
            if (ctx && (fix & BLOCK_FIX_ERRORS) && m->file_len &&
                off + s->cluster_size > m->file_len &&
                off + s->cluster_size - m->file_len >= s->cluster_size) {
                /* the data is gone: the cluster reads as zeroes from now on */
                note(ctx, "Repairing offset=%" PRIx64 ": data cluster beyond the end of the "
                     "file; L2 entry cleared", off);
                qcow2_put64(t + (size_t)i * 8, s->version >= 3 ? QCOW2_OFLAG_ZERO : 0);
                dirty_table = true;
                ctx->res->corruptions_fixed++;
                break;
            }
            if (ctx && ctx->stats) {
                if (ctx->next_contiguous && off != ctx->next_contiguous)
                    ctx->res->fragmented_clusters++;
                ctx->next_contiguous = off + s->cluster_size;
                ctx->res->allocated_clusters++;
            }
            r = refmap_add(bs, m, ctx, off, s->cluster_size);
            break;
        }
        default:
            break;
        }
    }
    if (dirty_table && r >= 0)
        r = block_node_pwrite(bs->file, l2_off, t, s->cluster_size, 0);
    free(t);
    return r;
}

/* Count an L1 table, its L2 tables and their data. */
static int walk_l1(struct block_node *bs, struct refmap *m, struct check_ctx *ctx,
                   uint64_t l1_off, uint32_t l1_size, const uint64_t *l1, unsigned fix)
{
    struct qcow2_state *s = bs->opaque;
    int r = refmap_add(bs, m, ctx, l1_off, (uint64_t)l1_size * 8);
    for (uint32_t i = 0; i < l1_size && r >= 0; i++) {
        uint64_t l2 = l1[i] & QCOW2_OFFSET_MASK;
        if (!l2)
            continue;
        if (l2 & (s->cluster_size - 1)) {
            note(ctx, "ERROR l2_offset=%" PRIx64 ": Table is not cluster aligned; "
                 "L1 entry corrupted", l2);
            if (!ctx)
                return QCOW2_ERR(EIO, "qcow2: unaligned L2 table offset %#" PRIx64, l2);
            ctx->res->corruptions++;
            continue;
        }
        r = refmap_add(bs, m, ctx, l2, s->cluster_size);
        if (r >= 0 && (l2 >> s->cluster_bits) < m->limit)
            r = walk_l2(bs, m, ctx, l2, fix);
    }
    return r;
}

struct bitmap_count {
    struct block_node *bs;
    struct refmap *m;
    struct check_ctx *ctx;
};

static int count_bitmap_range(void *opaque, uint64_t off, uint64_t len)
{
    struct bitmap_count *b = opaque;
    return refmap_add(b->bs, b->m, b->ctx, off, len);
}

/* Everything but the refcount structures themselves. */
static int count_metadata(struct block_node *bs, struct refmap *m, struct check_ctx *ctx,
                          unsigned fix, bool active_too)
{
    struct qcow2_state *s = bs->opaque;
    int r = refmap_add(bs, m, ctx, 0, s->cluster_size);
    if (r >= 0 && active_too) {
        if (ctx) {
            ctx->stats = true;
            ctx->next_contiguous = 0;
        }
        r = walk_l1(bs, m, ctx, s->l1_offset, s->l1_size, s->l1, fix);
        if (ctx)
            ctx->stats = false;
    }
    for (uint32_t i = 0; i < s->nb_snapshots && r >= 0; i++) {
        struct qcow2_snapshot *sn = &s->snapshots[i];
        uint64_t *l1;
        if (sn->bad_l1) {
            if (!ctx)
                return QCOW2_ERR(EIO, "qcow2: snapshot '%s': %s; run check -r all",
                                 sn->name, sn->bad_l1);
            if (sn->l1_offset & (s->cluster_size - 1))
                note(ctx, "ERROR snapshot %s (%s) l1_offset=%#" PRIx64 ": %s; snapshot table "
                     "entry corrupted", sn->id, sn->name, sn->l1_offset, sn->bad_l1);
            else
                note(ctx, "ERROR snapshot %s (%s) l1_size=%#" PRIx32 ": %s; snapshot table "
                     "entry corrupted", sn->id, sn->name, sn->l1_size, sn->bad_l1);
            ctx->res->corruptions++;
            continue;
        }
        r = read_l1(bs, sn->l1_offset, sn->l1_size, &l1);
        if (r < 0)
            break;
        r = walk_l1(bs, m, ctx, sn->l1_offset, sn->l1_size, l1, 0);
        free(l1);
    }
    if (r >= 0 && s->nb_snapshots)
        r = refmap_add(bs, m, ctx, s->snapshots_offset, s->snapshots_size);
    if (r >= 0 && (s->autoclear & QCOW2_AUTOCLEAR_BITMAPS)) {
        struct bitmap_count b = { bs, m, ctx };
        r = qcow2_bitmaps_foreach(bs, count_bitmap_range, &b);
    }
    return r;
}

static int count_refcount_structure(struct block_node *bs, struct refmap *m, struct check_ctx *ctx,
                                    uint64_t file_clusters)
{
    struct qcow2_state *s = bs->opaque;
    int r = refmap_add(bs, m, ctx, s->rt_offset, (uint64_t)s->rt_clusters << s->cluster_bits);
    for (uint64_t i = 0; i < s->rt_size && r >= 0; i++) {
        uint64_t off = s->rt[i];
        if (!off)
            continue;
        if (off & (s->cluster_size - 1)) {
            note(ctx, "ERROR refcount block %" PRIu64 " is not cluster aligned; refcount "
                 "table entry corrupted", i);
            ctx->res->corruptions++;
            continue;
        }
        if ((off >> s->cluster_bits) >= file_clusters) {
            note(ctx, "ERROR refcount block %" PRIu64 " is outside image", i);
            ctx->res->corruptions++;
            continue;
        }
        r = refmap_add(bs, m, ctx, off, s->cluster_size);
    }
    return r;
}

/* Stored refcount of cluster c, tolerating damage (counted as 0). */
static uint64_t stored_refcount(struct block_node *bs, uint64_t c, uint64_t file_clusters, bool *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t idx = c >> s->rb_bits;
    *err = false;
    if (idx >= s->rt_size || !s->rt[idx])
        return 0;
    uint64_t off = s->rt[idx];
    if ((off & (s->cluster_size - 1)) || (off >> s->cluster_bits) >= file_clusters) {
        *err = true;
        return 0;
    }
    uint8_t *block;
    if (qcow2_cache_get(bs, &s->rb_cache, off, &block) < 0) {
        *err = true;
        return 0;
    }
    return qcow2_refcount_read(s, block, c & ((1ull << s->rb_bits) - 1));
}

/* One past the last cluster with a stored refcount: refcount blocks may
 * count clusters past the end of the file (clusters counted ahead for
 * writes and never given back), and those are leaks too. */
static uint64_t stored_end(struct block_node *bs, uint64_t file_clusters)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t per_block = 1ull << s->rb_bits;
    for (uint64_t i = s->rt_size; i-- > 0;) {
        bool err;
        if (!s->rt[i] || (stored_refcount(bs, i * per_block, file_clusters, &err), err))
            continue;
        uint8_t *block;
        if (qcow2_cache_get(bs, &s->rb_cache, s->rt[i], &block) < 0)
            continue;
        for (uint64_t j = per_block; j-- > 0;)
            if (qcow2_refcount_read(s, block, j))
                return i * per_block + j + 1;
    }
    return 0;
}

/* ---- writing a fresh refcount structure ---------------------------------------------- */

struct placement {
    uint64_t next;        /* next free cluster at the end */
};

/* Build refcount blocks and table for `m` (which gains their own counts)
 * at clusters from p->next on. Returns the new table in *rt_out. */
static int write_refcounts(struct block_node *bs, struct refmap *m, struct placement *p,
                           uint64_t **rt_out, uint64_t *rt_entries_out, uint64_t *rt_off_out)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t per_block = 1ull << s->rb_bits, per_cluster = s->cluster_size / 8;
    uint64_t start = p->next, tclusters = 1, nblocks = 0, entries = 0;
    /* fixed point: blocks cover everything including table and blocks */
    for (int iter = 0; iter < 64; iter++) {
        uint64_t end = start + tclusters + nblocks;
        uint64_t total = end > m->n ? end : m->n;
        entries = (total + per_block - 1) / per_block;
        uint64_t blocks = 0;
        for (uint64_t i = 0; i < entries; i++) {
            bool used = false;
            for (uint64_t c = i * per_block; c < (i + 1) * per_block && c < m->n && !used; c++)
                used = m->c[c] != 0;
            if (!used && i * per_block < end && (i + 1) * per_block > start)
                used = true;
            blocks += used;
        }
        uint64_t t = (entries + per_cluster - 1) / per_cluster;
        if (t <= tclusters && blocks <= nblocks)
            break;
        if (t > tclusters)
            tclusters = t;
        if (blocks > nblocks)
            nblocks = blocks;
    }
    if (tclusters * s->cluster_size > QCOW2_MAX_REFTABLE_BYTES * 4ull)
        return QCOW2_ERR(EFBIG, "qcow2: refcount table would be too large");
    uint64_t end = start + tclusters + nblocks;
    int r = refmap_grow(m, end);
    if (r < 0)
        return r;
    for (uint64_t c = start; c < end; c++)
        m->c[c]++;
    for (uint64_t c = 0; c < m->n; c++)
        if (m->c[c] > s->refcount_max)
            return QCOW2_ERR(ERANGE, "qcow2: refcount overflow for cluster %#" PRIx64
                             " (%" PRIu64 " references, refcount_bits=%u)",
                             c << s->cluster_bits, m->c[c], s->refcount_bits);
    uint64_t tbytes = tclusters * s->cluster_size;
    uint64_t *rt = calloc(tbytes / 8, 8);
    uint8_t *tbuf = calloc(1, tbytes), *block = malloc(s->cluster_size);
    if (!rt || !tbuf || !block) {
        r = QCOW2_ERR(ENOMEM, "qcow2: out of memory");
        goto out;
    }
    uint64_t next_block = start + tclusters;
    for (uint64_t i = 0; i < entries && r >= 0; i++) {
        bool used = false;
        memset(block, 0, s->cluster_size);
        for (uint64_t j = 0; j < per_block; j++) {
            uint64_t c = i * per_block + j;
            if (c < m->n && m->c[c]) {
                qcow2_refcount_write(s, block, j, m->c[c]);
                used = true;
            }
        }
        if (!used)
            continue;
        if (next_block >= end) {
            r = QCOW2_ERR(EIO, "qcow2: internal error placing refcount blocks");
            break;
        }
        rt[i] = next_block << s->cluster_bits;
        r = block_node_pwrite(bs->file, rt[i], block, s->cluster_size, 0);
        next_block++;
    }
    if (r < 0)
        goto out;
    for (uint64_t i = 0; i < tbytes / 8; i++)
        qcow2_put64(tbuf + i * 8, rt[i]);
    r = block_node_pwrite(bs->file, start << s->cluster_bits, tbuf, tbytes, 0);
    if (r < 0)
        goto out;
    /* unused block slots at the end stay allocated but empty; keep counts honest */
    for (uint64_t c = next_block; c < end; c++) {
        /* they were counted; write zeroed clusters there so the file covers them */
        memset(block, 0, s->cluster_size);
        r = block_node_pwrite(bs->file, c << s->cluster_bits, block, s->cluster_size, 0);
        if (r < 0)
            goto out;
    }
    *rt_out = rt;
    rt = NULL;
    *rt_entries_out = tbytes / 8;
    *rt_off_out = start << s->cluster_bits;
    p->next = end;
out:
    free(rt);
    free(tbuf);
    free(block);
    return r;
}

static int file_clusters_of(struct block_node *bs, uint64_t *out)
{
    struct qcow2_state *s = bs->opaque;
    int64_t flen = block_node_getlength(bs->file);
    if (flen < 0)
        return (int)flen;
    *out = qcow2_size_to_clusters(s, (uint64_t)flen);
    return 0;
}

/* Apply a new refcount table in memory after the header points at it. */
static void adopt_refcounts(struct block_node *bs, uint64_t *rt, uint64_t entries, uint64_t off)
{
    struct qcow2_state *s = bs->opaque;
    free(s->rt);
    s->rt = rt;
    s->rt_size = entries;
    s->rt_offset = off;
    s->rt_clusters = (uint32_t)((entries * 8) >> s->cluster_bits);
    qcow2_cache_clear(&s->rb_cache);
    qcow2_cache_clear(&s->l2_cache);
    s->free_cluster_index = 0;
    s->free_byte_offset = 0;
    s->resv_count = 0;
    s->pack_cluster = 0;
}

/* First cluster past everything either the old or the new state uses. */
static int end_of_everything(struct block_node *bs, const struct refmap *m, uint64_t *out)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t end = 0;
    int r = file_clusters_of(bs, &end);
    if (r < 0)
        return r;
    for (uint64_t c = m->n; c > end; c--)
        if (m->c[c - 1]) {
            end = c;
            break;
        }
    uint64_t rt_end = (s->rt_offset >> s->cluster_bits) + s->rt_clusters;
    if (rt_end > end)
        end = rt_end;
    for (uint64_t i = 0; i < s->rt_size; i++) {
        uint64_t c = (s->rt[i] >> s->cluster_bits) + 1;
        if (s->rt[i] && !(s->rt[i] & (s->cluster_size - 1)) && c > end && c < m->limit)
            end = c;
    }
    *out = end;
    return 0;
}

/* Rebuild the refcounts from the references of the current metadata. */
static int rebuild_refcounts(struct block_node *bs, struct refmap *m)
{
    struct qcow2_state *s = bs->opaque;
    struct placement p;
    int r = end_of_everything(bs, m, &p.next);
    uint64_t *rt = NULL, entries = 0, off = 0;
    if (r >= 0)
        r = write_refcounts(bs, m, &p, &rt, &entries, &off);
    if (r >= 0)
        r = block_node_flush(bs->file);
    if (r < 0) {
        free(rt);
        return r;
    }
    uint8_t hdr[12];
    qcow2_put64(hdr, off);
    qcow2_put32(hdr + 8, (uint32_t)((entries * 8) >> s->cluster_bits));
    r = block_node_pwrite(bs->file, 48, hdr, 12, 0);
    if (r >= 0)
        r = block_node_flush(bs->file);
    if (r < 0) {
        free(rt);
        return r;
    }
    adopt_refcounts(bs, rt, entries, off);
    return 0;
}

/* ---- transactions for snapshot operations ------------------------------------------ */

/* Switch to `snaps` as the snapshot table and `l1` (L2 offsets only, flags
 * recomputed) as the active L1, with virtual size `size`.  Active L2 tables
 * shared with a snapshot or whose flags change are copied, so nothing is
 * modified in place.  The caller owns `snaps` (adopted on success). */
int qcow2_switch_state(struct block_node *bs, struct qcow2_snapshot *snaps, uint32_t nb,
                       const uint64_t *l1_in, uint32_t l1_size, uint64_t size)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t cs = s->cluster_size, fclusters = 0;
    struct refmap m = { NULL, 0, 0, 0 };
    uint64_t *l1 = calloc(l1_size ? l1_size : 1, 8), *rt = NULL, rt_entries = 0, rt_off = 0;
    uint8_t *stab = NULL, *l1buf = NULL, *t = malloc(cs);
    uint64_t stab_len = 0;
    int r = qcow2_release_reservation(bs);
    if (r >= 0)
        r = file_clusters_of(bs, &fclusters);
    if (!l1 || !t) {
        r = QCOW2_ERR(ENOMEM, "qcow2: out of memory");
        goto out;
    }
    if (r < 0)
        goto out;
    m.limit = fclusters + (1ull << 20);
    for (uint32_t i = 0; i < l1_size; i++)
        l1[i] = l1_in[i] & QCOW2_OFFSET_MASK;

    /* references of the new state, except active L2 tables and L1 */
    r = refmap_add(bs, &m, NULL, 0, cs);
    for (uint32_t i = 0; i < nb && r >= 0; i++) {
        uint64_t *sl1;
        if (snaps[i].bad_l1) {
            r = QCOW2_ERR(EIO, "qcow2: snapshot '%s': %s; run check -r all", snaps[i].name,
                          snaps[i].bad_l1);
            break;
        }
        r = read_l1(bs, snaps[i].l1_offset, snaps[i].l1_size, &sl1);
        if (r < 0)
            break;
        r = walk_l1(bs, &m, NULL, snaps[i].l1_offset, snaps[i].l1_size, sl1, 0);
        free(sl1);
    }
    struct refmap snap_only = { NULL, 0, m.limit, 0 };
    if (r >= 0) {
        r = refmap_grow(&snap_only, m.n);
        if (r >= 0)
            memcpy(snap_only.c, m.c, m.n * 8);
    }
    /* data referenced through the active tables */
    for (uint32_t i = 0; i < l1_size && r >= 0; i++) {
        if (!l1[i])
            continue;
        if (l1[i] & (cs - 1)) {
            r = QCOW2_ERR(EIO, "qcow2: unaligned L2 table offset %#" PRIx64 "; run check -r all",
                          l1[i]);
            break;
        }
        r = walk_l2(bs, &m, NULL, l1[i], 0);
    }
    if (r < 0)
        goto out_snap;

    /* placement at the end */
    struct placement p;
    r = end_of_everything(bs, &m, &p.next);
    if (r < 0)
        goto out_snap;
    {
        /* make sure we also skip the current active L1, tables and snapshot table */
        uint64_t c = ((s->l1_offset + (uint64_t)s->l1_size * 8 + cs - 1) >> s->cluster_bits);
        if (c > p.next && c < m.limit)
            p.next = c;
    }
    /* active L2 tables: keep or copy, flags from the new counts */
    uint64_t *new_l1 = calloc(l1_size ? l1_size : 1, 8);
    if (!new_l1) {
        r = QCOW2_ERR(ENOMEM, "qcow2: out of memory");
        goto out_snap;
    }
    for (uint32_t i = 0; i < l1_size && r >= 0; i++) {
        if (!l1[i])
            continue;
        r = block_node_pread(bs->file, l1[i], t, cs);
        if (r < 0)
            break;
        bool shared = (l1[i] >> s->cluster_bits) < snap_only.n &&
                      snap_only.c[l1[i] >> s->cluster_bits] > 0;
        /* a table referenced twice by the new active L1 must be copied too */
        for (uint32_t j = 0; j < i && !shared; j++)
            shared = l1[j] == l1[i];
        bool change = shared;
        for (uint32_t k = 0; k < s->l2_entries; k++) {
            uint64_t e = qcow2_be64(t + (size_t)k * 8), ne = e;
            enum qcow2_cluster_type ty = qcow2_entry_type(s, e);
            if (ty == QCOW2_NORMAL || ty == QCOW2_ZERO_ALLOC) {
                uint64_t c = (e & QCOW2_OFFSET_MASK) >> s->cluster_bits;
                bool one = c < m.n && m.c[c] == 1;
                ne = one ? (e | QCOW2_OFLAG_COPIED) : (e & ~QCOW2_OFLAG_COPIED);
            } else if (ty == QCOW2_COMPRESSED) {
                ne = e & ~QCOW2_OFLAG_COPIED;
            } else {
                ne = e & ~QCOW2_OFLAG_COPIED;
            }
            if (ne != e) {
                qcow2_put64(t + (size_t)k * 8, ne);
                change = true;
            }
        }
        uint64_t where = l1[i];
        if (change) {
            where = p.next++ << s->cluster_bits;
            r = block_node_pwrite(bs->file, where, t, cs, 0);
        }
        if (r >= 0)
            r = refmap_add(bs, &m, NULL, where, cs);
        new_l1[i] = where;
    }
    if (r < 0) {
        free(new_l1);
        goto out_snap;
    }
    /* tables reached only through the new active L1 must have count 1 */
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t c = new_l1[i] >> s->cluster_bits;
        if (new_l1[i])
            new_l1[i] |= (c < m.n && m.c[c] == 1) ? QCOW2_OFLAG_COPIED : 0;
    }
    /* new active L1 */
    uint64_t l1_bytes = qcow2_align_up((uint64_t)l1_size * 8, cs);
    uint64_t l1_off = 0;
    if (l1_size) {
        l1buf = calloc(1, l1_bytes);
        if (!l1buf) {
            free(new_l1);
            r = QCOW2_ERR(ENOMEM, "qcow2: out of memory");
            goto out_snap;
        }
        for (uint32_t i = 0; i < l1_size; i++)
            qcow2_put64(l1buf + (size_t)i * 8, new_l1[i]);
        l1_off = p.next << s->cluster_bits;
        p.next += l1_bytes / cs;
        r = block_node_pwrite(bs->file, l1_off, l1buf, l1_bytes, 0);
        if (r >= 0)
            r = refmap_add(bs, &m, NULL, l1_off, l1_bytes);
    }
    /* new snapshot table */
    uint64_t stab_off = 0;
    if (r >= 0 && nb) {
        r = qcow2_snapshot_table_bytes(s, snaps, nb, &stab, &stab_len);
        if (r >= 0) {
            stab_off = p.next << s->cluster_bits;
            p.next += qcow2_size_to_clusters(s, stab_len);
            r = block_node_pwrite(bs->file, stab_off, stab, stab_len, 0);
        }
        if (r >= 0)
            r = refmap_add(bs, &m, NULL, stab_off, stab_len);
    }
    if (r >= 0)
        r = write_refcounts(bs, &m, &p, &rt, &rt_entries, &rt_off);
    if (r >= 0)
        r = block_node_flush(bs->file);
    if (r < 0) {
        free(new_l1);
        goto out_snap;
    }
    /* the switch: size, L1, refcount table and snapshot table at once */
    uint8_t hdr[48];
    qcow2_put64(hdr + 0, size);                 /* 24 */
    qcow2_put32(hdr + 8, 0);                    /* 32 crypt */
    qcow2_put32(hdr + 12, l1_size);             /* 36 */
    qcow2_put64(hdr + 16, l1_off);              /* 40 */
    qcow2_put64(hdr + 24, rt_off);              /* 48 */
    qcow2_put32(hdr + 32, (uint32_t)((rt_entries * 8) >> s->cluster_bits)); /* 56 */
    qcow2_put32(hdr + 36, nb);                  /* 60 */
    qcow2_put64(hdr + 40, stab_off);            /* 64 */
    r = block_node_pwrite(bs->file, 24, hdr, sizeof(hdr), 0);
    if (r >= 0)
        r = block_node_flush(bs->file);
    if (r < 0) {
        free(new_l1);
        goto out_snap;
    }
    free(s->l1);
    s->l1 = new_l1;
    s->l1_size = l1_size;
    s->l1_offset = l1_off;
    bs->size = size;
    adopt_refcounts(bs, rt, rt_entries, rt_off);
    rt = NULL;
    qcow2_free_snapshots(s);
    s->snapshots = snaps;
    s->nb_snapshots = nb;
    s->snapshots_offset = stab_off;
    s->snapshots_size = stab_len;
out_snap:
    free(snap_only.c);
out:
    free(m.c);
    free(l1);
    free(rt);
    free(stab);
    free(l1buf);
    free(t);
    return r < 0 ? r : 0;
}

/* ---- check ------------------------------------------------------------------------ */

static int fix_copied_flags(struct block_node *bs, struct check_ctx *ctx, unsigned fix)
{
    struct qcow2_state *s = bs->opaque;
    uint8_t *t = malloc(s->cluster_size);
    if (!t)
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
    uint64_t fcl = 0;
    int r = file_clusters_of(bs, &fcl);
    bool repair = fix & BLOCK_FIX_ERRORS;
    for (uint32_t i = 0; i < s->l1_size && r >= 0; i++) {
        uint64_t l2 = s->l1[i] & QCOW2_OFFSET_MASK;
        if (!l2 || (l2 & (s->cluster_size - 1)) || (l2 >> s->cluster_bits) >= fcl)
            continue;
        bool err;
        uint64_t rc = stored_refcount(bs, l2 >> s->cluster_bits, fcl, &err);
        if ((rc == 1) != ((s->l1[i] & QCOW2_OFLAG_COPIED) != 0)) {
            note(ctx, "%s OFLAG_COPIED L2 cluster: l1_index=%u l1_entry=%" PRIx64 " refcount=%" PRIu64,
                 repair ? "Repairing" : "ERROR", i, s->l1[i], rc);
            if (repair) {
                uint8_t buf[8];
                uint64_t ne = rc == 1 ? (s->l1[i] | QCOW2_OFLAG_COPIED) : (s->l1[i] & ~QCOW2_OFLAG_COPIED);
                qcow2_put64(buf, ne);
                r = block_node_pwrite(bs->file, s->l1_offset + (uint64_t)i * 8, buf, 8, 0);
                if (r < 0)
                    break;
                s->l1[i] = ne;
                ctx->res->corruptions_fixed++;
            } else {
                ctx->res->corruptions++;
            }
        }
        r = block_node_pread(bs->file, l2, t, s->cluster_size);
        if (r < 0)
            break;
        bool dirty = false;
        for (uint32_t k = 0; k < s->l2_entries; k++) {
            uint64_t e = qcow2_be64(t + (size_t)k * 8);
            enum qcow2_cluster_type ty = qcow2_entry_type(s, e);
            if (ty != QCOW2_NORMAL && ty != QCOW2_ZERO_ALLOC)
                continue;
            uint64_t off = e & QCOW2_OFFSET_MASK;
            if (off & (s->cluster_size - 1))
                continue;
            uint64_t drc = stored_refcount(bs, off >> s->cluster_bits, fcl, &err);
            if ((drc == 1) != ((e & QCOW2_OFLAG_COPIED) != 0)) {
                note(ctx, "%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64 " refcount=%" PRIu64,
                     repair ? "Repairing" : "ERROR", e, drc);
                if (repair) {
                    qcow2_put64(t + (size_t)k * 8, drc == 1 ? (e | QCOW2_OFLAG_COPIED)
                                                           : (e & ~QCOW2_OFLAG_COPIED));
                    dirty = true;
                    ctx->res->corruptions_fixed++;
                } else {
                    ctx->res->corruptions++;
                }
            }
        }
        if (dirty) {
            r = block_node_pwrite(bs->file, l2, t, s->cluster_size, 0);
            qcow2_cache_drop(&s->l2_cache, l2);
        }
    }
    free(t);
    return r;
}

static int do_check(struct block_node *bs, struct block_check_result *res, unsigned fix,
                    struct check_ctx *ctx)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t fcl = 0;
    int r = file_clusters_of(bs, &fcl);
    if (r < 0)
        return r;
    struct refmap m = { NULL, 0, fcl + (1ull << 16), 0 };
    int64_t flen = block_node_getlength(bs->file);
    if (flen < 0)
        return (int)flen;
    m.file_len = (uint64_t)flen;
    r = refmap_grow(&m, fcl);
    if (r >= 0)
        r = count_metadata(bs, &m, ctx, fix, true);
    if (r >= 0)
        r = count_refcount_structure(bs, &m, ctx, fcl);
    if (r < 0) {
        free(m.c);
        return r;
    }
    res->total_clusters = (int64_t)qcow2_size_to_clusters(s, bs->size);

    /* compare */
    uint64_t n = m.n > fcl ? m.n : fcl, stored = stored_end(bs, fcl);
    if (stored > n)
        n = stored;
    uint64_t highest = 0;
    bool need_rebuild = false;
    for (uint64_t c = 0; c < n; c++) {
        uint64_t ref = c < m.n ? m.c[c] : 0;
        bool err;
        uint64_t rc = stored_refcount(bs, c, fcl, &err);
        if (err)
            need_rebuild = true;
        if (rc || ref)
            highest = c + 1;
        if (rc == ref)
            continue;
        bool leak = rc > ref;
        bool repair = leak ? (fix & BLOCK_FIX_LEAKS) != 0 : (fix & BLOCK_FIX_ERRORS) != 0;
        note(ctx, "%s cluster %" PRIu64 " refcount=%" PRIu64 " reference=%" PRIu64,
             repair ? "Repairing" : leak ? "Leaked" : "ERROR", c, rc, ref);
        if (repair) {
            bool fixed = false;
            if (!err && (c >> s->rb_bits) < s->rt_size && s->rt[c >> s->rb_bits])
                fixed = qcow2_set_refcount(bs, c, ref) >= 0;
            if (!fixed)
                need_rebuild = true;
            if (leak)
                res->leaks_fixed++;
            else
                res->corruptions_fixed++;
        } else if (leak) {
            res->leaks++;
        } else {
            res->corruptions++;
        }
    }
    res->image_end_offset = (int64_t)(highest << s->cluster_bits);
    if (need_rebuild && (fix & BLOCK_FIX_ERRORS)) {
        /* recount without the old structures and write new ones */
        free(m.c);
        m.c = NULL;
        m.n = 0;
        r = count_metadata(bs, &m, NULL, 0, true);
        if (r >= 0)
            r = rebuild_refcounts(bs, &m);
        if (r < 0)
            res->check_errors++;
    }
    free(m.c);
    if (r >= 0)
        r = fix_copied_flags(bs, ctx, fix);
    if (r >= 0 && fix)
        r = block_node_flush(bs->file);
    return r;
}

int qcow2_check(struct block_node *bs, struct block_check_result *res, unsigned fix)
{
    struct qcow2_state *s = bs->opaque;
    struct check_ctx ctx;
    memset(&ctx, 0, sizeof(ctx));
    ctx.res = res;
    if (fix && !s->writable)
        return QCOW2_ERR(EROFS, "qcow2: repairing needs a read-write open");
    pthread_mutex_lock(&s->lock);
    qcow2_wait_inflight(s, 0, UINT64_MAX);
    int r = s->writable ? qcow2_release_reservation(bs) : 0;
    if (r >= 0)
        r = do_check(bs, res, fix, &ctx);
    if (r >= 0 && fix && !res->corruptions && !res->check_errors &&
        (s->incompat & (QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT))) {
        /* a clean result clears the dirty and corrupt bits */
        s->incompat &= ~(QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT);
        uint8_t buf[8];
        qcow2_put64(buf, s->incompat);
        r = block_node_pwrite(bs->file, 72, buf, 8, 0);
        if (r >= 0)
            r = block_node_flush(bs->file);
    }
    pthread_mutex_unlock(&s->lock);
    free(res->messages);
    res->messages = ctx.msg;
    return r < 0 ? r : 0;
}

/* Dirty image opened read-write: recount and rewrite all refcounts. */
int qcow2_repair_on_open(struct block_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t fcl = 0;
    int r = file_clusters_of(bs, &fcl);
    if (r < 0)
        return r;
    struct refmap m = { NULL, 0, fcl + (1ull << 16), 0 };
    r = count_metadata(bs, &m, NULL, 0, true);
    if (r >= 0)
        r = rebuild_refcounts(bs, &m);
    free(m.c);
    if (r < 0)
        return vmm_error_prefix("qcow2: repairing the refcounts of a dirty image"), r;
    /* flags might be off where a crash hit; make them match */
    struct block_check_result res;
    memset(&res, 0, sizeof(res));
    struct check_ctx ctx;
    memset(&ctx, 0, sizeof(ctx));
    ctx.res = &res;
    r = fix_copied_flags(bs, &ctx, BLOCK_FIX_ERRORS);
    free(ctx.msg);
    if (r < 0)
        return r;
    s->incompat &= ~QCOW2_INCOMPAT_DIRTY;
    uint8_t buf[8];
    qcow2_put64(buf, s->incompat);
    r = block_node_pwrite(bs->file, 72, buf, 8, 0);
    if (r >= 0)
        r = block_node_flush(bs->file);
    return r;
}
