/* Split virtqueues (virtio 1.2 §2.7): the device side of the rings.
 *
 * Pure parsing over struct guest_memory: no KVM, no threads, so unit tests
 * and the fuzzer drive it over a fake guest memory.  Every guest value is
 * validated: ring and buffer addresses must lie inside guest RAM (found with
 * guest_memory_ptr only), chains must not loop or exceed the queue size,
 * device-readable descriptors come before device-writable ones, indirect
 * tables are checked the same way.  A violation returns -1 with the reason
 * in vmm_get_error(); the caller marks the device NEEDS_RESET. */
#ifndef LIBVMM_VIRTQUEUE_H
#define LIBVMM_VIRTQUEUE_H

#include <stdbool.h>
#include <stdint.h>
#include "machine/memory.h"

#define VIRTQ_MAX_SIZE        32768u  /* split rings: 2^15 */
#define VIRTQ_INDIRECT_MAX    1024u   /* entries in one indirect table */

#define VIRTQ_DESC_F_NEXT     1u
#define VIRTQ_DESC_F_WRITE    2u
#define VIRTQ_DESC_F_INDIRECT 4u

#define VIRTQ_AVAIL_F_NO_INTERRUPT 1u
#define VIRTQ_USED_F_NO_NOTIFY     1u

struct virtq_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

/* One guest buffer segment, already translated to a host pointer. */
struct vq_iov {
    void *base;
    uint32_t len;
    uint64_t gpa;                  /* for dirty tracking and logs */
};

/* A popped descriptor chain: `out` segments the device reads, then `in`
 * segments it writes. */
struct vq_chain {
    uint16_t head;
    unsigned out_count, in_count;
    uint64_t out_bytes, in_bytes;
    struct vq_iov *out, *in;       /* arrays owned by the virtqueue */
};

struct virtqueue {
    /* Set by the transport from the driver's configuration. */
    uint16_t size;                 /* Queue Size the driver chose */
    uint16_t max_size;             /* what the device offers */
    uint64_t desc_gpa, avail_gpa, used_gpa;
    bool ready;                    /* rings validated and usable */
    bool event_idx;                /* VIRTIO_F_EVENT_IDX negotiated */
    bool indirect;                 /* VIRTIO_F_INDIRECT_DESC negotiated */
    uint16_t msix_vector;          /* PCI: MSI-X vector (0xffff: none) */
    uint32_t notify_data;          /* MMIO/PCI: the queue index to match */

    /* Device-side progress. */
    uint16_t last_avail_idx;
    uint16_t used_idx;
    uint16_t signalled_used;       /* used_idx at the last interrupt */
    bool signalled_valid;

    /* Host views of the rings (valid while ready). */
    struct guest_memory *mem;
    struct virtq_desc *desc;
    volatile uint16_t *avail;      /* flags, idx, ring[size], used_event */
    volatile uint16_t *used;       /* flags, idx, ring[size] (8 bytes each), avail_event */

    /* Scratch for popped chains. */
    struct vq_iov *iov;
    unsigned iov_cap;
};

/* Bytes the rings of a `size`-entry queue take. */
uint64_t virtq_desc_bytes(uint16_t size);
uint64_t virtq_avail_bytes(uint16_t size);
uint64_t virtq_used_bytes(uint16_t size);

void virtqueue_init(struct virtqueue *vq, struct guest_memory *mem, uint16_t max_size);
void virtqueue_release(struct virtqueue *vq);
/* Back to the reset state (addresses 0, size = max_size, not ready). */
void virtqueue_reset(struct virtqueue *vq);
/* The driver enabled the queue: check size and ring placement, map them.
 * Fails (-1, error set) when the configuration breaks the rules. */
int virtqueue_enable(struct virtqueue *vq);

/* Take the next available chain.  Returns 1 with *chain filled, 0 when
 * nothing is available, -1 when the driver broke the rules (error set). */
int virtqueue_pop(struct virtqueue *vq, struct vq_chain *chain);
/* Return a chain to the driver with `written` bytes written into its `in`
 * segments (clamped to what the chain offered); marks them dirty. */
void virtqueue_push(struct virtqueue *vq, const struct vq_chain *chain, uint32_t written);
/* Several chains as one unit (a frame in merged receive buffers): write
 * the used element `offset` places after the used index, then publish
 * `count` of them with one index update, so the driver never sees a part. */
void virtqueue_fill(struct virtqueue *vq, const struct vq_chain *chain, uint32_t written,
                    unsigned offset);
void virtqueue_flush(struct virtqueue *vq, unsigned count);
/* After pushes: does the driver want an interrupt (flags or used_event)? */
bool virtqueue_should_notify(struct virtqueue *vq);
/* Copy `len` bytes into the chain's writable segments; returns bytes copied. */
uint32_t vq_chain_write(struct virtqueue *vq, const struct vq_chain *chain, const void *data,
                        uint32_t len);
/* Copy up to `len` bytes out of the chain's readable segments. */
uint32_t vq_chain_read(const struct vq_chain *chain, void *data, uint32_t len);
/* A copy of a popped chain whose segment arrays outlive the next pop (for
 * requests completed later, e.g. by the block layer); NULL when out of
 * memory.  Free with vq_chain_free. */
struct vq_chain *vq_chain_clone(const struct vq_chain *chain);
void vq_chain_free(struct vq_chain *chain);
/* Whether avail has entries the device has not popped. */
bool virtqueue_has_work(struct virtqueue *vq);
/* EVENT_IDX: ask for a notification when the driver adds beyond what we saw. */
void virtqueue_set_notify(struct virtqueue *vq, bool enable);
/* EVENT_IDX: ask for a notification when the driver adds beyond what it has
 * made available now, popped or not (a receive frame waits for more buffers
 * than the ring holds); without EVENT_IDX the same as set_notify(true). */
void virtqueue_notify_on_more(struct virtqueue *vq);

#endif
