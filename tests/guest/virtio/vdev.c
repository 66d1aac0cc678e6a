/* Virtio transports (modern PCI, MMIO v2) and split rings for the test
 * guests, from the virtio 1.2 specification. */
#include "vguest.h"

/* Common configuration (virtio 1.2 §4.1.4.3). */
enum {
    C_DFSELECT = 0, C_DF = 4, C_GFSELECT = 8, C_GF = 12, C_MSIX = 16, C_NUMQ = 18,
    C_STATUS = 20, C_GEN = 21, C_QSELECT = 22, C_QSIZE = 24, C_QMSIX = 26, C_QENABLE = 28,
    C_QNOFF = 30, C_QDESC = 32, C_QDRIVER = 40, C_QDEVICE = 48,
};

/* MMIO registers (virtio 1.2 §4.2.2). */
enum {
    M_MAGIC = 0, M_VERSION = 4, M_DEVID = 8, M_DF = 0x10, M_DFSEL = 0x14, M_GF = 0x20,
    M_GFSEL = 0x24, M_QSEL = 0x30, M_QMAX = 0x34, M_QNUM = 0x38, M_QREADY = 0x44,
    M_QNOTIFY = 0x50, M_ISR = 0x60, M_ACK = 0x64, M_STATUS = 0x70, M_QDESC = 0x80,
    M_QDRIVER = 0x90, M_QDEVICE = 0xa0,
};

static inline void w16(uint64_t a, uint16_t v) { *(volatile uint16_t *)(uintptr_t)a = v; }
static inline uint16_t r16(uint64_t a) { return *(volatile uint16_t *)(uintptr_t)a; }
static inline void barrier(void) { __asm__ volatile("mfence" ::: "memory"); }

static void w64_split(uint64_t a, uint64_t v)
{
    mmio_write32(a, (uint32_t)v);
    mmio_write32(a + 4, (uint32_t)(v >> 32));
}

/* ---- PCI ------------------------------------------------------------ */

static uint64_t cap_address(unsigned slot, unsigned cap, uint8_t *bar_out)
{
    uint8_t bar = pci_read8(slot, cap + 4);
    uint32_t offset = pci_read32(slot, cap + 8);
    *bar_out = bar;
    return pci_bar_addr(slot, bar) + offset;
}

#define RELOCATE_TO 0xd0000000ull

bool vdev_find_pci(struct vdev *d, uint16_t id)
{
    memset(d, 0, sizeof(*d));
    d->transport = VT_PCI;
    d->gsi = -1;
    int slot = pci_find_device(0x1af4, (uint16_t)(0x1040 + id),
                               id == 4 ? 0x1005 : id == 2 ? 0x1001 : id == 1 ? 0x1000 : 0x1003);
    if (slot < 0)
        return false;
    d->slot = (unsigned)slot;
    /* BARs 64-bit firmware put above 4 GiB are out of our page tables. */
    for (unsigned bar = 0; bar < 6; bar++) {
        bool io, is64;
        uint64_t size = pci_bar_size(d->slot, bar, &io, &is64);
        if (size && !io && pci_bar_addr(d->slot, bar) + size > (1ull << 32)) {
            printf("pci: moving BAR%u (0x%lx bytes) below 4 GiB\n", bar, (unsigned long)size);
            pci_bar_set(d->slot, bar, RELOCATE_TO);
        }
        if (is64)
            bar++;
    }
    pci_write16(d->slot, 0x04, pci_read16(d->slot, 0x04) | 0x6);  /* memory, bus master */
    for (unsigned cap = pci_find_cap(d->slot, 0x09, 0); cap; cap = pci_find_cap(d->slot, 0x09, cap)) {
        uint8_t type = pci_read8(d->slot, cap + 3), bar;
        uint64_t addr = cap_address(d->slot, cap, &bar);
        switch (type) {
        case 1: if (!d->common) d->common = addr; break;
        case 2:
            if (!d->notify) {
                d->notify = addr;
                d->notify_mult = pci_read32(d->slot, cap + 16);
            }
            break;
        case 3: if (!d->isr) d->isr = addr; break;
        case 4: if (!d->devcfg) d->devcfg = addr; break;
        default: break;
        }
    }
    unsigned msix = pci_find_cap(d->slot, 0x11, 0);
    if (msix) {
        uint32_t table = pci_read32(d->slot, msix + 4);
        d->msix_table = pci_bar_addr(d->slot, table & 7) + (table & ~7u);
        d->msix_vectors = (pci_read16(d->slot, msix + 2) & 0x7ff) + 1u;
    }
    return d->common && d->notify && d->isr;
}

