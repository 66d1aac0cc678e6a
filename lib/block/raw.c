/* Format driver "raw": the guest sees the protocol child's bytes, optionally
 * a window of them (offset=, size=).  A raw image whose format was probed
 * refuses writes that would make its first bytes look like another format
 * (the second half of the format-probing attack). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include "block-core.h"

struct raw_state {
    uint64_t offset, size;
    bool probed;
};

struct raw_open_opts {
    uint64_t offset, size;
};

static const struct vmm_prop raw_open_props[] = {
    { "offset", VMM_PROP_SIZE, offsetof(struct raw_open_opts, offset), "0",
      "where the image starts in the file", NULL, 0, 0 },
    { "size", VMM_PROP_SIZE, offsetof(struct raw_open_opts, size), NULL,
      "the image's size (default: to the end of the file)", NULL, 0, 0 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

struct raw_create_opts {
    uint64_t size;
    int preallocation;
};

static const char *const prealloc_choices[] = { "off", "metadata", "falloc", "full", NULL };

static const struct vmm_prop raw_create_props[] = {
    { "size", VMM_PROP_SIZE, offsetof(struct raw_create_opts, size), "0",
      "virtual disk size", NULL, 0, 0 },
    { "preallocation", VMM_PROP_ENUM, offsetof(struct raw_create_opts, preallocation), "off",
      "preallocation mode (off, falloc, full)", prealloc_choices, 0, 0 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

static int raw_probe(const uint8_t *buf, size_t len)
{
    (void)buf;
    (void)len;
    return 1; /* anything is raw, everything else wins */
}

static int raw_open(struct block_node *bs, vmm_opts *opts, unsigned flags)
{
    struct raw_state *s = bs->opaque;
    struct raw_open_opts o = { 0 };
    bool has_size = vmm_opts_get(opts, "size") != NULL;
    if (vmm_props_init(raw_open_props, &o, "raw") < 0 ||
        vmm_props_apply(raw_open_props, &o, "raw", opts) < 0)
        return -EINVAL;
    uint64_t file_size = bs->file->size;
    if (o.offset > file_size) {
        vmm_set_error(EINVAL, "raw: offset %" PRIu64 " is past the end of the file (%" PRIu64 ")",
                      o.offset, file_size);
        return -EINVAL;
    }
    if (has_size && o.size > file_size - o.offset && !(flags & BLOCK_O_RDWR)) {
        vmm_set_error(EINVAL, "raw: offset + size is past the end of the file");
        return -EINVAL;
    }
    s->offset = o.offset;
    s->size = has_size ? o.size : file_size - o.offset;
    s->probed = flags & BLOCK_O_PROBED;
    bs->size = s->size;
    bs->request_alignment = bs->file->request_alignment;
    return 0;
}

static void raw_close(struct block_node *bs)
{
    (void)bs;
}

static int raw_preadv(struct block_node *bs, uint64_t offset, uint64_t bytes,
                      const struct iovec *iov, int iovcnt, unsigned flags)
{
    struct raw_state *s = bs->opaque;
    return block_node_preadv(bs->file, s->offset + offset, bytes, iov, iovcnt, flags);
}

/* A write to the first sector of a probed raw image must not turn it into
 * something that probes as another format. */
static int check_probed_write(struct block_node *bs, uint64_t offset, const struct iovec *iov,
                              int iovcnt)
{
    struct raw_state *s = bs->opaque;
    if (!s->probed || offset != 0 || iovcnt < 1 || iov[0].iov_len < 512)
        return 0;
    for (size_t i = 0; block_driver_at(i); i++) {
        const struct block_driver *drv = block_driver_at(i);
        if (drv->is_format && drv != &block_driver_raw && drv->probe &&
            drv->probe(iov[0].iov_base, iov[0].iov_len) > 1) {
            vmm_set_error(EPERM, "%s: refusing to write a %s header into a raw image whose "
                          "format was probed (give the format explicitly)", bs->filename, drv->name);
            return -EPERM;
        }
    }
    return 0;
}

static int raw_pwritev(struct block_node *bs, uint64_t offset, uint64_t bytes,
                       const struct iovec *iov, int iovcnt, unsigned flags)
{
    struct raw_state *s = bs->opaque;
    int ret = check_probed_write(bs, offset, iov, iovcnt);
    if (ret < 0)
        return ret;
    return block_node_pwritev(bs->file, s->offset + offset, bytes, iov, iovcnt, flags);
}

