/* qcow2 refcounts: the metadata cache, refcount lookup and update, cluster
 * allocation and growth of the refcount table.
 *
 * Ordering rule: a refcount is written (and, unless lazy refcounts are on,
 * flushed before anything refers to the cluster); references are removed
 * before refcounts drop.  A crash therefore only ever leaves refcounts that
 * are too high, which `check` reports as leaks. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include "qcow2.h"

/* ---- table cache --------------------------------------------------------- */

/* Set-associative: a table can only live in the WAYS slots of its set, so
 * lookups cost O(WAYS) whatever the cache size. */
#define CACHE_WAYS 4

int qcow2_cache_init(struct qcow2_cache *c, uint32_t slots, uint32_t table_size)
{
    if (slots < CACHE_WAYS)
        slots = CACHE_WAYS;
    slots = (slots + CACHE_WAYS - 1) / CACHE_WAYS * CACHE_WAYS;
    c->slots = slots;
    c->table_size = table_size;
    c->tick = 0;
    c->offsets = calloc(slots, sizeof(*c->offsets));
    c->last_use = calloc(slots, sizeof(*c->last_use));
    c->tables = malloc((size_t)slots * table_size);
    if (!c->offsets || !c->last_use || !c->tables) {
        qcow2_cache_destroy(c);
        return QCOW2_ERR(ENOMEM, "qcow2: cannot allocate a metadata cache of %u tables", slots);
    }
    return 0;
}

void qcow2_cache_destroy(struct qcow2_cache *c)
{
    free(c->offsets);
    free(c->last_use);
    free(c->tables);
    c->offsets = c->last_use = NULL;
    c->tables = NULL;
    c->slots = 0;
}

static uint32_t cache_set(const struct qcow2_cache *c, uint64_t offset)
{
    uint64_t h = (offset >> 9) * 0x9e3779b97f4a7c15ull;
    return (uint32_t)((h >> 32) % (c->slots / CACHE_WAYS)) * CACHE_WAYS;
}

static uint32_t cache_victim(struct qcow2_cache *c, uint64_t offset)
{
    uint32_t base = cache_set(c, offset), best = base;
    for (uint32_t i = base; i < base + CACHE_WAYS; i++) {
        if (!c->offsets[i])
            return i;
        if (c->last_use[i] < c->last_use[best])
            best = i;
    }
    return best;
}

static int cache_find(const struct qcow2_cache *c, uint64_t offset)
{
    uint32_t base = cache_set(c, offset);
    for (uint32_t i = base; i < base + CACHE_WAYS; i++)
        if (c->offsets[i] == offset)
            return (int)i;
    return -1;
}

int qcow2_cache_get(struct block_node *bs, struct qcow2_cache *c, uint64_t offset, uint8_t **table)
{
    if (!offset)
        return QCOW2_ERR(EIO, "qcow2: metadata table at offset 0 (corrupt image)");
    int i = cache_find(c, offset);
    if (i < 0) {
        uint32_t v = cache_victim(c, offset);
        c->offsets[v] = 0;
        uint8_t *t = c->tables + (size_t)v * c->table_size;
        int r = block_node_pread(bs->file, offset, t, c->table_size);
        if (r < 0)
            return r;
        c->offsets[v] = offset;
        i = (int)v;
    }
    c->last_use[i] = ++c->tick;
    *table = c->tables + (size_t)i * c->table_size;
    return 0;
}

int qcow2_cache_put(struct qcow2_cache *c, uint64_t offset, const uint8_t *table)
{
    int i = cache_find(c, offset);
    if (i < 0)
        i = (int)cache_victim(c, offset);
    c->offsets[i] = offset;
    c->last_use[i] = ++c->tick;
    memcpy(c->tables + (size_t)i * c->table_size, table, c->table_size);
    return 0;
}

void qcow2_cache_drop(struct qcow2_cache *c, uint64_t offset)
{
    int i = cache_find(c, offset);
    if (i >= 0)
        c->offsets[i] = 0;
}