void vdev_msix_vector(struct vdev *d, unsigned entry, uint8_t vector, uint32_t apic_id)
{
    uint64_t e = d->msix_table + 16ull * entry;
    mmio_write32(e + 12, 1);                          /* masked while we write */
    mmio_write32(e, 0xfee00000u | apic_id << 12);
    mmio_write32(e + 4, 0);
    mmio_write32(e + 8, vector);                      /* fixed, edge */
    mmio_write32(e + 12, 0);
}

void vdev_msix_enable(struct vdev *d, bool on)
{
    unsigned cap = pci_find_cap(d->slot, 0x11, 0);
    uint16_t ctrl = pci_read16(d->slot, cap + 2);
    ctrl = on ? (ctrl | 0x8000) & ~0x4000 : ctrl & ~0x8000;
    uint32_t dword = pci_read32(d->slot, cap);
    pci_write32(d->slot, cap, (dword & 0xffff) | (uint32_t)ctrl << 16);
}

void vdev_msix_simple(struct vdev *d, uint8_t config_vec, uint8_t queue_vec)
{
    if (d->transport != VT_PCI)
        return;
    vdev_msix_vector(d, 0, config_vec, x2apic_id());
    vdev_msix_vector(d, 1, queue_vec, x2apic_id());
    vdev_msix_enable(d, true);
    vdev_config_vector(d, 0);
}

void vdev_config_vector(struct vdev *d, uint16_t vector)
{
    if (d->transport == VT_PCI)
        w16(d->common + C_MSIX, vector);
}

/* ---- MMIO ----------------------------------------------------------- */

/* Walk the DSDT for LNRO0005 devices: the string, then the next
 * Memory32Fixed (0x86) and Extended Interrupt (0x89) descriptors. */
static unsigned dsdt_virtio_mmio(uint64_t *bases, int *gsis, unsigned max)
{
    const struct acpi_sdt_header *fadt = acpi_find_table("FACP");
    if (!fadt)
        return 0;
    uint64_t dsdt = 0;
    if (fadt->length >= 148)
        memcpy(&dsdt, (const uint8_t *)fadt + 140, 8);
    if (!dsdt) {
        uint32_t d32;
        memcpy(&d32, (const uint8_t *)fadt + 40, 4);
        dsdt = d32;
    }
    const uint8_t *p = (const uint8_t *)(uintptr_t)dsdt;
    uint32_t len;
    memcpy(&len, p + 4, 4);
    unsigned n = 0;
    for (uint32_t i = 36; i + 8 < len && n < max; i++) {
        if (memcmp(p + i, "LNRO0005", 8))
            continue;
        uint64_t base = 0;
        int gsi = -1;
        for (uint32_t j = i + 8; j + 9 < len && j < i + 200; j++) {
            if (!base && p[j] == 0x86 && p[j + 1] == 9 && p[j + 2] == 0) {
                uint32_t b;
                memcpy(&b, p + j + 4, 4);
                base = b;
            }
            if (base && gsi < 0 && p[j] == 0x89 && p[j + 2] == 0 && p[j + 4] >= 1) {
                uint32_t g;
                memcpy(&g, p + j + 5, 4);
                gsi = (int)g;
                break;
            }
        }
        if (base) {
            bases[n] = base;
            gsis[n] = gsi;
            n++;
        }
    }
    return n;
}

bool vdev_find_mmio(struct vdev *d, uint32_t id)
{
    memset(d, 0, sizeof(*d));
    d->transport = VT_MMIO;
    uint64_t bases[32];
    int gsis[32];
    unsigned n = dsdt_virtio_mmio(bases, gsis, 32);
    for (unsigned i = 0; i < n; i++) {
        if (mmio_read32(bases[i] + M_MAGIC) != 0x74726976u)
            continue;
        uint32_t version = mmio_read32(bases[i] + M_VERSION);
        if (mmio_read32(bases[i] + M_DEVID) != id)
            continue;
        if (version != 2) {
            printf("virtio-mmio: device at 0x%lx is version %u, not 2\n",
                   (unsigned long)bases[i], version);
            continue;
        }
        d->base = bases[i];
        d->gsi = gsis[i];
        return true;
    }
    return false;
}

/* ---- both --------------------------------------------------------------- */

