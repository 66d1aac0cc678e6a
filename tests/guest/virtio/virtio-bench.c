/* virtio-bench: `n=N` requests at queue depth 1 for bench/run-virtio.sh.
 * The guest polls the used ring with interrupts suppressed (no MSI-X
 * vector, VIRTQ_AVAIL_F_NO_INTERRUPT), so what the host spends per request
 * is the notify -> device -> used-ring path alone, the same under libvmm
 * and QEMU.  cmdline: dev=blk|net transport=pci|mmio n=N
 *   blk: 4 KiB reads (header, data, status descriptors), sectors cycling
 *        through the first 1 MiB;
 *   net: 60-byte broadcast frames on the TX queue (12-byte header first). */
#include "vguest.h"

#define VIRTIO_ID_NET   1
#define VIRTIO_ID_BLOCK 2
#define AVAIL_F_NO_INTERRUPT 1
#define USED_F_NO_NOTIFY     1
#define SPIN_LIMIT 2000000000ull

struct blk_req_header { uint32_t type, reserved; uint64_t sector; };

static struct vdev dev;
static struct vq vq;
static unsigned queue;                 /* net: 1 (TX), blk: 0 */
static struct blk_req_header blk_header __attribute__((aligned(16)));
static uint8_t blk_data[4096] __attribute__((aligned(4096)));
static uint8_t blk_status;
static uint8_t net_header[12];
static uint8_t net_frame[60];

static bool find_device(uint16_t id)
{
    return cmdline_is("transport", "mmio") ? vdev_find_mmio(&dev, id) : vdev_find_pci(&dev, id);
}

/* Post head 0, notify unless the device said not to, spin for the entry. */
static void one_request(uint64_t i)
{
    vq.avail->ring[vq.avail->idx % vq.size] = 0;
    __asm__ volatile("mfence" ::: "memory");
    vq.avail->idx++;
    __asm__ volatile("mfence" ::: "memory");
    if (!(*(volatile uint16_t *)&vq.used->flags & USED_F_NO_NOTIFY))
        vdev_notify(&dev, queue);
    for (uint64_t spins = 0; *(volatile uint16_t *)&vq.used->idx == vq.last_used; spins++) {
        if (spins > SPIN_LIMIT)
            guest_fail("request %lu: no used entry", (unsigned long)i);
        cpu_relax();
    }
    vq.last_used++;
}

static void setup_blk(void)
{
    vq.desc[0] = (struct vq_desc){ (uint64_t)(uintptr_t)&blk_header, sizeof(blk_header),
                                   VIRTQ_DESC_F_NEXT, 1 };
    vq.desc[1] = (struct vq_desc){ (uint64_t)(uintptr_t)blk_data, sizeof(blk_data),
                                   VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2 };
    vq.desc[2] = (struct vq_desc){ (uint64_t)(uintptr_t)&blk_status, 1, VIRTQ_DESC_F_WRITE, 0 };
}

static void setup_net(void)
{
    memset(net_frame, 0xff, 6);                           /* broadcast */
    const uint8_t src[6] = { 0x52, 0x54, 0x00, 0xbe, 0x4c, 0x01 };
    memcpy(net_frame + 6, src, 6);
    net_frame[12] = 0x88;                                 /* local experimental ethertype */
    net_frame[13] = 0xb5;
    vq.desc[0] = (struct vq_desc){ (uint64_t)(uintptr_t)net_header, sizeof(net_header),
                                   VIRTQ_DESC_F_NEXT, 1 };
    vq.desc[1] = (struct vq_desc){ (uint64_t)(uintptr_t)net_frame, sizeof(net_frame), 0, 0 };
}

int main(const struct hvm_start_info *si)
{
    (void)si;
    bool net = cmdline_is("dev", "net");
    uint64_t n = cmdline_u64("n", 1000);
    queue = net ? 1 : 0;
    if (!find_device(net ? VIRTIO_ID_NET : VIRTIO_ID_BLOCK))
        guest_fail("no virtio-%s device", net ? "net" : "blk");
    if (!vdev_negotiate(&dev, 0))
        guest_fail("feature negotiation failed");
    vq_static(&vq, 0);
    if (!vdev_setup_queue(&dev, queue, &vq, VQ_SIZE, 0xffff))
        guest_fail("queue %u setup failed", queue);
    vdev_set_status(&dev, vdev_status(&dev) | STATUS_DRIVER_OK);
    vq.avail->flags = AVAIL_F_NO_INTERRUPT;
    if (net)
        setup_net();
    else
        setup_blk();
    printf("virtio-bench: %lu %s requests\n", (unsigned long)n, net ? "net" : "blk");
    for (uint64_t i = 0; i < n; i++) {
        blk_header.sector = (i * 8) % 2048;
        one_request(i);
        if (!net && blk_status != 0)
            guest_fail("request %lu: status %u", (unsigned long)i, blk_status);
    }
    printf("virtio-bench: done\n");
    return 0;
}
