/* libvmm — block layer: disk images (raw, qcow2) on files and block devices.
 *
 * A vmm_block is an open node graph: a format node (raw, qcow2) on a
 * protocol node (file, host_device), with its backing chain.  Synchronous
 * calls run on the caller's thread; asynchronous requests run on the
 * handle's worker threads (a thread pool, or libaio with aio=native) and
 * complete through callbacks (see vmm_block_submit).
 *
 * All calls follow common.h: 0 / -1 or pointer / NULL, with the reason in
 * vmm_get_error() ("vmm_block_open: x.qcow2: ...") and vmm_get_errno().
 * A handle may be used from several threads at once.
 */
#ifndef LIBVMM_BLOCK_H
#define LIBVMM_BLOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vmm_block vmm_block;

/* vmm_block_open flags. */
#define VMM_BLOCK_RDWR         (1u << 0)  /* open read-write (default read-only) */
#define VMM_BLOCK_NO_BACKING   (1u << 1)  /* do not open the backing chain */
#define VMM_BLOCK_FORCE_SHARE  (1u << 2)  /* read-only open that ignores writers' locks */
#define VMM_BLOCK_NOCACHE      (1u << 3)  /* cache=none: O_DIRECT */
#define VMM_BLOCK_NATIVE_AIO   (1u << 4)  /* aio=native: libaio */
#define VMM_BLOCK_IMAGE_OPTS   (1u << 5)  /* the string is always an options string */
#define VMM_BLOCK_CHECK        (1u << 6)  /* open for check: tolerate damage */
#define VMM_BLOCK_BACKING_RW   (1u << 7)  /* open the first backing image read-write (commit) */
#define VMM_BLOCK_NO_FLUSH     (1u << 8)  /* cache=unsafe: flushes do nothing (scratch copies) */

/* Open an image.  `filename_or_options` is a file name, or an options
 * string "driver=qcow2,file.filename=x.qcow2,backing.driver=raw,..." (any
 * string starting with "driver=", "file." or "filename=", or any string with
 * VMM_BLOCK_IMAGE_OPTS).  `format` names the format ("raw", "qcow2"); NULL
 * probes it from the content, except that a probed raw image never gets a
 * backing file.  Locks follow qemu's: two writers never share an image, a
 * reader conflicts with a writer unless VMM_BLOCK_FORCE_SHARE.
 * Options: read-only, force-share, cache.direct, node-name, backing=null,
 * file.driver (file|host_device), file.aio (threads|native), file.locking,
 * raw's offset/size, qcow2's cache options; "backing.<opt>" for the backing
 * image. */
LIBVMM_EXPORT vmm_block *vmm_block_open(const char *filename_or_options, const char *format,
                                        unsigned flags);

/* Drain outstanding requests, flush (when writable) and close. NULL is a
 * no-op. Returns -1 if the final flush failed (the handle is freed anyway). */
LIBVMM_EXPORT int vmm_block_close(vmm_block *blk);

/* The virtual size in bytes, or -1. */
LIBVMM_EXPORT int64_t vmm_block_size(vmm_block *blk);

/* The format driver's name ("raw", "qcow2"); valid while blk is open. */
LIBVMM_EXPORT const char *vmm_block_format(vmm_block *blk);

/* Request flags. */
#define VMM_BLOCK_REQ_FUA         (1u << 0)  /* write: stable before completion */
#define VMM_BLOCK_REQ_MAY_UNMAP   (1u << 1)  /* write-zeroes may deallocate */
#define VMM_BLOCK_REQ_NO_FALLBACK (1u << 2)  /* write-zeroes: fail unless fast */
#define VMM_BLOCK_REQ_COMPRESSED  (1u << 3)  /* write one compressed cluster (qcow2) */

/* Synchronous I/O on the caller's thread.  Ranges must lie inside the
 * image. */
LIBVMM_EXPORT int vmm_block_read(vmm_block *blk, uint64_t offset, void *buf, size_t len);
LIBVMM_EXPORT int vmm_block_write(vmm_block *blk, uint64_t offset, const void *buf, size_t len,
                                  unsigned flags);
LIBVMM_EXPORT int vmm_block_flush(vmm_block *blk);
LIBVMM_EXPORT int vmm_block_discard(vmm_block *blk, uint64_t offset, uint64_t len);
/* Ask the image to prefetch [offset, offset+len) into its cache (an NBD
 * server's NBD_CMD_CACHE).  A hint: images with no such cache return 0. */
LIBVMM_EXPORT int vmm_block_cache(vmm_block *blk, uint64_t offset, uint64_t len);
LIBVMM_EXPORT int vmm_block_write_zeroes(vmm_block *blk, uint64_t offset, uint64_t len,
                                         unsigned flags);

