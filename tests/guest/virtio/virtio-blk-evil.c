/* virtio-blk-evil: a block driver that breaks virtio-blk's own rules.
 * Protocol violations (short header, no writable status byte, data in the
 * wrong direction, giant lengths, malformed discard payloads) must end in
 * NEEDS_RESET with the VMM still running; bad but well-formed requests
 * (a giant read beyond the disk) get IOERR; a reset while a large read is
 * in flight must leave the device working (the host must not write into
 * the old rings afterwards).  cmdline: transport=pci|mmio */
#include "vguest.h"

#define VEC_CONFIG 0x29
#define VEC_QUEUE  0x28
#define FAR_AWAY   0x4000000000ull
#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_DISCARD 11
#define W VIRTQ_DESC_F_WRITE
#define N VIRTQ_DESC_F_NEXT
#define BIG_BUF  0x1000000ull            /* 16 MiB: 64 MiB of guest RAM from here */
#define BIG_LEN  (64u << 20)

struct blk_hdr { uint32_t type, reserved; uint64_t sector; };

static struct vdev dev;
static struct vq vq;
static bool mmio;
static volatile unsigned config_irqs;
static struct blk_hdr hdr __attribute__((aligned(16)));
static volatile uint8_t status;
static uint8_t buf[4096] __attribute__((aligned(4096)));

static void on_config(struct interrupt_frame *f) { (void)f; config_irqs++; x2apic_eoi(); }
static void on_queue(struct interrupt_frame *f) { (void)f; x2apic_eoi(); }
static uint64_t a(const volatile void *p) { return (uint64_t)(uintptr_t)p; }

