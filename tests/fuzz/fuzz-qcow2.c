/* libFuzzer harness for the qcow2 driver's open and read paths (and, on a
 * private copy, a small write, discard, snapshot and repair).
 *
 * The input is the whole image file.  It sits in an in-memory protocol
 * node: this file implements the block_node_* helpers the driver calls, so
 * only lib/block/qcow2*.c and lib/util are linked in and instrumented.  The
 * memory "file" may grow to a fixed cap; anything past it fails with
 * ENOSPC.  Beyond sanitizer reports, the harness traps when a failing call
 * leaves no error message. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "block/block-int.h"
#include "util/util.h"

#define FILE_CAP (8u << 20)
#define READ_LIMIT (1u << 20)

struct memfile {
    uint8_t *data;
    uint64_t len;
};

static struct memfile *mf(struct block_node *bs)
{
    return bs->opaque;
}

/* ---- the block core functions the driver uses ----------------------------- */

int block_node_pread(struct block_node *bs, uint64_t offset, void *buf, uint64_t bytes)
{
    struct memfile *f = mf(bs);
    memset(buf, 0, bytes);
    if (offset < f->len)
        memcpy(buf, f->data + offset, bytes < f->len - offset ? bytes : f->len - offset);
    return 0;
}

static int grow(struct memfile *f, uint64_t end)
{
    if (end <= f->len)
        return 0;
    if (end > FILE_CAP) {
        vmm_set_error(ENOSPC, "fuzz: file would exceed the cap");
        return -ENOSPC;
    }
    uint8_t *d = realloc(f->data, end);
    if (!d) {
        vmm_set_error(ENOMEM, "fuzz: out of memory");
        return -ENOMEM;
    }
    memset(d + f->len, 0, end - f->len);
    f->data = d;
    f->len = end;
    return 0;
}

int block_node_pwrite(struct block_node *bs, uint64_t offset, const void *buf, uint64_t bytes,
                      unsigned flags)
{
    (void)flags;
    struct memfile *f = mf(bs);
    if (offset > FILE_CAP || bytes > FILE_CAP - offset) {
        vmm_set_error(ENOSPC, "fuzz: write past the cap");
        return -ENOSPC;
    }
    int r = grow(f, offset + bytes);
    if (r < 0)
        return r;
    memcpy(f->data + offset, buf, bytes);
    return 0;
}

int block_node_preadv(struct block_node *bs, uint64_t offset, uint64_t bytes,
                      const struct iovec *iov, int iovcnt, unsigned flags)
{
    (void)flags;
    for (int i = 0; i < iovcnt && bytes; i++) {
        uint64_t n = iov[i].iov_len < bytes ? iov[i].iov_len : bytes;
        block_node_pread(bs, offset, iov[i].iov_base, n);
        offset += n;
        bytes -= n;
    }
    return 0;
}

int block_node_pwritev(struct block_node *bs, uint64_t offset, uint64_t bytes,
                       const struct iovec *iov, int iovcnt, unsigned flags)
{
    for (int i = 0; i < iovcnt && bytes; i++) {
        uint64_t n = iov[i].iov_len < bytes ? iov[i].iov_len : bytes;
        int r = block_node_pwrite(bs, offset, iov[i].iov_base, n, flags);
        if (r < 0)
            return r;
        offset += n;
        bytes -= n;
    }
    return 0;
}

int block_node_flush(struct block_node *bs)
{
    (void)bs;
    return 0;
}

int block_node_pdiscard(struct block_node *bs, uint64_t offset, uint64_t bytes)
{
    (void)bs; (void)offset; (void)bytes;
    return 0;
}

int block_node_pwrite_zeroes(struct block_node *bs, uint64_t offset, uint64_t bytes, unsigned flags)
{
    (void)flags;
    struct memfile *f = mf(bs);
    if (offset > FILE_CAP || bytes > FILE_CAP - offset)
        return vmm_set_error(ENOSPC, "fuzz: past the cap"), -ENOSPC;
    int r = grow(f, offset + bytes);
    if (r >= 0)
        memset(f->data + offset, 0, bytes);
    return r;
}

int block_node_truncate(struct block_node *bs, uint64_t size, bool allow_shrink,
                        enum block_prealloc prealloc)
{
    (void)prealloc;
    struct memfile *f = mf(bs);
    if (size < f->len) {
        if (!allow_shrink)
            return vmm_set_error(EPERM, "fuzz: shrink refused"), -EPERM;
        f->len = size;
        return 0;
    }
    return grow(f, size);
}

int64_t block_node_getlength(struct block_node *bs)
{
    return (int64_t)mf(bs)->len;
}

int block_node_block_status(struct block_node *bs, uint64_t offset, uint64_t bytes,
                            struct block_status *out)
{
    (void)bs; (void)offset;
    memset(out, 0, sizeof(*out));
    out->bytes = bytes;
    out->flags = BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED;
    return 0;
}