/* Block status flags. */
#define VMM_BLOCK_STATUS_DATA      (1u << 0)  /* reads come from stored data */
#define VMM_BLOCK_STATUS_ZERO      (1u << 1)  /* reads return zeroes */
#define VMM_BLOCK_STATUS_ALLOCATED (1u << 2)  /* some layer of the chain provides it */
#define VMM_BLOCK_STATUS_OFFSET_VALID (1u << 3) /* `offset` is where it lives in `filename` */

/* One extent of the image, walking the backing chain ("map"). */
struct vmm_block_extent {
    size_t size;           /* sizeof(struct vmm_block_extent) */
    uint64_t start, length;
    unsigned flags;        /* VMM_BLOCK_STATUS_*; no ALLOCATED: no layer has it */
    int depth;             /* 0: the top image, 1: its backing, ... */
    uint64_t offset;       /* with OFFSET_VALID: host offset in `filename` */
    const char *filename;  /* the file holding the data (valid while blk is open) */
};

/* Describe the extent starting at `offset` (at most `len` bytes). */
LIBVMM_EXPORT int vmm_block_block_status(vmm_block *blk, uint64_t offset, uint64_t len,
                                         struct vmm_block_extent *out);

/* ---- asynchronous requests ------------------------------------------- */

enum vmm_block_op {
    VMM_BLOCK_OP_READ,
    VMM_BLOCK_OP_WRITE,
    VMM_BLOCK_OP_FLUSH,
    VMM_BLOCK_OP_DISCARD,
    VMM_BLOCK_OP_WRITE_ZEROES,
};

/* Completion: `ret` is 0 or -1; on -1, vmm_get_error() / vmm_get_errno()
 * on the calling thread give the reason while the callback runs. */
typedef void (*vmm_block_done_fn)(void *user_data, int ret);

struct vmm_block_request {
    size_t size;               /* sizeof(struct vmm_block_request) */
    enum vmm_block_op op;
    uint64_t offset, length;
    const struct iovec *iov;   /* READ/WRITE: buffers totalling `length` */
    int iovcnt;
    unsigned flags;            /* VMM_BLOCK_REQ_* */
    vmm_block_done_fn done;
    void *user_data;
};

/* Queue a request; many may be in flight.  The iovec array is copied, the
 * buffers must stay valid until completion.  By default the callback runs
 * on a worker thread; after vmm_block_completion_fd() it runs in
 * vmm_block_dispatch() on the caller's thread instead. */
LIBVMM_EXPORT int vmm_block_submit(vmm_block *blk, const struct vmm_block_request *req);

/* Switch to caller-side completions and return an eventfd that becomes
 * readable when completions are ready; call vmm_block_dispatch() then. The
 * fd belongs to the handle. Call before the first submit. */
LIBVMM_EXPORT int vmm_block_completion_fd(vmm_block *blk);

/* Run ready completion callbacks on this thread (eventfd mode); returns how
 * many ran, or -1. */
LIBVMM_EXPORT int vmm_block_dispatch(vmm_block *blk);

/* Wait until no request is in flight (in eventfd mode, dispatching
 * completions meanwhile). */
LIBVMM_EXPORT int vmm_block_drain(vmm_block *blk);

/* Worker threads for asynchronous requests (default 4 per CPU, 4..64; 1..256). */
LIBVMM_EXPORT int vmm_block_set_workers(vmm_block *blk, unsigned count);

/* ---- image management ------------------------------------------------ */

/* Progress: called with bytes done and total; return non-zero to cancel. */
typedef int (*vmm_block_progress_fn)(void *user_data, uint64_t done, uint64_t total);

/* Create an image.  `options` uses qemu-img's -o names ("cluster_size=64k,
 * backing_file=b.qcow2,backing_fmt=qcow2,preallocation=falloc,compat=1.1"),
 * may be NULL.  `size` -1 takes the size of the backing file. */
LIBVMM_EXPORT int vmm_block_create(const char *filename, const char *format, int64_t size,
                                   const char *options);

/* The options `vmm_block_create` accepts for `format` (qemu-img's -o names),
 * one call per option; fails with ENOENT for an unknown format. */
LIBVMM_EXPORT int vmm_block_list_create_options(const char *format, vmm_property_fn fn,
                                                void *user_data);

/* Information as a walk over typed key/value pairs, with qemu-img's JSON
 * names: "filename", "format", "virtual-size", "actual-size",
 * "cluster-size", "dirty-flag", "backing-filename", "full-backing-filename",
 * "backing-filename-format", "corrupt" and the format's own under
 * "format-specific.type" and "format-specific.data.<key>". */
