/* A fake guest RAM with one enabled split queue, for the unit tests that
 * pop chains (test-virtqueue.c, test-virtio-blk.c).  Include after cmocka.h. */
#ifndef VQ_FIXTURE_H
#define VQ_FIXTURE_H

#include "devices/virtio/virtqueue.h"
#include "machine/memory.h"

static inline void vq_fixture_start(struct guest_memory *mem, struct virtqueue *vq, uint64_t ram,
                                    uint16_t size, uint64_t desc, uint64_t avail, uint64_t used,
                                    bool indirect)
{
    assert_int_equal(guest_memory_init(mem, ram, 0), 0);
    virtqueue_init(vq, mem, 256);
    vq->size = size;
    vq->desc_gpa = desc;
    vq->avail_gpa = avail;
    vq->used_gpa = used;
    vq->indirect = indirect;
    assert_int_equal(virtqueue_enable(vq), 0);
}

static inline void vq_fixture_stop(struct guest_memory *mem, struct virtqueue *vq)
{
    virtqueue_release(vq);
    guest_memory_destroy(mem);
}

#endif
