/* virtio-blk (virtio 1.2 §5.2) driver test: negotiate, read the config,
 * write patterns (a multi-descriptor chain and an indirect table), FLUSH,
 * read back, GET_ID, DISCARD and WRITE_ZEROES then read zeros, an
 * out-of-range read (IOERR), an unknown request type (UNSUPP), and with
 * mq=2 a write and read on the second queue.  The host checks the image
 * afterwards (expectations.json "image_checks"):
 *   sectors 0-7 = 0xa5, 8-15 = 0x3c, 128-255 = zeros (discarded),
 *   256-271 = zeros (write-zeroes), 512-519 = 0xc3 (queue 1, with mq=2).
 * cmdline: transport=pci|mmio; getid=1 serial=S (GET_ID must return S); mq=N;
 * ro=1 (the device must offer RO and fail writes with IOERR);
 * fail=write|read (the host makes that I/O fail: expect=ioerr|ok says what
 * the guest must see, wait=1 keeps waiting while the machine is stopped,
 * renotify=1 notifies the queue in a loop while waiting);
 * merge=1: 8 adjacent 4 KiB writes (patterns 0xe0..0xe7 at 512 KiB) posted
 * before one notify, then 8 adjacent reads the same way into buffers in
 * reverse order: the device may merge them (the host checks its counters)
 * but every chain must complete OK with its own data; rounds=N repeats the
 * write batch N times first (a queue-depth-8 sequential write load for
 * profiling the host). */
#include "vguest.h"

#define VEC_CONFIG 0x29
#define VEC_QUEUE0 0x2a
#define VEC_LINE   0x2c
#define WAIT_MS    20000

#define F_SIZE_MAX 1
#define F_SEG_MAX 2
#define F_RO 5
#define F_BLK_SIZE 6
#define F_FLUSH 9
#define F_MQ 12
#define F_DISCARD 13
#define F_WRITE_ZEROES 14

enum { T_IN = 0, T_OUT = 1, T_FLUSH = 4, T_GET_ID = 8, T_DISCARD = 11, T_WRITE_ZEROES = 13 };
enum { S_OK = 0, S_IOERR = 1, S_UNSUPP = 2 };
static const char *const status_names[] = { "OK", "IOERR", "UNSUPP" };

struct blk_hdr { uint32_t type, reserved; uint64_t sector; };
struct blk_range { uint64_t sector; uint32_t num_sectors, flags; };

static struct vdev dev;
static struct vq queues[2];
static bool irqs = true, mmio;
static volatile unsigned queue_irqs, config_irqs;
static struct blk_hdr hdr[2] __attribute__((aligned(16)));
static struct blk_range range __attribute__((aligned(16)));
static volatile uint8_t status[2];
static uint8_t data[8192] __attribute__((aligned(4096)));
static uint8_t check[8192] __attribute__((aligned(4096)));
static struct vq_desc table[4] __attribute__((aligned(16)));

#define MERGE_N      8
#define MERGE_SECTOR 1024
static struct blk_hdr mhdr[MERGE_N] __attribute__((aligned(16)));
static volatile uint8_t mstatus[MERGE_N];
static struct vq_desc mtable[MERGE_N][3] __attribute__((aligned(16)));
static uint8_t mdata[MERGE_N][4096] __attribute__((aligned(4096)));
static uint8_t mcheck[MERGE_N][4096] __attribute__((aligned(4096)));

static void on_queue(struct interrupt_frame *f) { (void)f; queue_irqs++; x2apic_eoi(); }
static void on_config(struct interrupt_frame *f) { (void)f; config_irqs++; x2apic_eoi(); }
static void on_line(struct interrupt_frame *f)
{
    (void)f;
    uint8_t isr = vdev_isr(&dev);
    if (isr & 1)
        queue_irqs++;
    if (isr & 2)
        config_irqs++;
    x2apic_eoi();
}

static uint64_t cfg_addr(unsigned off)
{
    return (mmio ? dev.base + 0x100 : dev.devcfg) + off;
}
static uint32_t cfg32(unsigned off) { return mmio_read32(cfg_addr(off)); }
static uint16_t cfg16(unsigned off) { return *(volatile uint16_t *)(uintptr_t)cfg_addr(off); }
static uint64_t cfg64(unsigned off) { return cfg32(off) | (uint64_t)cfg32(off + 4) << 32; }

static uint64_t addr(const volatile void *p) { return (uint64_t)(uintptr_t)p; }

