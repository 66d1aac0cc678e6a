/* virtio-rng: read entropy through virtio-pci (MSI-X interrupts, x2APIC)
 * or virtio-mmio (level interrupt through the IOAPIC), with a plain
 * buffer, a two-descriptor chain and (when offered) an indirect table.
 * cmdline: transport=pci|mmio; irq=intx (PCI without MSI-X: INTx + ISR
 * through the IOAPIC pin the interrupt line register names, as libvmm's
 * firmware role sets it); limit=N (the device allows N bytes per period:
 * a second request must wait for the next period). */
#include "vguest.h"

#define VEC_QUEUE  0x28
#define VEC_CONFIG 0x29
#define VEC_LINE   0x2a
#define WAIT_MS    5000

static volatile unsigned queue_irqs, config_irqs;
static struct vdev dev;
static uint8_t buf[4][64] __attribute__((aligned(64)));
static struct vq_desc indirect_table[2] __attribute__((aligned(16)));

static void on_queue(struct interrupt_frame *f) { (void)f; queue_irqs++; x2apic_eoi(); }
static void on_config(struct interrupt_frame *f) { (void)f; config_irqs++; x2apic_eoi(); }
static void on_line(struct interrupt_frame *f)
{
    (void)f;
    uint8_t isr = vdev_isr(&dev);   /* acknowledges: the line drops */
    if (isr & 1)
        queue_irqs++;
    if (isr & 2)
        config_irqs++;
    x2apic_eoi();
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

/* Post the chain at `head`, wait for its completion and (unless polling)
 * its interrupt. */
static uint32_t request(struct vq *vq, uint16_t head, bool irqs, const char *what)
{
    unsigned before = queue_irqs;
    vq_post(vq, head);
    vdev_notify(&dev, 0);
    uint32_t id, len;
    irq_enable();
    bool done = vq_wait_used(vq, &id, &len, WAIT_MS);
    unsigned waited = 0;
    for (; irqs && done && queue_irqs == before && waited < WAIT_MS * 10; waited++)
        udelay(100);
    if (waited > 10)
        printf("virtio-rng: %s: the interrupt came %u00 us after the used entry\n", what, waited);
    irq_disable();
    if (!done)
        guest_fail("%s: no used entry within %u ms", what, WAIT_MS);
    if (id != head)
        guest_fail("%s: used id %u, posted head %u", what, id, head);
    if (irqs && queue_irqs == before)
        guest_fail("%s: completed but no interrupt arrived", what);
    return len;
}

static void dump(const char *what, const uint8_t *p, uint32_t len)
{
    printf("virtio-rng: %s: %u bytes:", what, len);
    for (uint32_t i = 0; i < len && i < 8; i++)
        printf(" %02x", p[i]);
    printf("%s\n", len > 8 ? " ..." : "");
}

/* With max-bytes=limit: the first request gets `limit` bytes, a second
 * one waits (not answered within 300 ms) until the next period. */
static void rate_limited(struct vq *vq, uint32_t limit, bool irqs)
{
    if (limit > 64)
        guest_fail("limit=%u: this test reads at most 64 bytes", limit);
    vq->desc[0] = (struct vq_desc){ (uint64_t)(uintptr_t)buf[0], limit, VIRTQ_DESC_F_WRITE, 0 };
    uint32_t len = request(vq, 0, irqs, "within the limit");
    if (len != limit)
        guest_fail("first request: %u bytes, the limit is %u", len, limit);
    vq->desc[1] = (struct vq_desc){ (uint64_t)(uintptr_t)buf[1], 64, VIRTQ_DESC_F_WRITE, 0 };
    vq_post(vq, 1);
    vdev_notify(&dev, 0);
    uint32_t id;
    if (vq_wait_used(vq, &id, &len, 300))
        guest_fail("over the limit, yet answered at once (%u bytes)", len);
    printf("virtio-rng: over the limit: no answer within 300 ms\n");
    irq_enable();
    bool done = vq_wait_used(vq, &id, &len, 5000);
    irq_disable();
    if (!done || id != 1 || !len)
        guest_fail("the next period never answered the waiting request");
    printf("virtio-rng: next period: %u bytes\n", len);
}

int main(const struct hvm_start_info *si)
{
    (void)si;
    x2apic_enable();
    pic_mask_all();
    bool mmio = cmdline_is("transport", "mmio");
    if (!mmio)
        pci_find_ecam();
    if (mmio ? !vdev_find_mmio(&dev, 4) : !vdev_find_pci(&dev, 4))
        guest_fail("no virtio-rng device on %s", mmio ? "virtio-mmio" : "PCI");
    if (mmio)
        printf("virtio-rng: virtio-mmio at 0x%lx, gsi %d\n", (unsigned long)dev.base, dev.gsi);
    else
        printf("virtio-rng: virtio-pci at 00:%02x.0, %u MSI-X vectors\n", dev.slot, dev.msix_vectors);

    if (!vdev_negotiate(&dev, (1ull << VIRTIO_F_INDIRECT_DESC) | (1ull << VIRTIO_F_EVENT_IDX)))
        guest_fail("feature negotiation failed");
    bool indirect = dev.features & (1ull << VIRTIO_F_INDIRECT_DESC);
    printf("virtio-rng: features 0x%lx (indirect %s, event idx %s)\n", (unsigned long)dev.features,
           indirect ? "yes" : "no", dev.features & (1ull << VIRTIO_F_EVENT_IDX) ? "yes" : "no");

    bool irqs = true;
    uint16_t vector = 0xffff;
    bool intx = !mmio && cmdline_is("irq", "intx");
    if (intx) {
        unsigned line = pci_read8(dev.slot, 0x3c), pin = pci_read8(dev.slot, 0x3d);
        if (!pin || !ioapic_route_level(line, VEC_LINE))
            guest_fail("INTx: pin %u, line %u is not an IOAPIC input", pin, line);
        idt_set_handler(VEC_LINE, on_line);
        printf("virtio-rng: interrupts: INTx pin %c -> IOAPIC gsi %u level -> 0x%x\n",
               'A' + pin - 1, line, VEC_LINE);
    } else if (!mmio) {
        if (dev.msix_vectors < 2)
            guest_fail("need 2 MSI-X vectors, have %u", dev.msix_vectors);
        idt_set_handler(VEC_QUEUE, on_queue);
        idt_set_handler(VEC_CONFIG, on_config);
        vdev_msix_vector(&dev, 0, VEC_CONFIG, x2apic_id());
        vdev_msix_vector(&dev, 1, VEC_QUEUE, x2apic_id());
        vdev_msix_enable(&dev, true);
        vdev_config_vector(&dev, 0);
        vector = 1;
        printf("virtio-rng: interrupts: MSI-X vector 1 -> 0x%x (x2APIC %u)\n", VEC_QUEUE, x2apic_id());
    } else if (dev.gsi >= 0 && ioapic_route_level((unsigned)dev.gsi, VEC_LINE)) {
        idt_set_handler(VEC_LINE, on_line);
        printf("virtio-rng: interrupts: IOAPIC gsi %d level -> 0x%x\n", dev.gsi, VEC_LINE);
    } else {
        irqs = false;
        printf("virtio-rng: interrupts: polled (gsi %d not on the first IOAPIC)\n", dev.gsi);
    }

    struct vq vq;
    vq_static(&vq, 0);
    if (!vdev_setup_queue(&dev, 0, &vq, VQ_SIZE, vector))
        guest_fail("queue setup failed");
    vdev_set_status(&dev, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    if (vdev_status(&dev) & STATUS_NEEDS_RESET)
        guest_fail("device needs reset right after DRIVER_OK");

    uint64_t limit = cmdline_u64("limit", 0);
    if (limit) {
        rate_limited(&vq, (uint32_t)limit, irqs);
        vdev_reset(&dev);
        printf("virtio-rng: ok\n");
        return 0;
    }

    /* 1: one writable buffer, three times: the bytes must differ. */
    for (unsigned i = 0; i < 3; i++) {
        memset(buf[i], 0, 64);
        vq.desc[i] = (struct vq_desc){ (uint64_t)(uintptr_t)buf[i], 64, VIRTQ_DESC_F_WRITE, 0 };
        uint32_t len = request(&vq, (uint16_t)i, irqs, "single buffer");
        if (!len || len > 64 || all_zero(buf[i], len))
            guest_fail("single buffer: %u bytes, all zero", len);
        dump("single buffer", buf[i], len);
    }
    if (!memcmp(buf[0], buf[1], 16) || !memcmp(buf[1], buf[2], 16))
        guest_fail("two reads returned the same bytes");

    /* 2: a chain of two writable descriptors. */
    memset(buf[3], 0, 64);
    vq.desc[3] = (struct vq_desc){ (uint64_t)(uintptr_t)buf[3], 16, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 4 };
    vq.desc[4] = (struct vq_desc){ (uint64_t)(uintptr_t)buf[3] + 16, 48, VIRTQ_DESC_F_WRITE, 0 };
    uint32_t len = request(&vq, 3, irqs, "chain");
    if (!len || len > 64 || all_zero(buf[3], len < 16 ? len : 16))
        guest_fail("chain: %u bytes", len);
    dump("two-descriptor chain", buf[3], len);

    /* 3: an indirect table of two writable descriptors. */
    if (indirect) {
        memset(buf[0], 0, 64);
        indirect_table[0] = (struct vq_desc){ (uint64_t)(uintptr_t)buf[0], 32, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1 };
        indirect_table[1] = (struct vq_desc){ (uint64_t)(uintptr_t)buf[0] + 32, 32, VIRTQ_DESC_F_WRITE, 0 };
        vq.desc[5] = (struct vq_desc){ (uint64_t)(uintptr_t)indirect_table, sizeof(indirect_table),
                                       VIRTQ_DESC_F_INDIRECT, 0 };
        len = request(&vq, 5, irqs, "indirect");
        if (!len || len > 64 || all_zero(buf[0], len))
            guest_fail("indirect: %u bytes", len);
        dump("indirect table", buf[0], len);
    }
    printf("virtio-rng: %u queue interrupts, %u config interrupts\n", queue_irqs, config_irqs);
    if (vdev_status(&dev) & STATUS_NEEDS_RESET)
        guest_fail("device reports NEEDS_RESET");
    vdev_reset(&dev);
    if (!mmio)
        vdev_msix_enable(&dev, false);
    printf("virtio-rng: ok\n");
    return 0;
}
