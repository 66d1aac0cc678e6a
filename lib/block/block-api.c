/* The public block API (libvmm/block.h): handles over node graphs, the
 * worker pool behind asynchronous requests, and image management built on
 * the driver contract. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include "block-core.h"
#include "libvmm/block.h"

struct req {
    struct vmm_block_request r;
    struct iovec *iov;
    int ret, err;
    char *msg;
    struct req *next;
};

struct vmm_block {
    struct block_node *root;
    pthread_mutex_t lock;
    pthread_cond_t work_cond, idle_cond;
    struct req *queue_head, *queue_tail;
    struct req *done_head, *done_tail;
    pthread_t *threads;
    unsigned nthreads, max_threads, idle_threads, inflight;
    bool stopping, spinning;
    int efd;                     /* eventfd mode when >= 0 */
    char *check_messages;
    vmm_block *backing;          /* borrowed handle for vmm_block_backing */
};

/* ---- error context ------------------------------------------------------- */

static int fail(const char *fn, vmm_block *blk)
{
    const char *name = blk ? blk->root->filename : NULL;
    if (name && !strstr(vmm_get_error(), name))
        return vmm_error_prefix("%s: %s", fn, name);
    return vmm_error_prefix("%s", fn);
}

static int bad_arg(const char *fn, const char *what)
{
    vmm_set_error(EINVAL, "%s: %s", fn, what);
    return -1;
}

static int check_range(const char *fn, vmm_block *blk, uint64_t offset, uint64_t len)
{
    if (!blk)
        return bad_arg(fn, "no image handle");
    uint64_t size = blk->root->size;
    if (offset > size || len > size - offset) {
        vmm_set_error(EINVAL, "%s: %s: range %" PRIu64 "+%" PRIu64 " is past the end of the image "
                      "(%" PRIu64 " bytes)", fn, blk->root->filename, offset, len, size);
        return -1;
    }
    return 0;
}

/* ---- open / close ------------------------------------------------------ */

static unsigned node_flags(unsigned f)
{
    return (f & VMM_BLOCK_RDWR ? BLOCK_O_RDWR : 0) | (f & VMM_BLOCK_NO_BACKING ? BLOCK_O_NO_BACKING : 0) |
           (f & VMM_BLOCK_FORCE_SHARE ? BLOCK_O_FORCE_SHARE : 0) |
           (f & VMM_BLOCK_NOCACHE ? BLOCK_O_NOCACHE : 0) |
           (f & VMM_BLOCK_NATIVE_AIO ? BLOCK_O_NATIVE_AIO : 0) | (f & VMM_BLOCK_CHECK ? BLOCK_O_CHECK : 0) |
           (f & VMM_BLOCK_BACKING_RW ? BLOCK_O_BACKING_RW : 0) |
           (f & VMM_BLOCK_NO_FLUSH ? BLOCK_O_NO_FLUSH : 0);
}

static vmm_block *handle_new(struct block_node *root)
{
    vmm_block *blk = calloc(1, sizeof(*blk));
    if (!blk) {
        vmm_set_error(ENOMEM, "out of memory");
        return NULL;
    }
    blk->root = root;
    blk->efd = -1;
    /* Enough threads to keep the disk busy, few enough not to thrash the
     * CPUs when the data comes from the page cache. */
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    blk->max_threads = cpus > 0 ? (unsigned)(cpus * 4 > 64 ? 64 : cpus * 4) : 8;
    if (blk->max_threads < 4)
        blk->max_threads = 4;
    pthread_mutex_init(&blk->lock, NULL);
    pthread_cond_init(&blk->work_cond, NULL);
    pthread_cond_init(&blk->idle_cond, NULL);
    return blk;
}

LIBVMM_EXPORT vmm_block *vmm_block_open(const char *spec, const char *format, unsigned flags)
{
    vmm_clear_error();
    if (!spec || !*spec) {
        bad_arg("vmm_block_open", "no filename given");
        return NULL;
    }
    if (flags & ~0x1ffu) {
        bad_arg("vmm_block_open", "unknown flags");
        return NULL;
    }
    if ((flags & VMM_BLOCK_FORCE_SHARE) && (flags & VMM_BLOCK_RDWR)) {
        vmm_set_error(EINVAL, "vmm_block_open: %s: force-share can only be used with read-only images",
                      spec);
        return NULL;
    }
    bool is_options = (flags & VMM_BLOCK_IMAGE_OPTS) || block_spec_is_options(spec);
    struct block_node *root = NULL;
    if (block_open(&root, spec, is_options, format, node_flags(flags)) < 0) {
        if (!strstr(vmm_get_error(), spec))
            vmm_error_prefix("vmm_block_open: %s", spec);
        else
            vmm_error_prefix("vmm_block_open");
        return NULL;
    }
    vmm_block *blk = handle_new(root);
    if (!blk)
        block_node_unref(root);
    return blk;
}

static void stop_workers(vmm_block *blk)
{
    pthread_mutex_lock(&blk->lock);
    blk->stopping = true;
    pthread_cond_broadcast(&blk->work_cond);
    pthread_mutex_unlock(&blk->lock);
    for (unsigned i = 0; i < blk->nthreads; i++)
        pthread_join(blk->threads[i], NULL);
    free(blk->threads);
}

