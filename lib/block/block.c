/* The block core: opening node graphs from filenames or option strings,
 * format probing, backing chains, creation, and the synchronous helpers
 * that drivers call on their children.  See README.md for the rules. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "block-core.h"

/* ---- node lifetime ------------------------------------------------------ */

static struct block_node *node_new(const struct block_driver *drv, const char *filename)
{
    struct block_node *bs = calloc(1, sizeof(*bs));
    if (!bs)
        goto oom;
    bs->drv = drv;
    bs->refcount = 1;
    bs->request_alignment = 1;
    bs->filename = strdup(filename ? filename : "");
    if (!bs->filename)
        goto oom;
    if (drv->state_size && !(bs->opaque = calloc(1, drv->state_size)))
        goto oom;
    return bs;
oom:
    if (bs)
        free(bs->filename);
    free(bs);
    vmm_set_error(ENOMEM, "out of memory");
    return NULL;
}

static void node_free(struct block_node *bs)
{
    free(bs->opaque);
    free(bs->filename);
    free(bs->node_name);
    free(bs->backing_filename);
    free(bs->backing_format);
    free(bs);
}

void block_node_unref(struct block_node *bs)
{
    if (!bs || --bs->refcount > 0)
        return;
    if (bs->drv->close)
        bs->drv->close(bs);
    struct block_node *file = bs->file, *backing = bs->backing;
    node_free(bs);
    block_node_unref(backing);
    block_node_unref(file);
}

/* ---- option helpers ------------------------------------------------------ */

/* Move every "prefix.key=value" of `opts` into a new set as "key=value". */
static vmm_opts *opts_take_prefix(vmm_opts *opts, const char *prefix)
{
    vmm_opts *sub = vmm_opts_new();
    if (!sub)
        return NULL;
    size_t plen = strlen(prefix);
    for (size_t i = 0; opts && i < vmm_opts_count(opts); i++) {
        const char *key = vmm_opts_key(opts, i);
        if (strncmp(key, prefix, plen) || key[plen] != '.')
            continue;
        if (vmm_opts_add(sub, key + plen + 1, vmm_opts_value(opts, i)) < 0) {
            vmm_opts_free(sub);
            return NULL;
        }
        vmm_opts_get(opts, key);
    }
    return sub;
}

static int opt_bool(vmm_opts *opts, const char *key, bool *out)
{
    const char *v = vmm_opts_get(opts, key);
    if (v && !vmm_parse_bool(v, out))
        return vmm_set_error(EINVAL, "%s: '%s' is not on or off", key, v);
    return 0;
}

/* Top-level keys that mark a string as options rather than a file name. */
bool block_spec_is_options(const char *spec)
{
    static const char *const keys[] = { "driver=", "file.", "filename=", "file=" };
    for (size_t i = 0; i < VMM_ARRAY_SIZE(keys); i++)
        if (!strncmp(spec, keys[i], strlen(keys[i])))
            return true;
    return strstr(spec, ",file.filename=") || strstr(spec, ",driver=");
}

/* Apply the generic per-node options to the open flags. */
static int node_flags_from_opts(vmm_opts *opts, unsigned *flags)
{
    bool ro = !(*flags & BLOCK_O_RDWR), share = *flags & BLOCK_O_FORCE_SHARE;
    bool direct = *flags & BLOCK_O_NOCACHE;
    if (opt_bool(opts, "read-only", &ro) < 0 || opt_bool(opts, "force-share", &share) < 0 ||
        opt_bool(opts, "cache.direct", &direct) < 0)
        return -EINVAL;
    *flags = (*flags & ~(BLOCK_O_RDWR | BLOCK_O_FORCE_SHARE | BLOCK_O_NOCACHE)) |
             (ro ? 0 : BLOCK_O_RDWR) | (share ? BLOCK_O_FORCE_SHARE : 0) |
             (direct ? BLOCK_O_NOCACHE : 0);
    if (share && !ro) {
        vmm_set_error(EINVAL, "force-share=on can only be used with read-only images");
        return -EINVAL;
    }
    return 0;
}

