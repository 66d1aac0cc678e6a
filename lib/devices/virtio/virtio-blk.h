/* virtio-blk (virtio 1.2 §5.2): wire format and the request parser.
 *
 * The parser is pure (no KVM, no block layer, no threads): it turns a
 * popped chain into a request description or a verdict, so the fuzzer
 * drives it over a fake guest memory (tests/fuzz/fuzz-virtio-blk.c). */
#ifndef LIBVMM_VIRTIO_BLK_H
#define LIBVMM_VIRTIO_BLK_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>
#include "devices/virtio/virtqueue.h"

#define VIRTIO_BLK_F_SIZE_MAX     1
#define VIRTIO_BLK_F_SEG_MAX      2
#define VIRTIO_BLK_F_RO           5
#define VIRTIO_BLK_F_BLK_SIZE     6
#define VIRTIO_BLK_F_FLUSH        9
#define VIRTIO_BLK_F_TOPOLOGY     10
#define VIRTIO_BLK_F_MQ           12
#define VIRTIO_BLK_F_DISCARD      13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

#define VIRTIO_BLK_T_IN           0
#define VIRTIO_BLK_T_OUT          1
#define VIRTIO_BLK_T_FLUSH        4
#define VIRTIO_BLK_T_GET_ID       8
#define VIRTIO_BLK_T_DISCARD      11
#define VIRTIO_BLK_T_WRITE_ZEROES 13

#define VIRTIO_BLK_S_OK     0
#define VIRTIO_BLK_S_IOERR  1
#define VIRTIO_BLK_S_UNSUPP 2

#define VIRTIO_BLK_WZ_F_UNMAP 1u
#define VIRTIO_BLK_ID_BYTES   20
#define VIRTIO_BLK_SECTOR     512u
#define VIRTIO_BLK_HDR_BYTES  16u
#define VIRTIO_BLK_MAX_QUEUES 16u

/* Device configuration layout (little-endian fields). */
struct virtio_blk_config {
    uint64_t capacity;                 /* 512-byte sectors */
    uint32_t size_max;
    uint32_t seg_max;
    struct { uint16_t cylinders; uint8_t heads, sectors; } geometry;
    uint32_t blk_size;
    uint8_t physical_block_exp, alignment_offset;
    uint16_t min_io_size;
    uint32_t opt_io_size;
    uint8_t writeback, unused0;
    uint16_t num_queues;
    uint32_t max_discard_sectors, max_discard_seg, discard_sector_alignment;
    uint32_t max_write_zeroes_sectors, max_write_zeroes_seg;
    uint8_t write_zeroes_may_unmap, unused1[3];
} __attribute__((packed));

/* What the device allows; the parser checks every request against it. */
struct virtio_blk_limits {
    uint64_t capacity;                 /* sectors */
    uint32_t seg_max, size_max;        /* data segments per request, bytes per segment */
    uint32_t max_discard_sectors, max_write_zeroes_sectors;
    bool read_only;
    bool discard;                      /* discard=unmap on the drive (else discards are no-ops) */
    bool flush;                        /* FLUSH negotiated */
    unsigned write_flags;              /* VMM_BLOCK_REQ_FUA for cache=writethrough */
    const char *serial;                /* GET_ID; NULL or "" answers zeros */
};

/* One parsed request. */
struct virtio_blk_request {
    uint32_t type;                     /* VIRTIO_BLK_T_* */
    uint64_t offset, length;           /* bytes on the disk (IN/OUT/DISCARD/WRITE_ZEROES) */
    unsigned flags;                    /* VMM_BLOCK_REQ_* for write-zeroes */
    struct iovec *iov;                 /* IN/OUT data inside guest RAM (g_free) */
    int iovcnt;
    uint8_t *status;                   /* the status byte in guest RAM */
    uint32_t written;                  /* the used length to report */
    uint8_t result;                    /* VIRTIO_BLK_S_* when answered without I/O */
};

enum virtio_blk_verdict {
    VIRTIO_BLK_BROKEN = -1,            /* protocol violation: vmm_get_error() says which */
    VIRTIO_BLK_SUBMIT = 0,             /* do the I/O */
    VIRTIO_BLK_DONE = 1,               /* answered: write `result` to *status */
};

/* Check a chain and describe its request.  Answers GET_ID, unsupported
 * types and bad ranges itself (DONE with `result`). */
enum virtio_blk_verdict virtio_blk_parse(const struct vq_chain *c,
                                         const struct virtio_blk_limits *lim,
                                         struct virtio_blk_request *req);
void virtio_blk_request_clear(struct virtio_blk_request *req);
/* After negotiation: the write flags.  A driver without FLUSH assumes no
 * volatile cache and never flushes, so its writes are FUA. */
void virtio_blk_limits_negotiated(struct virtio_blk_limits *lim, bool writethrough,
                                  bool flush_negotiated);
/* Mark the chain's device-writable segments dirty (read data, GET_ID, the
 * status byte: the device writes them through host pointers). */
void virtio_blk_mark_dirty(struct guest_memory *mem, const struct vq_chain *c);

/* Request merging: reads (or writes) popped in one queue run that follow
 * each other on the disk go to the block layer as one request, up to these
 * bounds (the device's SIZE_MAX and the kernel's IOV_MAX). */
#define VIRTIO_BLK_MERGE_MAX_BYTES (1u << 20)
#define VIRTIO_BLK_MERGE_MAX_IOV   1024

/* Whether `next` may be appended to `merged` (a request to submit, maybe
 * already a merge): both IN or both OUT, the same flags (FUA), `next`
 * starting where `merged` ends, and the sum within the bounds.  Flushes,
 * discards and write-zeroes never merge. */
bool virtio_blk_can_merge(const struct virtio_blk_request *merged,
                          const struct virtio_blk_request *next);
/* Append `next`'s data to `merged` (after virtio_blk_can_merge said yes);
 * `next` keeps its own status byte and iovec. */
void virtio_blk_merge(struct virtio_blk_request *merged, const struct virtio_blk_request *next);

struct device;
/* Whether `dev` is a virtio-blk whose drive property names `id` (realized
 * or not): such a drive cannot be removed (lib/machine/drives.c). */
bool virtio_blk_uses_drive(const struct device *dev, const char *id);

#endif
