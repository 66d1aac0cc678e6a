/* libFuzzer harness for the virtqueue parser (lib/devices/virtio/virtqueue.c).
 *
 * Input: an 8-byte header (queue size, feature flags, ring offsets) and then
 * the image of a 64 KiB guest RAM holding rings, descriptors and indirect
 * tables.  Every chain popped is written to and pushed back.  Besides
 * sanitizer reports the harness traps when a segment lies outside guest RAM,
 * a chain breaks the readable-before-writable order, or a refusal comes
 * without a message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "devices/virtio/virtqueue.h"
#include "fuzz-vq.h"
#include "machine/memory.h"
#include "util/util.h"

#define MAX_POPS 64

static struct guest_memory *mem;   /* fuzz_ram() */

static void check_inside(const struct vq_iov *iov)
{
    const uint8_t *base = iov->base;
    if (base < mem->base || base + iov->len > mem->base + mem->total || base + iov->len < base)
        __builtin_trap();
    if (guest_memory_ptr(mem, iov->gpa, iov->len) != iov->base)
        __builtin_trap();
}

static void check_error(void)
{
    const char *msg = vmm_get_error();
    if (!msg || !*msg)
        __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct virtqueue vq;
    mem = fuzz_ram();
    if (!fuzz_vq_load(mem, &vq, data, size))
        return 0;
    vmm_clear_error();
    if (virtqueue_enable(&vq) < 0) {
        check_error();
        virtqueue_release(&vq);
        return 0;
    }
    for (unsigned n = 0; n < MAX_POPS; n++) {
        struct vq_chain c;
        vmm_clear_error();
        int r = virtqueue_pop(&vq, &c);
        if (r < 0) {
            check_error();
            break;
        }
        if (r == 0)
            break;
        for (unsigned i = 0; i < c.out_count; i++)
            check_inside(&c.out[i]);
        for (unsigned i = 0; i < c.in_count; i++)
            check_inside(&c.in[i]);
        if (c.in != c.out + c.out_count)
            __builtin_trap();
        uint8_t scratch[256];
        vq_chain_read(&c, scratch, sizeof(scratch));
        memset(scratch, 0x5a, sizeof(scratch));
        uint32_t written = vq_chain_write(&vq, &c, scratch, sizeof(scratch));
        virtqueue_push(&vq, &c, written);
        virtqueue_should_notify(&vq);
        virtqueue_set_notify(&vq, n & 1);
    }
    virtqueue_release(&vq);
    return 0;
}