/* Post chain `head` on queue q and wait for it (and its interrupt). */
static uint8_t run(unsigned q, uint16_t head, const char *what)
{
    struct vq *vq = &queues[q];
    unsigned before = queue_irqs;
    status[q] = 0xff;
    vq_post(vq, head);
    vdev_notify(&dev, q);
    uint32_t id, len;
    irq_enable();
    unsigned waits = cmdline_u64("wait", 0) ? 30 : 1;
    bool done = false;
    /* renotify=1: notify again and again until the answer comes (drivers
     * may notify spuriously; a kept request must still wait for resume). */
    bool renotify = cmdline_u64("renotify", 0);
    for (unsigned long n = 0; renotify && n < 2000000ul &&
                              *(volatile uint16_t *)&vq->used->idx == vq->last_used; n++)
        vdev_notify(&dev, q);
    for (unsigned i = 0; i < waits && !done; i++)
        done = vq_wait_used(vq, &id, &len, WAIT_MS);
    for (unsigned t = 0; irqs && done && queue_irqs == before && t < 50000; t++)
        udelay(100);
    irq_disable();
    if (!done)
        guest_fail("%s: no used entry", what);
    if (id != head)
        guest_fail("%s: used id %u, posted %u", what, id, head);
    if (irqs && queue_irqs == before)
        guest_fail("%s: completed without an interrupt", what);
    if (status[q] > S_UNSUPP)
        guest_fail("%s: status byte 0x%x", what, status[q]);
    return status[q];
}

static void expect_status(uint8_t got, uint8_t want, const char *what)
{
    if (got != want)
        guest_fail("%s: status %s, expected %s", what, status_names[got], status_names[want]);
    printf("virtio-blk: %s: %s\n", what, status_names[got]);
}

/* Descriptors: 0 header, 1..n data, last the status byte. */
static void header(unsigned q, uint32_t type, uint64_t sector)
{
    hdr[q] = (struct blk_hdr){ type, 0, sector };
    queues[q].desc[0] = (struct vq_desc){ addr(&hdr[q]), sizeof(hdr[q]), VIRTQ_DESC_F_NEXT, 1 };
}

static void status_desc(unsigned q, unsigned i)
{
    queues[q].desc[i] = (struct vq_desc){ addr(&status[q]), 1, VIRTQ_DESC_F_WRITE, 0 };
}

/* A read or write of `len` bytes at `sector` in `pieces` descriptors. */
static uint8_t rw(unsigned q, uint32_t type, uint64_t sector, uint8_t *buf, uint32_t len,
                  unsigned pieces, const char *what)
{
    header(q, type, sector);
    uint16_t flags = (type == T_IN ? VIRTQ_DESC_F_WRITE : 0) | VIRTQ_DESC_F_NEXT;
    uint32_t piece = len / pieces;
    for (unsigned i = 0; i < pieces; i++)
        queues[q].desc[1 + i] = (struct vq_desc){ addr(buf + i * piece),
                                                  i + 1 == pieces ? len - i * piece : piece,
                                                  flags, (uint16_t)(2 + i) };
    status_desc(q, 1 + pieces);
    return run(q, 0, what);
}

/* The same through an indirect table: header, two data halves, status. */
static uint8_t rw_indirect(uint32_t type, uint64_t sector, uint8_t *buf, uint32_t len,
                           const char *what)
{
    uint16_t dir = type == T_IN ? VIRTQ_DESC_F_WRITE : 0;
    hdr[0] = (struct blk_hdr){ type, 0, sector };
    table[0] = (struct vq_desc){ addr(&hdr[0]), sizeof(hdr[0]), VIRTQ_DESC_F_NEXT, 1 };
    table[1] = (struct vq_desc){ addr(buf), len / 2, dir | VIRTQ_DESC_F_NEXT, 2 };
    table[2] = (struct vq_desc){ addr(buf + len / 2), len - len / 2, dir | VIRTQ_DESC_F_NEXT, 3 };
    table[3] = (struct vq_desc){ addr(&status[0]), 1, VIRTQ_DESC_F_WRITE, 0 };
    queues[0].desc[5] = (struct vq_desc){ addr(table), sizeof(table), VIRTQ_DESC_F_INDIRECT, 0 };
    return run(0, 5, what);
}

static uint8_t simple(uint32_t type, uint64_t sector, const char *what)
{
    header(0, type, sector);
    status_desc(0, 1);
    return run(0, 0, what);
}

static uint8_t ranged(uint32_t type, uint64_t sector, uint32_t count, uint32_t flags,
                      const char *what)
{
    header(0, type, 0);
    range = (struct blk_range){ sector, count, flags };
    queues[0].desc[1] = (struct vq_desc){ addr(&range), sizeof(range), VIRTQ_DESC_F_NEXT, 2 };
    status_desc(0, 2);
    return run(0, 0, what);
}