/* ---- probing ------------------------------------------------------------- */

const struct block_driver *block_probe(struct block_node *file)
{
    uint8_t buf[4096];
    int64_t len = block_node_getlength(file);
    if (len < 0)
        return NULL;
    size_t n = len < (int64_t)sizeof(buf) ? (size_t)len : sizeof(buf);
    if (n && block_node_pread(file, 0, buf, n) < 0)
        return NULL;
    const struct block_driver *best = &block_driver_raw;
    int best_score = 0;
    for (size_t i = 0; block_driver_at(i); i++) {
        const struct block_driver *drv = block_driver_at(i);
        if (!drv->is_format || !drv->probe)
            continue;
        int score = drv->probe(buf, n);
        if (score > best_score) {
            best_score = score;
            best = drv;
        }
    }
    return best;
}

/* ---- opening ------------------------------------------------------------- */

/* The backing options of the format node being opened on this thread, so
 * that block_node_open_backing (called from the driver's open) sees them. */
struct open_ctx {
    struct block_node *bs;
    vmm_opts *backing_opts;
    struct open_ctx *outer;
};
static _Thread_local struct open_ctx *open_ctx_top;

/* nbd://, nbd+tcp:// and nbd+unix:// name NBD exports (the nbd driver). */
static bool is_nbd_uri(const char *filename)
{
    return !strncmp(filename, "nbd://", 6) || !strncmp(filename, "nbd+tcp://", 10) ||
           !strncmp(filename, "nbd+unix://", 11);
}

static const struct block_driver *protocol_for(const char *filename)
{
    if (is_nbd_uri(filename))
        return &block_driver_nbd;
    struct stat st;
    if (!stat(filename, &st) && S_ISBLK(st.st_mode))
        return &block_driver_host_device;
    return &block_driver_file;
}

static int open_protocol(struct block_node **out, const struct block_driver *drv,
                         const char *filename, vmm_opts *opts, unsigned flags)
{
    if ((!filename || !*filename) && !drv->filename_optional) {
        vmm_set_error(EINVAL, "%s: a filename is required", drv->name);
        return -EINVAL;
    }
    struct block_node *bs = node_new(drv, filename);
    if (!bs)
        return -ENOMEM;
    bs->open_flags = flags;
    bs->read_only = !(flags & BLOCK_O_RDWR);
    int ret = drv->open(bs, opts, flags);
    if (ret < 0) {
        node_free(bs);
        return ret;
    }
    *out = bs;
    return 0;
}

static int open_node(struct block_node **out, vmm_opts *opts, const char *filename,
                     const char *format, unsigned flags);

static int open_format(struct block_node **out, const struct block_driver *drv,
                       struct block_node *file, vmm_opts *opts, vmm_opts *backing_opts,
                       unsigned flags)
{
    struct block_node *bs = node_new(drv, file->filename);
    if (!bs)
        return -ENOMEM;
    bs->file = file;
    bs->open_flags = flags;
    bs->read_only = !(flags & BLOCK_O_RDWR);
    struct open_ctx ctx = { bs, backing_opts, open_ctx_top };
    open_ctx_top = &ctx;
    int ret = drv->open(bs, opts, flags);
    open_ctx_top = ctx.outer;
    if (ret < 0) {
        block_node_unref(bs->backing);
        node_free(bs);
        return ret;
    }
    *out = bs;
    return 0;
}

