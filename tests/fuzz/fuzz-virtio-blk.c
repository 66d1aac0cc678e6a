/* libFuzzer harness for virtio-blk's request parser
 * (lib/devices/virtio/virtio-blk-req.c) on top of the virtqueue parser.
 *
 * Input: the 8-byte header fuzz-virtqueue uses (queue size, feature bits,
 * ring offsets; bit 3 of byte 2: read-only disk, bit 4: discard=unmap), then
 * the image of a 64 KiB guest RAM.  Every chain popped is parsed as a
 * virtio-blk request against a 64-sector disk.  Besides sanitizer reports
 * the harness traps when a request to submit reaches outside guest RAM or
 * the disk, its data length disagrees with its iovec, a write is submitted
 * for a read-only disk, the status byte lies outside RAM, or a refusal
 * comes without a message.  Requests to submit are merged as the device
 * does (virtio_blk_can_merge / virtio_blk_merge) and each merge is checked
 * the same way, plus the merge bounds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <glib.h>
#include "devices/virtio/virtio-blk.h"
#include "devices/virtio/virtqueue.h"
#include "fuzz-vq.h"
#include "machine/memory.h"
#include "util/util.h"

#define CAPACITY 64u
#define MAX_POPS 64

static struct guest_memory *mem;   /* fuzz_ram() */

static void check_range(const void *p, uint64_t len)
{
    const uint8_t *b = p;
    if (b < mem->base || len > mem->total || b + len > mem->base + mem->total)
        __builtin_trap();
}

static void check_submit(const struct virtio_blk_request *req, const struct virtio_blk_limits *lim)
{
    if (req->offset + req->length > (uint64_t)CAPACITY * VIRTIO_BLK_SECTOR)
        __builtin_trap();
    if (lim->read_only && req->type != VIRTIO_BLK_T_IN && req->type != VIRTIO_BLK_T_FLUSH)
        __builtin_trap();
    if (req->type != VIRTIO_BLK_T_IN && req->type != VIRTIO_BLK_T_OUT)
        return;
    uint64_t total = 0;
    for (int i = 0; i < req->iovcnt; i++) {
        check_range(req->iov[i].iov_base, req->iov[i].iov_len);
        total += req->iov[i].iov_len;
    }
    if (total != req->length || req->length % VIRTIO_BLK_SECTOR)
        __builtin_trap();
}

/* The request being merged (owns its iovec), as a queue run gathers it. */
static struct virtio_blk_request merged;

static void gather(const struct virtio_blk_request *req, const struct virtio_blk_limits *lim)
{
    if (merged.iov && virtio_blk_can_merge(&merged, req)) {
        virtio_blk_merge(&merged, req);
        if (merged.length > VIRTIO_BLK_MERGE_MAX_BYTES || merged.iovcnt > VIRTIO_BLK_MERGE_MAX_IOV)
            __builtin_trap();
        check_submit(&merged, lim);
        return;
    }
    virtio_blk_request_clear(&merged);
    if (req->type != VIRTIO_BLK_T_IN && req->type != VIRTIO_BLK_T_OUT)
        return;
    merged = *req;
    merged.iov = g_memdup2(req->iov, sizeof(*req->iov) * (size_t)req->iovcnt);
}

static void parse_one(const struct vq_chain *c, const struct virtio_blk_limits *lim)
{
    struct virtio_blk_request req;
    vmm_clear_error();
    enum virtio_blk_verdict v = virtio_blk_parse(c, lim, &req);
    if (v == VIRTIO_BLK_BROKEN) {
        const char *msg = vmm_get_error();
        if (!msg || !*msg || req.iov)
            __builtin_trap();
        return;
    }
    check_range(req.status, 1);
    if (v == VIRTIO_BLK_DONE && req.result > VIRTIO_BLK_S_UNSUPP)
        __builtin_trap();
    if (v == VIRTIO_BLK_SUBMIT) {
        check_submit(&req, lim);
        gather(&req, lim);
    }
    *req.status = v == VIRTIO_BLK_DONE ? req.result : VIRTIO_BLK_S_OK;
    virtio_blk_request_clear(&req);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct virtqueue vq;
    mem = fuzz_ram();
    if (!fuzz_vq_load(mem, &vq, data, size))
        return 0;
    struct virtio_blk_limits lim = {
        .capacity = CAPACITY, .seg_max = 126, .size_max = 1u << 20,
        .max_discard_sectors = 32, .max_write_zeroes_sectors = 32,
        .read_only = data[2] & 8, .discard = data[2] & 16, .flush = true, .serial = "fuzz-serial",
    };
    if (virtqueue_enable(&vq) == 0) {
        struct vq_chain c;
        for (unsigned n = 0; n < MAX_POPS && virtqueue_pop(&vq, &c) > 0; n++) {
            parse_one(&c, &lim);
            virtqueue_push(&vq, &c, 1);
        }
    }
    virtio_blk_request_clear(&merged);
    virtqueue_release(&vq);
    return 0;
}
