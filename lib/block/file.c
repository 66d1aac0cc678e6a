/* Protocol drivers "file" (regular files) and "host_device" (block devices).
 *
 * I/O is plain preadv/pwritev from whatever thread calls (the block layer's
 * workers give the thread pool), or with aio=native io_submit on a libaio
 * context whose completions a reaper thread hands back.  cache.direct=on
 * opens with O_DIRECT and bounces unaligned requests through aligned
 * buffers.  Image locking follows qemu's byte-range scheme with OFD locks
 * so that qemu and libvmm see each other's locks. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libaio.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include "block-int.h"

enum { AIO_THREADS, AIO_NATIVE };
enum { LOCKING_AUTO, LOCKING_ON, LOCKING_OFF };

struct file_opts {
    int aio;
    bool direct;
    int locking;
};

static const char *const aio_choices[] = { "threads", "native", NULL };
static const char *const locking_choices[] = { "auto", "on", "off", NULL };

static const struct vmm_prop file_open_props[] = {
    { "aio", VMM_PROP_ENUM, offsetof(struct file_opts, aio), "threads",
      "I/O submission: a thread pool or Linux native AIO (libaio)", aio_choices, 0, 0 },
    { "cache.direct", VMM_PROP_BOOL, offsetof(struct file_opts, direct), "off",
      "bypass the host page cache (O_DIRECT)", NULL, 0, 0 },
    { "locking", VMM_PROP_ENUM, offsetof(struct file_opts, locking), "auto",
      "take qemu-compatible image locks", locking_choices, 0, 0 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

struct aio_waiter {
    sem_t done;
    long res;
};

struct file_state {
    int fd;
    bool is_blk, direct;
    io_context_t aio_ctx;
    bool aio;
    pthread_t reaper;
    volatile bool stopping;
    pthread_mutex_t rmw_lock;     /* serialises unaligned O_DIRECT writes */
};

/* ---- locking: qemu's scheme (bytes 100+perm held, 200+perm not shared) --- */

enum { PERM_READ = 0, PERM_WRITE = 1, PERM_RESIZE = 3 };
#define LOCK_PERM_BASE 100
#define LOCK_SHARED_BASE 200

static const char *perm_name(int bit)
{
    return bit == PERM_READ ? "consistent read" : bit == PERM_WRITE ? "write" : "resize";
}

static int lock_byte(int fd, int byte, short type, int cmd, struct flock *out)
{
    struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1 };
    int r = fcntl(fd, cmd, &fl);
    if (out)
        *out = fl;
    return r;
}

static int take_locks(struct block_node *bs, int fd, unsigned flags)
{
    static const int bits[] = { PERM_READ, PERM_WRITE, PERM_RESIZE };
    bool rw = flags & BLOCK_O_RDWR, share_all = flags & BLOCK_O_FORCE_SHARE;
    unsigned perms = 1u << PERM_READ | (rw ? (1u << PERM_WRITE | 1u << PERM_RESIZE) : 0);
    unsigned unshared = share_all ? 0 : rw ? (1u << PERM_WRITE | 1u << PERM_RESIZE) : 1u << PERM_WRITE;
    for (size_t i = 0; i < VMM_ARRAY_SIZE(bits); i++) {
        int bit = bits[i];
        if (((perms >> bit) & 1) && lock_byte(fd, LOCK_PERM_BASE + bit, F_RDLCK, F_OFD_SETLK, NULL) < 0)
            goto fail;
        if (((unshared >> bit) & 1) && lock_byte(fd, LOCK_SHARED_BASE + bit, F_RDLCK, F_OFD_SETLK, NULL) < 0)
            goto fail;
    }
    for (size_t i = 0; i < VMM_ARRAY_SIZE(bits); i++) {
        int bit = bits[i];
        struct flock fl;
        bool shared = false;
        if (((perms >> bit) & 1) && !lock_byte(fd, LOCK_SHARED_BASE + bit, F_WRLCK, F_OFD_GETLK, &fl) &&
            fl.l_type != F_UNLCK)
            goto conflict;
        shared = true;
        if (((unshared >> bit) & 1) && !lock_byte(fd, LOCK_PERM_BASE + bit, F_WRLCK, F_OFD_GETLK, &fl) &&
            fl.l_type != F_UNLCK)
            goto conflict;
        continue;
conflict:
        vmm_set_error(EAGAIN, "%s: Failed to get %s\"%s\" lock: is another process using the image?",
                      bs->filename, shared ? "shared " : "", perm_name(bit));
        return -EAGAIN;
    }
    return 0;
fail:
    if (errno == EAGAIN || errno == EACCES) {
        vmm_set_error(EAGAIN, "%s: Failed to lock the image: is another process using it?", bs->filename);
        return -EAGAIN;
    }
    return 0; /* file systems without locks: go on unlocked, like locking=auto */
}