static void good_queue(void)
{
    config_irqs = 0;
    if (!vdev_negotiate(&dev, (1ull << VIRTIO_F_INDIRECT_DESC) | (1ull << VIRTIO_F_EVENT_IDX)))
        guest_fail("negotiation failed");
    vdev_msix_simple(&dev, VEC_CONFIG, VEC_QUEUE);
    vq_static(&vq, 0);
    if (!vdev_setup_queue(&dev, 0, &vq, VQ_SIZE, mmio ? 0xffff : 1))
        guest_fail("queue setup failed");
    vdev_set_status(&dev, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
}

static void expect_broken(const char *what)
{
    vq_post(&vq, 0);
    vdev_notify(&dev, 0);
    irq_enable();
    for (unsigned t = 0; t < 20000 && !(vdev_status(&dev) & STATUS_NEEDS_RESET); t++)
        udelay(100);
    for (unsigned t = 0; !mmio && !config_irqs && t < 20000; t++)
        udelay(100);
    irq_disable();
    if (!(vdev_status(&dev) & STATUS_NEEDS_RESET))
        guest_fail("%s: the device did not report NEEDS_RESET", what);
    if (!mmio && !config_irqs)
        guest_fail("%s: NEEDS_RESET without a config interrupt", what);
    printf("blk-evil: %s: NEEDS_RESET\n", what);
    vdev_reset(&dev);
}

static uint8_t expect_answer(const char *what)
{
    status = 0xff;
    vq_post(&vq, 0);
    vdev_notify(&dev, 0);
    uint32_t id, len;
    if (!vq_wait_used(&vq, &id, &len, 20000))
        guest_fail("%s: no answer", what);
    if (vdev_status(&dev) & STATUS_NEEDS_RESET)
        guest_fail("%s: NEEDS_RESET for a well-formed request", what);
    printf("blk-evil: %s: status %u\n", what, status);
    return status;
}

static void set_hdr(uint32_t type, uint64_t sector) { hdr = (struct blk_hdr){ type, 0, sector }; }

static void protocol_violations(void)
{
    good_queue();
    set_hdr(T_IN, 0);
    vq.desc[0] = (struct vq_desc){ a(&hdr), 8, N, 1 };
    vq.desc[1] = (struct vq_desc){ a(&status), 1, W, 0 };
    expect_broken("header of 8 bytes");

    good_queue();
    set_hdr(T_FLUSH, 0);
    vq.desc[0] = (struct vq_desc){ a(&hdr), 16, N, 1 };
    vq.desc[1] = (struct vq_desc){ a(&status), 1, 0, 0 };
    expect_broken("read-only status descriptor");

    good_queue();
    set_hdr(T_IN, 0);
    vq.desc[0] = (struct vq_desc){ a(&hdr), 16, N, 1 };
    vq.desc[1] = (struct vq_desc){ a(buf), 512, N, 2 };
    vq.desc[2] = (struct vq_desc){ a(&status), 1, W, 0 };
    expect_broken("read into device-readable buffers");

    good_queue();
    set_hdr(T_OUT, 0);
    vq.desc[0] = (struct vq_desc){ a(&hdr), 16, N, 1 };
    vq.desc[1] = (struct vq_desc){ a(buf), 512, W | N, 2 };
    vq.desc[2] = (struct vq_desc){ a(&status), 1, W, 0 };
    expect_broken("write from device-writable buffers");

    good_queue();
    set_hdr(T_DISCARD, 0);
    vq.desc[0] = (struct vq_desc){ a(&hdr), 16, N, 1 };
    vq.desc[1] = (struct vq_desc){ a(buf), 12, N, 2 };
    vq.desc[2] = (struct vq_desc){ a(&status), 1, W, 0 };
    expect_broken("discard payload of 12 bytes");

    good_queue();
    set_hdr(T_IN, 0);
    vq.desc[0] = (struct vq_desc){ a(&hdr), 16, N, 1 };
    vq.desc[1] = (struct vq_desc){ a(buf), 0xfffffff0u, W | N, 2 };
    vq.desc[2] = (struct vq_desc){ a(&status), 1, W, 0 };
    expect_broken("giant length beyond guest RAM");

    good_queue();
    set_hdr(T_IN, 0);
    vq.desc[0] = (struct vq_desc){ a(&hdr), 16, N, 1 };
    vq.desc[1] = (struct vq_desc){ FAR_AWAY, 1, W, 0 };
    expect_broken("status byte outside guest RAM");
}

/* A giant read inside RAM (64 MiB, larger than the disk): IOERR. */
static void giant_read(void)
{
    good_queue();
    set_hdr(T_IN, 0);
    vq.desc[0] = (struct vq_desc){ a(&hdr), 16, N, 1 };
    vq.desc[1] = (struct vq_desc){ BIG_BUF, BIG_LEN, W | N, 2 };
    vq.desc[2] = (struct vq_desc){ a(&status), 1, W, 0 };
    if (expect_answer("64 MiB read of a 4 MiB disk") != 1)
        guest_fail("the giant read did not fail with IOERR");
    vdev_reset(&dev);
}

/* Reset while a 4 MiB read is in flight (40 tries after 0-35 us: some
 * catch it popped and running); then the device must work.  The read has its
 * own status byte: unless it was answered before the reset, nothing may
 * write it afterwards, and the re-enabled queue (posted at another head)
 * must only ever see the new request.  Returns whether it was answered. */
static bool reset_mid_read(unsigned delay_us)
{
    static volatile uint8_t read_status;
    good_queue();
    set_hdr(T_IN, 0);
    read_status = 0xff;
    vq.desc[0] = (struct vq_desc){ a(&hdr), 16, N, 1 };
    for (uint16_t i = 0; i < 4; i++)           /* size_max is 1 MiB */
        vq.desc[1 + i] = (struct vq_desc){ BIG_BUF + ((uint64_t)i << 20), 1u << 20, W | N,
                                           (uint16_t)(2 + i) };
    vq.desc[5] = (struct vq_desc){ a(&read_status), 1, W, 0 };
    vq_post(&vq, 0);
    vdev_notify(&dev, 0);
    udelay(delay_us);
    vdev_reset(&dev);
    bool answered = *(volatile uint16_t *)&vq.used->idx != 0;
    good_queue();                              /* a new (zeroed) ring at the same place */
    static struct blk_hdr flush __attribute__((aligned(16)));
    flush = (struct blk_hdr){ T_FLUSH, 0, 0 };
    vq.desc[6] = (struct vq_desc){ a(&flush), 16, N, 7 };
    vq.desc[7] = (struct vq_desc){ a(&status), 1, W, 0 };
    status = 0xff;
    vq_post(&vq, 6);
    vdev_notify(&dev, 0);
    uint32_t id, len;
    if (!vq_wait_used(&vq, &id, &len, 20000))
        guest_fail("flush after the reset (delay %u us): no answer", delay_us);
    if (id != 6 || status != 0)
        guest_fail("flush after the reset (delay %u us): used id %u, status %u", delay_us, id,
                   status);
    udelay(20000);
    if (*(volatile uint16_t *)&vq.used->idx != 1)
        guest_fail("delay %u us: the device pushed %u entries after the reset", delay_us,
                   *(volatile uint16_t *)&vq.used->idx);
    if (answered && read_status != 0)
        guest_fail("delay %u us: the read before the reset: status %u", delay_us, read_status);
    if (!answered && read_status != 0xff)
        guest_fail("delay %u us: the device wrote the status of a request dropped by the reset",
                   delay_us);
    vdev_reset(&dev);
    return answered;
}

static void reset_mid_io(void)
{
    unsigned dropped = 0, tries = 40;
    for (unsigned i = 0; i < tries; i++)
        dropped += !reset_mid_read(i % 8 * 5);
    printf("blk-evil: reset with a read in flight: %s dropped, nothing written after the "
           "reset\n", dropped ? "some" : "none");
    if (!dropped)
        guest_fail("every read finished before its reset: nothing was tested");
}

int main(const struct hvm_start_info *si)
{
    (void)si;
    mmio = vdev_start_guest(&dev, 2);
    idt_set_handler(VEC_CONFIG, on_config);
    idt_set_handler(VEC_QUEUE, on_queue);
    protocol_violations();
    giant_read();
    reset_mid_io();
    if (!mmio)
        vdev_msix_enable(&dev, false);
    printf("virtio-blk-evil: ok\n");
    return 0;
}