static void handle_free(vmm_block *blk)
{
    if (blk->backing)
        handle_free(blk->backing);
    stop_workers(blk);
    if (blk->efd >= 0)
        close(blk->efd);
    pthread_mutex_destroy(&blk->lock);
    pthread_cond_destroy(&blk->work_cond);
    pthread_cond_destroy(&blk->idle_cond);
    free(blk->check_messages);
    block_node_unref(blk->root);
    free(blk);
}

LIBVMM_EXPORT int vmm_block_close(vmm_block *blk)
{
    if (!blk)
        return 0;
    vmm_block_drain(blk);
    int ret = block_node_flush(blk->root);
    if (ret < 0)
        fail("vmm_block_close", blk);
    handle_free(blk);
    return ret < 0 ? -1 : 0;
}

LIBVMM_EXPORT int64_t vmm_block_size(vmm_block *blk)
{
    if (!blk)
        return bad_arg("vmm_block_size", "no image handle");
    return (int64_t)blk->root->size;
}

LIBVMM_EXPORT const char *vmm_block_format(vmm_block *blk)
{
    if (!blk) {
        bad_arg("vmm_block_format", "no image handle");
        return NULL;
    }
    return blk->root->drv->name;
}

LIBVMM_EXPORT vmm_block *vmm_block_backing(vmm_block *blk)
{
    vmm_clear_error();
    if (!blk) {
        bad_arg("vmm_block_backing", "no image handle");
        return NULL;
    }
    if (!blk->root->backing)
        return NULL;
    if (!blk->backing) {
        blk->backing = handle_new(blk->root->backing);
        if (blk->backing)
            blk->root->backing->refcount++;
    }
    return blk->backing;
}

/* ---- synchronous I/O ----------------------------------------------------- */

static unsigned req_flags(unsigned f)
{
    return (f & VMM_BLOCK_REQ_FUA ? BLOCK_REQ_FUA : 0) | (f & VMM_BLOCK_REQ_MAY_UNMAP ? BLOCK_REQ_MAY_UNMAP : 0) |
           (f & VMM_BLOCK_REQ_NO_FALLBACK ? BLOCK_REQ_NO_FALLBACK : 0) |
           (f & VMM_BLOCK_REQ_COMPRESSED ? BLOCK_REQ_COMPRESSED : 0);
}

static int run_op(vmm_block *blk, enum vmm_block_op op, uint64_t offset, uint64_t len,
                  const struct iovec *iov, int iovcnt, unsigned flags)
{
    struct block_node *bs = blk->root;
    switch (op) {
    case VMM_BLOCK_OP_READ:
        return block_node_preadv(bs, offset, len, iov, iovcnt, 0);
    case VMM_BLOCK_OP_WRITE:
        return block_node_pwritev(bs, offset, len, iov, iovcnt, req_flags(flags));
    case VMM_BLOCK_OP_FLUSH:
        return block_node_flush(bs);
    case VMM_BLOCK_OP_DISCARD:
        return block_node_pdiscard(bs, offset, len);
    case VMM_BLOCK_OP_WRITE_ZEROES:
        return block_node_pwrite_zeroes(bs, offset, len, req_flags(flags));
    }
    vmm_set_error(EINVAL, "unknown request type %d", (int)op);
    return -EINVAL;
}

LIBVMM_EXPORT int vmm_block_read(vmm_block *blk, uint64_t offset, void *buf, size_t len)
{
    if (check_range("vmm_block_read", blk, offset, len) < 0)
        return -1;
    struct iovec iov = { buf, len };
    return run_op(blk, VMM_BLOCK_OP_READ, offset, len, &iov, 1, 0) < 0 ? fail("vmm_block_read", blk) : 0;
}

LIBVMM_EXPORT int vmm_block_write(vmm_block *blk, uint64_t offset, const void *buf, size_t len,
                                  unsigned flags)
{
    if (check_range("vmm_block_write", blk, offset, len) < 0)
        return -1;
    struct iovec iov = { (void *)buf, len };
    return run_op(blk, VMM_BLOCK_OP_WRITE, offset, len, &iov, 1, flags) < 0
               ? fail("vmm_block_write", blk) : 0;
}

LIBVMM_EXPORT int vmm_block_flush(vmm_block *blk)
{
    if (!blk)
        return bad_arg("vmm_block_flush", "no image handle");
    return block_node_flush(blk->root) < 0 ? fail("vmm_block_flush", blk) : 0;
}

LIBVMM_EXPORT int vmm_block_discard(vmm_block *blk, uint64_t offset, uint64_t len)
{
    if (check_range("vmm_block_discard", blk, offset, len) < 0)
        return -1;
    return block_node_pdiscard(blk->root, offset, len) < 0 ? fail("vmm_block_discard", blk) : 0;
}

LIBVMM_EXPORT int vmm_block_cache(vmm_block *blk, uint64_t offset, uint64_t len)
{
    if (check_range("vmm_block_cache", blk, offset, len) < 0)
        return -1;
    return block_node_cache(blk->root, offset, len) < 0 ? fail("vmm_block_cache", blk) : 0;
}

LIBVMM_EXPORT int vmm_block_write_zeroes(vmm_block *blk, uint64_t offset, uint64_t len, unsigned flags)
{
    if (check_range("vmm_block_write_zeroes", blk, offset, len) < 0)
        return -1;
    return block_node_pwrite_zeroes(blk->root, offset, len, req_flags(flags)) < 0
               ? fail("vmm_block_write_zeroes", blk) : 0;
}