enum vmm_block_info_type { VMM_BLOCK_INFO_STR, VMM_BLOCK_INFO_INT, VMM_BLOCK_INFO_BOOL };
typedef int (*vmm_block_info_fn)(void *user_data, const char *key, enum vmm_block_info_type type,
                                 const char *str, int64_t num);
LIBVMM_EXPORT int vmm_block_info(vmm_block *blk, vmm_block_info_fn fn, void *user_data);

/* The backing image of blk (NULL with no error when there is none).  The
 * handle is borrowed: do not close it; it lives as long as blk. */
LIBVMM_EXPORT vmm_block *vmm_block_backing(vmm_block *blk);

struct vmm_block_check_result {
    size_t size;                /* sizeof(struct vmm_block_check_result) */
    int64_t corruptions, leaks, check_errors;
    int64_t corruptions_fixed, leaks_fixed;
    int64_t allocated_clusters, total_clusters, fragmented_clusters, compressed_clusters;
    int64_t image_end_offset;
    const char *messages;       /* findings, one per line; valid until the next check or close */
};
#define VMM_BLOCK_FIX_LEAKS  1u
#define VMM_BLOCK_FIX_ERRORS 2u
/* Check consistency (and repair with VMM_BLOCK_FIX_*; needs a read-write
 * open).  Fails with ENOTSUP when the format has no checks. */
LIBVMM_EXPORT int vmm_block_check(vmm_block *blk, unsigned fix, struct vmm_block_check_result *res);

/* Internal snapshots (qcow2). */
struct vmm_block_snapshot {
    size_t size;                /* sizeof(struct vmm_block_snapshot) */
    const char *id, *name;
    uint64_t vm_state_size;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t icount;            /* UINT64_MAX when absent */
};
typedef int (*vmm_block_snapshot_fn)(void *user_data, const struct vmm_block_snapshot *sn);
LIBVMM_EXPORT int vmm_block_snapshot_list(vmm_block *blk, vmm_block_snapshot_fn fn, void *user_data);
LIBVMM_EXPORT int vmm_block_snapshot_create(vmm_block *blk, const char *name);
LIBVMM_EXPORT int vmm_block_snapshot_apply(vmm_block *blk, const char *id_or_name);
LIBVMM_EXPORT int vmm_block_snapshot_delete(vmm_block *blk, const char *id_or_name);

#define VMM_BLOCK_RESIZE_SHRINK 1u
/* Resize to `size`; shrinking needs VMM_BLOCK_RESIZE_SHRINK. `prealloc`:
 * NULL/"off", "metadata", "falloc", "full". */
LIBVMM_EXPORT int vmm_block_resize(vmm_block *blk, uint64_t size, unsigned flags,
                                   const char *prealloc);

#define VMM_BLOCK_COMMIT_DROP 1u  /* leave the top image as it is (qemu-img commit -d) */
/* Copy the top image's data into its backing image (open blk with
 * VMM_BLOCK_RDWR | VMM_BLOCK_BACKING_RW), then empty the top image. */
LIBVMM_EXPORT int vmm_block_commit(vmm_block *blk, unsigned flags, vmm_block_progress_fn progress,
                                   void *user_data);

#define VMM_BLOCK_REBASE_UNSAFE 1u
/* Make `backing` (NULL or "": none) the backing file of blk (read-write).
 * Safe mode copies into blk every range where the old and new backing
 * content differ; unsafe mode only rewrites the name. */
LIBVMM_EXPORT int vmm_block_rebase(vmm_block *blk, const char *backing, const char *backing_format,
                                   unsigned flags, vmm_block_progress_fn progress, void *user_data);

/* Change format options in place ("compat=0.10", qemu-img amend). */
LIBVMM_EXPORT int vmm_block_amend(vmm_block *blk, const char *options);

/* Bytes a new `format` image with `options` needs: for the content of `src`
 * or (src NULL) an empty image of `size` bytes. */
LIBVMM_EXPORT int vmm_block_measure(const char *format, const char *options, vmm_block *src,
                                    uint64_t size, uint64_t *required, uint64_t *fully_allocated);

/* Cluster size of the format (0 when it has none), for aligning compressed
 * writes; -1 on error. */
LIBVMM_EXPORT int64_t vmm_block_cluster_size(vmm_block *blk);

/* Host bytes the image's file uses, or -1. */
LIBVMM_EXPORT int64_t vmm_block_allocated_size(vmm_block *blk);

#ifdef __cplusplus
}
#endif

#endif