static int raw_flush(struct block_node *bs)
{
    (void)bs;
    return 0; /* the core flushes the protocol child */
}

static int raw_pdiscard(struct block_node *bs, uint64_t offset, uint64_t bytes)
{
    struct raw_state *s = bs->opaque;
    return block_node_pdiscard(bs->file, s->offset + offset, bytes);
}

static int raw_cache(struct block_node *bs, uint64_t offset, uint64_t bytes)
{
    struct raw_state *s = bs->opaque;
    return block_node_cache(bs->file, s->offset + offset, bytes);
}

static int raw_pwrite_zeroes(struct block_node *bs, uint64_t offset, uint64_t bytes, unsigned flags)
{
    struct raw_state *s = bs->opaque;
    return block_node_pwrite_zeroes(bs->file, s->offset + offset, bytes, flags);
}

static int raw_block_status(struct block_node *bs, uint64_t offset, uint64_t bytes,
                            struct block_status *out)
{
    struct raw_state *s = bs->opaque;
    uint64_t fsize = bs->file->size;
    uint64_t at = s->offset + offset;
    if (at >= fsize) { /* a window past the end of a growing file reads zeroes */
        *out = (struct block_status){ bytes, BLOCK_STATUS_ZERO | BLOCK_STATUS_ALLOCATED, 0, NULL };
        return 0;
    }
    int ret = block_node_block_status(bs->file, at, bytes, out);
    if (ret >= 0)
        out->flags |= BLOCK_STATUS_ALLOCATED;
    return ret;
}

static int raw_truncate(struct block_node *bs, uint64_t size, bool allow_shrink,
                        enum block_prealloc prealloc)
{
    struct raw_state *s = bs->opaque;
    if (s->offset || s->size != bs->file->size) {
        vmm_set_error(ENOTSUP, "%s: cannot resize a raw image with offset or size options",
                      bs->filename);
        return -ENOTSUP;
    }
    int ret = block_node_truncate(bs->file, size, allow_shrink, prealloc);
    if (ret >= 0)
        bs->size = s->size = size;
    return ret;
}

static int64_t raw_allocated_size(struct block_node *bs)
{
    return block_node_allocated(bs->file);
}

static int raw_create(const char *filename, struct block_node *file, void *create_opts)
{
    (void)filename;
    struct raw_create_opts *o = create_opts;
    if (o->preallocation == PREALLOC_METADATA) {
        vmm_set_error(EINVAL, "Unsupported preallocation mode 'metadata' for raw");
        return -EINVAL;
    }
    int ret = block_node_truncate(file, o->size, true, (enum block_prealloc)o->preallocation);
    if (ret < 0 || o->preallocation == PREALLOC_FULL || !o->size)
        return ret;
    /* Allocate the first block, as qemu does, so that O_DIRECT alignment
     * probing and `map` see the same layout as qemu's images. */
    uint64_t n = o->size < 4096 ? o->size : 4096;
    void *zero = calloc(1, n);
    if (!zero)
        return -ENOMEM;
    ret = block_node_pwrite(file, 0, zero, n, 0);
    free(zero);
    return ret;
}

static int raw_measure(void *create_opts, struct block_node *src, uint64_t *required,
                       uint64_t *fully_allocated)
{
    struct raw_create_opts *o = create_opts;
    uint64_t size = src ? src->size : o->size;
    *required = *fully_allocated = size;
    return 0;
}

const struct block_driver block_driver_raw = {
    .name = "raw",
    .help = "raw disk image (the guest sees the file's bytes)",
    .is_format = true,
    .state_size = sizeof(struct raw_state),
    .open_props = raw_open_props,
    .create_props = raw_create_props,
    .create_opts_size = sizeof(struct raw_create_opts),
    .probe = raw_probe,
    .open = raw_open,
    .close = raw_close,
    .create = raw_create,
    .preadv = raw_preadv,
    .pwritev = raw_pwritev,
    /* FUA goes down to the protocol node with the write (an NBD server sees
     * it); the core emulates it with a flush where the child cannot. */
    .write_flags = BLOCK_REQ_FUA,
    .cache = raw_cache,
    .flush = raw_flush,
    .pdiscard = raw_pdiscard,
    .pwrite_zeroes = raw_pwrite_zeroes,
    .block_status = raw_block_status,
    .truncate = raw_truncate,
    .allocated_size = raw_allocated_size,
    .measure = raw_measure,
};