/* ---- native AIO ---------------------------------------------------------- */

static void *aio_reaper(void *opaque)
{
    struct file_state *s = opaque;
    struct io_event events[64];
    while (!s->stopping) {
        struct timespec ts = { 0, 50 * 1000 * 1000 };
        int n = io_getevents(s->aio_ctx, 1, 64, events, &ts);
        for (int i = 0; i < n; i++) {
            struct aio_waiter *w = events[i].data;
            w->res = (long)events[i].res;
            sem_post(&w->done);
        }
    }
    return NULL;
}

static int aio_start(struct block_node *bs, struct file_state *s)
{
    if (io_setup(256, &s->aio_ctx) < 0) {
        vmm_set_error(errno, "%s: aio=native: io_setup failed", bs->filename);
        return -EIO;
    }
    if (pthread_create(&s->reaper, NULL, aio_reaper, s)) {
        io_destroy(s->aio_ctx);
        vmm_set_error(EAGAIN, "%s: aio=native: cannot start the completion thread", bs->filename);
        return -EAGAIN;
    }
    s->aio = true;
    return 0;
}

/* One request through libaio; returns bytes done or -errno. */
static long aio_rw(struct file_state *s, bool write, uint64_t offset,
                   const struct iovec *iov, int iovcnt)
{
    struct iocb cb, *cbs[1] = { &cb };
    struct aio_waiter w;
    if (write)
        io_prep_pwritev(&cb, s->fd, iov, iovcnt, (long long)offset);
    else
        io_prep_preadv(&cb, s->fd, iov, iovcnt, (long long)offset);
    cb.data = &w;
    sem_init(&w.done, 0, 0);
    int r;
    while ((r = io_submit(s->aio_ctx, 1, cbs)) == -EAGAIN)
        sched_yield();
    if (r < 0) {
        sem_destroy(&w.done);
        return r;
    }
    while (sem_wait(&w.done) < 0 && errno == EINTR)
        ;
    sem_destroy(&w.done);
    return w.res;
}

/* ---- plain I/O ----------------------------------------------------------- */

static size_t iov_total(const struct iovec *iov, int iovcnt)
{
    size_t n = 0;
    for (int i = 0; i < iovcnt; i++)
        n += iov[i].iov_len;
    return n;
}

static void iov_zero_from(const struct iovec *iov, int iovcnt, size_t from)
{
    for (int i = 0; i < iovcnt; i++) {
        if (from < iov[i].iov_len) {
            memset((char *)iov[i].iov_base + from, 0, iov[i].iov_len - from);
            from = 0;
        } else {
            from -= iov[i].iov_len;
        }
    }
}