static int open_node(struct block_node **out, vmm_opts *opts, const char *filename,
                     const char *format, unsigned flags)
{
    int ret = node_flags_from_opts(opts, &flags);
    if (ret < 0)
        return ret;
    const char *name = format ? format : vmm_opts_get(opts, "driver");
    const char *fn_opt = vmm_opts_get(opts, "filename");
    if (!filename)
        filename = fn_opt;
    const struct block_driver *drv = NULL;
    if (name && !(drv = block_driver_find(name))) {
        vmm_set_error(EINVAL, "Unknown driver '%s'", name);
        return -EINVAL;
    }
    const char *node_name = vmm_opts_get(opts, "node-name");
    struct block_node *bs = NULL, *file = NULL;
    vmm_opts *file_opts = NULL, *backing_opts = NULL;

    if (drv && !drv->is_format) {
        ret = open_protocol(&bs, drv, filename, opts, flags);
        goto done;
    }
    ret = -ENOMEM;
    file_opts = opts_take_prefix(opts, "file");
    backing_opts = opts_take_prefix(opts, "backing");
    if (!file_opts || !backing_opts)
        goto done;
    const char *backing = vmm_opts_get(opts, "backing");
    if (backing && (!strcmp(backing, "null") || !*backing))
        flags |= BLOCK_O_NO_BACKING;
    else if (backing) {
        ret = -EINVAL;
        vmm_set_error(EINVAL, "backing: only 'null' is accepted (use backing.file.filename=...)");
        goto done;
    }
    /* The protocol child: "file.driver" or guessed from the file type. */
    const char *child_name = vmm_opts_get(file_opts, "driver");
    const char *child_fn = vmm_opts_get(file_opts, "filename");
    if (!child_fn)
        child_fn = filename;
    const struct block_driver *child_drv = child_name ? block_driver_find(child_name)
                                                      : child_fn ? protocol_for(child_fn) : NULL;
    if (!child_drv || child_drv->is_format) {
        ret = -EINVAL;
        if (child_name)
            vmm_set_error(EINVAL, "file.driver: '%s' is not a protocol driver", child_name);
        else
            vmm_set_error(EINVAL, "a filename is required (filename= or file.filename=)");
        goto done;
    }
    unsigned child_flags = flags & ~(BLOCK_O_PROBED | BLOCK_O_BACKING_RW);
    ret = node_flags_from_opts(file_opts, &child_flags);
    if (ret < 0)
        goto done;
    ret = open_protocol(&file, child_drv, child_fn, file_opts, child_flags);
    if (ret < 0)
        goto done;
    ret = vmm_opts_check_all_used(file_opts, child_drv->name) < 0 ? -EINVAL : 0;
    if (ret < 0)
        goto done;
    if (!drv) {
        drv = block_probe(file);
        if (!drv) {
            ret = -EIO;
            goto done;
        }
        flags |= BLOCK_O_PROBED;
        if (drv == &block_driver_raw)
            flags |= BLOCK_O_NO_BACKING; /* a probed raw never has a backing */
    }
    ret = open_format(&bs, drv, file, opts, backing_opts, flags);
    if (ret < 0)
        goto done;
    file = NULL;
    if (vmm_opts_count(backing_opts) && !bs->backing && !(flags & BLOCK_O_NO_BACKING)) {
        ret = -EINVAL;
        vmm_set_error(EINVAL, "backing: options given but '%s' has no backing file",
                      bs->filename);
        goto done;
    }
done:
    if (ret >= 0 && vmm_opts_check_all_used(opts, drv ? drv->name : "block") < 0)
        ret = -EINVAL;
    if (ret >= 0 && node_name && !(bs->node_name = strdup(node_name)))
        ret = -ENOMEM;
    if (ret < 0) {
        block_node_unref(bs);
        bs = NULL;
    }
    block_node_unref(file);
    vmm_opts_free(file_opts);
    vmm_opts_free(backing_opts);
    *out = bs;
    return ret;
}

int block_open(struct block_node **out, const char *spec, bool is_options,
               const char *format, unsigned flags)
{
    vmm_opts *opts = is_options ? vmm_opts_parse(spec, NULL) : vmm_opts_new();
    if (!opts)
        return -EINVAL;
    int ret = open_node(out, opts, is_options ? NULL : spec, format, flags);
    vmm_opts_free(opts);
    return ret;
}

char *block_resolve_relative(const char *base, const char *name)
{
    const char *slash = strrchr(base, '/');
    if (name[0] == '/' || !slash || block_spec_is_options(name))
        return strdup(name);
    size_t dir = (size_t)(slash - base) + 1;
    char *out = malloc(dir + strlen(name) + 1);
    if (out) {
        memcpy(out, base, dir);
        strcpy(out + dir, name);
    }
    return out;
}