/* Status through the backing chain: the first layer that allocates wins. */
static int chain_status(struct block_node *bs, uint64_t offset, uint64_t len,
                        struct vmm_block_extent *out)
{
    int depth = 0;
    for (;;) {
        struct block_status st;
        int ret = block_node_block_status(bs, offset, len, &st);
        if (ret < 0)
            return ret;
        len = st.bytes;
        if ((st.flags & BLOCK_STATUS_ALLOCATED) || !bs->backing || offset >= bs->backing->size) {
            out->start = offset;
            out->length = len;
            out->depth = depth;
            out->flags = st.flags & (BLOCK_STATUS_DATA | BLOCK_STATUS_ZERO | BLOCK_STATUS_ALLOCATED |
                                     BLOCK_STATUS_OFFSET_VALID);
            if (!(st.flags & BLOCK_STATUS_ALLOCATED)) {
                if (bs->backing || !(st.flags & BLOCK_STATUS_DATA))
                    out->flags |= BLOCK_STATUS_ZERO; /* past the backing's end, or nothing */
                out->flags &= ~(unsigned)BLOCK_STATUS_DATA;
            }
            out->offset = st.map_offset;
            out->filename = st.file ? st.file->filename : NULL;
            if (!(out->flags & BLOCK_STATUS_OFFSET_VALID) || !st.file)
                out->flags &= ~(unsigned)BLOCK_STATUS_OFFSET_VALID;
            return 0;
        }
        if (len > bs->backing->size - offset)
            len = bs->backing->size - offset;
        bs = bs->backing;
        depth++;
    }
}

LIBVMM_EXPORT int vmm_block_block_status(vmm_block *blk, uint64_t offset, uint64_t len,
                                         struct vmm_block_extent *out)
{
    if (check_range("vmm_block_block_status", blk, offset, len) < 0)
        return -1;
    if (!out || out->size < sizeof(*out) || !len || offset >= blk->root->size)
        return bad_arg("vmm_block_block_status", "bad arguments (empty range or out->size not set)");
    size_t sz = out->size;
    memset(out, 0, sizeof(*out));
    out->size = sz;
    return chain_status(blk->root, offset, len, out) < 0 ? fail("vmm_block_block_status", blk) : 0;
}

/* ---- asynchronous requests -------------------------------------------- */

static void complete(vmm_block *blk, struct req *rq)
{
    if (blk->efd >= 0) {
        pthread_mutex_lock(&blk->lock);
        rq->next = NULL;
        bool was_empty = !blk->done_head;
        if (blk->done_tail)
            blk->done_tail->next = rq;
        else
            blk->done_head = rq;
        blk->done_tail = rq;
        pthread_mutex_unlock(&blk->lock);
        /* One wake-up per batch: the dispatcher reads the eventfd before it
         * takes the list, so an append to a non-empty list is seen. */
        uint64_t one = 1;
        if (was_empty && write(blk->efd, &one, sizeof(one)) < 0) {
            /* the counter cannot overflow in practice; nothing to do */
        }
        return;
    }
    if (rq->r.done)
        rq->r.done(rq->r.user_data, rq->ret);
    free(rq->iov);
    free(rq);
    pthread_mutex_lock(&blk->lock);
    if (--blk->inflight == 0)
        pthread_cond_broadcast(&blk->idle_cond);
    pthread_mutex_unlock(&blk->lock);
}

/* One idle worker polls the queue for up to 50 microseconds before sleeping:
 * at queue depth 1 the next request usually arrives that soon, and picking
 * it up saves a futex wake-up per request.  Called and returns locked. */
static void spin_for_work(vmm_block *blk)
{
    blk->spinning = true;
    pthread_mutex_unlock(&blk->lock);
    /* About the cost of waking a sleeping thread on an idle (virtual) CPU. */
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (unsigned i = 1; !__atomic_load_n(&blk->queue_head, __ATOMIC_ACQUIRE) &&
                         !__atomic_load_n(&blk->stopping, __ATOMIC_ACQUIRE); i++) {
        __builtin_ia32_pause();
        if (i % 32 == 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if ((now.tv_sec - t0.tv_sec) * 1000000000L + (now.tv_nsec - t0.tv_nsec) > 50000)
                break;
        }
    }
    pthread_mutex_lock(&blk->lock);
    blk->spinning = false;
}

static void *worker(void *opaque)
{
    vmm_block *blk = opaque;
    pthread_mutex_lock(&blk->lock);
    for (;;) {
        if (!blk->queue_head && !blk->stopping && !blk->spinning)
            spin_for_work(blk);
        while (!blk->queue_head && !blk->stopping) {
            blk->idle_threads++;
            pthread_cond_wait(&blk->work_cond, &blk->lock);
            blk->idle_threads--;
        }
        if (!blk->queue_head)
            break;
        struct req *rq = blk->queue_head;
        blk->queue_head = rq->next;
        if (!blk->queue_head)
            blk->queue_tail = NULL;
        pthread_mutex_unlock(&blk->lock);
        vmm_clear_error();
        int ret = run_op(blk, rq->r.op, rq->r.offset, rq->r.length, rq->iov, rq->r.iovcnt, rq->r.flags);
        rq->ret = ret < 0 ? -1 : 0;
        if (ret < 0) {
            fail("vmm_block_submit", blk);
            rq->err = vmm_get_errno();
            rq->msg = strdup(vmm_get_error());
        }
        complete(blk, rq);
        pthread_mutex_lock(&blk->lock);
    }
    pthread_mutex_unlock(&blk->lock);
    return NULL;
}