bool vdev_start_guest(struct vdev *d, uint16_t id)
{
    x2apic_enable();
    pic_mask_all();
    bool mmio = cmdline_is("transport", "mmio");
    if (!mmio)
        pci_find_ecam();
    if (mmio ? !vdev_find_mmio(d, id) : !vdev_find_pci(d, id))
        guest_fail("no virtio device %u on %s", id, mmio ? "virtio-mmio" : "PCI");
    return mmio;
}

uint8_t vdev_status(struct vdev *d)
{
    return d->transport == VT_PCI ? mmio_read8(d->common + C_STATUS)
                                  : (uint8_t)mmio_read32(d->base + M_STATUS);
}

void vdev_set_status(struct vdev *d, uint8_t s)
{
    if (d->transport == VT_PCI)
        mmio_write8(d->common + C_STATUS, s);
    else
        mmio_write32(d->base + M_STATUS, s);
}

void vdev_reset(struct vdev *d)
{
    vdev_set_status(d, 0);
    for (unsigned i = 0; i < 100000 && vdev_status(d) != 0; i++)
        cpu_relax();
}

uint64_t vdev_offered(struct vdev *d)
{
    uint64_t f = 0;
    for (uint32_t sel = 0; sel < 2; sel++) {
        if (d->transport == VT_PCI) {
            mmio_write32(d->common + C_DFSELECT, sel);
            f |= (uint64_t)mmio_read32(d->common + C_DF) << (32 * sel);
        } else {
            mmio_write32(d->base + M_DFSEL, sel);
            f |= (uint64_t)mmio_read32(d->base + M_DF) << (32 * sel);
        }
    }
    return f;
}

bool vdev_negotiate(struct vdev *d, uint64_t want)
{
    vdev_reset(d);
    vdev_set_status(d, STATUS_ACK);
    vdev_set_status(d, STATUS_ACK | STATUS_DRIVER);
    uint64_t offered = vdev_offered(d);
    if (!(offered & (1ull << VIRTIO_F_VERSION_1))) {
        printf("virtio: device does not offer VERSION_1 (features 0x%lx)\n", (unsigned long)offered);
        return false;
    }
    d->features = (want & offered) | (1ull << VIRTIO_F_VERSION_1);
    for (uint32_t sel = 0; sel < 2; sel++) {
        uint32_t half = (uint32_t)(d->features >> (32 * sel));
        if (d->transport == VT_PCI) {
            mmio_write32(d->common + C_GFSELECT, sel);
            mmio_write32(d->common + C_GF, half);
        } else {
            mmio_write32(d->base + M_GFSEL, sel);
            mmio_write32(d->base + M_GF, half);
        }
    }
    vdev_set_status(d, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK);
    if (!(vdev_status(d) & STATUS_FEATURES_OK)) {
        printf("virtio: device refused features 0x%lx\n", (unsigned long)d->features);
        return false;
    }
    return true;
}

void vdev_raw_queue(struct vdev *d, unsigned q, uint16_t n, uint64_t desc, uint64_t avail,
                    uint64_t used)
{
    if (d->transport == VT_PCI) {
        w16(d->common + C_QSELECT, (uint16_t)q);
        w16(d->common + C_QSIZE, n);
        w64_split(d->common + C_QDESC, desc);
        w64_split(d->common + C_QDRIVER, avail);
        w64_split(d->common + C_QDEVICE, used);
        w16(d->common + C_QENABLE, 1);
    } else {
        mmio_write32(d->base + M_QSEL, q);
        mmio_write32(d->base + M_QNUM, n);
        w64_split(d->base + M_QDESC, desc);
        w64_split(d->base + M_QDRIVER, avail);
        w64_split(d->base + M_QDEVICE, used);
        mmio_write32(d->base + M_QREADY, 1);
    }
}

uint16_t vdev_queue_max(struct vdev *d, unsigned q)
{
    if (d->transport == VT_PCI) {
        w16(d->common + C_QSELECT, (uint16_t)q);
        return r16(d->common + C_QSIZE);
    }
    mmio_write32(d->base + M_QSEL, q);
    return (uint16_t)mmio_read32(d->base + M_QMAX);
}