/* preadv/pwritev until done; short reads at end of file give zeroes. */
static int rw_full(struct block_node *bs, struct file_state *s, bool write, uint64_t offset,
                   const struct iovec *iov_in, int iovcnt)
{
    struct iovec local[64], *iov = local;
    if (iovcnt > 64 && !(iov = malloc(sizeof(*iov) * (size_t)iovcnt))) {
        vmm_set_error(ENOMEM, "out of memory");
        return -ENOMEM;
    }
    memcpy(iov, iov_in, sizeof(*iov) * (size_t)iovcnt);
    size_t total = iov_total(iov, iovcnt), done = 0;
    int first = 0, ret = 0;
    while (done < total) {
        long n;
        if (s->aio)
            n = aio_rw(s, write, offset + done, iov + first, iovcnt - first);
        else {
            n = write ? pwritev(s->fd, iov + first, iovcnt - first, (off_t)(offset + done))
                      : preadv(s->fd, iov + first, iovcnt - first, (off_t)(offset + done));
            if (n < 0)
                n = -errno;
        }
        if (n == -EINTR)
            continue;
        if (n < 0) {
            errno = (int)-n;
            vmm_set_error_errno("%s: %s at offset %" PRIu64, bs->filename,
                                write ? "write" : "read", offset + done);
            ret = (int)n;
            break;
        }
        if (n == 0) {
            if (write) {
                vmm_set_error(EIO, "%s: short write at offset %" PRIu64, bs->filename, offset + done);
                ret = -EIO;
            } else {
                iov_zero_from(iov_in, iovcnt, done);
            }
            break;
        }
        done += (size_t)n;
        while (n > 0 && first < iovcnt) {
            if ((size_t)n >= iov[first].iov_len) {
                n -= (long)iov[first].iov_len;
                first++;
            } else {
                iov[first].iov_base = (char *)iov[first].iov_base + n;
                iov[first].iov_len -= (size_t)n;
                n = 0;
            }
        }
    }
    if (iov != local)
        free(iov);
    return ret;
}

static bool is_aligned(struct block_node *bs, uint64_t offset, uint64_t bytes,
                       const struct iovec *iov, int iovcnt)
{
    uint64_t a = bs->request_alignment;
    if (offset % a || bytes % a)
        return false;
    for (int i = 0; i < iovcnt; i++)
        if ((uintptr_t)iov[i].iov_base % a || iov[i].iov_len % a)
            return false;
    return true;
}

static void copy_iov(const struct iovec *iov, int iovcnt, char *buf, bool to_buf)
{
    for (int i = 0; i < iovcnt; i++) {
        if (to_buf)
            memcpy(buf, iov[i].iov_base, iov[i].iov_len);
        else
            memcpy(iov[i].iov_base, buf, iov[i].iov_len);
        buf += iov[i].iov_len;
    }
}

/* O_DIRECT with an unaligned request: go through an aligned buffer
 * (read-modify-write for writes, under a lock so two never overlap). */
static int bounce_rw(struct block_node *bs, struct file_state *s, bool write, uint64_t offset,
                     uint64_t bytes, const struct iovec *iov, int iovcnt)
{
    uint64_t a = bs->request_alignment;
    uint64_t start = offset / a * a, end = (offset + bytes + a - 1) / a * a;
    void *buf;
    if (posix_memalign(&buf, a < 4096 ? 4096 : a, end - start)) {
        vmm_set_error(ENOMEM, "out of memory");
        return -ENOMEM;
    }
    struct iovec biov = { buf, end - start };
    uint64_t old_size = bs->size;
    int ret;
    if (write) {
        pthread_mutex_lock(&s->rmw_lock);
        ret = rw_full(bs, s, false, start, &biov, 1);
        if (ret >= 0) {
            copy_iov(iov, iovcnt, (char *)buf + (offset - start), true);
            ret = rw_full(bs, s, true, start, &biov, 1);
        }
        /* An RMW past the end of file must not grow it beyond the write. */
        uint64_t want = offset + bytes > old_size ? offset + bytes : old_size;
        if (ret >= 0 && !s->is_blk && end > want && ftruncate(s->fd, (off_t)want) < 0)
            ret = -errno;
        pthread_mutex_unlock(&s->rmw_lock);
    } else {
        ret = rw_full(bs, s, false, start, &biov, 1);
        if (ret >= 0)
            copy_iov(iov, iovcnt, (char *)buf + (offset - start), false);
    }
    free(buf);
    return ret;
}