int block_node_open_backing(struct block_node *bs, const char *filename, const char *format,
                            unsigned flags)
{
    (void)bs; (void)filename; (void)format; (void)flags;
    return 0;   /* never follow a backing file named by fuzz input */
}

const struct block_driver *block_driver_find(const char *name)
{
    return strcmp(name, "qcow2") ? NULL : &block_driver_qcow2;
}

int block_info_add_str(struct block_info *info, const char *key, const char *value)
{
    (void)info; (void)key; (void)value;
    return 0;
}

int block_info_add_int(struct block_info *info, const char *key, int64_t value)
{
    (void)info; (void)key; (void)value;
    return 0;
}

int block_info_add_bool(struct block_info *info, const char *key, bool value)
{
    (void)info; (void)key; (void)value;
    return 0;
}

void block_info_clear(struct block_info *info)
{
    (void)info;
}

/* ---- the harness -------------------------------------------------------------- */

static void expect_message(int r)
{
    if (r < 0 && !vmm_get_error()[0])
        __builtin_trap();     /* every failure must say why */
}

static void exercise_reads(struct block_node *bs)
{
    static uint8_t buf[65536];
    uint64_t limit = bs->size < READ_LIMIT ? bs->size : READ_LIMIT;
    for (uint64_t off = 0; off < limit; off += sizeof(buf)) {
        uint64_t n = limit - off < sizeof(buf) ? limit - off : sizeof(buf);
        struct iovec v = { buf, n };
        int r = block_driver_qcow2.preadv(bs, off, n, &v, 1, 0);
        expect_message(r);
        if (r < 0)
            break;
    }
    if (bs->size > 4096) {
        /* the far end of the disk too */
        struct iovec v = { buf, 4096 };
        expect_message(block_driver_qcow2.preadv(bs, bs->size - 4096, 4096, &v, 1, 0));
    }
    uint64_t off = 0;
    for (int i = 0; i < 64 && off < bs->size; i++) {
        struct block_status st;
        int r = block_driver_qcow2.block_status(bs, off, bs->size - off, &st);
        expect_message(r);
        if (r < 0 || !st.bytes)
            break;
        off += st.bytes;
    }
    struct block_snapshot *list = NULL;
    int count = 0;
    if (block_driver_qcow2.snapshot_list(bs, &list, &count) >= 0) {
        for (int i = 0; i < count; i++) {
            free(list[i].id);
            free(list[i].name);
        }
        free(list);
    }
    struct block_check_result res;
    memset(&res, 0, sizeof(res));
    block_driver_qcow2.check(bs, &res, 0);
    free(res.messages);
}

static void exercise_writes(struct block_node *bs)
{
    static uint8_t buf[8192];
    memset(buf, 0x5a, sizeof(buf));
    if (bs->size >= sizeof(buf)) {
        struct iovec v = { buf, 3000 };
        expect_message(block_driver_qcow2.pwritev(bs, 1000, 3000, &v, 1, 0));
        expect_message(block_driver_qcow2.pdiscard(bs, 0, bs->size < (1u << 20) ? bs->size : (1u << 20)));
        expect_message(block_driver_qcow2.pwrite_zeroes(bs, 0, 4096, BLOCK_REQ_MAY_UNMAP));
    }
    struct block_snapshot sn;
    memset(&sn, 0, sizeof(sn));
    sn.name = (char *)"fuzz";
    sn.icount = UINT64_MAX;
    if (block_driver_qcow2.snapshot_create(bs, &sn) >= 0)
        expect_message(block_driver_qcow2.snapshot_delete(bs, "fuzz"));
    struct block_check_result res;
    memset(&res, 0, sizeof(res));
    block_driver_qcow2.check(bs, &res, BLOCK_FIX_LEAKS | BLOCK_FIX_ERRORS);
    free(res.messages);
}

static void run_one(const uint8_t *data, size_t size, unsigned flags)
{
    struct memfile f = { malloc(size ? size : 1), size };
    if (!f.data)
        return;
    memcpy(f.data, data, size);
    struct block_node file, bs;
    memset(&file, 0, sizeof(file));
    memset(&bs, 0, sizeof(bs));
    file.opaque = &f;
    file.filename = (char *)"fuzz.qcow2";
    bs.drv = &block_driver_qcow2;
    bs.file = &file;
    bs.filename = (char *)"fuzz.qcow2";
    bs.opaque = calloc(1, block_driver_qcow2.state_size);
    if (bs.opaque) {
        vmm_clear_error();
        int r = block_driver_qcow2.open(&bs, NULL, flags | BLOCK_O_NO_BACKING);
        expect_message(r);
        if (r >= 0) {
            exercise_reads(&bs);
            if (flags & BLOCK_O_RDWR)
                exercise_writes(&bs);
            block_driver_qcow2.close(&bs);
        }
        free(bs.backing_filename);
        free(bs.backing_format);
        free(bs.opaque);
    }
    free(f.data);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > FILE_CAP)
        return 0;
    run_one(data, size, 0);
    run_one(data, size, BLOCK_O_RDWR);
    return 0;
}