int block_node_open_backing(struct block_node *bs, const char *filename,
                            const char *format, unsigned flags)
{
    if (flags & BLOCK_O_NO_BACKING)
        return 0;
    vmm_opts *given = NULL;
    for (struct open_ctx *c = open_ctx_top; c; c = c->outer)
        if (c->bs == bs)
            given = c->backing_opts;
    vmm_opts *opts = vmm_opts_new();
    if (!opts)
        return -ENOMEM;
    for (size_t i = 0; given && i < vmm_opts_count(given); i++) {
        vmm_opts_add(opts, vmm_opts_key(given, i), vmm_opts_value(given, i));
        vmm_opts_get(given, vmm_opts_key(given, i));
    }
    char *path = NULL;
    int ret;
    if (!vmm_opts_get(opts, "file.filename") && !vmm_opts_get(opts, "filename")) {
        if (!filename || !*filename) {
            vmm_opts_free(opts);
            return 0;
        }
        path = block_resolve_relative(bs->filename, filename);
        if (!path) {
            vmm_opts_free(opts);
            return -ENOMEM;
        }
    }
    /* Clear the "used" marks: the child open must see every key. */
    vmm_opts *fresh = vmm_opts_new();
    for (size_t i = 0; fresh && i < vmm_opts_count(opts); i++)
        vmm_opts_add(fresh, vmm_opts_key(opts, i), vmm_opts_value(opts, i));
    vmm_opts_free(opts);
    if (!fresh) {
        free(path);
        return -ENOMEM;
    }
    const char *fmt = vmm_opts_get(fresh, "driver") ? NULL : format;
    unsigned bflags = flags & (BLOCK_O_FORCE_SHARE | BLOCK_O_NOCACHE | BLOCK_O_NATIVE_AIO);
    if (flags & BLOCK_O_BACKING_RW)
        bflags |= BLOCK_O_RDWR;
    else
        bflags &= ~BLOCK_O_RDWR;
    struct block_node *backing = NULL;
    ret = open_node(&backing, fresh, path, fmt, bflags);
    vmm_opts_free(fresh);
    if (ret < 0) {
        vmm_error_prefix("Could not open backing file '%s'", path ? path : filename ? filename : "");
        free(path);
        return ret;
    }
    free(path);
    bs->backing = backing;
    return 0;
}

/* ---- synchronous I/O helpers -------------------------------------------- */

static int no_method(struct block_node *bs, const char *what)
{
    vmm_set_error(ENOTSUP, "%s: driver '%s' does not support %s", bs->filename, bs->drv->name, what);
    return -ENOTSUP;
}

static int check_writable(struct block_node *bs)
{
    if (!bs->read_only)
        return 0;
    vmm_set_error(EPERM, "%s: the image is opened read-only", bs->filename);
    return -EPERM;
}

int block_node_preadv(struct block_node *bs, uint64_t offset, uint64_t bytes,
                      const struct iovec *iov, int iovcnt, unsigned flags)
{
    if (!bytes)
        return 0;
    if (!bs->drv->preadv)
        return no_method(bs, "reads");
    return bs->drv->preadv(bs, offset, bytes, iov, iovcnt, flags);
}

int block_node_pwritev(struct block_node *bs, uint64_t offset, uint64_t bytes,
                       const struct iovec *iov, int iovcnt, unsigned flags)
{
    int ret = check_writable(bs);
    if (ret < 0 || !bytes)
        return ret;
    if (!bs->drv->pwritev)
        return no_method(bs, "writes");
    unsigned emulated = flags & BLOCK_REQ_FUA & ~bs->drv->write_flags;
    ret = bs->drv->pwritev(bs, offset, bytes, iov, iovcnt, flags & ~emulated);
    if (ret >= 0 && emulated)
        ret = block_node_flush(bs);
    return ret;
}

int block_node_pread(struct block_node *bs, uint64_t offset, void *buf, uint64_t bytes)
{
    struct iovec iov = { buf, bytes };
    return block_node_preadv(bs, offset, bytes, &iov, 1, 0);
}