static void update_size(struct block_node *bs, uint64_t end)
{
    /* Writes past the end grow a regular file; keep bs->size in step. */
    uint64_t cur = __atomic_load_n(&bs->size, __ATOMIC_RELAXED);
    while (end > cur && !__atomic_compare_exchange_n(&bs->size, &cur, end, false,
                                                     __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
}

static int file_preadv(struct block_node *bs, uint64_t offset, uint64_t bytes,
                       const struct iovec *iov, int iovcnt, unsigned flags)
{
    (void)flags;
    struct file_state *s = bs->opaque;
    if (s->direct && !is_aligned(bs, offset, bytes, iov, iovcnt))
        return bounce_rw(bs, s, false, offset, bytes, iov, iovcnt);
    return rw_full(bs, s, false, offset, iov, iovcnt);
}

static int file_pwritev(struct block_node *bs, uint64_t offset, uint64_t bytes,
                        const struct iovec *iov, int iovcnt, unsigned flags)
{
    struct file_state *s = bs->opaque;
    int ret;
    if (s->direct && !is_aligned(bs, offset, bytes, iov, iovcnt))
        ret = bounce_rw(bs, s, true, offset, bytes, iov, iovcnt);
    else
        ret = rw_full(bs, s, true, offset, iov, iovcnt);
    if (ret >= 0 && !s->is_blk)
        update_size(bs, offset + bytes);
    if (ret >= 0 && (flags & BLOCK_REQ_FUA) && fdatasync(s->fd) < 0)
        ret = -errno;
    return ret;
}

static int file_flush(struct block_node *bs)
{
    struct file_state *s = bs->opaque;
    if (fdatasync(s->fd) < 0) {
        int e = errno;
        vmm_set_error_errno("%s: flush", bs->filename);
        return -e;
    }
    return 0;
}

static int file_pdiscard(struct block_node *bs, uint64_t offset, uint64_t bytes)
{
    struct file_state *s = bs->opaque;
    int r;
    if (s->is_blk) {
        uint64_t range[2] = { offset, bytes };
        r = ioctl(s->fd, BLKDISCARD, range);
    } else {
        r = fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)bytes);
    }
    if (r < 0 && (errno == EOPNOTSUPP || errno == ENOTTY || errno == EINVAL))
        return -ENOTSUP;
    if (r < 0) {
        int e = errno;
        vmm_set_error_errno("%s: discard", bs->filename);
        return -e;
    }
    return 0;
}

static int file_pwrite_zeroes(struct block_node *bs, uint64_t offset, uint64_t bytes, unsigned flags)
{
    struct file_state *s = bs->opaque;
    if (s->is_blk) {
        uint64_t range[2] = { offset, bytes };
        if (ioctl(s->fd, BLKZEROOUT, range) == 0)
            return 0;
        return -ENOTSUP;
    }
    uint64_t end = offset + bytes, size = bs->size;
    uint64_t in_file = offset < size ? (end < size ? end : size) - offset : 0;
    int r = 0;
    if (in_file) {
        r = -1;
        if (flags & BLOCK_REQ_MAY_UNMAP)
            r = fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)in_file);
        if (r < 0)
            r = fallocate(s->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)in_file);
        if (r < 0)
            return -ENOTSUP;
    }
    if (end > size) {
        if (ftruncate(s->fd, (off_t)end) < 0) {
            int e = errno;
            vmm_set_error_errno("%s: extending for write-zeroes", bs->filename);
            return -e;
        }
        update_size(bs, end);
    }
    return 0;
}