/* Start one more worker when none is idle (called with the lock held). */
static void maybe_grow_pool(vmm_block *blk)
{
    if (blk->idle_threads || blk->nthreads >= blk->max_threads)
        return;
    pthread_t *grown = realloc(blk->threads, (blk->nthreads + 1) * sizeof(*grown));
    if (!grown)
        return;
    blk->threads = grown;
    if (!pthread_create(&blk->threads[blk->nthreads], NULL, worker, blk))
        blk->nthreads++;
}

/* Take a request that no worker picked up out of the queue (lock held). */
static void unlink_queued(vmm_block *blk, struct req *rq)
{
    struct req *prev = NULL;
    for (struct req *q = blk->queue_head; q; prev = q, q = q->next) {
        if (q != rq)
            continue;
        if (prev)
            prev->next = q->next;
        else
            blk->queue_head = q->next;
        if (blk->queue_tail == q)
            blk->queue_tail = prev;
        return;
    }
}

LIBVMM_EXPORT int vmm_block_submit(vmm_block *blk, const struct vmm_block_request *req)
{
    if (!blk || !req || req->size < sizeof(*req))
        return bad_arg("vmm_block_submit", "no handle or request (set req->size)");
    bool has_range = req->op != VMM_BLOCK_OP_FLUSH;
    if (has_range && check_range("vmm_block_submit", blk, req->offset, req->length) < 0)
        return -1;
    bool has_data = req->op == VMM_BLOCK_OP_READ || req->op == VMM_BLOCK_OP_WRITE;
    if (has_data && (req->iovcnt < 0 || (req->iovcnt && !req->iov)))
        return bad_arg("vmm_block_submit", "bad iovec");
    if ((unsigned)req->op > VMM_BLOCK_OP_WRITE_ZEROES)
        return bad_arg("vmm_block_submit", "unknown request type");
    struct req *rq = calloc(1, sizeof(*rq));
    if (!rq)
        return vmm_set_error(ENOMEM, "vmm_block_submit: out of memory");
    rq->r = *req;
    rq->r.size = sizeof(rq->r);
    if (has_data && req->iovcnt) {
        rq->iov = malloc(sizeof(*rq->iov) * (size_t)req->iovcnt);
        if (!rq->iov) {
            free(rq);
            return vmm_set_error(ENOMEM, "vmm_block_submit: out of memory");
        }
        memcpy(rq->iov, req->iov, sizeof(*rq->iov) * (size_t)req->iovcnt);
    }
    pthread_mutex_lock(&blk->lock);
    if (blk->queue_tail)
        blk->queue_tail->next = rq;
    else
        blk->queue_head = rq;
    blk->queue_tail = rq;
    blk->inflight++;
    maybe_grow_pool(blk);
    if (blk->nthreads == 0) {
        /* Nobody will run it: the caller keeps the request. */
        unlink_queued(blk, rq);
        blk->inflight--;
        pthread_mutex_unlock(&blk->lock);
        free(rq->iov);
        free(rq);
        return vmm_set_error(EAGAIN, "vmm_block_submit: cannot start a worker thread");
    }
    if (blk->idle_threads)
        pthread_cond_signal(&blk->work_cond);
    pthread_mutex_unlock(&blk->lock);
    return 0;
}

LIBVMM_EXPORT int vmm_block_completion_fd(vmm_block *blk)
{
    if (!blk)
        return bad_arg("vmm_block_completion_fd", "no image handle");
    if (blk->efd < 0) {
        if (blk->inflight)
            return bad_arg("vmm_block_completion_fd", "requests are in flight");
        blk->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (blk->efd < 0)
            return vmm_set_error_errno("vmm_block_completion_fd: eventfd");
    }
    return blk->efd;
}

LIBVMM_EXPORT int vmm_block_dispatch(vmm_block *blk)
{
    if (!blk || blk->efd < 0)
        return bad_arg("vmm_block_dispatch", "not in eventfd completion mode");
    uint64_t count;
    if (read(blk->efd, &count, sizeof(count)) < 0) {
        /* EAGAIN: nothing signalled yet; the list may still hold work */
    }
    pthread_mutex_lock(&blk->lock);
    struct req *list = blk->done_head;
    blk->done_head = blk->done_tail = NULL;
    pthread_mutex_unlock(&blk->lock);
    int n = 0;
    while (list) {
        struct req *rq = list;
        list = rq->next;
        if (rq->ret < 0)
            vmm_set_error(rq->err, "%s", rq->msg ? rq->msg : "request failed");
        if (rq->r.done)
            rq->r.done(rq->r.user_data, rq->ret);
        free(rq->msg);
        free(rq->iov);
        free(rq);
        n++;
    }
    pthread_mutex_lock(&blk->lock);
    blk->inflight -= (unsigned)n;
    if (!blk->inflight)
        pthread_cond_broadcast(&blk->idle_cond);
    pthread_mutex_unlock(&blk->lock);
    return n;
}

