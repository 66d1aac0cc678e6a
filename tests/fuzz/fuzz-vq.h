/* Shared by the virtqueue fuzz harnesses: a 64 KiB fake guest RAM loaded
 * from the input and a queue configured from its 8-byte header. */
#ifndef FUZZ_VQ_H
#define FUZZ_VQ_H

#include <stdint.h>
#include <string.h>
#include "devices/virtio/virtqueue.h"
#include "machine/memory.h"

#define FUZZ_RAM (64u * 1024)

/* The harness's guest RAM, made on first use (trap when it cannot be). */
static inline struct guest_memory *fuzz_ram(void)
{
    static struct guest_memory mem;
    static int ready;
    if (!ready) {
        if (guest_memory_init(&mem, FUZZ_RAM, 0) < 0)
            __builtin_trap();
        ready = 1;
    }
    return &mem;
}

/* Header: queue size (2 bytes), flags (bit 0 indirect, bit 1 event idx,
 * bit 2 avail misaligned by 2; the rest for the harness), ring offsets.
 * Returns false when the input is too short for a header. */
static inline bool fuzz_vq_load(struct guest_memory *mem, struct virtqueue *vq,
                                const uint8_t *data, size_t size)
{
    if (size < 8)
        return false;
    uint8_t *ram = guest_memory_ptr(mem, 0, FUZZ_RAM);
    size_t image = size - 8 < FUZZ_RAM ? size - 8 : FUZZ_RAM;
    memset(ram, 0, FUZZ_RAM);
    memcpy(ram, data + 8, image);
    virtqueue_init(vq, mem, 256);
    vq->size = (uint16_t)(data[0] | data[1] << 8);
    vq->indirect = data[2] & 1;
    vq->event_idx = data[2] & 2;
    /* Ring addresses in 16-byte units, near or beyond the end of RAM. */
    vq->desc_gpa = (uint64_t)(data[3] | (data[4] & 0x1f) << 8) * 16;
    vq->avail_gpa = (uint64_t)(data[5] | (data[4] >> 5) << 8) * 16 + (data[2] >> 2 & 1) * 2;
    vq->used_gpa = (uint64_t)(data[6] | data[7] << 8) * 4;
    return true;
}

#endif