void qcow2_cache_clear(struct qcow2_cache *c)
{
    for (uint32_t i = 0; i < c->slots; i++)
        c->offsets[i] = 0;
}

/* ---- refcount entries ---------------------------------------------------- */

uint64_t qcow2_refcount_read(const struct qcow2_state *s, const uint8_t *block, uint64_t index)
{
    switch (s->refcount_order) {
    case 0: case 1: case 2: {
        uint32_t bits = s->refcount_bits, per_byte = 8 / bits;
        uint8_t byte = block[index / per_byte];
        return (byte >> ((index % per_byte) * bits)) & ((1u << bits) - 1);
    }
    case 3: return block[index];
    case 4: return qcow2_be16(block + index * 2);
    case 5: return qcow2_be32(block + index * 4);
    default: return qcow2_be64(block + index * 8);
    }
}

void qcow2_refcount_write(const struct qcow2_state *s, uint8_t *block, uint64_t index, uint64_t v)
{
    switch (s->refcount_order) {
    case 0: case 1: case 2: {
        uint32_t bits = s->refcount_bits, per_byte = 8 / bits;
        uint32_t shift = (uint32_t)(index % per_byte) * bits;
        uint8_t mask = (uint8_t)(((1u << bits) - 1) << shift);
        uint8_t *b = &block[index / per_byte];
        *b = (uint8_t)((*b & ~mask) | ((v << shift) & mask));
        break;
    }
    case 3: block[index] = (uint8_t)v; break;
    case 4: qcow2_put16(block + index * 2, (uint16_t)v); break;
    case 5: qcow2_put32(block + index * 4, (uint32_t)v); break;
    default: qcow2_put64(block + index * 8, v); break;
    }
}

/* Byte offset inside a refcount block of entry `index`. */
static uint64_t rb_byte(const struct qcow2_state *s, uint64_t index)
{
    if (s->refcount_order < 3)
        return index / (8u >> s->refcount_order);
    return index << (s->refcount_order - 3);
}

int qcow2_load_refcount_table(struct block_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t bytes = (uint64_t)s->rt_clusters << s->cluster_bits;
    s->rt_size = bytes / 8;
    free(s->rt);
    s->rt = calloc(s->rt_size ? s->rt_size : 1, sizeof(uint64_t));
    if (!s->rt)
        return QCOW2_ERR(ENOMEM, "qcow2: cannot allocate the refcount table");
    if (!bytes)
        return 0;
    int r = block_node_pread(bs->file, s->rt_offset, s->rt, bytes);
    if (r < 0)
        return r;
    for (uint64_t i = 0; i < s->rt_size; i++)
        s->rt[i] = qcow2_be64(&s->rt[i]);
    return 0;
}

/* Offset of refcount block `idx`, 0 when absent; fails on a damaged entry. */
static int rb_offset(struct block_node *bs, uint64_t idx, uint64_t *out)
{
    struct qcow2_state *s = bs->opaque;
    *out = 0;
    if (idx >= s->rt_size)
        return 0;
    uint64_t e = s->rt[idx];
    if (e & (s->cluster_size - 1))
        return qcow2_mark_corrupt(bs, "refcount block offset %#" PRIx64
                                  " unaligned (reftable index %#" PRIx64 ")", e, idx);
    *out = e;
    return 0;
}

int qcow2_get_refcount(struct block_node *bs, uint64_t cluster, uint64_t *out)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t off;
    int r = rb_offset(bs, cluster >> s->rb_bits, &off);
    if (r < 0)
        return r;
    *out = 0;
    if (!off)
        return 0;
    uint8_t *block;
    r = qcow2_cache_get(bs, &s->rb_cache, off, &block);
    if (r < 0)
        return r;
    *out = qcow2_refcount_read(s, block, cluster & ((1ull << s->rb_bits) - 1));
    return 0;
}