LIBVMM_EXPORT int vmm_block_drain(vmm_block *blk)
{
    if (!blk)
        return bad_arg("vmm_block_drain", "no image handle");
    if (blk->efd >= 0) {
        while (blk->inflight) {
            struct pollfd pfd = { blk->efd, POLLIN, 0 };
            poll(&pfd, 1, 100);
            vmm_block_dispatch(blk);
        }
        return 0;
    }
    pthread_mutex_lock(&blk->lock);
    while (blk->inflight)
        pthread_cond_wait(&blk->idle_cond, &blk->lock);
    pthread_mutex_unlock(&blk->lock);
    return 0;
}

LIBVMM_EXPORT int vmm_block_set_workers(vmm_block *blk, unsigned count)
{
    if (!blk || count < 1 || count > 256)
        return bad_arg("vmm_block_set_workers", "count must be 1 to 256");
    pthread_mutex_lock(&blk->lock);
    blk->max_threads = count;
    pthread_mutex_unlock(&blk->lock);
    return 0;
}

/* ---- image management ------------------------------------------------- */

LIBVMM_EXPORT int vmm_block_create(const char *filename, const char *format, int64_t size,
                                   const char *options)
{
    vmm_clear_error();
    if (!filename || !*filename)
        return bad_arg("vmm_block_create", "no filename given");
    if (size < -1)
        return bad_arg("vmm_block_create", "negative size");
    int ret = block_create(filename, format, size < 0 ? UINT64_MAX : (uint64_t)size, options);
    if (ret < 0)
        return vmm_error_prefix("vmm_block_create: %s", filename);
    return 0;
}

struct info_emit {
    vmm_block_info_fn fn;
    void *ud;
    int stop;
};

static void emit_str(struct info_emit *e, const char *key, const char *v)
{
    if (!e->stop)
        e->stop = e->fn(e->ud, key, VMM_BLOCK_INFO_STR, v, 0);
}

static void emit_int(struct info_emit *e, const char *key, int64_t v)
{
    if (!e->stop)
        e->stop = e->fn(e->ud, key, VMM_BLOCK_INFO_INT, NULL, v);
}

static void emit_bool(struct info_emit *e, const char *key, bool v)
{
    if (!e->stop)
        e->stop = e->fn(e->ud, key, VMM_BLOCK_INFO_BOOL, NULL, v);
}

LIBVMM_EXPORT int vmm_block_info(vmm_block *blk, vmm_block_info_fn fn, void *user_data)
{
    if (!blk || !fn)
        return bad_arg("vmm_block_info", "no handle or callback");
    struct block_node *bs = blk->root;
    struct block_info info = { 0 };
    if (bs->drv->get_info && bs->drv->get_info(bs, &info) < 0) {
        block_info_clear(&info);
        return fail("vmm_block_info", blk);
    }
    struct info_emit e = { fn, user_data, 0 };
    emit_str(&e, "filename", bs->filename);
    emit_str(&e, "format", bs->drv->name);
    emit_int(&e, "virtual-size", (int64_t)bs->size);
    int64_t actual = block_node_allocated(bs);
    if (actual >= 0)
        emit_int(&e, "actual-size", actual);
    if (info.cluster_size)
        emit_int(&e, "cluster-size", info.cluster_size);
    if (bs->backing_filename && *bs->backing_filename) {
        char *full = bs->backing ? NULL : block_resolve_relative(bs->filename, bs->backing_filename);
        emit_str(&e, "backing-filename", bs->backing_filename);
        emit_str(&e, "full-backing-filename", bs->backing ? bs->backing->filename : full ? full : "");
        if (bs->backing_format)
            emit_str(&e, "backing-filename-format", bs->backing_format);
        free(full);
    }
    emit_bool(&e, "dirty-flag", info.dirty_flag);
    if (info.count) {
        emit_str(&e, "format-specific.type", bs->drv->name);
        char key[256];
        for (size_t i = 0; i < info.count; i++) {
            struct block_info_item *it = &info.items[i];
            snprintf(key, sizeof(key), "format-specific.data.%s", it->key);
            if (it->kind == INFO_STR)
                emit_str(&e, key, it->str);
            else if (it->kind == INFO_INT)
                emit_int(&e, key, it->num);
            else
                emit_bool(&e, key, it->num != 0);
        }
    }
    block_info_clear(&info);
    return 0;
}

LIBVMM_EXPORT int64_t vmm_block_cluster_size(vmm_block *blk)
{
    if (!blk)
        return bad_arg("vmm_block_cluster_size", "no image handle");
    struct block_info info = { 0 };
    struct block_node *bs = blk->root;
    if (bs->drv->get_info && bs->drv->get_info(bs, &info) < 0) {
        block_info_clear(&info);
        return fail("vmm_block_cluster_size", blk);
    }
    int64_t cs = info.cluster_size;
    block_info_clear(&info);
    return cs;
}

LIBVMM_EXPORT int64_t vmm_block_allocated_size(vmm_block *blk)
{
    if (!blk)
        return bad_arg("vmm_block_allocated_size", "no image handle");
    int64_t n = block_node_allocated(blk->root);
    if (n < 0) {
        vmm_set_error((int)-n, "%s: cannot tell the allocated size", blk->root->filename);
        return fail("vmm_block_allocated_size", blk);
    }
    return n;
}