static int file_block_status(struct block_node *bs, uint64_t offset, uint64_t bytes,
                             struct block_status *out)
{
    struct file_state *s = bs->opaque;
    out->map_offset = offset;
    out->file = bs;
    out->bytes = bytes;
    out->flags = BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_OFFSET_VALID;
    if (s->is_blk)
        return 0;
    off_t data = lseek(s->fd, (off_t)offset, SEEK_DATA);
    if (data < 0 && errno == ENXIO) {
        out->flags = BLOCK_STATUS_ZERO | BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_OFFSET_VALID;
        return 0;
    }
    if (data < 0)
        return 0; /* no SEEK_DATA: everything is data */
    if ((uint64_t)data > offset) {
        out->flags = BLOCK_STATUS_ZERO | BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_OFFSET_VALID;
        if ((uint64_t)data - offset < bytes)
            out->bytes = (uint64_t)data - offset;
        return 0;
    }
    off_t hole = lseek(s->fd, (off_t)offset, SEEK_HOLE);
    if (hole > (off_t)offset && (uint64_t)hole - offset < bytes)
        out->bytes = (uint64_t)hole - offset;
    return 0;
}

static int preallocate(struct block_node *bs, struct file_state *s, uint64_t from, uint64_t to,
                       enum block_prealloc prealloc)
{
    if (prealloc == PREALLOC_FALLOC) {
        int r = posix_fallocate(s->fd, (off_t)from, (off_t)(to - from));
        if (r) {
            errno = r;
            vmm_set_error_errno("%s: preallocation", bs->filename);
            return -r;
        }
        return 0;
    }
    if (prealloc != PREALLOC_FULL)
        return 0;
    size_t chunk = 1u << 20;
    void *zero = calloc(1, chunk);
    if (!zero)
        return -ENOMEM;
    int ret = 0;
    for (uint64_t off = from; off < to && ret >= 0; off += chunk) {
        uint64_t n = to - off < chunk ? to - off : chunk;
        struct iovec iov = { zero, n };
        ret = rw_full(bs, s, true, off, &iov, 1);
    }
    free(zero);
    return ret;
}

static int file_truncate(struct block_node *bs, uint64_t size, bool allow_shrink,
                         enum block_prealloc prealloc)
{
    struct file_state *s = bs->opaque;
    uint64_t old = bs->size;
    if (s->is_blk) {
        if (size > old) {
            vmm_set_error(EINVAL, "%s: cannot grow a block device", bs->filename);
            return -EINVAL;
        }
        return 0;
    }
    if (size < old && !allow_shrink) {
        vmm_set_error(EINVAL, "%s: shrinking needs explicit consent (--shrink)", bs->filename);
        return -EINVAL;
    }
    if (prealloc == PREALLOC_METADATA) {
        vmm_set_error(ENOTSUP, "%s: preallocation=metadata is not supported for files", bs->filename);
        return -ENOTSUP;
    }
    if (ftruncate(s->fd, (off_t)size) < 0) {
        int e = errno;
        vmm_set_error_errno("%s: resize", bs->filename);
        return -e;
    }
    bs->size = size;
    if (size > old)
        return preallocate(bs, s, old, size, prealloc);
    return 0;
}

static int64_t file_allocated_size(struct block_node *bs)
{
    struct file_state *s = bs->opaque;
    struct stat st;
    if (fstat(s->fd, &st) < 0)
        return -errno;
    return (int64_t)st.st_blocks * 512;
}

/* The smallest O_DIRECT unit: try 512 bytes, then 4 KiB. */
static uint32_t probe_alignment(int fd, bool is_blk)
{
    if (is_blk) {
        int ss = 0;
        if (!ioctl(fd, BLKSSZGET, &ss) && ss > 0)
            return (uint32_t)ss;
    }
    void *buf;
    if (posix_memalign(&buf, 4096, 4096))
        return 4096;
    uint32_t align = 4096;
    for (uint32_t a = 512; a < 4096; a *= 2) {
        if (pread(fd, buf, a, 0) >= 0) {
            align = a;
            break;
        }
    }
    free(buf);
    return align;
}