static void fill(uint8_t *p, uint8_t v, uint32_t n) { memset(p, v, n); }

static void expect_bytes(const uint8_t *p, uint8_t v, uint32_t n, const char *what)
{
    for (uint32_t i = 0; i < n; i++)
        if (p[i] != v)
            guest_fail("%s: byte %u is 0x%02x, expected 0x%02x", what, i, p[i], v);
    printf("virtio-blk: %s: %u bytes of 0x%02x\n", what, n, v);
}

static void setup_interrupts(unsigned nq, uint16_t *vectors)
{
    for (unsigned q = 0; q < nq; q++)
        vectors[q] = 0xffff;
    if (mmio) {
        if (dev.gsi >= 0 && ioapic_route_level((unsigned)dev.gsi, VEC_LINE)) {
            idt_set_handler(VEC_LINE, on_line);
            printf("virtio-blk: interrupts: IOAPIC gsi %d level\n", dev.gsi);
        } else {
            irqs = false;
            printf("virtio-blk: interrupts: polled\n");
        }
        return;
    }
    if (dev.msix_vectors < nq + 1)
        guest_fail("need %u MSI-X vectors, have %u", nq + 1, dev.msix_vectors);
    idt_set_handler(VEC_CONFIG, on_config);
    vdev_msix_vector(&dev, 0, VEC_CONFIG, x2apic_id());
    for (unsigned q = 0; q < nq; q++) {
        idt_set_handler((uint8_t)(VEC_QUEUE0 + q), on_queue);
        vdev_msix_vector(&dev, q + 1, (uint8_t)(VEC_QUEUE0 + q), x2apic_id());
        vectors[q] = (uint16_t)(q + 1);
    }
    vdev_msix_enable(&dev, true);
    vdev_config_vector(&dev, 0);
    printf("virtio-blk: interrupts: MSI-X, %u queue vectors\n", nq);
}

