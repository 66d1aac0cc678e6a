/* virtio-evil: a driver that breaks the virtqueue rules on purpose.  For
 * each violation the device must set NEEDS_RESET (and, with MSI-X, send a
 * config interrupt), the VMM must keep running, and after a reset the
 * device must work again.  cmdline: transport=pci|mmio */
#include "vguest.h"

#define VEC_CONFIG 0x29
#define VEC_QUEUE  0x28
#define FAR_AWAY   0x4000000000ull      /* 256 GiB: never guest RAM here */

static struct vdev dev;
static struct vq vq;
static bool mmio;
static volatile unsigned config_irqs;
static uint8_t buf[256] __attribute__((aligned(64)));
static struct vq_desc table[4] __attribute__((aligned(16)));

static void on_config(struct interrupt_frame *f) { (void)f; config_irqs++; x2apic_eoi(); }
static void on_queue(struct interrupt_frame *f) { (void)f; x2apic_eoi(); }

static void start(uint64_t features)
{
    if (!vdev_negotiate(&dev, features))
        guest_fail("negotiation failed");
    if (!mmio) {
        vdev_msix_vector(&dev, 0, VEC_CONFIG, x2apic_id());
        vdev_msix_vector(&dev, 1, VEC_QUEUE, x2apic_id());
        vdev_msix_enable(&dev, true);
        vdev_config_vector(&dev, 0);
    }
    vq_static(&vq, 0);
}