static int write_rt_entry(struct block_node *bs, uint64_t idx)
{
    struct qcow2_state *s = bs->opaque;
    uint8_t buf[8];
    qcow2_put64(buf, s->rt[idx]);
    return block_node_pwrite(bs->file, s->rt_offset + idx * 8, buf, 8, 0);
}

/* The highest cluster index the scan may ever reach (offsets have 56 bits). */
static uint64_t max_clusters(const struct qcow2_state *s)
{
    return (1ull << 56) >> s->cluster_bits;
}

/* Where a scan for free clusters may stop: refcounts claiming clusters far
 * past everything the file holds or we allocated are damage, and following
 * them could take forever. */
static int scan_limit(struct block_node *bs, uint64_t n, uint64_t *limit)
{
    struct qcow2_state *s = bs->opaque;
    int64_t flen = block_node_getlength(bs->file);
    if (flen < 0)
        return (int)flen;
    uint64_t end = qcow2_size_to_clusters(s, (uint64_t)flen);
    if (s->alloc_end > end)
        end = s->alloc_end;
    *limit = end + n + 2 * ((uint64_t)(8u << 20) >> s->cluster_bits) + 1024;
    if (*limit > max_clusters(s))
        *limit = max_clusters(s);
    return 0;
}

/* First run of `n` clusters with refcount 0 from the free hint. */
static int find_free(struct block_node *bs, uint64_t n, uint64_t *start)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t per_block = 1ull << s->rb_bits;
    uint64_t i = s->free_cluster_index, run = 0, run_start = i, limit = 0;
    int r = scan_limit(bs, n, &limit);
    if (r < 0)
        return r;
    while (run < n) {
        if (i >= limit)
            return qcow2_mark_corrupt(bs, "refcounts claim clusters far beyond the end of "
                                      "the file (no free cluster below %#" PRIx64 ")",
                                      limit << s->cluster_bits);
        uint64_t off;
        r = rb_offset(bs, i >> s->rb_bits, &off);
        if (r < 0)
            return r;
        if (!off) {
            /* a whole uncovered block is free */
            uint64_t next = (i | (per_block - 1)) + 1;
            if (!run)
                run_start = i;
            run += next - i;
            i = next;
            continue;
        }
        uint8_t *block;
        r = qcow2_cache_get(bs, &s->rb_cache, off, &block);
        if (r < 0)
            return r;
        do {
            if (qcow2_refcount_read(s, block, i & (per_block - 1)) == 0) {
                if (!run)
                    run_start = i;
                run++;
            } else {
                run = 0;
            }
            i++;
        } while (run < n && (i & (per_block - 1)) && i < limit);
    }
    *start = run_start;
    return 0;
}

static int grow_reftable(struct block_node *bs, uint64_t min_entries);

/* Give refcount block `idx` a cluster.  May only make progress (create some
 * other block first or grow the table); callers loop. */
static int create_refblock(struct block_node *bs, uint64_t idx)
{
    struct qcow2_state *s = bs->opaque;
    if (idx >= s->rt_size)
        return grow_reftable(bs, idx + 1);
    uint64_t b;
    int r = find_free(bs, 1, &b);
    if (r < 0)
        return r;
    uint64_t b_idx = b >> s->rb_bits, b_off;
    r = rb_offset(bs, b_idx, &b_off);
    if (r < 0)
        return r;
    if (b_idx != idx && !b_off)
        return create_refblock(bs, b_idx);   /* self-describing block there */
    if (b_idx != idx && b_idx >= s->rt_size)
        return grow_reftable(bs, b_idx + 1);

    uint8_t *block = calloc(1, s->cluster_size);
    if (!block)
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
    if (b_idx == idx)
        qcow2_refcount_write(s, block, b & ((1ull << s->rb_bits) - 1), 1);
    else
        r = qcow2_update_refcount(bs, b << s->cluster_bits, s->cluster_size, 1);
    if (r >= 0)
        r = block_node_pwrite(bs->file, b << s->cluster_bits, block, s->cluster_size, 0);
    if (r >= 0 && !s->lazy)
        r = block_node_flush(bs->file);
    if (r >= 0) {
        qcow2_cache_put(&s->rb_cache, b << s->cluster_bits, block);
        s->rt[idx] = b << s->cluster_bits;
        r = write_rt_entry(bs, idx);
        if (r < 0)
            s->rt[idx] = 0;
        s->need_flush = true;
    }
    free(block);
    return r < 0 ? r : 0;
}