LIBVMM_EXPORT int vmm_block_check(vmm_block *blk, unsigned fix, struct vmm_block_check_result *res)
{
    if (!blk || !res || res->size < sizeof(*res))
        return bad_arg("vmm_block_check", "no handle or result (set res->size)");
    struct block_node *bs = blk->root;
    if (!bs->drv->check) {
        vmm_set_error(ENOTSUP, "This image format does not support checks");
        return vmm_error_prefix("vmm_block_check");
    }
    if (fix && bs->read_only) {
        vmm_set_error(EPERM, "%s: repairing needs a read-write open", bs->filename);
        return vmm_error_prefix("vmm_block_check");
    }
    struct block_check_result r = { 0 };
    unsigned dfix = (fix & VMM_BLOCK_FIX_LEAKS ? BLOCK_FIX_LEAKS : 0) |
                    (fix & VMM_BLOCK_FIX_ERRORS ? BLOCK_FIX_ERRORS : 0);
    int ret = bs->drv->check(bs, &r, dfix);
    free(blk->check_messages);
    blk->check_messages = r.messages;
    size_t sz = res->size;
    memset(res, 0, sz);
    res->size = sz;
    res->corruptions = r.corruptions;
    res->leaks = r.leaks;
    res->check_errors = r.check_errors;
    res->corruptions_fixed = r.corruptions_fixed;
    res->leaks_fixed = r.leaks_fixed;
    res->allocated_clusters = r.allocated_clusters;
    res->total_clusters = r.total_clusters;
    res->fragmented_clusters = r.fragmented_clusters;
    res->compressed_clusters = r.compressed_clusters;
    res->image_end_offset = r.image_end_offset;
    res->messages = blk->check_messages ? blk->check_messages : "";
    return ret < 0 ? fail("vmm_block_check", blk) : 0;
}

static int need_op(const char *fn, vmm_block *blk, const void *op, const char *what)
{
    if (!blk)
        return bad_arg(fn, "no image handle");
    if (op)
        return 0;
    vmm_set_error(ENOTSUP, "%s: %s: format '%s' does not support %s", fn, blk->root->filename,
                  blk->root->drv->name, what);
    return -1;
}

LIBVMM_EXPORT int vmm_block_snapshot_list(vmm_block *blk, vmm_block_snapshot_fn fn, void *user_data)
{
    if (!fn)
        return bad_arg("vmm_block_snapshot_list", "no callback");
    if (blk && !blk->root->drv->snapshot_list)
        return 0; /* no snapshots in a format without them */
    if (need_op("vmm_block_snapshot_list", blk, blk ? (void *)blk->root->drv->snapshot_list : NULL,
                "snapshots") < 0)
        return -1;
    struct block_snapshot *list = NULL;
    int count = 0;
    if (blk->root->drv->snapshot_list(blk->root, &list, &count) < 0)
        return fail("vmm_block_snapshot_list", blk);
    int stop = 0;
    for (int i = 0; i < count; i++) {
        struct vmm_block_snapshot sn = {
            sizeof(sn), list[i].id, list[i].name, list[i].vm_state_size, list[i].date_sec,
            list[i].date_nsec, list[i].vm_clock_nsec, list[i].icount,
        };
        if (!stop)
            stop = fn(user_data, &sn);
    }
    for (int i = 0; i < count; i++) {
        free(list[i].id);
        free(list[i].name);
    }
    free(list);
    return 0;
}

LIBVMM_EXPORT int vmm_block_snapshot_create(vmm_block *blk, const char *name)
{
    if (need_op("vmm_block_snapshot_create", blk, blk ? (void *)blk->root->drv->snapshot_create : NULL,
                "internal snapshots") < 0)
        return -1;
    if (!name || !*name)
        return bad_arg("vmm_block_snapshot_create", "no snapshot name");
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct block_snapshot sn = { NULL, (char *)name, 0, (uint32_t)now.tv_sec, (uint32_t)now.tv_nsec,
                                 0, 0 /* icount 0, as qemu-img writes it */ };
    return blk->root->drv->snapshot_create(blk->root, &sn) < 0 ? fail("vmm_block_snapshot_create", blk) : 0;
}

LIBVMM_EXPORT int vmm_block_snapshot_apply(vmm_block *blk, const char *id_or_name)
{
    if (need_op("vmm_block_snapshot_apply", blk, blk ? (void *)blk->root->drv->snapshot_goto : NULL,
                "internal snapshots") < 0)
        return -1;
    if (!id_or_name)
        return bad_arg("vmm_block_snapshot_apply", "no snapshot name");
    return blk->root->drv->snapshot_goto(blk->root, id_or_name) < 0 ? fail("vmm_block_snapshot_apply", blk) : 0;
}

LIBVMM_EXPORT int vmm_block_snapshot_delete(vmm_block *blk, const char *id_or_name)
{
    if (need_op("vmm_block_snapshot_delete", blk, blk ? (void *)blk->root->drv->snapshot_delete : NULL,
                "internal snapshots") < 0)
        return -1;
    if (!id_or_name)
        return bad_arg("vmm_block_snapshot_delete", "no snapshot name");
    return blk->root->drv->snapshot_delete(blk->root, id_or_name) < 0 ? fail("vmm_block_snapshot_delete", blk) : 0;
}

static int parse_prealloc(const char *text, enum block_prealloc *out)
{
    static const char *const names[] = { "off", "metadata", "falloc", "full" };
    for (size_t i = 0; i < VMM_ARRAY_SIZE(names); i++) {
        if (!text || !strcmp(text, names[i])) {
            *out = text ? (enum block_prealloc)i : PREALLOC_OFF;
            return 0;
        }
    }
    return vmm_set_error(EINVAL, "Invalid preallocation mode: '%s'", text);
}