static void driver_ok(void)
{
    vdev_set_status(&dev, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
}

static bool wait_needs_reset(void)
{
    irq_enable();
    for (unsigned t = 0; t < 20000; t++) {
        if (vdev_status(&dev) & STATUS_NEEDS_RESET)
            break;
        udelay(100);
    }
    /* The config interrupt may trail the status bit a little. */
    for (unsigned t = 0; !mmio && !config_irqs && t < 20000; t++)
        udelay(100);
    irq_disable();
    return vdev_status(&dev) & STATUS_NEEDS_RESET;
}

static void expect_broken(const char *what)
{
    unsigned before = config_irqs;
    if (!wait_needs_reset())
        guest_fail("%s: the device did not report NEEDS_RESET", what);
    if (!mmio && config_irqs == before)
        guest_fail("%s: NEEDS_RESET without a config interrupt", what);
    printf("evil: %s: NEEDS_RESET\n", what);
    vdev_reset(&dev);
    if (vdev_status(&dev) != 0)
        guest_fail("%s: status 0x%x after reset", what, vdev_status(&dev));
}

/* A started device with a valid queue; the test then posts `head`. */
static void post_bad(const char *what, uint16_t head)
{
    vq_post(&vq, head);
    vdev_notify(&dev, 0);
    expect_broken(what);
}

static void good_queue(uint64_t features)
{
    config_irqs = 0;
    start(features);
    if (!vdev_setup_queue(&dev, 0, &vq, VQ_SIZE, mmio ? 0xffff : 1))
        guest_fail("queue setup failed");
    driver_ok();
}

#define W VIRTQ_DESC_F_WRITE
#define N VIRTQ_DESC_F_NEXT
#define I VIRTQ_DESC_F_INDIRECT
#define ALL ((1ull << VIRTIO_F_INDIRECT_DESC) | (1ull << VIRTIO_F_EVENT_IDX))

static uint64_t a(const void *p) { return (uint64_t)(uintptr_t)p; }

int main(const struct hvm_start_info *si)
{
    (void)si;
    x2apic_enable();
    pic_mask_all();
    mmio = cmdline_is("transport", "mmio");
    if (!mmio)
        pci_find_ecam();
    if (mmio ? !vdev_find_mmio(&dev, 4) : !vdev_find_pci(&dev, 4))
        guest_fail("no virtio-rng device");
    idt_set_handler(VEC_CONFIG, on_config);
    idt_set_handler(VEC_QUEUE, on_queue);
    printf("evil: virtio-rng on %s\n", mmio ? "virtio-mmio" : "virtio-pci");

    good_queue(ALL);
    vq.desc[0] = (struct vq_desc){ a(buf), 64, W | N, 1 };
    vq.desc[1] = (struct vq_desc){ a(buf + 64), 64, W | N, 0 };
    post_bad("looping chain", 0);

    good_queue(ALL);
    vq.desc[0] = (struct vq_desc){ FAR_AWAY, 64, W, 0 };
    post_bad("buffer outside guest RAM", 0);

    good_queue(ALL);
    vq.desc[0] = (struct vq_desc){ a(buf), 0xfffffff0u, W, 0 };
    post_bad("oversized length", 0);

    good_queue(ALL);
    vq.desc[0] = (struct vq_desc){ a(buf), 64, 0, 0 };
    post_bad("device-readable buffer for an entropy request", 0);

    good_queue(ALL);
    vq.desc[0] = (struct vq_desc){ a(buf), 64, W | N, 1 };
    vq.desc[1] = (struct vq_desc){ a(buf + 64), 64, 0, 0 };
    post_bad("readable descriptor after a writable one", 0);

    good_queue(ALL);
    vq.desc[0] = (struct vq_desc){ a(buf), 64, W | N, 200 };
    post_bad("next index beyond the queue", 0);

    good_queue(ALL);
    post_bad("head index beyond the queue", 200);

    good_queue(ALL);
    vq.desc[0] = (struct vq_desc){ a(buf), 64, W, 0 };
    vq.avail->idx = 100;      /* 100 new entries in an 8-entry ring */
    vdev_notify(&dev, 0);
    expect_broken("available index jumped past the queue size");

    good_queue(ALL);
    table[0] = (struct vq_desc){ a(buf), 64, W, 0 };
    vq.desc[0] = (struct vq_desc){ a(table), 16, I | N, 1 };
    post_bad("indirect descriptor with NEXT", 0);

    good_queue(ALL);
    table[0] = (struct vq_desc){ a(&table[2]), 32, I, 0 };
    vq.desc[0] = (struct vq_desc){ a(table), 16, I, 0 };
    post_bad("nested indirect table", 0);

    good_queue(ALL);
    vq.desc[0] = (struct vq_desc){ a(table), 24, I, 0 };
    post_bad("indirect table length not a multiple of 16", 0);

    good_queue(ALL);
    table[0] = (struct vq_desc){ a(buf), 64, W | N, 0 };
    vq.desc[0] = (struct vq_desc){ a(table), 16, I, 0 };
    post_bad("looping indirect table", 0);

    good_queue(1ull << VIRTIO_F_EVENT_IDX);
    table[0] = (struct vq_desc){ a(buf), 64, W, 0 };
    vq.desc[0] = (struct vq_desc){ a(table), 16, I, 0 };
    post_bad("indirect descriptor without the feature", 0);

    /* Queue configurations the device must refuse when enabled. */
    start(ALL);
    vdev_raw_queue(&dev, 0, 3, a(vq.desc), a(vq.avail), a(vq.used));
    driver_ok();
    expect_broken("queue size 3 (not a power of two)");

    start(ALL);
    vdev_raw_queue(&dev, 0, 8, FAR_AWAY, a(vq.avail), a(vq.used));
    driver_ok();
    expect_broken("descriptor ring outside guest RAM");

    start(ALL);
    vdev_raw_queue(&dev, 0, 8, a(vq.desc) + 8, a(vq.avail), a(vq.used));
    driver_ok();
    expect_broken("misaligned descriptor ring");

    /* After all that, a proper request still works. */
    good_queue(ALL);
    memset(buf, 0, sizeof(buf));
    vq.desc[0] = (struct vq_desc){ a(buf), 32, W, 0 };
    vq_post(&vq, 0);
    vdev_notify(&dev, 0);
    uint32_t id, len;
    if (!vq_wait_used(&vq, &id, &len, 5000) || id != 0 || !len)
        guest_fail("the device does not work after the resets");
    if (vdev_status(&dev) & STATUS_NEEDS_RESET)
        guest_fail("NEEDS_RESET after a good request");
    printf("evil: a good request after the resets: %u bytes\n", len);
    vdev_reset(&dev);
    printf("virtio-evil: ok\n");
    return 0;
}