/* Move the refcount table to a bigger place at a free spot, with new
 * self-describing refcount blocks for the clusters it occupies. */
static int grow_reftable(struct block_node *bs, uint64_t min_entries)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t per_cluster = s->cluster_size / 8, per_block = 1ull << s->rb_bits;
    uint64_t entries = s->rt_size + s->rt_size / 2 + 1;
    if (entries < min_entries)
        entries = min_entries;
    uint64_t start = 0, tclusters = 0, nblocks = 0;
    for (int iter = 0;; iter++) {
        if (iter > 64)
            return QCOW2_ERR(EIO, "qcow2: cannot place a new refcount table");
        entries = qcow2_align_up(entries, per_cluster);
        if (entries * 8 > QCOW2_MAX_REFTABLE_BYTES * 4ull)
            return QCOW2_ERR(EFBIG, "qcow2: refcount table would be too large");
        tclusters = entries / per_cluster;
        int r = find_free(bs, tclusters + nblocks, &start);
        if (r < 0)
            return r;
        uint64_t end = start + tclusters + nblocks;
        uint64_t missing = 0;
        for (uint64_t i = start >> s->rb_bits; i <= (end - 1) >> s->rb_bits; i++)
            if (i >= s->rt_size || !s->rt[i])
                missing++;
        uint64_t need_entries = ((end - 1) >> s->rb_bits) + 1;
        if (missing <= nblocks && need_entries <= entries)
            break;
        if (missing > nblocks)
            nblocks = missing;
        if (need_entries > entries)
            entries = need_entries;
    }
    uint64_t end = start + tclusters + nblocks;
    uint64_t *nrt = calloc(entries, 8);
    uint8_t *blocks = nblocks ? calloc(nblocks, s->cluster_size) : NULL;
    uint8_t *tbuf = calloc(tclusters, s->cluster_size);
    int r = 0;
    if (!nrt || (nblocks && !blocks) || !tbuf) {
        r = QCOW2_ERR(ENOMEM, "qcow2: out of memory growing the refcount table");
        goto out;
    }
    memcpy(nrt, s->rt, s->rt_size * 8);
    uint64_t used = 0;
    for (uint64_t i = start >> s->rb_bits; i <= (end - 1) >> s->rb_bits; i++)
        if (!nrt[i])
            nrt[i] = (start + tclusters + used++) << s->cluster_bits;
    /* count the new clusters: in new blocks, or in existing ones */
    for (uint64_t c = start; c < end; c++) {
        uint64_t i = c >> s->rb_bits;
        if (i < s->rt_size && s->rt[i]) {
            r = qcow2_update_refcount(bs, c << s->cluster_bits, s->cluster_size, 1);
            if (r < 0)
                goto out;
        } else {
            uint64_t j = (nrt[i] >> s->cluster_bits) - start - tclusters;
            qcow2_refcount_write(s, blocks + j * s->cluster_size, c & (per_block - 1), 1);
        }
    }
    if (nblocks) {
        r = block_node_pwrite(bs->file, (start + tclusters) << s->cluster_bits, blocks,
                              nblocks * s->cluster_size, 0);
        if (r < 0)
            goto out;
    }
    for (uint64_t i = 0; i < entries; i++)
        qcow2_put64(tbuf + i * 8, nrt[i]);
    r = block_node_pwrite(bs->file, start << s->cluster_bits, tbuf, tclusters * s->cluster_size, 0);
    if (r >= 0)
        r = block_node_flush(bs->file);
    if (r < 0)
        goto out;
    uint8_t hdr[12];
    qcow2_put64(hdr, start << s->cluster_bits);
    qcow2_put32(hdr + 8, (uint32_t)tclusters);
    r = block_node_pwrite(bs->file, 48, hdr, 12, 0);
    if (r >= 0)
        r = block_node_flush(bs->file);
    if (r < 0)
        goto out;
    uint64_t old_off = s->rt_offset, old_clusters = s->rt_clusters;
    free(s->rt);
    s->rt = nrt;
    nrt = NULL;
    s->rt_size = entries;
    s->rt_offset = start << s->cluster_bits;
    s->rt_clusters = (uint32_t)tclusters;
    for (uint64_t j = 0; j < nblocks; j++)
        qcow2_cache_put(&s->rb_cache, (start + tclusters + j) << s->cluster_bits,
                        blocks + j * s->cluster_size);
    if (old_clusters)
        r = qcow2_update_refcount(bs, old_off, old_clusters << s->cluster_bits, -1);