static uint64_t start(unsigned *nq)
{
    uint64_t want = (1ull << F_SIZE_MAX) | (1ull << F_SEG_MAX) | (1ull << F_RO) |
                    (1ull << F_BLK_SIZE) | (1ull << F_FLUSH) | (1ull << F_MQ) |
                    (1ull << F_DISCARD) | (1ull << F_WRITE_ZEROES) |
                    (1ull << VIRTIO_F_INDIRECT_DESC) | (1ull << VIRTIO_F_EVENT_IDX);
    if (!vdev_negotiate(&dev, want))
        guest_fail("feature negotiation failed");
    uint64_t f = dev.features;
    uint64_t capacity = cfg64(0);
    unsigned queues_offered = f & (1ull << F_MQ) ? cfg16(34) : 1;
    printf("virtio-blk: features 0x%lx: flush %s, discard %s, write-zeroes %s, ro %s, mq %s\n",
           (unsigned long)f, f & (1ull << F_FLUSH) ? "yes" : "no",
           f & (1ull << F_DISCARD) ? "yes" : "no", f & (1ull << F_WRITE_ZEROES) ? "yes" : "no",
           f & (1ull << F_RO) ? "yes" : "no", f & (1ull << F_MQ) ? "yes" : "no");
    printf("virtio-blk: capacity %lu sectors, seg_max %u, blk_size %u, %u queues\n",
           (unsigned long)capacity, f & (1ull << F_SEG_MAX) ? cfg32(12) : 0,
           f & (1ull << F_BLK_SIZE) ? cfg32(20) : 512, queues_offered);
    if (f & (1ull << F_DISCARD))
        printf("virtio-blk: discard: max %u sectors, %u segments, alignment %u sectors\n",
               cfg32(36), cfg32(40), cfg32(44));
    *nq = (unsigned)cmdline_u64("mq", 1);
    if (*nq > 2 || *nq > queues_offered)
        guest_fail("mq=%u: the device offers %u queues (this test uses at most 2)", *nq,
                   queues_offered);
    printf("virtio-blk: queue 0 holds up to %u entries\n", vdev_queue_max(&dev, 0));
    uint16_t vectors[2];
    setup_interrupts(*nq, vectors);
    for (unsigned q = 0; q < *nq; q++) {
        vq_static(&queues[q], q);
        if (!vdev_setup_queue(&dev, q, &queues[q], VQ_SIZE, vectors[q]))
            guest_fail("queue %u setup failed", q);
    }
    vdev_set_status(&dev, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    return capacity;
}

static void get_id(void)
{
    char id[21];
    memset(id, 0, sizeof(id));
    header(0, T_GET_ID, 0);
    queues[0].desc[1] = (struct vq_desc){ addr(id), 20, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2 };
    status_desc(0, 2);
    expect_status(run(0, 0, "get-id"), S_OK, "get-id");
    printf("virtio-blk: serial '%s'\n", id);
    if (!cmdline_is("serial", id))
        guest_fail("GET_ID returned '%s', not the serial= on the command line", id);
}

static void read_only_checks(void)
{
    if (!(dev.features & (1ull << F_RO)))
        guest_fail("ro=1 but the device does not offer VIRTIO_BLK_F_RO");
    fill(data, 0xa5, 4096);
    expect_status(rw(0, T_OUT, 0, data, 4096, 2, "write"), S_IOERR, "write to a read-only disk");
    expect_status(rw(0, T_IN, 0, check, 4096, 2, "read"), S_OK, "read");
    expect_bytes(check, 0x5a, 4096, "read-only content");
}

/* The host makes writes (or reads) fail: the guest sees what the policy says. */
static void failure_checks(void)
{
    uint8_t want = cmdline_is("expect", "ioerr") ? S_IOERR : S_OK;
    if (cmdline_is("fail", "read")) {
        expect_status(rw(0, T_IN, 0, check, 4096, 1, "read"), want, "failing read");
        return;
    }
    fill(data, 0xa5, 4096);
    expect_status(rw(0, T_OUT, 0, data, 4096, 1, "write"), want, "failing write");
    if (want == S_OK && cmdline_u64("wait", 0)) {
        expect_status(rw(0, T_IN, 0, check, 4096, 1, "read"), S_OK, "read after the retry");
        expect_bytes(check, 0xa5, 4096, "retried write");
    }
}

/* MERGE_N requests of 4 KiB, request i at sector MERGE_SECTOR + 8 i on
 * buffers[i], each an indirect table in ring slot i, then one notify. */
static void batch(uint32_t type, uint8_t (*buffers[MERGE_N])[4096], const char *what)
{
    struct vq *vq = &queues[0];
    uint16_t dir = type == T_IN ? VIRTQ_DESC_F_WRITE : 0;
    for (unsigned i = 0; i < MERGE_N; i++) {
        mhdr[i] = (struct blk_hdr){ type, 0, MERGE_SECTOR + 8 * i };
        mstatus[i] = 0xff;
        mtable[i][0] = (struct vq_desc){ addr(&mhdr[i]), sizeof(mhdr[i]), VIRTQ_DESC_F_NEXT, 1 };
        mtable[i][1] = (struct vq_desc){ addr(buffers[i]), 4096, dir | VIRTQ_DESC_F_NEXT, 2 };
        mtable[i][2] = (struct vq_desc){ addr(&mstatus[i]), 1, VIRTQ_DESC_F_WRITE, 0 };
        vq->desc[i] = (struct vq_desc){ addr(mtable[i]), sizeof(mtable[i]), VIRTQ_DESC_F_INDIRECT, 0 };
        vq_post(vq, (uint16_t)i);
    }
    vdev_notify(&dev, 0);
    unsigned seen = 0;
    for (unsigned n = 0; n < MERGE_N; n++) {
        uint32_t id, len;
        if (!vq_wait_used(vq, &id, &len, WAIT_MS))
            guest_fail("%s: %u of %u requests answered", what, n, MERGE_N);
        if (id >= MERGE_N || (seen & (1u << id)))
            guest_fail("%s: used id %u unexpected", what, id);
        seen |= 1u << id;
    }
    for (unsigned i = 0; i < MERGE_N; i++)
        if (mstatus[i] != S_OK)
            guest_fail("%s: request %u: status 0x%x", what, i, mstatus[i]);
    printf("virtio-blk: merge: %u adjacent %s: OK\n", MERGE_N, what);
}

static void merge_checks(void)
{
    uint8_t (*bufs[MERGE_N])[4096];
    for (unsigned i = 0; i < MERGE_N; i++) {
        fill(mdata[i], (uint8_t)(0xe0 + i), 4096);
        bufs[i] = &mdata[i];
    }
    for (uint64_t r = cmdline_u64("rounds", 1); r > 1; r--)
        batch(T_OUT, bufs, "writes");
    batch(T_OUT, bufs, "writes");
    for (unsigned i = 0; i < MERGE_N; i++) {
        fill(mcheck[i], 0, 4096);
        bufs[i] = &mcheck[MERGE_N - 1 - i];   /* scattered: each chain keeps its own data */
    }
    batch(T_IN, bufs, "reads");
    for (unsigned i = 0; i < MERGE_N; i++)
        for (unsigned b = 0; b < 4096; b++)
            if (mcheck[MERGE_N - 1 - i][b] != 0xe0 + i)
                guest_fail("merged read %u: byte %u is 0x%02x, expected 0x%02x", i, b,
                           mcheck[MERGE_N - 1 - i][b], 0xe0 + i);
    printf("virtio-blk: merge: %u KiB read back as written\n", MERGE_N * 4);
}

static void data_checks(uint64_t capacity, unsigned nq)
{
    fill(data, 0xa5, 4096);
    expect_status(rw(0, T_OUT, 0, data, 4096, 3, "write chain"), S_OK, "write, 3 data descriptors");
    fill(data + 4096, 0x3c, 4096);
    expect_status(rw_indirect(T_OUT, 8, data + 4096, 4096, "write indirect"), S_OK,
                  "write, indirect table");
    expect_status(simple(T_FLUSH, 0, "flush"), S_OK, "flush");
    fill(check, 0, sizeof(check));
    expect_status(rw(0, T_IN, 0, check, 8192, 4, "read chain"), S_OK, "read, 4 data descriptors");
    if (memcmp(check, data, 8192))
        guest_fail("read back differs from what was written");
    fill(check, 0, sizeof(check));
    expect_status(rw_indirect(T_IN, 0, check, 8192, "read indirect"), S_OK, "read, indirect table");
    if (memcmp(check, data, 8192))
        guest_fail("indirect read back differs from what was written");
    printf("virtio-blk: 16 sectors read back as written\n");

    /* Discard 64 KiB at 64 KiB (cluster-aligned for qcow2), after writing it. */
    fill(data, 0x77, 8192);
    rw(0, T_OUT, 128, data, 8192, 1, "write before discard");
    expect_status(ranged(T_DISCARD, 128, 128, 0, "discard"), S_OK, "discard");
    expect_status(rw(0, T_IN, 128, check, 8192, 2, "read discarded"), S_OK, "read discarded");
    expect_bytes(check, 0, 8192, "discarded range");
    expect_status(ranged(T_WRITE_ZEROES, 256, 16, 1, "write-zeroes"), S_OK, "write-zeroes (unmap)");
    expect_status(rw(0, T_IN, 256, check, 8192, 2, "read zeroed"), S_OK, "read zeroed");
    expect_bytes(check, 0, 8192, "zeroed range");
    expect_status(ranged(T_DISCARD, 128, 1, 1, "discard with unmap"), S_UNSUPP,
                  "discard with the unmap flag");

    expect_status(rw(0, T_IN, capacity, check, 512, 1, "beyond"), S_IOERR, "read beyond the end");
    expect_status(rw(0, T_IN, capacity - 1, check, 1024, 1, "across"), S_IOERR,
                  "read across the end");
    expect_status(simple(99, 0, "type 99"), S_UNSUPP, "request type 99");
    if (nq > 1) {
        fill(data, 0xc3, 4096);
        expect_status(rw(1, T_OUT, 512, data, 4096, 2, "queue 1 write"), S_OK, "queue 1: write");
        expect_status(rw(1, T_IN, 512, check, 4096, 1, "queue 1 read"), S_OK, "queue 1: read");
        expect_bytes(check, 0xc3, 4096, "queue 1 read back");
    }
}

int main(const struct hvm_start_info *si)
{
    (void)si;
    mmio = vdev_start_guest(&dev, 2);
    printf("virtio-blk: found on %s\n", mmio ? "virtio-mmio" : "PCI");
    unsigned nq;
    uint64_t capacity = start(&nq);
    if (vdev_status(&dev) & STATUS_NEEDS_RESET)
        guest_fail("NEEDS_RESET right after DRIVER_OK");
    if (cmdline_u64("ro", 0))
        read_only_checks();
    else if (cmdline_is("fail", "write") || cmdline_is("fail", "read"))
        failure_checks();
    else if (cmdline_u64("merge", 0))
        merge_checks();
    else
        data_checks(capacity, nq);
    if (cmdline_u64("getid", 0))
        get_id();
    if (vdev_status(&dev) & STATUS_NEEDS_RESET)
        guest_fail("device reports NEEDS_RESET");
    printf("virtio-blk: %u queue interrupts\n", queue_irqs);
    vdev_reset(&dev);
    if (!mmio)
        vdev_msix_enable(&dev, false);
    printf("virtio-blk: ok\n");
    return 0;
}