bool vdev_setup_queue(struct vdev *d, unsigned q, struct vq *vq, uint16_t n, uint16_t vector)
{
    uint16_t max = vdev_queue_max(d, q);
    if (!max) {
        printf("virtio: queue %u does not exist\n", q);
        return false;
    }
    if (n > max)
        n = max;
    vq->size = n;
    vq->last_used = 0;
    memset(vq->desc, 0, sizeof(struct vq_desc) * VQ_SIZE);
    memset(vq->avail, 0, sizeof(*vq->avail));
    memset(vq->used, 0, sizeof(*vq->used));
    if (d->transport == VT_PCI) {
        w16(d->common + C_QMSIX, vector);
        if (vector != 0xffff && r16(d->common + C_QMSIX) != vector) {
            printf("virtio: queue %u refused MSI-X vector %u\n", q, vector);
            return false;
        }
    }
    vdev_raw_queue(d, q, n, (uint64_t)(uintptr_t)vq->desc, (uint64_t)(uintptr_t)vq->avail,
                   (uint64_t)(uintptr_t)vq->used);
    return true;
}

void vdev_notify(struct vdev *d, unsigned q)
{
    barrier();
    if (d->transport == VT_PCI) {
        w16(d->common + C_QSELECT, (uint16_t)q);
        uint16_t off = r16(d->common + C_QNOFF);
        w16(d->notify + (uint64_t)off * d->notify_mult, (uint16_t)q);
    } else {
        mmio_write32(d->base + M_QNOTIFY, q);
    }
}

uint8_t vdev_isr(struct vdev *d)
{
    if (d->transport == VT_PCI)
        return mmio_read8(d->isr);
    uint32_t isr = mmio_read32(d->base + M_ISR);
    mmio_write32(d->base + M_ACK, isr);
    return (uint8_t)isr;
}

/* ---- rings ---------------------------------------------------------------- */

static struct vq_desc descs[4][VQ_SIZE] __attribute__((aligned(16)));
static struct vq_avail avails[4] __attribute__((aligned(4)));
static struct vq_used useds[4] __attribute__((aligned(4096)));

void vq_static(struct vq *vq, unsigned i)
{
    vq->desc = descs[i];
    vq->avail = &avails[i];
    vq->used = &useds[i];
}

void vq_post(struct vq *vq, uint16_t head)
{
    vq->avail->ring[vq->avail->idx % vq->size] = head;
    vq->avail->used_event = vq->last_used;   /* EVENT_IDX: interrupt for the next one */
    barrier();
    vq->avail->idx++;
}

bool vq_wait_used(struct vq *vq, uint32_t *id, uint32_t *len, unsigned ms)
{
    for (unsigned t = 0; t < ms * 10; t++) {
        barrier();
        if (*(volatile uint16_t *)&vq->used->idx != vq->last_used) {
            struct vq_used_elem e = vq->used->ring[vq->last_used % vq->size];
            vq->last_used++;
            *id = e.id;
            *len = e.len;
            return true;
        }
        udelay(100);
    }
    return false;
}

bool ioapic_route_level(unsigned gsi, uint8_t vector)
{
    struct madt_info madt;
    if (!madt_parse(&madt) || !madt.ioapic_count)
        return false;
    ioapic_set_base(madt.ioapic_base);
    unsigned pins = ioapic_max_redirection() + 1;
    if (gsi < madt.ioapic_gsi_base || gsi - madt.ioapic_gsi_base >= pins)
        return false;
    unsigned pin = gsi - madt.ioapic_gsi_base;
    uint8_t reg = (uint8_t)(0x10 + 2 * pin);
    ioapic_write(reg, APIC_LVT_MASKED);
    ioapic_write((uint8_t)(reg + 1), x2apic_id() << 24);
    ioapic_write(reg, vector | (1u << 15));   /* fixed, physical, active high, level */
    return true;
}

/* ---- interrupt counting ------------------------------------------------------ */

volatile unsigned vdev_queue_irqs, vdev_config_irqs;
static struct vdev *counted_dev;

static void count_queue(struct interrupt_frame *f) { (void)f; vdev_queue_irqs++; x2apic_eoi(); }
static void count_config(struct interrupt_frame *f) { (void)f; vdev_config_irqs++; x2apic_eoi(); }

/* A level line: the ISR read (PCI) or status + ack (MMIO) lowers it. */
static void count_line(struct interrupt_frame *f)
{
    (void)f;
    uint8_t isr = vdev_isr(counted_dev);
    if (isr & 1)
        vdev_queue_irqs++;
    if (isr & 2)
        vdev_config_irqs++;
    x2apic_eoi();
}

void vdev_count_irqs(struct vdev *d, uint8_t queue_vec, uint8_t config_vec, uint8_t line_vec)
{
    counted_dev = d;
    idt_set_handler(queue_vec, count_queue);
    idt_set_handler(config_vec, count_config);
    idt_set_handler(line_vec, count_line);
}