out:
    free(nrt);
    free(blocks);
    free(tbuf);
    return r < 0 ? r : 0;
}

/* Make sure every refcount block covering clusters [first, first+n) exists.
 * Returns 1 when something was created (the caller rescans), 0 when all
 * blocks were present. */
static int ensure_refblocks(struct block_node *bs, uint64_t first, uint64_t n)
{
    struct qcow2_state *s = bs->opaque;
    for (uint64_t i = first >> s->rb_bits; i <= (first + n - 1) >> s->rb_bits; i++) {
        uint64_t off;
        int r = rb_offset(bs, i, &off);
        if (r < 0)
            return r;
        if (!off) {
            r = create_refblock(bs, i);
            return r < 0 ? r : 1;
        }
    }
    return 0;
}

static int alloc_counted(struct block_node *bs, uint64_t n, uint64_t *offset)
{
    struct qcow2_state *s = bs->opaque;
    for (int tries = 0; tries < 1000; tries++) {
        uint64_t start;
        int r = find_free(bs, n, &start);
        if (r < 0)
            return r;
        r = ensure_refblocks(bs, start, n);
        if (r < 0)
            return r;
        if (r > 0)
            continue;
        r = qcow2_update_refcount(bs, start << s->cluster_bits, n << s->cluster_bits, 1);
        if (r < 0)
            return r;
        if (start == s->free_cluster_index)
            s->free_cluster_index = start + n;
        if (start + n > s->alloc_end)
            s->alloc_end = start + n;
        *offset = start << s->cluster_bits;
        return 0;
    }
    return QCOW2_ERR(EIO, "qcow2: cluster allocation does not converge (damaged refcounts?)");
}

/* Clusters are counted (refcount 1, flushed) a batch at a time and handed
 * out from that reservation, so an allocating write needs no flush of its
 * own: its refcount is already stable.  A crash leaks the unused rest. */
#define RESERVE_BYTES (8u << 20)

static int finish_pack(struct block_node *bs);

int qcow2_release_reservation(struct block_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    int r = finish_pack(bs);
    if (r < 0)
        return r;
    if (!s->resv_count)
        return 0;
    uint64_t start = s->resv_start, n = s->resv_count;
    s->resv_count = 0;
    return qcow2_update_refcount(bs, start << s->cluster_bits, n << s->cluster_bits, -1);
}