LIBVMM_EXPORT int vmm_block_resize(vmm_block *blk, uint64_t size, unsigned flags, const char *prealloc)
{
    enum block_prealloc mode = PREALLOC_OFF;
    if (!blk)
        return bad_arg("vmm_block_resize", "no image handle");
    if (parse_prealloc(prealloc, &mode) < 0)
        return vmm_error_prefix("vmm_block_resize");
    if (size < blk->root->size && !(flags & VMM_BLOCK_RESIZE_SHRINK)) {
        vmm_set_error(EINVAL, "Use the --shrink option to perform a shrink operation.");
        return vmm_error_prefix("vmm_block_resize");
    }
    if (size < blk->root->size && mode != PREALLOC_OFF) {
        vmm_set_error(EINVAL, "Preallocation can only be used for growing images");
        return vmm_error_prefix("vmm_block_resize");
    }
    if (block_node_truncate(blk->root, size, flags & VMM_BLOCK_RESIZE_SHRINK, mode) < 0)
        return fail("vmm_block_resize", blk);
    return block_node_flush(blk->root) < 0 ? fail("vmm_block_resize", blk) : 0;
}

#define COPY_CHUNK (2u << 20)

/* Read `len` bytes of `bs` at `offset`, zeroes past its end. */
static int read_padded(struct block_node *bs, uint64_t offset, uint8_t *buf, uint64_t len)
{
    uint64_t avail = offset < bs->size ? bs->size - offset : 0;
    if (avail > len)
        avail = len;
    memset(buf + avail, 0, len - avail);
    return avail ? block_node_pread(bs, offset, buf, avail) : 0;
}

static bool is_zero(const uint8_t *buf, size_t len)
{
    return len == 0 || (buf[0] == 0 && !memcmp(buf, buf + 1, len - 1));
}

LIBVMM_EXPORT int vmm_block_commit(vmm_block *blk, unsigned flags, vmm_block_progress_fn progress,
                                   void *user_data)
{
    if (!blk)
        return bad_arg("vmm_block_commit", "no image handle");
    struct block_node *top = blk->root, *base = top->backing;
    if (!base) {
        vmm_set_error(EINVAL, "Image does not have a backing file");
        return vmm_error_prefix("vmm_block_commit: %s", top->filename);
    }
    if (base->read_only || ((top->read_only) && !(flags & VMM_BLOCK_COMMIT_DROP))) {
        vmm_set_error(EPERM, "open the image with VMM_BLOCK_RDWR | VMM_BLOCK_BACKING_RW to commit");
        return vmm_error_prefix("vmm_block_commit: %s", top->filename);
    }
    if (base->size < top->size && block_node_truncate(base, top->size, false, PREALLOC_OFF) < 0)
        return fail("vmm_block_commit", blk);
    uint8_t *buf = malloc(COPY_CHUNK);
    if (!buf)
        return vmm_set_error(ENOMEM, "vmm_block_commit: out of memory");
    int ret = 0;
    for (uint64_t off = 0; off < top->size && ret >= 0;) {
        struct block_status st;
        uint64_t len = top->size - off < COPY_CHUNK ? top->size - off : COPY_CHUNK;
        ret = block_node_block_status(top, off, len, &st);
        if (ret < 0)
            break;
        len = st.bytes;
        if (st.flags & BLOCK_STATUS_ALLOCATED) {
            if (st.flags & BLOCK_STATUS_ZERO)
                ret = block_node_pwrite_zeroes(base, off, len, 0);
            else if ((ret = block_node_pread(top, off, buf, len)) >= 0)
                ret = block_node_pwrite(base, off, buf, len, 0);
        }
        off += len;
        if (ret >= 0 && progress && progress(user_data, off, top->size)) {
            vmm_set_error(ECANCELED, "cancelled");
            ret = -ECANCELED;
        }
    }
    free(buf);
    if (ret >= 0)
        ret = block_node_flush(base);
    if (ret >= 0 && !(flags & VMM_BLOCK_COMMIT_DROP) && top->drv->make_empty)
        ret = top->drv->make_empty(top);
    if (ret >= 0)
        ret = block_node_flush(top);
    return ret < 0 ? fail("vmm_block_commit", blk) : 0;
}

/* Safe rebase: wherever blk does not allocate and the old and new backing
 * content differ, copy the old content into blk. */
static int rebase_copy(struct block_node *bs, struct block_node *newb, vmm_block_progress_fn progress,
                       void *user_data)
{
    uint8_t *a = malloc(COPY_CHUNK), *b = malloc(COPY_CHUNK);
    int ret = (a && b) ? 0 : vmm_set_error(ENOMEM, "out of memory");
    for (uint64_t off = 0; off < bs->size && ret >= 0;) {
        struct block_status st;
        uint64_t len = bs->size - off < COPY_CHUNK ? bs->size - off : COPY_CHUNK;
        ret = block_node_block_status(bs, off, len, &st);
        if (ret < 0)
            break;
        len = st.bytes;
        if (!(st.flags & BLOCK_STATUS_ALLOCATED)) {
            ret = block_node_pread(bs, off, a, len);
            if (ret >= 0)
                ret = newb ? read_padded(newb, off, b, len) : (memset(b, 0, len), 0);
            if (ret >= 0 && memcmp(a, b, len))
                ret = is_zero(a, len) ? block_node_pwrite_zeroes(bs, off, len, 0)
                                      : block_node_pwrite(bs, off, a, len, 0);
        }
        off += len;
        if (ret >= 0 && progress && progress(user_data, off, bs->size)) {
            vmm_set_error(ECANCELED, "cancelled");
            ret = -ECANCELED;
        }
    }
    free(a);
    free(b);
    return ret;
}