static int file_open_common(struct block_node *bs, vmm_opts *opts, unsigned flags, bool is_blk)
{
    struct file_state *s = bs->opaque;
    struct file_opts fo = { 0 };
    vmm_props_init(file_open_props, &fo, bs->drv->name);
    if (opts && vmm_props_apply(file_open_props, &fo, bs->drv->name, opts) < 0)
        return -EINVAL;
    if (flags & BLOCK_O_NOCACHE)
        fo.direct = true;
    if (flags & BLOCK_O_NATIVE_AIO)
        fo.aio = AIO_NATIVE;
    int oflags = (flags & BLOCK_O_RDWR ? O_RDWR : O_RDONLY) | O_CLOEXEC | (fo.direct ? O_DIRECT : 0);
    int fd = open(bs->filename, oflags);
    if (fd < 0) {
        int e = errno;
        vmm_set_error_errno("Could not open '%s'", bs->filename);
        return -e;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || (is_blk ? !S_ISBLK(st.st_mode) : S_ISDIR(st.st_mode))) {
        close(fd);
        vmm_set_error(EINVAL, "'%s' is %s", bs->filename,
                      is_blk ? "not a block device" : "a directory");
        return -EINVAL;
    }
    s->fd = fd;
    s->is_blk = is_blk;
    s->direct = fo.direct;
    pthread_mutex_init(&s->rmw_lock, NULL);
    int ret = fo.locking == LOCKING_OFF ? 0 : take_locks(bs, fd, flags);
    if (ret >= 0 && is_blk) {
        uint64_t size = 0;
        if (ioctl(fd, BLKGETSIZE64, &size) < 0) {
            ret = -errno;
            vmm_set_error_errno("%s: BLKGETSIZE64", bs->filename);
        }
        bs->size = size;
    } else {
        bs->size = (uint64_t)st.st_size;
    }
    bs->request_alignment = fo.direct ? probe_alignment(fd, is_blk) : 1;
    if (ret >= 0 && fo.aio == AIO_NATIVE)
        ret = aio_start(bs, s);
    if (ret < 0) {
        pthread_mutex_destroy(&s->rmw_lock);
        close(fd);
    }
    return ret;
}

static int file_open(struct block_node *bs, vmm_opts *opts, unsigned flags)
{
    return file_open_common(bs, opts, flags, false);
}

static int host_device_open(struct block_node *bs, vmm_opts *opts, unsigned flags)
{
    return file_open_common(bs, opts, flags, true);
}

static void file_close(struct block_node *bs)
{
    struct file_state *s = bs->opaque;
    if (s->aio) {
        s->stopping = true;
        pthread_join(s->reaper, NULL);
        io_destroy(s->aio_ctx);
    }
    pthread_mutex_destroy(&s->rmw_lock);
    close(s->fd);
}

#define FILE_OPS                                   \
    .is_format = false,                            \
    .state_size = sizeof(struct file_state),       \
    .open_props = file_open_props,                 \
    .close = file_close,                           \
    .preadv = file_preadv,                         \
    .pwritev = file_pwritev,                       \
    .flush = file_flush,                           \
    .pdiscard = file_pdiscard,                     \
    .pwrite_zeroes = file_pwrite_zeroes,           \
    .block_status = file_block_status,             \
    .truncate = file_truncate,                     \
    .allocated_size = file_allocated_size

const struct block_driver block_driver_file = {
    .name = "file",
    .help = "a regular file (thread pool or libaio, optional O_DIRECT)",
    .open = file_open,
    FILE_OPS,
};

const struct block_driver block_driver_host_device = {
    .name = "host_device",
    .help = "a host block device (BLKDISCARD, BLKZEROOUT)",
    .open = host_device_open,
    FILE_OPS,
};