int qcow2_alloc_clusters(struct block_node *bs, uint64_t n, uint64_t *offset)
{
    struct qcow2_state *s = bs->opaque;
    if (!n)
        return QCOW2_ERR(EINVAL, "qcow2: allocating zero clusters");
    if (n > s->resv_count) {
        int r = qcow2_release_reservation(bs);
        if (r < 0)
            return r;
        uint64_t batch = RESERVE_BYTES >> s->cluster_bits;
        if (batch > 1024)
            batch = 1024;     /* small clusters: keep refcount updates short */
        if (batch < n)
            batch = n;
        uint64_t start;
        r = alloc_counted(bs, batch, &start);
        if (r < 0)
            return r;
        if (!s->lazy) {
            r = block_node_flush(bs->file);
            if (r < 0) {
                qcow2_update_refcount(bs, start, batch << s->cluster_bits, -1);
                return r;
            }
            s->need_flush = false;
        }
        s->resv_start = start >> s->cluster_bits;
        s->resv_count = batch;
    }
    *offset = s->resv_start << s->cluster_bits;
    s->resv_start += n;
    s->resv_count -= n;
    return 0;
}

/* Compressed clusters are packed into host clusters.  A fresh pack cluster
 * is counted for a budget of users at once (one refcount write and flush
 * per pack cluster, not per compressed cluster); when the pack is finished
 * the unused part of the budget is given back.  A crash in between leaves
 * a refcount that is too high: a leak. */
#define PACK_BUDGET 64

static int finish_pack(struct block_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    if (!s->pack_cluster)
        return 0;
    uint64_t c = s->pack_cluster, unused = s->pack_budget - s->pack_used;
    s->pack_cluster = 0;
    s->free_byte_offset = 0;
    return unused ? qcow2_update_refcount(bs, c, 1, -(int64_t)unused) : 0;
}

int qcow2_alloc_bytes(struct block_node *bs, uint32_t len, uint64_t *offset)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t f = s->free_byte_offset;
    if (s->pack_cluster && s->pack_used < s->pack_budget &&
        (f & ~(uint64_t)(s->cluster_size - 1)) == s->pack_cluster &&
        qcow2_offset_into_cluster(s, f) && qcow2_offset_into_cluster(s, f) + len <= s->cluster_size) {
        *offset = f;
        s->free_byte_offset = f + len;
        s->pack_used++;
        return 0;
    }
    int r = finish_pack(bs);
    uint64_t c;
    if (r >= 0)
        r = qcow2_alloc_clusters(bs, 1, &c);
    if (r < 0)
        return r;
    uint64_t budget = s->refcount_max < PACK_BUDGET ? s->refcount_max : PACK_BUDGET;
    if (budget > 1 && qcow2_update_refcount(bs, c, 1, (int64_t)budget - 1) < 0)
        budget = 1;
    s->pack_cluster = c;
    s->pack_used = 1;
    s->pack_budget = budget;
    s->free_byte_offset = c + len;
    *offset = c;
    return 0;
}

/* Apply `addend` to clusters [first, first+n) that share one refcount block. */
static int update_block(struct block_node *bs, uint64_t first, uint64_t n, int64_t addend)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t per_block = 1ull << s->rb_bits, idx = first >> s->rb_bits, off;
    int r = rb_offset(bs, idx, &off);
    if (r < 0)
        return r;
    if (!off) {
        if (addend < 0)
            return qcow2_mark_corrupt(bs, "freeing cluster %#" PRIx64
                                      " without a refcount block", first << s->cluster_bits);
        return QCOW2_ERR(EIO, "qcow2: internal error: refcount block for cluster %#" PRIx64
                         " missing", first << s->cluster_bits);
    }
    r = qcow2_check_table_placement(bs, off, "refcount block");
    if (r < 0)
        return r;
    uint8_t *block;
    r = qcow2_cache_get(bs, &s->rb_cache, off, &block);
    if (r < 0)
        return r;
    uint64_t base = first & (per_block - 1);
    uint64_t mag = addend < 0 ? (uint64_t)0 - (uint64_t)addend : (uint64_t)addend;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t v = qcow2_refcount_read(s, block, base + i);
        if ((addend < 0 && v < mag) || (addend > 0 && s->refcount_max - v < mag)) {
            if (addend < 0)
                return qcow2_mark_corrupt(bs, "refcount of cluster %#" PRIx64
                                          " would drop below zero",
                                          (first + i) << s->cluster_bits);
            return QCOW2_ERR(ERANGE, "qcow2: refcount overflow for cluster %#" PRIx64
                             " (refcount_bits=%u)", (first + i) << s->cluster_bits,
                             s->refcount_bits);
        }
    }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t v = qcow2_refcount_read(s, block, base + i) + (uint64_t)addend;
        qcow2_refcount_write(s, block, base + i, v);
        if (!v) {
            uint64_t c = first + i;
            if (c < s->free_cluster_index)
                s->free_cluster_index = c;
            qcow2_cache_drop(&s->l2_cache, c << s->cluster_bits);
            if (s->free_byte_offset >> s->cluster_bits == c)
                s->free_byte_offset = 0;
            if (s->pack_cluster >> s->cluster_bits == c)
                s->pack_cluster = 0;
        }
    }
    uint64_t lo = rb_byte(s, base) & ~511ull;
    uint64_t hi = qcow2_align_up(rb_byte(s, base + n - 1) + 8, 512);
    if (hi > s->cluster_size)
        hi = s->cluster_size;
    r = block_node_pwrite(bs->file, off + lo, block + lo, hi - lo, 0);
    if (r < 0) {
        qcow2_cache_drop(&s->rb_cache, off);
        return r;
    }
    s->need_flush = true;
    return 0;
}