int block_node_pwrite(struct block_node *bs, uint64_t offset, const void *buf,
                      uint64_t bytes, unsigned flags)
{
    struct iovec iov = { (void *)buf, bytes };
    return block_node_pwritev(bs, offset, bytes, &iov, 1, flags);
}

int block_node_flush(struct block_node *bs)
{
    if (bs->read_only || (bs->open_flags & BLOCK_O_NO_FLUSH))
        return 0;
    int ret = bs->drv->flush ? bs->drv->flush(bs) : 0;
    if (ret >= 0 && bs->file && !bs->file->read_only && bs->drv->is_format)
        ret = block_node_flush(bs->file);
    return ret;
}

int block_node_pdiscard(struct block_node *bs, uint64_t offset, uint64_t bytes)
{
    int ret = check_writable(bs);
    if (ret < 0 || !bytes || !bs->drv->pdiscard)
        return ret;
    ret = bs->drv->pdiscard(bs, offset, bytes);
    return ret == -ENOTSUP ? 0 : ret; /* discard is advisory */
}

int block_node_cache(struct block_node *bs, uint64_t offset, uint64_t bytes)
{
    if (!bytes || !bs->drv->cache)
        return 0;
    int ret = bs->drv->cache(bs, offset, bytes);
    return ret == -ENOTSUP ? 0 : ret; /* a prefetch is only a hint */
}

/* Write zeroes by writing a zeroed buffer, for drivers without a faster way. */
static int write_zero_buffers(struct block_node *bs, uint64_t offset, uint64_t bytes)
{
    uint64_t chunk = bytes < (1u << 20) ? bytes : (1u << 20);
    void *zero = calloc(1, chunk);
    if (!zero) {
        vmm_set_error(ENOMEM, "out of memory");
        return -ENOMEM;
    }
    int ret = 0;
    while (bytes && ret >= 0) {
        uint64_t n = bytes < chunk ? bytes : chunk;
        ret = block_node_pwrite(bs, offset, zero, n, 0);
        offset += n;
        bytes -= n;
    }
    free(zero);
    return ret;
}

int block_node_pwrite_zeroes(struct block_node *bs, uint64_t offset, uint64_t bytes, unsigned flags)
{
    int ret = check_writable(bs);
    if (ret < 0 || !bytes)
        return ret;
    unsigned native = flags & BLOCK_REQ_FUA & bs->drv->write_flags;
    ret = bs->drv->pwrite_zeroes
              ? bs->drv->pwrite_zeroes(bs, offset, bytes, flags & ~(BLOCK_REQ_FUA & ~native)) : -ENOTSUP;
    bool fua_pending = (flags & BLOCK_REQ_FUA) && !(native && ret >= 0);
    if (ret == -ENOTSUP && !(flags & BLOCK_REQ_NO_FALLBACK)) {
        vmm_clear_error();
        ret = write_zero_buffers(bs, offset, bytes);
    } else if (ret == -ENOTSUP) {
        vmm_set_error(ENOTSUP, "%s: no fast way to write zeroes", bs->filename);
    }
    if (ret >= 0 && fua_pending)
        ret = block_node_flush(bs);
    return ret;
}

int block_node_truncate(struct block_node *bs, uint64_t size, bool allow_shrink,
                        enum block_prealloc prealloc)
{
    int ret = check_writable(bs);
    if (ret < 0)
        return ret;
    if (!bs->drv->truncate)
        return no_method(bs, "resizing");
    return bs->drv->truncate(bs, size, allow_shrink, prealloc);
}

int64_t block_node_getlength(struct block_node *bs)
{
    return (int64_t)bs->size;
}