LIBVMM_EXPORT int vmm_block_rebase(vmm_block *blk, const char *backing, const char *backing_format,
                                   unsigned flags, vmm_block_progress_fn progress, void *user_data)
{
    if (need_op("vmm_block_rebase", blk, blk ? (void *)blk->root->drv->change_backing_file : NULL,
                "backing files") < 0)
        return -1;
    struct block_node *bs = blk->root, *newb = NULL;
    if (bs->read_only) {
        vmm_set_error(EPERM, "%s: the image is opened read-only", bs->filename);
        return vmm_error_prefix("vmm_block_rebase");
    }
    if (backing && !*backing)
        backing = NULL;
    int ret = 0;
    if (!(flags & VMM_BLOCK_REBASE_UNSAFE)) {
        if (bs->backing_filename && *bs->backing_filename && !bs->backing) {
            vmm_set_error(EINVAL, "Could not open old backing file '%s' (opened without backing?)",
                          bs->backing_filename);
            return vmm_error_prefix("vmm_block_rebase: %s", bs->filename);
        }
        if (backing) {
            char *path = block_resolve_relative(bs->filename, backing);
            ret = path ? block_open(&newb, path, false, backing_format, BLOCK_O_FORCE_SHARE) : -ENOMEM;
            free(path);
            if (ret < 0)
                return vmm_error_prefix("vmm_block_rebase: Could not open new backing file '%s'", backing);
        }
        ret = rebase_copy(bs, newb, progress, user_data);
        block_node_unref(newb);
    }
    if (ret >= 0)
        ret = bs->drv->change_backing_file(bs, backing, backing ? backing_format : NULL);
    if (ret >= 0)
        ret = block_node_flush(bs);
    return ret < 0 ? fail("vmm_block_rebase", blk) : 0;
}

LIBVMM_EXPORT int vmm_block_amend(vmm_block *blk, const char *options)
{
    if (need_op("vmm_block_amend", blk, blk ? (void *)blk->root->drv->amend : NULL, "amend") < 0)
        return -1;
    if (!options || !*options)
        return bad_arg("vmm_block_amend", "no options given");
    vmm_opts *opts = vmm_opts_parse(options, NULL);
    if (!opts)
        return vmm_error_prefix("vmm_block_amend");
    const struct block_driver *drv = blk->root->drv;
    for (size_t i = 0; i < vmm_opts_count(opts); i++) {
        if (!vmm_props_find(drv->create_props, vmm_opts_key(opts, i))) {
            vmm_set_error(EINVAL, "Invalid parameter '%s'", vmm_opts_key(opts, i));
            vmm_opts_free(opts);
            return vmm_error_prefix("vmm_block_amend: %s", blk->root->filename);
        }
    }
    int ret = drv->amend(blk->root, opts);
    if (ret >= 0 && vmm_opts_check_all_used(opts, drv->name) < 0)
        ret = -EINVAL;
    vmm_opts_free(opts);
    if (ret >= 0)
        ret = block_node_flush(blk->root);
    return ret < 0 ? fail("vmm_block_amend", blk) : 0;
}

LIBVMM_EXPORT int vmm_block_measure(const char *format, const char *options, vmm_block *src,
                                    uint64_t size, uint64_t *required, uint64_t *fully_allocated)
{
    if (!required || !fully_allocated)
        return bad_arg("vmm_block_measure", "no result pointers");
    const struct block_driver *drv = block_driver_find(format ? format : "raw");
    if (!drv || !drv->is_format) {
        vmm_set_error(EINVAL, "Unknown file format '%s'", format);
        return vmm_error_prefix("vmm_block_measure");
    }
    if (!drv->measure) {
        vmm_set_error(ENOTSUP, "Format driver '%s' does not support measure", drv->name);
        return vmm_error_prefix("vmm_block_measure");
    }
    void *co = block_create_opts_new(drv, src ? src->root->size : size, options, true);
    if (!co)
        return vmm_error_prefix("vmm_block_measure");
    int ret = drv->measure(co, src ? src->root : NULL, required, fully_allocated);
    block_create_opts_free(drv, co);
    return ret < 0 ? vmm_error_prefix("vmm_block_measure") : 0;
}

LIBVMM_EXPORT int vmm_block_list_create_options(const char *format, vmm_property_fn fn, void *user_data)
{
    if (!format || !fn)
        return bad_arg("vmm_block_list_create_options", "no format or callback");
    const struct block_driver *drv = block_driver_find(format);
    if (!drv || !drv->is_format) {
        vmm_set_error(ENOENT, "Unknown file format '%s'", format);
        return vmm_error_prefix("vmm_block_list_create_options");
    }
    if (!drv->create_props) {
        vmm_set_error(ENOTSUP, "Format driver '%s' does not support image creation", format);
        return vmm_error_prefix("vmm_block_list_create_options");
    }
    return vmm_props_list(drv->create_props, fn, user_data);
}