int qcow2_update_refcount(struct block_node *bs, uint64_t offset, uint64_t len, int64_t addend)
{
    struct qcow2_state *s = bs->opaque;
    if (!len || !addend)
        return 0;
    uint64_t first = offset >> s->cluster_bits;
    uint64_t last = (offset + len - 1) >> s->cluster_bits;
    uint64_t per_block = 1ull << s->rb_bits;
    for (uint64_t c = first; c <= last;) {
        uint64_t n = per_block - (c & (per_block - 1));
        if (n > last - c + 1)
            n = last - c + 1;
        int r = update_block(bs, c, n, addend);
        if (r < 0) {
            /* undo what was done so refcounts stay as they were */
            if (c > first)
                qcow2_update_refcount(bs, first << s->cluster_bits,
                                      (c - first) << s->cluster_bits, -addend);
            return r;
        }
        c += n;
    }
    return 0;
}

int qcow2_set_refcount(struct block_node *bs, uint64_t cluster, uint64_t value)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t cur;
    int r = qcow2_get_refcount(bs, cluster, &cur);
    if (r < 0)
        return r;
    if (value > s->refcount_max)
        return QCOW2_ERR(ERANGE, "qcow2: refcount %" PRIu64 " does not fit in %u bits",
                         value, s->refcount_bits);
    if (value == cur)
        return 0;
    if (value > cur && value - cur <= INT64_MAX)
        return qcow2_update_refcount(bs, cluster << s->cluster_bits, 1, (int64_t)(value - cur));
    if (cur > value && cur - value <= INT64_MAX)
        return qcow2_update_refcount(bs, cluster << s->cluster_bits, 1, -(int64_t)(cur - value));
    return QCOW2_ERR(ERANGE, "qcow2: refcount change too large");
}

int qcow2_free_clusters(struct block_node *bs, uint64_t offset, uint64_t len)
{
    return qcow2_update_refcount(bs, offset, len, -1);
}

int qcow2_free_l2_entry(struct block_node *bs, uint64_t entry)
{
    struct qcow2_state *s = bs->opaque;
    switch (qcow2_entry_type(s, entry)) {
    case QCOW2_NORMAL:
    case QCOW2_ZERO_ALLOC:
        return qcow2_free_clusters(bs, entry & QCOW2_OFFSET_MASK, s->cluster_size);
    case QCOW2_COMPRESSED: {
        uint64_t host, len;
        int r = qcow2_compressed_extent(s, entry, &host, &len);
        if (r < 0)
            return r;
        return qcow2_free_clusters(bs, host, len);
    }
    default:
        return 0;
    }
}