int block_node_block_status(struct block_node *bs, uint64_t offset, uint64_t bytes,
                            struct block_status *out)
{
    memset(out, 0, sizeof(*out));
    if (offset >= bs->size) {
        vmm_set_error(EINVAL, "%s: block status at %" PRIu64 " is past the end", bs->filename, offset);
        return -EINVAL;
    }
    if (bytes > bs->size - offset)
        bytes = bs->size - offset;
    if (!bs->drv->block_status) {
        out->bytes = bytes;
        out->flags = BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED;
        return 0;
    }
    int ret = bs->drv->block_status(bs, offset, bytes, out);
    if (ret >= 0 && (!out->bytes || out->bytes > bytes)) {
        if (!out->bytes) {
            vmm_set_error(EIO, "%s: driver returned an empty block status", bs->filename);
            return -EIO;
        }
        out->bytes = bytes;
    }
    return ret;
}

int64_t block_node_allocated(struct block_node *bs)
{
    if (bs->drv->allocated_size)
        return bs->drv->allocated_size(bs);
    return bs->file ? block_node_allocated(bs->file) : -ENOTSUP;
}

/* ---- info helpers ------------------------------------------------------- */

static int info_add(struct block_info *info, const char *key, enum block_info_kind kind,
                    const char *str, int64_t num)
{
    struct block_info_item *grown = realloc(info->items, (info->count + 1) * sizeof(*grown));
    if (!grown)
        return vmm_set_error(ENOMEM, "out of memory");
    info->items = grown;
    struct block_info_item *it = &grown[info->count];
    *it = (struct block_info_item){ key, kind, NULL, num };
    if (str && !(it->str = strdup(str)))
        return vmm_set_error(ENOMEM, "out of memory");
    info->count++;
    return 0;
}

int block_info_add_str(struct block_info *info, const char *key, const char *value)
{
    return info_add(info, key, INFO_STR, value ? value : "", 0);
}

int block_info_add_int(struct block_info *info, const char *key, int64_t value)
{
    return info_add(info, key, INFO_INT, NULL, value);
}

int block_info_add_bool(struct block_info *info, const char *key, bool value)
{
    return info_add(info, key, INFO_BOOL, NULL, value);
}

void block_info_clear(struct block_info *info)
{
    for (size_t i = 0; i < info->count; i++)
        free(info->items[i].str);
    free(info->items);
    memset(info, 0, sizeof(*info));
}

/* ---- creation ------------------------------------------------------------ */

void block_create_opts_free(const struct block_driver *drv, void *create_opts)
{
    if (!create_opts)
        return;
    vmm_props_release(drv->create_props, create_opts);
    free(create_opts);
}

void *block_create_opts_new(const struct block_driver *drv, uint64_t size,
                            const char *options, bool set_size)
{
    if (!drv->create_props || !drv->create_opts_size) {
        vmm_set_error(ENOTSUP, "Format driver '%s' does not support image creation", drv->name);
        return NULL;
    }
    void *co = calloc(1, drv->create_opts_size);
    vmm_opts *opts = options && *options ? vmm_opts_parse(options, NULL) : vmm_opts_new();
    char num[32];
    snprintf(num, sizeof(num), "%" PRIu64, size);
    if (!co || !opts || vmm_props_init(drv->create_props, co, drv->name) < 0)
        goto fail;
    if (vmm_opts_get(opts, "size") && set_size) {
        vmm_set_error(EINVAL, "size: give the size as an argument, not as an option");
        goto fail;
    }
    if (set_size && vmm_props_set(drv->create_props, co, drv->name, "size", num) < 0)
        goto fail;
    if (vmm_props_apply(drv->create_props, co, drv->name, opts) < 0)
        goto fail;
    for (size_t i = 0; i < vmm_opts_count(opts); i++) {
        if (!vmm_opts_used(opts, i)) {
            vmm_set_error(EINVAL, "Invalid parameter '%s'", vmm_opts_key(opts, i));
            goto fail;
        }
    }
    vmm_opts_free(opts);
    return co;
fail:
    vmm_opts_free(opts);
    block_create_opts_free(drv, co);
    return NULL;
}

