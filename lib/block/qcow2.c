/* qcow2 format driver: header parsing and validation, open/close, create,
 * info, amend, resize and the driver table.  Guest data paths live in
 * qcow2-cluster.c, refcounts in qcow2-refcount.c, snapshots in
 * qcow2-snapshot.c and the consistency check in qcow2-check.c. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include "qcow2.h"

#define DEFAULT_L2_CACHE (32u << 20)
#define DEFAULT_RB_CACHE_RATIO 4

/* ---- properties ------------------------------------------------------------ */

static const struct vmm_prop qcow2_open_props[] = {
    { "l2-cache-size", VMM_PROP_SIZE, offsetof(struct qcow2_open_opts, l2_cache_size), "0",
      "bytes of L2 tables to cache (0: enough for the whole image, at most 32M)", NULL, 0, 0 },
    { "refcount-cache-size", VMM_PROP_SIZE, offsetof(struct qcow2_open_opts, refcount_cache_size),
      "0", "bytes of refcount blocks to cache (0: a quarter of the L2 cache)", NULL, 0, 0 },
    { "cache-size", VMM_PROP_SIZE, offsetof(struct qcow2_open_opts, cache_size), "0",
      "combined metadata cache size (split between L2 and refcount caches)", NULL, 0, 0 },
    { "lazy-refcounts", VMM_PROP_BOOL, offsetof(struct qcow2_open_opts, lazy_refcounts), "off",
      "postpone refcount ordering (sets the dirty bit; repaired on the next open)", NULL, 0, 0 },
    { "pass-discard-request", VMM_PROP_BOOL,
      offsetof(struct qcow2_open_opts, pass_discard_request), "on",
      "discard freed clusters in the file too", NULL, 0, 0 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

struct qcow2_create_opts {
    uint64_t size;
    int compat;
    uint64_t cluster_size;
    uint32_t refcount_bits;
    bool lazy_refcounts;
    char *backing_file;
    char *backing_fmt;
    int preallocation;
    bool extended_l2;
    int compression_type;
    char *data_file;
    bool encrypt;
};

static const char *const compat_choices[] = { "1.1", "0.10", "v3", "v2", NULL };
static const char *const prealloc_choices[] = { "off", "metadata", "falloc", "full", NULL };
static const char *const compression_choices[] = { "zlib", "zstd", NULL };

static const struct vmm_prop qcow2_create_props[] = {
    { "size", VMM_PROP_SIZE, offsetof(struct qcow2_create_opts, size), "0",
      "virtual disk size", NULL, 0, 0 },
    { "compat", VMM_PROP_ENUM, offsetof(struct qcow2_create_opts, compat), "1.1",
      "compatibility level (0.10 = version 2, 1.1 = version 3)", compat_choices, 0, 0 },
    { "cluster_size", VMM_PROP_SIZE, offsetof(struct qcow2_create_opts, cluster_size), "65536",
      "qcow2 cluster size (512 to 2M, a power of two)", NULL, 0, 0 },
    { "refcount_bits", VMM_PROP_U32, offsetof(struct qcow2_create_opts, refcount_bits), "16",
      "width of a reference count entry in bits (1 to 64, a power of two)", NULL, 0, 0 },
    { "lazy_refcounts", VMM_PROP_BOOL, offsetof(struct qcow2_create_opts, lazy_refcounts), "off",
      "postpone refcount updates (compat=1.1 only)", NULL, 0, 0 },
    { "backing_file", VMM_PROP_STR, offsetof(struct qcow2_create_opts, backing_file), NULL,
      "file name of a base image", NULL, 0, 0 },
    { "backing_fmt", VMM_PROP_STR, offsetof(struct qcow2_create_opts, backing_fmt), NULL,
      "image format of the base image", NULL, 0, 0 },
    { "preallocation", VMM_PROP_ENUM, offsetof(struct qcow2_create_opts, preallocation), "off",
      "preallocation mode (off, metadata, falloc, full)", prealloc_choices, 0, 0 },
    { "extended_l2", VMM_PROP_BOOL, offsetof(struct qcow2_create_opts, extended_l2), "off",
      "extended L2 entries with subclusters (not supported)", NULL, 0, 0 },
    { "compression_type", VMM_PROP_ENUM, offsetof(struct qcow2_create_opts, compression_type),
      "zlib", "compression method for compressed clusters (zlib)", compression_choices, 0, 0 },
    { "data_file", VMM_PROP_STR, offsetof(struct qcow2_create_opts, data_file), NULL,
      "external data file (not supported)", NULL, 0, 0 },
    { "encryption", VMM_PROP_BOOL, offsetof(struct qcow2_create_opts, encrypt), "off",
      "encrypt the image (not supported)", NULL, 0, 0 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

/* ---- errors and flags --------------------------------------------------------- */

int qcow2_mark_corrupt(struct block_node *bs, const char *fmt, ...)
{
    struct qcow2_state *s = bs->opaque;
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    bool set_now = s->writable && !(bs->open_flags & BLOCK_O_CHECK) &&
                   !(s->incompat & QCOW2_INCOMPAT_CORRUPT);
    if (set_now) {
        uint8_t buf[8];
        s->incompat |= QCOW2_INCOMPAT_CORRUPT;
        qcow2_put64(buf, s->incompat);
        if (block_node_pwrite(bs->file, 72, buf, 8, 0) >= 0)
            block_node_flush(bs->file);
        vmm_log(VMM_LOG_ERROR, "qcow2", "%s: marking image as corrupt: %s",
                bs->filename ? bs->filename : "?", msg);
    }
    return QCOW2_ERR(EIO, "qcow2: %s%s", msg,
                     set_now ? " (image marked corrupt; further writes are refused)" : "");
}

static int write_incompat(struct block_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    uint8_t buf[8];
    qcow2_put64(buf, s->incompat);
    int r = block_node_pwrite(bs->file, 72, buf, 8, 0);
    if (r >= 0)
        r = block_node_flush(bs->file);
    return r;
}

/* With lazy refcounts the dirty bit goes on before the first unordered
 * refcount update. Lock held. */
int qcow2_mark_dirty(struct block_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    if (!s->lazy || (s->incompat & QCOW2_INCOMPAT_DIRTY) || s->version < 3)
        return 0;
    int r = block_node_flush(bs->file);
    if (r < 0)
        return r;
    s->incompat |= QCOW2_INCOMPAT_DIRTY;
    r = write_incompat(bs);
    if (r < 0) {
        s->incompat &= ~QCOW2_INCOMPAT_DIRTY;
        return r;
    }
    s->dirty_written = true;
    return 0;
}

static int mark_clean(struct block_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    if (!(s->incompat & QCOW2_INCOMPAT_DIRTY))
        return 0;
    int r = block_node_flush(bs->file);
    if (r < 0)
        return r;
    s->incompat &= ~QCOW2_INCOMPAT_DIRTY;
    s->dirty_written = false;
    return write_incompat(bs);
}

int qcow2_flush_if_needed(struct block_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    if (!s->need_flush)
        return 0;
    s->need_flush = false;
    return block_node_flush(bs->file);
}

uint32_t qcow2_l1_size_for(const struct qcow2_state *s, uint64_t size)
{
    uint64_t per_l2 = (uint64_t)s->l2_entries << s->cluster_bits;
    return (uint32_t)((size + per_l2 - 1) / per_l2);
}

/* ---- header ------------------------------------------------------------------ */

static const struct { uint8_t type, bit; const char *name; } known_features[] = {
    { 0, 0, "dirty bit" },
    { 0, 1, "corrupt bit" },
    { 0, 2, "external data file" },
    { 0, 3, "compression type" },
    { 0, 4, "extended L2 entries" },
    { 1, 0, "lazy refcounts" },
    { 2, 0, "bitmaps" },
    { 2, 1, "raw external data" },
};

static size_t put_ext(uint8_t *buf, size_t pos, size_t cap, uint32_t type,
                      const void *data, uint32_t len, bool *fits)
{
    size_t need = 8 + qcow2_align_up(len, 8);
    if (pos + need > cap) {
        *fits = false;
        return pos;
    }
    qcow2_put32(buf + pos, type);
    qcow2_put32(buf + pos + 4, len);
    memset(buf + pos + 8, 0, qcow2_align_up(len, 8));
    if (len)
        memcpy(buf + pos + 8, data, len);
    return pos + need;
}

/* Serialize the header, its extensions and the backing file name. */
static int build_header(const struct qcow2_state *s, uint64_t size, bool with_features,
                        uint8_t *buf, size_t *used)
{
    size_t cap = s->cluster_size;
    memset(buf, 0, cap);
    uint32_t hlen = s->version >= 3 ? QCOW2_HEADER_SIZE : QCOW2_V2_HEADER_SIZE;
    qcow2_put32(buf, QCOW2_MAGIC);
    qcow2_put32(buf + 4, s->version);
    qcow2_put32(buf + 20, s->cluster_bits);
    qcow2_put64(buf + 24, size);
    qcow2_put32(buf + 32, 0);
    qcow2_put32(buf + 36, s->l1_size);
    qcow2_put64(buf + 40, s->l1_offset);
    qcow2_put64(buf + 48, s->rt_offset);
    qcow2_put32(buf + 56, s->rt_clusters);
    qcow2_put32(buf + 60, s->nb_snapshots);
    qcow2_put64(buf + 64, s->nb_snapshots ? s->snapshots_offset : 0);
    if (s->version >= 3) {
        qcow2_put64(buf + 72, s->incompat);
        qcow2_put64(buf + 80, s->compat);
        qcow2_put64(buf + 88, s->autoclear);
        qcow2_put32(buf + 96, s->refcount_order);
        qcow2_put32(buf + 100, hlen);
        buf[104] = s->compression_type;
    }
    bool fits = true;
    size_t pos = hlen;
    if (s->backing_format)
        pos = put_ext(buf, pos, cap, QCOW2_EXT_BACKING_FMT, s->backing_format,
                      (uint32_t)strlen(s->backing_format), &fits);
    if (with_features && s->version >= 3) {
        uint8_t table[VMM_ARRAY_SIZE(known_features) * 48];
        memset(table, 0, sizeof(table));
        for (size_t i = 0; i < VMM_ARRAY_SIZE(known_features); i++) {
            table[i * 48] = known_features[i].type;
            table[i * 48 + 1] = known_features[i].bit;
            memcpy(table + i * 48 + 2, known_features[i].name, strlen(known_features[i].name));
        }
        pos = put_ext(buf, pos, cap, QCOW2_EXT_FEATURES, table, sizeof(table), &fits);
    }
    for (uint32_t i = 0; i < s->nb_exts; i++)
        pos = put_ext(buf, pos, cap, s->exts[i].type, s->exts[i].data, s->exts[i].len, &fits);
    pos = put_ext(buf, pos, cap, QCOW2_EXT_END, NULL, 0, &fits);
    if (s->backing_file) {
        size_t n = strlen(s->backing_file);
        if (pos + n > cap) {
            fits = false;
        } else {
            qcow2_put64(buf + 8, pos);
            qcow2_put32(buf + 16, (uint32_t)n);
            memcpy(buf + pos, s->backing_file, n);
            pos += n;
        }
    }
    *used = pos;
    return fits ? 0 : -1;
}

/* Rewrite the whole header (lock held or single-threaded). */
int qcow2_write_header(struct block_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    uint8_t *buf = malloc(s->cluster_size);
    if (!buf)
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
    size_t used;
    int r = build_header(s, bs->size, true, buf, &used);
    if (r < 0)
        r = build_header(s, bs->size, false, buf, &used);
    if (r < 0) {
        free(buf);
        return QCOW2_ERR(EFBIG, "qcow2: header, extensions and backing file name do not fit "
                         "in the first cluster (%u bytes)", s->cluster_size);
    }
    r = block_node_pwrite(bs->file, 0, buf, qcow2_align_up(used, 512) < s->cluster_size ?
                          qcow2_align_up(used, 512) : s->cluster_size, 0);
    if (r >= 0)
        r = block_node_flush(bs->file);
    free(buf);
    return r < 0 ? r : 0;
}

static const char *feature_name(const struct qcow2_state *s, uint8_t type, uint8_t bit)
{
    for (uint32_t i = 0; i < s->nb_features; i++)
        if (s->features[i].type == type && s->features[i].bit == bit)
            return s->features[i].name;
    return NULL;
}

static int refuse_incompat(struct block_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t unknown = s->incompat & ~(QCOW2_INCOMPAT_KNOWN | QCOW2_INCOMPAT_DATA_FILE |
                                       QCOW2_INCOMPAT_EXTL2);
    if (unknown) {
        char list[512] = "";
        for (int b = 0; b < 64; b++) {
            if (!(unknown & (1ull << b)))
                continue;
            size_t len = strlen(list);
            const char *name = feature_name(s, 0, (uint8_t)b);
            if (name)
                snprintf(list + len, sizeof(list) - len, "%s'%s' (bit %d)", len ? ", " : "", name, b);
            else
                snprintf(list + len, sizeof(list) - len, "%sunknown incompatible feature bit %d",
                         len ? ", " : "", b);
        }
        return QCOW2_ERR(ENOTSUP, "qcow2: unsupported incompatible feature(s): %s", list);
    }
    if (s->incompat & QCOW2_INCOMPAT_DATA_FILE)
        return QCOW2_ERR(ENOTSUP, "qcow2: the image uses an external data file, "
                         "which is not supported");
    if (s->incompat & QCOW2_INCOMPAT_EXTL2)
        return QCOW2_ERR(ENOTSUP, "qcow2: the image uses extended L2 entries (subclusters), "
                         "which are not supported");
    if (s->compression_type == 1)
        return QCOW2_ERR(ENOTSUP, "qcow2: the image uses zstd compression, which is not supported");
    if (s->compression_type > 1)
        return QCOW2_ERR(ENOTSUP, "qcow2: unknown compression type %u", s->compression_type);
    if (s->compression_type && !(s->incompat & QCOW2_INCOMPAT_COMPRESSION))
        return QCOW2_ERR(EINVAL, "qcow2: compression type %u set without its incompatible bit",
                         s->compression_type);
    return 0;
}

static int parse_extensions(struct block_node *bs, const uint8_t *c0, uint64_t start, uint64_t end)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t pos = start;
    while (pos + 8 <= end) {
        uint32_t type = qcow2_be32(c0 + pos), len = qcow2_be32(c0 + pos + 4);
        pos += 8;
        if (type == QCOW2_EXT_END)
            return 0;
        if (len > end - pos)
            return QCOW2_ERR(EINVAL, "qcow2: header extension %#x at offset %" PRIu64
                             " is too large (%u bytes)", type, pos - 8, len);
        const uint8_t *d = c0 + pos;
        switch (type) {
        case QCOW2_EXT_BACKING_FMT:
            if (len > 1023)
                return QCOW2_ERR(EINVAL, "qcow2: backing format name too long");
            free(s->backing_format);
            s->backing_format = strndup((const char *)d, len);
            if (!s->backing_format)
                return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
            break;
        case QCOW2_EXT_FEATURES: {
            uint32_t n = len / 48;
            free(s->features);
            s->features = calloc(n ? n : 1, sizeof(*s->features));
            if (!s->features)
                return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
            s->nb_features = n;
            for (uint32_t i = 0; i < n; i++) {
                s->features[i].type = d[i * 48];
                s->features[i].bit = d[i * 48 + 1];
                memcpy(s->features[i].name, d + i * 48 + 2, 46);
                s->features[i].name[46] = 0;
            }
            break;
        }
        default: {
            /* kept as found: bitmaps, crypto header, data file name, unknown */
            struct qcow2_ext *e = realloc(s->exts, (s->nb_exts + 1) * sizeof(*e));
            if (!e)
                return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
            s->exts = e;
            e[s->nb_exts].type = type;
            e[s->nb_exts].len = len;
            e[s->nb_exts].data = malloc(len ? len : 1);
            if (!e[s->nb_exts].data)
                return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
            memcpy(e[s->nb_exts].data, d, len);
            s->nb_exts++;
            break;
        }
        }
        pos += qcow2_align_up(len, 8);
    }
    return 0;
}

static int check_table(uint64_t offset, uint64_t bytes, uint64_t file_len, uint32_t cs,
                       const char *what)
{
    if (offset & (cs - 1))
        return QCOW2_ERR(EINVAL, "qcow2: %s offset %#" PRIx64 " is not cluster aligned", what, offset);
    if (bytes && (offset > file_len || bytes > file_len - offset))
        return QCOW2_ERR(EINVAL, "qcow2: %s (offset %#" PRIx64 ", %" PRIu64 " bytes) "
                         "extends beyond the end of the file (%" PRIu64 " bytes)",
                         what, offset, bytes, file_len);
    return 0;
}

static int read_header(struct block_node *bs, unsigned flags)
{
    struct qcow2_state *s = bs->opaque;
    int64_t flen = block_node_getlength(bs->file);
    if (flen < 0)
        return (int)flen;
    uint8_t h[QCOW2_HEADER_SIZE];
    memset(h, 0, sizeof(h));
    if (flen < QCOW2_V2_HEADER_SIZE)
        return QCOW2_ERR(EINVAL, "qcow2: file too short for a qcow2 header (%" PRId64 " bytes)", flen);
    int r = block_node_pread(bs->file, 0, h, (uint64_t)flen < sizeof(h) ? (uint64_t)flen : sizeof(h));
    if (r < 0)
        return r;
    if (qcow2_be32(h) != QCOW2_MAGIC)
        return QCOW2_ERR(EINVAL, "qcow2: not a qcow2 image (bad magic)");
    s->version = qcow2_be32(h + 4);
    if (s->version != 2 && s->version != 3)
        return QCOW2_ERR(ENOTSUP, "qcow2: unsupported qcow2 version %u", s->version);
    s->cluster_bits = qcow2_be32(h + 20);
    if (s->cluster_bits < QCOW2_MIN_CLUSTER_BITS || s->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
        return QCOW2_ERR(EINVAL, "qcow2: unsupported cluster size: 2^%u", s->cluster_bits);
    s->cluster_size = 1u << s->cluster_bits;
    s->l2_bits = s->cluster_bits - 3;
    s->l2_entries = 1u << s->l2_bits;
    s->csize_shift = 62 - (s->cluster_bits - 8);
    s->csize_mask = (1ull << (s->cluster_bits - 8)) - 1;
    s->coffset_mask = (1ull << s->csize_shift) - 1;
    uint64_t size = qcow2_be64(h + 24);
    uint32_t crypt = qcow2_be32(h + 32);
    s->l1_size = qcow2_be32(h + 36);
    s->l1_offset = qcow2_be64(h + 40);
    s->rt_offset = qcow2_be64(h + 48);
    s->rt_clusters = qcow2_be32(h + 56);
    s->nb_snapshots = qcow2_be32(h + 60);
    s->snapshots_offset = qcow2_be64(h + 64);
    uint64_t backing_off = qcow2_be64(h + 8);
    uint32_t backing_len = qcow2_be32(h + 16);
    if (s->version >= 3) {
        s->incompat = qcow2_be64(h + 72);
        s->compat = qcow2_be64(h + 80);
        s->autoclear = qcow2_be64(h + 88);
        s->refcount_order = qcow2_be32(h + 96);
        s->header_length = qcow2_be32(h + 100);
        if (s->header_length < QCOW2_V3_HEADER_SIZE)
            return QCOW2_ERR(EINVAL, "qcow2: header length %u is too short", s->header_length);
        if (s->header_length > s->cluster_size)
            return QCOW2_ERR(EINVAL, "qcow2: header length %u exceeds the cluster size",
                             s->header_length);
        if (s->header_length > 104)
            s->compression_type = h[104];
    } else {
        s->refcount_order = 4;
        s->header_length = QCOW2_V2_HEADER_SIZE;
    }
    if (s->refcount_order > 6)
        return QCOW2_ERR(EINVAL, "qcow2: refcount width 2^%u bits exceeds 64", s->refcount_order);
    s->refcount_bits = 1u << s->refcount_order;
    s->refcount_max = s->refcount_bits == 64 ? UINT64_MAX : (1ull << s->refcount_bits) - 1;
    s->rb_bits = s->cluster_bits + 3 - s->refcount_order;
    if (crypt)
        return QCOW2_ERR(ENOTSUP, "qcow2: encrypted images are not supported "
                         "(encryption method %u)", crypt);

    /* the first cluster holds extensions and the backing file name */
    uint8_t *c0 = calloc(1, s->cluster_size);
    if (!c0)
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
    r = block_node_pread(bs->file, 0, c0, (uint64_t)flen < s->cluster_size ? (uint64_t)flen
                                                                           : s->cluster_size);
    if (r < 0)
        goto out;
    uint64_t ext_end = s->cluster_size;
    if (backing_off) {
        if (backing_len > QCOW2_MAX_BACKING_NAME || backing_off > s->cluster_size ||
            backing_len > s->cluster_size - backing_off) {
            r = QCOW2_ERR(EINVAL, "qcow2: backing file name (offset %" PRIu64 ", %u bytes) is "
                          "too long or outside the first cluster", backing_off, backing_len);
            goto out;
        }
        s->backing_file = strndup((const char *)c0 + backing_off, backing_len);
        if (!s->backing_file) {
            r = QCOW2_ERR(ENOMEM, "qcow2: out of memory");
            goto out;
        }
        if (backing_off > s->header_length)
            ext_end = backing_off;
    }
    r = parse_extensions(bs, c0, s->header_length, ext_end);
    if (r < 0)
        goto out;
    r = refuse_incompat(bs);
    if (r < 0)
        goto out;
    if ((s->incompat & QCOW2_INCOMPAT_CORRUPT) && (flags & BLOCK_O_RDWR) &&
        !(flags & BLOCK_O_CHECK)) {
        r = QCOW2_ERR(EACCES, "qcow2: image is corrupt; cannot be opened read/write "
                      "(run check -r all, or open it read-only)");
        goto out;
    }

    /* tables */
    uint64_t l1_needed = 0;
    if (size > (1ull << 61)) {
        r = QCOW2_ERR(EFBIG, "qcow2: virtual size %" PRIu64 " is too large", size);
        goto out;
    }
    l1_needed = qcow2_l1_size_for(s, size);
    if ((uint64_t)s->l1_size * 8 > QCOW2_MAX_L1_BYTES || l1_needed * 8 > QCOW2_MAX_L1_BYTES) {
        r = QCOW2_ERR(EFBIG, "qcow2: active L1 table too large (%u entries)", s->l1_size);
        goto out;
    }
    if (s->l1_size < l1_needed) {
        r = QCOW2_ERR(EINVAL, "qcow2: L1 table is too small (%u entries for %" PRIu64
                      " needed by the image size)", s->l1_size, l1_needed);
        goto out;
    }
    r = check_table(s->l1_offset, (uint64_t)s->l1_size * 8, (uint64_t)flen, s->cluster_size,
                    "active L1 table");
    if (r < 0)
        goto out;
    if ((uint64_t)s->rt_clusters * s->cluster_size > QCOW2_MAX_REFTABLE_BYTES) {
        r = QCOW2_ERR(EFBIG, "qcow2: refcount table too large (%u clusters)", s->rt_clusters);
        goto out;
    }
    if (!s->rt_clusters) {
        r = QCOW2_ERR(EINVAL, "qcow2: image has no refcount table");
        goto out;
    }
    r = check_table(s->rt_offset, (uint64_t)s->rt_clusters << s->cluster_bits, (uint64_t)flen,
                    s->cluster_size, "refcount table");
    if (r < 0)
        goto out;
    if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
        r = QCOW2_ERR(EFBIG, "qcow2: too many snapshots (%u)", s->nb_snapshots);
        goto out;
    }
    if (s->nb_snapshots) {
        r = check_table(s->snapshots_offset, 1, (uint64_t)flen, s->cluster_size, "snapshot table");
        if (r < 0)
            goto out;
    }
    bs->size = size;
    r = 0;
out:
    free(c0);
    return r;
}

/* ---- open / close ---------------------------------------------------------------- */

static void free_state(struct qcow2_state *s)
{
    free(s->l1);
    free(s->rt);
    free(s->backing_file);
    free(s->backing_format);
    free(s->features);
    for (uint32_t i = 0; i < s->nb_exts; i++)
        free(s->exts[i].data);
    free(s->exts);
    free(s->zcache);
    qcow2_free_snapshots(s);
    qcow2_cache_destroy(&s->l2_cache);
    qcow2_cache_destroy(&s->rb_cache);
    if (s->lock_init) {
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->inflight_cond);
    }
    memset(s, 0, sizeof(*s));
}

static int setup_caches(struct block_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t l2 = s->opts.l2_cache_size, rb = s->opts.refcount_cache_size;
    if (s->opts.cache_size && !l2 && !rb) {
        rb = s->opts.cache_size / (DEFAULT_RB_CACHE_RATIO + 1);
        l2 = s->opts.cache_size - rb;
    }
    if (!l2) {
        /* enough to map the whole image, capped */
        uint64_t need = (uint64_t)qcow2_l1_size_for(s, bs->size) * s->cluster_size;
        l2 = need < DEFAULT_L2_CACHE ? need : DEFAULT_L2_CACHE;
    }
    if (!rb)
        rb = l2 / DEFAULT_RB_CACHE_RATIO;
    uint64_t l2_slots = l2 / s->cluster_size, rb_slots = rb / s->cluster_size;
    if (l2_slots > 65536)
        l2_slots = 65536;
    if (rb_slots > 65536)
        rb_slots = 65536;
    int r = qcow2_cache_init(&s->l2_cache, (uint32_t)l2_slots, s->cluster_size);
    if (r < 0)
        return r;
    return qcow2_cache_init(&s->rb_cache, (uint32_t)rb_slots, s->cluster_size);
}

static int load_l1(struct block_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    s->l1 = calloc(s->l1_size ? s->l1_size : 1, 8);
    if (!s->l1)
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory for the L1 table");
    if (!s->l1_size)
        return 0;
    int r = block_node_pread(bs->file, s->l1_offset, s->l1, (uint64_t)s->l1_size * 8);
    if (r < 0)
        return r;
    for (uint32_t i = 0; i < s->l1_size; i++)
        s->l1[i] = qcow2_be64(&s->l1[i]);
    return 0;
}

static int qcow2_open(struct block_node *bs, vmm_opts *opts, unsigned flags)
{
    struct qcow2_state *s = bs->opaque;
    memset(s, 0, sizeof(*s));
    int r = vmm_props_init(qcow2_open_props, &s->opts, "qcow2") < 0 ? -EINVAL : 0;
    if (r < 0)
        return r;
    if (opts) {
        s->opts.lazy_refcounts_set = vmm_opts_get(opts, "lazy-refcounts") != NULL;
        if (vmm_props_apply(qcow2_open_props, &s->opts, "qcow2", opts) < 0)
            return -EINVAL;
    }
    if (pthread_mutex_init(&s->lock, NULL))
        return QCOW2_ERR(ENOMEM, "qcow2: cannot create a mutex");
    if (pthread_cond_init(&s->inflight_cond, NULL)) {
        pthread_mutex_destroy(&s->lock);
        return QCOW2_ERR(ENOMEM, "qcow2: cannot create a condition variable");
    }
    s->lock_init = true;
    s->writable = (flags & BLOCK_O_RDWR) != 0;
    bs->open_flags = flags;
    r = read_header(bs, flags);
    if (r >= 0)
        r = setup_caches(bs);
    if (r >= 0)
        r = load_l1(bs);
    if (r >= 0)
        r = qcow2_load_refcount_table(bs);
    if (r >= 0)
        r = qcow2_read_snapshots(bs);
    if (r < 0)
        goto fail;
    s->lazy = (s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0;
    if (s->opts.lazy_refcounts_set) {
        if (s->opts.lazy_refcounts && s->version < 3) {
            r = QCOW2_ERR(EINVAL, "qcow2: lazy refcounts require a qcow2 image with at least "
                          "qemu 1.1 compatibility level");
            goto fail;
        }
        s->lazy = s->opts.lazy_refcounts;
    }
    bs->request_alignment = 1;
    if (s->writable && !(flags & BLOCK_O_CHECK)) {
        if ((s->incompat & QCOW2_INCOMPAT_DIRTY) && !(flags & BLOCK_O_NO_REPAIR)) {
            r = qcow2_repair_on_open(bs);
            if (r < 0)
                goto fail;
        }
        r = qcow2_drop_bitmaps(bs);
        if (r < 0)
            goto fail;
        if (s->autoclear) {
            s->autoclear = 0;   /* we keep none of the features they guard */
            r = qcow2_write_header(bs);
            if (r < 0)
                goto fail;
        }
    }
    if (s->backing_file) {
        bs->backing_filename = strdup(s->backing_file);
        if (s->backing_format)
            bs->backing_format = strdup(s->backing_format);
        if (!(flags & BLOCK_O_NO_BACKING)) {
            r = block_node_open_backing(bs, s->backing_file, s->backing_format, flags);
            if (r < 0) {
                r = r < -1 ? r : -EIO;
                goto fail;
            }
        }
    }
    return 0;
fail:
    free(bs->backing_filename);
    free(bs->backing_format);
    bs->backing_filename = bs->backing_format = NULL;
    free_state(s);
    return r < 0 ? r : -EIO;
}

static int qcow2_flush(struct block_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    pthread_mutex_lock(&s->lock);
    s->need_flush = false;
    int r = block_node_flush(bs->file);
    pthread_mutex_unlock(&s->lock);
    return r;
}

static void qcow2_close(struct block_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    if (s->writable && !(s->incompat & QCOW2_INCOMPAT_CORRUPT))
        qcow2_release_reservation(bs);
    if (s->writable && s->dirty_written && !(s->incompat & QCOW2_INCOMPAT_CORRUPT))
        mark_clean(bs);
    else if (s->writable)
        block_node_flush(bs->file);
    free(bs->backing_filename);
    free(bs->backing_format);
    bs->backing_filename = bs->backing_format = NULL;
    free_state(s);
}

static int qcow2_probe(const uint8_t *buf, size_t len)
{
    if (len >= 8 && qcow2_be32(buf) == QCOW2_MAGIC &&
        (qcow2_be32(buf + 4) == 2 || qcow2_be32(buf + 4) == 3))
        return 100;
    return 0;
}

/* ---- resize ---------------------------------------------------------------------- */

int qcow2_grow_l1(struct block_node *bs, uint32_t min_size)
{
    struct qcow2_state *s = bs->opaque;
    if (min_size <= s->l1_size)
        return 0;
    if ((uint64_t)min_size * 8 > QCOW2_MAX_L1_BYTES)
        return QCOW2_ERR(EFBIG, "qcow2: L1 table would exceed %u bytes", QCOW2_MAX_L1_BYTES);
    uint64_t bytes = qcow2_align_up((uint64_t)min_size * 8, s->cluster_size);
    uint64_t *nl1 = calloc(min_size, 8);
    uint8_t *buf = calloc(1, bytes);
    uint64_t off = 0;
    int r = 0;
    if (!nl1 || !buf) {
        r = QCOW2_ERR(ENOMEM, "qcow2: out of memory");
        goto out;
    }
    memcpy(nl1, s->l1, (size_t)s->l1_size * 8);
    for (uint32_t i = 0; i < min_size; i++)
        qcow2_put64(buf + (size_t)i * 8, nl1[i]);
    r = qcow2_alloc_clusters(bs, bytes >> s->cluster_bits, &off);
    if (r < 0)
        goto out;
    r = block_node_pwrite(bs->file, off, buf, bytes, 0);
    if (r >= 0)
        r = block_node_flush(bs->file);
    if (r < 0) {
        qcow2_free_clusters(bs, off, bytes);
        goto out;
    }
    uint8_t hdr[12];
    qcow2_put32(hdr, min_size);
    qcow2_put64(hdr + 4, off);
    r = block_node_pwrite(bs->file, 36, hdr, 12, 0);
    if (r >= 0)
        r = block_node_flush(bs->file);
    if (r < 0)
        goto out;
    uint64_t old_off = s->l1_offset, old_bytes = (uint64_t)s->l1_size * 8;
    free(s->l1);
    s->l1 = nl1;
    nl1 = NULL;
    s->l1_size = min_size;
    s->l1_offset = off;
    if (old_bytes)
        r = qcow2_free_clusters(bs, old_off, old_bytes);
out:
    free(nl1);
    free(buf);
    return r < 0 ? r : 0;
}

static int write_size(struct block_node *bs, uint64_t size)
{
    uint8_t buf[8];
    qcow2_put64(buf, size);
    int r = block_node_pwrite(bs->file, 24, buf, 8, 0);
    if (r >= 0)
        r = block_node_flush(bs->file);
    if (r >= 0)
        bs->size = size;
    return r;
}

/* Highest cluster with a nonzero refcount, plus one. */
static int used_end(struct block_node *bs, uint64_t *end)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t c = 0;
    for (uint64_t i = s->rt_size; i > 0; i--)
        if (s->rt[i - 1]) {
            c = i << s->rb_bits;
            break;
        }
    /* nothing legitimate lies past the file or what we allocated */
    int64_t flen = block_node_getlength(bs->file);
    if (flen < 0)
        return (int)flen;
    uint64_t bound = qcow2_size_to_clusters(s, (uint64_t)flen);
    if (s->alloc_end > bound)
        bound = s->alloc_end;
    if (c > bound)
        c = bound;
    while (c > 0) {
        uint64_t rc;
        int r = qcow2_get_refcount(bs, c - 1, &rc);
        if (r < 0)
            return r;
        if (rc)
            break;
        c--;
    }
    *end = c << s->cluster_bits;
    return 0;
}

static int shrink(struct block_node *bs, uint64_t size)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    uint64_t from = qcow2_align_up(size, cs), to = qcow2_align_up(bs->size, cs);
    int r = 0;
    if (to > from)
        r = qcow2_discard_clusters(bs, from, to - from, true);
    if (r < 0)
        return r;
    /* drop L2 tables wholly beyond the end */
    uint32_t keep = qcow2_l1_size_for(s, size);
    for (uint32_t i = keep; i < s->l1_size && r >= 0; i++) {
        uint64_t l2 = s->l1[i] & QCOW2_OFFSET_MASK;
        if (!l2)
            continue;
        uint8_t zero[8] = { 0 };
        r = block_node_pwrite(bs->file, s->l1_offset + (uint64_t)i * 8, zero, 8, 0);
        if (r >= 0)
            r = block_node_flush(bs->file);
        if (r >= 0) {
            s->l1[i] = 0;
            r = qcow2_free_clusters(bs, l2, cs);
        }
    }
    if (r >= 0)
        r = write_size(bs, size);
    uint64_t end;
    if (r >= 0 && used_end(bs, &end) >= 0) {
        int64_t flen = block_node_getlength(bs->file);
        if (flen > 0 && end < (uint64_t)flen)
            block_node_truncate(bs->file, end, true, PREALLOC_OFF);
    }
    return r;
}

static int do_truncate(struct block_node *bs, uint64_t size, bool allow_shrink,
                       enum block_prealloc prealloc)
{
    struct qcow2_state *s = bs->opaque;
    if (size & 511)
        return QCOW2_ERR(EINVAL, "qcow2: the new size must be a multiple of 512");
    if (size == bs->size)
        return 0;
    int r0 = qcow2_release_reservation(bs);
    if (r0 < 0)
        return r0;
    if (size < bs->size) {
        if (!allow_shrink)
            return QCOW2_ERR(EPERM, "qcow2: use the --shrink option to perform a shrink operation");
        if (s->nb_snapshots)
            return QCOW2_ERR(ENOTSUP, "qcow2: can't shrink an image with internal snapshots");
        if (prealloc != PREALLOC_OFF)
            return QCOW2_ERR(ENOTSUP, "qcow2: preallocation makes no sense when shrinking");
        return shrink(bs, size);
    }
    if (s->nb_snapshots && s->version < 3)
        return QCOW2_ERR(ENOTSUP, "qcow2: can't resize a v2 image which has snapshots");
    if (size > (1ull << 61))
        return QCOW2_ERR(EFBIG, "qcow2: size %" PRIu64 " is too large", size);
    int r = qcow2_grow_l1(bs, qcow2_l1_size_for(s, size));
    if (r < 0)
        return r;
    uint64_t old = bs->size;
    if (prealloc != PREALLOC_OFF) {
        r = qcow2_preallocate(bs, old, size);
        if (r < 0)
            return r;
        uint64_t end;
        r = used_end(bs, &end);
        int64_t flen = block_node_getlength(bs->file);
        if (r >= 0 && flen >= 0 && end > (uint64_t)flen)
            r = block_node_truncate(bs->file, end, false,
                                    prealloc == PREALLOC_METADATA ? PREALLOC_OFF : prealloc);
        if (r < 0)
            return r;
    }
    return write_size(bs, size);
}

static int qcow2_truncate(struct block_node *bs, uint64_t size, bool allow_shrink,
                          enum block_prealloc prealloc)
{
    struct qcow2_state *s = bs->opaque;
    int refused = qcow2_refuse_writes(s);
    if (refused < 0)
        return refused;
    pthread_mutex_lock(&s->lock);
    qcow2_wait_inflight(s, 0, UINT64_MAX);
    int r = do_truncate(bs, size, allow_shrink, prealloc);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* ---- create ------------------------------------------------------------------------ */

static int check_create_opts(const struct qcow2_create_opts *o, int version)
{
    uint64_t cs = o->cluster_size;
    if (cs < 512 || cs > (2u << 20) || (cs & (cs - 1)))
        return QCOW2_ERR(EINVAL, "qcow2: cluster size must be a power of two between 512 and 2048k");
    if (!o->refcount_bits || o->refcount_bits > 64 || (o->refcount_bits & (o->refcount_bits - 1)))
        return QCOW2_ERR(EINVAL, "qcow2: refcount width must be a power of two and may not "
                         "exceed 64 bits");
    if (version < 3 && o->refcount_bits != 16)
        return QCOW2_ERR(EINVAL, "qcow2: different refcount widths than 16 bits require "
                         "compatibility level 1.1 or above (use compat=1.1 or greater)");
    if (version < 3 && o->lazy_refcounts)
        return QCOW2_ERR(EINVAL, "qcow2: lazy refcounts only supported with compatibility "
                         "level 1.1 and above (use compat=1.1 or greater)");
    if (o->extended_l2)
        return QCOW2_ERR(ENOTSUP, "qcow2: extended L2 entries (extended_l2=on) are not supported");
    if (o->compression_type == 1)
        return QCOW2_ERR(ENOTSUP, "qcow2: zstd compression (compression_type=zstd) is not supported");
    if (o->data_file)
        return QCOW2_ERR(ENOTSUP, "qcow2: external data files (data_file) are not supported");
    if (o->encrypt)
        return QCOW2_ERR(ENOTSUP, "qcow2: encryption is not supported");
    if (o->backing_fmt && !o->backing_file)
        return QCOW2_ERR(EINVAL, "qcow2: backing format cannot be used without backing file");
    if (o->backing_file && strlen(o->backing_file) > QCOW2_MAX_BACKING_NAME)
        return QCOW2_ERR(EINVAL, "qcow2: backing file name too long");
    if (o->size > (1ull << 61))
        return QCOW2_ERR(EFBIG, "qcow2: image size too large");
    if (o->backing_file && o->preallocation != PREALLOC_OFF)
        return QCOW2_ERR(EINVAL, "qcow2: backing file and preallocation can only be used "
                         "at the same time if extended_l2 is on");
    return 0;
}

static int qcow2_create(const char *filename, struct block_node *file, void *create_opts)
{
    const struct qcow2_create_opts *o = create_opts;
    int version = (o->compat == 1 || o->compat == 3) ? 2 : 3;
    (void)filename;
    int r = check_create_opts(o, version);
    if (r < 0)
        return r;
    struct qcow2_state *s = calloc(1, sizeof(*s));
    if (!s)
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
    s->version = (uint32_t)version;
    s->cluster_bits = (uint32_t)__builtin_ctzll(o->cluster_size);
    s->cluster_size = (uint32_t)o->cluster_size;
    s->refcount_order = (uint32_t)__builtin_ctz(o->refcount_bits);
    s->refcount_bits = o->refcount_bits;
    s->rt_offset = s->cluster_size;
    s->rt_clusters = 1;
    s->compat = o->lazy_refcounts ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0;
    s->backing_file = o->backing_file;
    s->backing_format = o->backing_fmt;
    uint8_t *buf = calloc(3, s->cluster_size);
    if (!buf) {
        free(s);
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
    }
    size_t used;
    struct block_node tmp;
    memset(&tmp, 0, sizeof(tmp));
    tmp.size = 0;
    if (build_header(s, 0, true, buf, &used) < 0 && build_header(s, 0, false, buf, &used) < 0) {
        r = QCOW2_ERR(EFBIG, "qcow2: header and backing file name do not fit in one cluster");
        goto out;
    }
    /* refcount table -> one block counting the first three clusters */
    qcow2_put64(buf + s->cluster_size, 2ull * s->cluster_size);
    s->rb_bits = s->cluster_bits + 3 - s->refcount_order;
    for (int i = 0; i < 3; i++)
        qcow2_refcount_write(s, buf + 2 * s->cluster_size, (uint64_t)i, 1);
    r = block_node_truncate(file, 0, true, PREALLOC_OFF);
    if (r >= 0)
        r = block_node_pwrite(file, 0, buf, 3ull * s->cluster_size, 0);
    if (r >= 0)
        r = block_node_flush(file);
    if (r < 0)
        goto out;

    /* now grow it to size with the normal code */
    tmp.drv = &block_driver_qcow2;
    tmp.file = file;
    tmp.filename = (char *)filename;
    tmp.opaque = calloc(1, sizeof(struct qcow2_state));
    if (!tmp.opaque) {
        r = QCOW2_ERR(ENOMEM, "qcow2: out of memory");
        goto out;
    }
    r = qcow2_open(&tmp, NULL, BLOCK_O_RDWR | BLOCK_O_NO_BACKING);
    if (r >= 0) {
        /* like qemu, sizes round up to whole sectors */
        r = qcow2_truncate(&tmp, qcow2_align_up(o->size, 512), false,
                           (enum block_prealloc)o->preallocation);
        qcow2_close(&tmp);
    }
    free(tmp.opaque);
out:
    free(buf);
    free(s);
    return r < 0 ? r : 0;
}

/* ---- info, amend, backing, make_empty ---------------------------------------------------- */

static int qcow2_get_info(struct block_node *bs, struct block_info *info)
{
    struct qcow2_state *s = bs->opaque;
    info->cluster_size = s->cluster_size;
    info->dirty_flag = (s->incompat & QCOW2_INCOMPAT_DIRTY) != 0;
    info->corrupt = (s->incompat & QCOW2_INCOMPAT_CORRUPT) != 0;
    int r = block_info_add_str(info, "compat", s->version >= 3 ? "1.1" : "0.10");
    if (r >= 0)
        r = block_info_add_str(info, "compression-type", s->compression_type ? "zstd" : "zlib");
    if (r >= 0 && s->version >= 3)
        r = block_info_add_bool(info, "lazy-refcounts",
                                (s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0);
    if (r >= 0)
        r = block_info_add_int(info, "refcount-bits", s->refcount_bits);
    if (r >= 0 && s->version >= 3)
        r = block_info_add_bool(info, "corrupt", info->corrupt);
    if (r >= 0 && s->version >= 3)
        r = block_info_add_bool(info, "extended-l2", false);
    return r < 0 ? -ENOMEM : 0;
}

/* Turn zero clusters of the active table into something v2 can express. */
static int expand_zero_clusters(struct block_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        /* zero flags in snapshot tables would need rewriting shared tables */
        struct qcow2_snapshot *sn = &s->snapshots[i];
        uint64_t *l1 = calloc(sn->l1_size ? sn->l1_size : 1, 8);
        if (!l1)
            return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
        int r = sn->l1_size ? block_node_pread(bs->file, sn->l1_offset, l1, (uint64_t)sn->l1_size * 8) : 0;
        for (uint32_t j = 0; r >= 0 && j < sn->l1_size; j++) {
            uint64_t l2 = qcow2_be64(&l1[j]) & QCOW2_OFFSET_MASK;
            uint8_t *t;
            if (!l2 || (r = qcow2_cache_get(bs, &s->l2_cache, l2, &t)) < 0)
                continue;
            for (uint32_t k = 0; k < s->l2_entries; k++) {
                uint64_t e = qcow2_be64(t + (size_t)k * 8);
                if (!(e & QCOW2_OFLAG_COMPRESSED) && (e & QCOW2_OFLAG_ZERO)) {
                    r = QCOW2_ERR(ENOTSUP, "qcow2: cannot downgrade: snapshot '%s' contains "
                                  "zero clusters", sn->name);
                    break;
                }
            }
        }
        free(l1);
        if (r < 0)
            return r;
    }
    uint64_t cs = s->cluster_size;
    uint8_t *zero = calloc(1, cs);
    if (!zero)
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
    int r = 0;
    for (uint64_t off = 0; off < bs->size && r >= 0; off += cs) {
        uint64_t e;
        r = qcow2_get_l2_entry(bs, off, &e);
        if (r < 0)
            break;
        enum qcow2_cluster_type t = qcow2_entry_type(s, e);
        if (t != QCOW2_ZERO_PLAIN && t != QCOW2_ZERO_ALLOC)
            continue;
        uint64_t n = bs->size - off < cs ? bs->size - off : cs;
        if (bs->backing || t == QCOW2_ZERO_ALLOC) {
            /* allocate and fill with zeroes (drops the zero flag) */
            pthread_mutex_unlock(&s->lock);
            struct iovec v = { zero, n };
            r = qcow2_pwritev(bs, off, n, &v, 1, 0);
            pthread_mutex_lock(&s->lock);
        } else {
            r = qcow2_discard_clusters(bs, off, cs, true);
        }
    }
    free(zero);
    return r;
}

static int amend_compat(struct block_node *bs, int version)
{
    struct qcow2_state *s = bs->opaque;
    if ((uint32_t)version == s->version)
        return 0;
    if (version == 2) {
        if (s->refcount_bits != 16)
            return QCOW2_ERR(ENOTSUP, "qcow2: cannot downgrade an image with refcount_bits=%u "
                             "(compat=0.10 needs 16)", s->refcount_bits);
        if (s->compression_type)
            return QCOW2_ERR(ENOTSUP, "qcow2: cannot downgrade an image with a compression type "
                             "other than zlib");
        int r = mark_clean(bs);
        if (r < 0)
            return r;
        s->compat &= ~QCOW2_COMPAT_LAZY_REFCOUNTS;
        s->lazy = false;
        r = expand_zero_clusters(bs);
        if (r < 0)
            return r;
        r = block_node_flush(bs->file);
        if (r < 0)
            return r;
        s->version = 2;
        s->incompat = s->compat = s->autoclear = 0;
        s->header_length = QCOW2_V2_HEADER_SIZE;
        return qcow2_write_header(bs);
    }
    s->version = 3;
    s->header_length = QCOW2_HEADER_SIZE;
    return qcow2_write_header(bs);
}

static int qcow2_amend(struct block_node *bs, vmm_opts *opts)
{
    struct qcow2_state *s = bs->opaque;
    if (!s->writable)
        return QCOW2_ERR(EROFS, "qcow2: image is read-only");
    struct qcow2_create_opts o;
    memset(&o, 0, sizeof(o));
    if (vmm_props_init(qcow2_create_props, &o, "qcow2") < 0)
        return -EINVAL;
    int r = 0;
    const char *compat = vmm_opts_get(opts, "compat");
    const char *lazy = vmm_opts_get(opts, "lazy_refcounts");
    const char *size = vmm_opts_get(opts, "size");
    const char *rb = vmm_opts_get(opts, "refcount_bits");
    const char *csz = vmm_opts_get(opts, "cluster_size");
    const char *bf = vmm_opts_get(opts, "backing_file");
    const char *bfmt = vmm_opts_get(opts, "backing_fmt");
    if ((compat && vmm_props_set(qcow2_create_props, &o, "qcow2", "compat", compat) < 0) ||
        (lazy && vmm_props_set(qcow2_create_props, &o, "qcow2", "lazy_refcounts", lazy) < 0) ||
        (size && vmm_props_set(qcow2_create_props, &o, "qcow2", "size", size) < 0) ||
        (rb && vmm_props_set(qcow2_create_props, &o, "qcow2", "refcount_bits", rb) < 0) ||
        (csz && vmm_props_set(qcow2_create_props, &o, "qcow2", "cluster_size", csz) < 0)) {
        vmm_props_release(qcow2_create_props, &o);
        return -EINVAL;
    }
    for (size_t i = 0; i < vmm_opts_count(opts); i++) {
        const char *k = vmm_opts_key(opts, i);
        if (strcmp(k, "compat") && strcmp(k, "lazy_refcounts") && strcmp(k, "size") &&
            strcmp(k, "refcount_bits") && strcmp(k, "cluster_size") && strcmp(k, "backing_file") &&
            strcmp(k, "backing_fmt")) {
            vmm_props_release(qcow2_create_props, &o);
            return QCOW2_ERR(ENOTSUP, "qcow2: changing the option '%s' is not supported", k);
        }
    }
    pthread_mutex_lock(&s->lock);
    qcow2_wait_inflight(s, 0, UINT64_MAX);
    int version = compat ? ((o.compat == 1 || o.compat == 3) ? 2 : 3) : (int)s->version;
    if (rb && o.refcount_bits != s->refcount_bits)
        r = QCOW2_ERR(ENOTSUP, "qcow2: changing the refcount width is not supported");
    else if (csz && o.cluster_size != s->cluster_size)
        r = QCOW2_ERR(ENOTSUP, "qcow2: changing the cluster size is not supported");
    else if (lazy && o.lazy_refcounts && version < 3)
        r = QCOW2_ERR(EINVAL, "qcow2: lazy refcounts only supported with compatibility level "
                      "1.1 and above (use compat=1.1 or greater)");
    if (r >= 0 && version == 3 && s->version == 2)
        r = amend_compat(bs, 3);
    if (r >= 0 && lazy) {
        if (o.lazy_refcounts) {
            s->compat |= QCOW2_COMPAT_LAZY_REFCOUNTS;
            s->lazy = true;
        } else {
            r = mark_clean(bs);
            s->compat &= ~QCOW2_COMPAT_LAZY_REFCOUNTS;
            s->lazy = false;
        }
        if (r >= 0)
            r = qcow2_write_header(bs);
    }
    if (r >= 0 && version == 2 && s->version == 3)
        r = amend_compat(bs, 2);
    if (r >= 0 && (bf || bfmt)) {
        char *nf = bf ? strdup(bf) : s->backing_file;
        char *nfmt = bfmt ? strdup(bfmt) : s->backing_format;
        if (bf) free(s->backing_file);
        if (bfmt) free(s->backing_format);
        s->backing_file = nf;
        s->backing_format = nfmt;
        r = qcow2_write_header(bs);
    }
    if (r >= 0 && size && o.size != bs->size)
        r = do_truncate(bs, o.size, true, PREALLOC_OFF);
    pthread_mutex_unlock(&s->lock);
    vmm_props_release(qcow2_create_props, &o);
    return r < 0 ? r : 0;
}

static int qcow2_change_backing_file(struct block_node *bs, const char *filename, const char *format)
{
    struct qcow2_state *s = bs->opaque;
    if (!s->writable)
        return QCOW2_ERR(EROFS, "qcow2: image is read-only");
    if (filename && strlen(filename) > QCOW2_MAX_BACKING_NAME)
        return QCOW2_ERR(EINVAL, "qcow2: backing file name too long");
    if (format && !filename)
        return QCOW2_ERR(EINVAL, "qcow2: a backing format needs a backing file");
    pthread_mutex_lock(&s->lock);
    char *old_f = s->backing_file, *old_fmt = s->backing_format;
    s->backing_file = filename && *filename ? strdup(filename) : NULL;
    s->backing_format = format && *format && s->backing_file ? strdup(format) : NULL;
    int r = qcow2_write_header(bs);
    if (r < 0) {
        free(s->backing_file);
        free(s->backing_format);
        s->backing_file = old_f;
        s->backing_format = old_fmt;
    } else {
        free(old_f);
        free(old_fmt);
        free(bs->backing_filename);
        free(bs->backing_format);
        bs->backing_filename = s->backing_file ? strdup(s->backing_file) : NULL;
        bs->backing_format = s->backing_format ? strdup(s->backing_format) : NULL;
    }
    pthread_mutex_unlock(&s->lock);
    return r;
}

static int qcow2_make_empty(struct block_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    if (!s->writable)
        return QCOW2_ERR(EROFS, "qcow2: image is read-only");
    pthread_mutex_lock(&s->lock);
    qcow2_wait_inflight(s, 0, UINT64_MAX);
    uint64_t per_l2 = (uint64_t)s->l2_entries << s->cluster_bits;
    int r = 0;
    for (uint32_t i = 0; i < s->l1_size && r >= 0; i++) {
        uint64_t l2 = s->l1[i] & QCOW2_OFFSET_MASK;
        if (!l2)
            continue;
        uint64_t start = (uint64_t)i * per_l2;
        uint64_t len = per_l2;
        r = qcow2_discard_clusters(bs, start, len, true);
        l2 = s->l1[i] & QCOW2_OFFSET_MASK;
        if (r < 0 || !l2)
            break;
        uint8_t zero[8] = { 0 };
        r = block_node_pwrite(bs->file, s->l1_offset + (uint64_t)i * 8, zero, 8, 0);
        if (r >= 0)
            r = block_node_flush(bs->file);
        if (r >= 0) {
            s->l1[i] = 0;
            r = qcow2_free_clusters(bs, l2, s->cluster_size);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return r < 0 ? r : 0;
}

/* ---- measure (qemu-img measure) ------------------------------------------------- */

/* Refcount table and block bytes needed to count `clusters` clusters,
 * themselves included. */
static uint64_t refcount_metadata_size(uint64_t clusters, uint64_t cs, uint32_t refcount_order)
{
    uint64_t per_table_cluster = cs / 8, per_block = cs * 8 / (1u << refcount_order);
    uint64_t table = 0, blocks = 0, n = 0, last;
    do {
        last = n;
        blocks = (clusters + table + blocks + per_block - 1) / per_block;
        table = (blocks + per_table_cluster - 1) / per_table_cluster;
        n = clusters + blocks + table;
    } while (n != last);
    return (blocks + table) * cs;
}

/* Metadata plus data of a fully allocated image of `size`. */
static uint64_t full_size(uint64_t size, uint64_t cs, uint32_t refcount_order)
{
    uint64_t aligned = qcow2_align_up(size, cs);
    uint64_t meta = cs;                                   /* header */
    uint64_t nl2e = qcow2_align_up(aligned / cs, cs / 8);
    meta += nl2e * 8;                                     /* L2 tables */
    uint64_t nl1e = qcow2_align_up(nl2e * 8 / cs, cs / 8);
    meta += nl1e * 8;                                     /* L1 table */
    meta += refcount_metadata_size((meta + aligned) / cs, cs, refcount_order);
    return meta + aligned;
}

/* Bytes of whole clusters that hold data in `src` (down its chain). */
static int data_bytes(struct block_node *src, uint64_t cs, uint64_t *out)
{
    uint64_t required = 0;
    for (uint64_t off = 0; off < src->size;) {
        struct block_node *n = src;
        struct block_status st;
        uint64_t len = src->size - off;
        unsigned flags = 0;
        for (;;) {
            int r = block_node_block_status(n, off, len, &st);
            if (r < 0)
                return r;
            len = st.bytes;
            flags = st.flags;
            if ((flags & BLOCK_STATUS_ALLOCATED) || !n->backing || off >= n->backing->size)
                break;
            n = n->backing;
            if (len > n->size - off)
                len = n->size - off;
        }
        if (!(flags & BLOCK_STATUS_ZERO) && (flags & BLOCK_STATUS_DATA)) {
            uint64_t end = qcow2_align_up(off + len, cs);
            required += (off % cs) + (end - off);
            len = end - off;
        }
        off += len;
    }
    *out = required;
    return 0;
}

static int qcow2_measure(void *create_opts, struct block_node *src, uint64_t *required,
                         uint64_t *fully_allocated)
{
    const struct qcow2_create_opts *o = create_opts;
    int version = (o->compat == 1 || o->compat == 3) ? 2 : 3;
    int r = check_create_opts(o, version);
    if (r < 0)
        return r;
    uint64_t cs = o->cluster_size;
    uint32_t order = (uint32_t)__builtin_ctz(o->refcount_bits);
    uint64_t size = src ? src->size : qcow2_align_up(o->size, 512);
    uint64_t virtual_size = qcow2_align_up(size, cs), data = 0;
    if (o->preallocation == PREALLOC_FULL || o->preallocation == PREALLOC_FALLOC)
        data = virtual_size;
    else if (src && (r = data_bytes(src, cs, &data)) < 0)
        return r;
    if (o->preallocation == PREALLOC_METADATA && src)
        data = virtual_size;
    *fully_allocated = full_size(virtual_size, cs, order);
    *required = *fully_allocated - virtual_size + data;
    return 0;
}

const struct block_driver block_driver_qcow2 = {
    .name = "qcow2",
    .help = "QEMU copy-on-write image format, versions 2 and 3",
    .is_format = true,
    .state_size = sizeof(struct qcow2_state),
    .open_props = qcow2_open_props,
    .create_props = qcow2_create_props,
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
    .create_opts_size = sizeof(struct qcow2_create_opts),
    .create = qcow2_create,
    .preadv = qcow2_preadv,
    .pwritev = qcow2_pwritev,
    .flush = qcow2_flush,
    .pdiscard = qcow2_pdiscard,
    .pwrite_zeroes = qcow2_pwrite_zeroes,
    .block_status = qcow2_block_status,
    .truncate = qcow2_truncate,
    .get_info = qcow2_get_info,
    .check = qcow2_check,
    .snapshot_create = qcow2_snapshot_create,
    .snapshot_list = qcow2_snapshot_list,
    .snapshot_goto = qcow2_snapshot_goto,
    .snapshot_delete = qcow2_snapshot_delete,
    .amend = qcow2_amend,
    .change_backing_file = qcow2_change_backing_file,
    .make_empty = qcow2_make_empty,
    .measure = qcow2_measure,
};