/* The backing file's size, for a create without a size. */
static int backing_size(const char *filename, const struct block_driver *drv, void *co,
                        uint64_t *size)
{
    char *bfile = vmm_props_format(drv->create_props, co, "backing_file");
    char *bfmt = vmm_props_find(drv->create_props, "backing_fmt")
                     ? vmm_props_format(drv->create_props, co, "backing_fmt") : NULL;
    int ret = -EINVAL;
    if (!bfile || !*bfile) {
        vmm_set_error(EINVAL, "Image creation needs a size parameter");
        goto out;
    }
    char *path = block_resolve_relative(filename, bfile);
    struct block_node *b = NULL;
    ret = path ? block_open(&b, path, false, bfmt && *bfmt ? bfmt : NULL, BLOCK_O_FORCE_SHARE)
               : -ENOMEM;
    if (ret < 0)
        vmm_error_prefix("Could not open backing image");
    else
        *size = b->size;
    block_node_unref(b);
    free(path);
out:
    free(bfile);
    free(bfmt);
    return ret;
}

static int create_protocol_file(const char *filename, const struct block_driver *proto)
{
    if (proto == &block_driver_host_device)
        return 0;
    /* No O_TRUNC: the file is emptied only once its locks are held, so an
     * image in use elsewhere is never truncated. */
    int fd = open(filename, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        vmm_set_error_errno("Could not create '%s'", filename);
        return -e;
    }
    close(fd);
    return 0;
}

/* Protocols whose images already exist (nbd): "creating" a raw image
 * checks the size and zeroes the first 4 KiB so that no stale header is
 * probed later, as qemu-img does. */
static int create_on_existing(const char *filename, const struct block_driver *proto,
                              const struct block_driver *drv, uint64_t size)
{
    if (drv != &block_driver_raw) {
        vmm_set_error(ENOTSUP, "%s: only raw images can be created on %s", filename, proto->name);
        return -ENOTSUP;
    }
    struct block_node *bs = NULL;
    int ret = open_protocol(&bs, proto, filename, NULL, BLOCK_O_RDWR);
    if (ret < 0)
        return ret;
    if (bs->size < size) {
        vmm_set_error(EINVAL, "%s: the image size %" PRIu64 " exceeds the export size %" PRIu64
                      " (it cannot be changed)", filename, size, bs->size);
        ret = -EINVAL;
    } else if (size) {
        ret = block_node_pwrite_zeroes(bs, 0, size < 4096 ? size : 4096, 0);
    }
    if (ret >= 0)
        ret = block_node_flush(bs);
    block_node_unref(bs);
    return ret;
}

int block_create(const char *filename, const char *format, uint64_t size, const char *options)
{
    const struct block_driver *drv = block_driver_find(format ? format : "raw");
    if (!drv) {
        vmm_set_error(EINVAL, "Unknown file format '%s'", format);
        return -EINVAL;
    }
    const struct block_driver *proto = protocol_for(filename);
    if (!drv->is_format) {
        proto = drv;
        drv = &block_driver_raw;
    }
    void *co = block_create_opts_new(drv, size == UINT64_MAX ? 0 : size, options, true);
    if (!co)
        return -EINVAL;
    int ret = 0;
    if (size == UINT64_MAX) {
        ret = backing_size(filename, drv, co, &size);
        char num[32];
        snprintf(num, sizeof(num), "%" PRIu64, size);
        if (ret >= 0 && vmm_props_set(drv->create_props, co, drv->name, "size", num) < 0)
            ret = -EINVAL;
    }
    struct block_node *file = NULL;
    if (ret >= 0 && proto->filename_optional) {
        ret = create_on_existing(filename, proto, drv, size);
        block_create_opts_free(drv, co);
        return ret;
    }
    if (ret >= 0)
        ret = create_protocol_file(filename, proto);
    if (ret >= 0)
        ret = open_protocol(&file, proto, filename, NULL, BLOCK_O_RDWR);
    if (ret >= 0 && proto != &block_driver_host_device)
        ret = block_node_truncate(file, 0, true, PREALLOC_OFF);
    if (ret >= 0 && drv->create)
        ret = drv->create(filename, file, co);
    else if (ret >= 0)
        ret = no_method(file, "image creation");
    if (ret >= 0)
        ret = block_node_flush(file);
    block_node_unref(file);
    block_create_opts_free(drv, co);
    return ret;
}
