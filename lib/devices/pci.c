/* PCI bus 0 and its host bridge: configuration mechanism #1, ECAM, config
 * space with write masks, BARs (sizing, firmware-style assignment,
 * relocation when the guest moves them or toggles decoding) and INTx. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include "devices/pci.h"
#include "machine/acpi-aml.h"

#define CF8_PORT 0xcf8
#define CFC_PORT 0xcfc

struct pci_host {
    struct pci_device pd;          /* the host bridge itself at 00.0 */
    struct pci_bus bus;
    bool mapped_cf8, mapped_cfc, mapped_ecam;
};

/* ---- config space helpers -------------------------------------------- */

void pci_set_word(struct pci_device *pd, unsigned off, uint16_t v)
{
    pd->config[off] = (uint8_t)v;
    pd->config[off + 1] = (uint8_t)(v >> 8);
}

void pci_set_long(struct pci_device *pd, unsigned off, uint32_t v)
{
    for (unsigned i = 0; i < 4; i++)
        pd->config[off + i] = (uint8_t)(v >> (8 * i));
}

uint16_t pci_get_word(const struct pci_device *pd, unsigned off)
{
    return (uint16_t)(pd->config[off] | pd->config[off + 1] << 8);
}

uint32_t pci_get_long(const struct pci_device *pd, unsigned off)
{
    return (uint32_t)pd->config[off] | (uint32_t)pd->config[off + 1] << 8 |
           (uint32_t)pd->config[off + 2] << 16 | (uint32_t)pd->config[off + 3] << 24;
}

static void set_wmask_word(struct pci_device *pd, unsigned off, uint16_t v)
{
    pd->wmask[off] = (uint8_t)v;
    pd->wmask[off + 1] = (uint8_t)(v >> 8);
}

static void set_wmask_long(struct pci_device *pd, unsigned off, uint32_t v)
{
    for (unsigned i = 0; i < 4; i++)
        pd->wmask[off + i] = (uint8_t)(v >> (8 * i));
}

int pci_device_init(struct pci_device *pd, uint16_t vendor, uint16_t device, uint32_t class_code,
                    uint8_t revision, uint16_t subsys_vendor, uint16_t subsys_id)
{
    vmm_machine *m = pd->dev.m;
    if (!m->pci)
        return vmm_set_error(ENODEV, "needs a PCI bus: use machine type pc (on microvm, the "
                             "virtio-mmio variant, e.g. virtio-rng-device)");
    pd->bus = m->pci;
    memset(pd->config, 0, sizeof(pd->config));
    memset(pd->wmask, 0, sizeof(pd->wmask));
    pci_set_word(pd, PCI_VENDOR_ID, vendor);
    pci_set_word(pd, PCI_DEVICE_ID, device);
    pd->config[PCI_REVISION_ID] = revision;
    pd->config[PCI_CLASS_PROG] = (uint8_t)class_code;
    pci_set_word(pd, PCI_CLASS_DEVICE, (uint16_t)(class_code >> 8));
    pci_set_word(pd, PCI_SUBSYSTEM_VENDOR_ID, subsys_vendor);
    pci_set_word(pd, PCI_SUBSYSTEM_ID, subsys_id);
    set_wmask_word(pd, PCI_COMMAND, PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER |
                   PCI_COMMAND_INTX_DISABLE);
    pd->wmask[PCI_INTERRUPT_LINE] = 0xff;
    pd->config[PCI_INTERRUPT_PIN] = 1;     /* INTA# */
    pd->next_cap = 0x40;
    pd->msix.bar = -1;
    return 0;
}

void pci_device_add_bar(struct pci_device *pd, int bar, enum pci_bar_type type, uint64_t size,
                        const struct io_ops *ops)
{
    struct pci_bar *b = &pd->bars[bar];
    b->type = type;
    b->size = size;
    b->ops = ops;
    unsigned off = PCI_BAR0 + 4 * (unsigned)bar;
    switch (type) {
    case PCI_BAR_IO:
        pci_set_long(pd, off, 0x1);
        set_wmask_long(pd, off, (uint32_t)~(size - 1) & ~0x3u);
        break;
    case PCI_BAR_MEM32:
        pci_set_long(pd, off, 0x0);
        set_wmask_long(pd, off, (uint32_t)~(size - 1) & ~0xfu);
        break;
    case PCI_BAR_MEM64:
        pci_set_long(pd, off, 0x4 | 0x8);  /* 64-bit, prefetchable */
        set_wmask_long(pd, off, (uint32_t)~(size - 1) & ~0xfu);
        set_wmask_long(pd, off + 4, (uint32_t)(~(size - 1) >> 32));
        break;
    case PCI_BAR_NONE:
        break;
    }
}

uint8_t pci_device_add_capability(struct pci_device *pd, uint8_t id, uint8_t len)
{
    unsigned off = (pd->next_cap + 3u) & ~3u;
    if (off + len > PCI_CONFIG_SIZE)
        return 0;
    pd->config[off] = id;
    pd->config[off + 1] = pd->config[PCI_CAPABILITY_LIST];
    pd->config[PCI_CAPABILITY_LIST] = (uint8_t)off;   /* newest first */
    pci_set_word(pd, PCI_STATUS, pci_get_word(pd, PCI_STATUS) | PCI_STATUS_CAP_LIST);
    pd->next_cap = (uint8_t)(off + len < PCI_CONFIG_SIZE ? off + len : PCI_CONFIG_SIZE - 1);
    return (uint8_t)off;
}

/* ---- BARs ------------------------------------------------------------- */

/* Address the guest programmed (whether decoded or not). */
static uint64_t bar_programmed(const struct pci_device *pd, int bar)
{
    unsigned off = PCI_BAR0 + 4 * (unsigned)bar;
    switch (pd->bars[bar].type) {
    case PCI_BAR_IO: return pci_get_long(pd, off) & ~0x3u;
    case PCI_BAR_MEM32: return pci_get_long(pd, off) & ~0xfu;
    case PCI_BAR_MEM64:
        return (pci_get_long(pd, off) & ~0xfull) | (uint64_t)pci_get_long(pd, off + 4) << 32;
    default: return 0;
    }
}

/* Where the BAR decodes now, or 0. */
static uint64_t bar_effective(const struct pci_device *pd, int bar)
{
    const struct pci_bar *b = &pd->bars[bar];
    uint16_t cmd = pci_get_word(pd, PCI_COMMAND);
    uint64_t addr = bar_programmed(pd, bar);
    if (!b->size || !addr)
        return 0;
    if (b->type == PCI_BAR_IO)
        return (cmd & PCI_COMMAND_IO) && addr + b->size <= 0x10000 ? addr : 0;
    if (!(cmd & PCI_COMMAND_MEMORY))
        return 0;
    uint64_t last = addr + b->size - 1;
    if (last < addr || last >= (1ull << 46))
        return 0;
    /* A BAR whose end is the last byte below 4 GiB is a sizing pattern. */
    if (last == 0xffffffffull || (b->type == PCI_BAR_MEM32 && last > 0xffffffffull))
        return 0;
    return addr;
}

uint64_t pci_bar_address(const struct pci_device *pd, int bar)
{
    return pd->bars[bar].mapped ? pd->bars[bar].mapped_at : 0;
}

static void update_bar(struct pci_device *pd, int bar)
{
    struct pci_bar *b = &pd->bars[bar];
    uint64_t want = bar_effective(pd, bar);
    uint64_t old = b->mapped ? b->mapped_at : 0;
    if (want == old)
        return;
    struct address_space *as = b->type == PCI_BAR_IO ? &pd->dev.m->pio : &pd->dev.m->mmio;
    if (b->mapped)
        address_space_unmap(as, b->mapped_at);
    b->mapped = false;
    if (want && address_space_map(as, want, b->size, b->ops, pd, &pd->dev.lock,
                                  pd->dev.cls->name) == 0) {
        b->mapped = true;
        b->mapped_at = want;
    } else if (want) {
        vmm_log(VMM_LOG_DEBUG, "pci", "%s: BAR%d at 0x%" PRIx64 " not mapped: %s",
                pd->dev.cls->name, bar, want, vmm_get_error());
    }
    if (pd->bar_moved)
        pd->bar_moved(pd, bar, old, b->mapped ? b->mapped_at : 0);
}

static void update_mappings(struct pci_device *pd)
{
    for (int i = 0; i < PCI_NUM_BARS; i++)
        if (pd->bars[i].size)
            update_bar(pd, i);
}

static void unmap_all(struct pci_device *pd)
{
    for (int i = 0; i < PCI_NUM_BARS; i++) {
        struct pci_bar *b = &pd->bars[i];
        if (!b->mapped)
            continue;
        struct address_space *as = b->type == PCI_BAR_IO ? &pd->dev.m->pio : &pd->dev.m->mmio;
        address_space_unmap(as, b->mapped_at);
        b->mapped = false;
        if (pd->bar_moved)
            pd->bar_moved(pd, i, b->mapped_at, 0);
    }
}

/* ---- INTx --------------------------------------------------------------- */

unsigned pci_intx_gsi(unsigned slot, unsigned pin)
{
    return PCI_INTX_GSI_BASE + ((slot + pin - 1) & 3);
}

static void update_intx(struct pci_device *pd, bool was_asserted)
{
    bool disabled = pci_get_word(pd, PCI_COMMAND) & PCI_COMMAND_INTX_DISABLE;
    bool now = pd->intx_level && !disabled;
    if (now == was_asserted || !pd->bus)
        return;
    unsigned gsi = pci_intx_gsi(pd->devfn >> 3, pd->config[PCI_INTERRUPT_PIN]);
    struct pci_bus *bus = pd->bus;
    pthread_mutex_lock(&bus->lock);
    unsigned *count = &bus->intx_count[gsi - PCI_INTX_GSI_BASE];
    *count = now ? *count + 1 : (*count ? *count - 1 : 0);
    machine_set_irq(bus->m, gsi, *count > 0);
    pthread_mutex_unlock(&bus->lock);
}

static bool intx_asserted(const struct pci_device *pd)
{
    return pd->intx_level && !(pci_get_word(pd, PCI_COMMAND) & PCI_COMMAND_INTX_DISABLE);
}

void pci_set_intx(struct pci_device *pd, bool level)
{
    bool was = intx_asserted(pd);
    pd->intx_level = level;
    uint16_t status = pci_get_word(pd, PCI_STATUS);
    pci_set_word(pd, PCI_STATUS, level ? status | PCI_STATUS_INTERRUPT : status & ~PCI_STATUS_INTERRUPT);
    update_intx(pd, was);
}

/* ---- config accesses ---------------------------------------------------- */

uint32_t pci_config_read(struct pci_device *pd, unsigned offset, unsigned size)
{
    uint32_t v = 0;
    for (unsigned i = 0; i < size; i++)
        v |= (uint32_t)(offset + i < PCI_CONFIG_SIZE ? pd->config[offset + i] : 0) << (8 * i);
    if (pd->config_read_hook && offset < PCI_CONFIG_SIZE)
        v = pd->config_read_hook(pd, offset, size, v);
    return v;
}

static bool overlaps(unsigned off, unsigned size, unsigned start, unsigned len)
{
    return off < start + len && start < off + size;
}

void pci_config_write(struct pci_device *pd, unsigned offset, uint32_t value, unsigned size)
{
    bool intx_was = intx_asserted(pd);
    for (unsigned i = 0; i < size && offset + i < PCI_CONFIG_SIZE; i++) {
        uint8_t mask = pd->wmask[offset + i];
        uint8_t byte = (uint8_t)(value >> (8 * i));
        pd->config[offset + i] = (uint8_t)((pd->config[offset + i] & ~mask) | (byte & mask));
    }
    if (overlaps(offset, size, PCI_COMMAND, 2) || overlaps(offset, size, PCI_BAR0, 24))
        update_mappings(pd);
    if (overlaps(offset, size, PCI_COMMAND, 2))
        update_intx(pd, intx_was);
    if (pd->msix.cap && overlaps(offset, size, pd->msix.cap + 2u, 2))
        pci_msix_control_written(pd);
    if (pd->config_written)
        pd->config_written(pd, offset, size);
}

static struct pci_device *find_function(struct pci_bus *bus, unsigned busnr, unsigned devfn)
{
    if (busnr != 0 || (devfn & 7))
        return NULL;
    return bus->slots[devfn >> 3];
}

static uint32_t config_access(struct pci_bus *bus, unsigned busnr, unsigned devfn, unsigned reg,
                              unsigned size, bool write, uint32_t value)
{
    struct pci_device *pd = find_function(bus, busnr, devfn);
    uint32_t all_ones = size == 4 ? 0xffffffffu : (1u << (8 * size)) - 1;
    if (!pd)
        return all_ones;
    if (reg + size > PCI_ECAM_SIZE || (reg & (size - 1)))
        return all_ones;   /* unaligned or crossing the function: ignored */
    uint32_t result = 0;
    pthread_mutex_lock(&pd->dev.lock);
    if (write)
        pci_config_write(pd, reg, value, size);
    else
        result = pci_config_read(pd, reg, size);
    pthread_mutex_unlock(&pd->dev.lock);
    return result;
}

/* Mechanism #1: the address register at 0xcf8 (32-bit accesses only). */
static uint64_t cf8_read(void *opaque, uint64_t offset, unsigned size)
{
    struct pci_bus *bus = opaque;
    if (offset != 0 || size != 4)
        return 0xffffffffu;
    pthread_mutex_lock(&bus->lock);
    uint32_t v = bus->cf8;
    pthread_mutex_unlock(&bus->lock);
    return v;
}

static void cf8_write(void *opaque, uint64_t offset, uint64_t value, unsigned size)
{
    struct pci_bus *bus = opaque;
    if (offset != 0 || size != 4)
        return;
    pthread_mutex_lock(&bus->lock);
    bus->cf8 = (uint32_t)value & 0x80fffffcu;
    pthread_mutex_unlock(&bus->lock);
}

static bool cfc_decode(struct pci_bus *bus, uint64_t offset, unsigned *busnr, unsigned *devfn,
                       unsigned *reg)
{
    pthread_mutex_lock(&bus->lock);
    uint32_t a = bus->cf8;
    pthread_mutex_unlock(&bus->lock);
    if (!(a & 0x80000000u))
        return false;
    *busnr = (a >> 16) & 0xff;
    *devfn = (a >> 8) & 0xff;
    *reg = (a & 0xfc) + (unsigned)offset;
    return true;
}

static uint64_t cfc_read(void *opaque, uint64_t offset, unsigned size)
{
    unsigned busnr, devfn, reg;
    if (size > 4 || !cfc_decode(opaque, offset, &busnr, &devfn, &reg))
        return 0xffffffffu;
    return config_access(opaque, busnr, devfn, reg, size, false, 0);
}

static void cfc_write(void *opaque, uint64_t offset, uint64_t value, unsigned size)
{
    unsigned busnr, devfn, reg;
    if (size <= 4 && cfc_decode(opaque, offset, &busnr, &devfn, &reg))
        config_access(opaque, busnr, devfn, reg, size, true, (uint32_t)value);
}

/* ECAM: bus << 20 | devfn << 12 | register. */
static uint64_t ecam_read(void *opaque, uint64_t offset, unsigned size)
{
    if (size > 4)
        return ~0ull;
    return config_access(opaque, (unsigned)(offset >> 20), (offset >> 12) & 0xff,
                         offset & 0xfff, size, false, 0);
}

static void ecam_write(void *opaque, uint64_t offset, uint64_t value, unsigned size)
{
    if (size <= 4)
        config_access(opaque, (unsigned)(offset >> 20), (offset >> 12) & 0xff, offset & 0xfff,
                      size, true, (uint32_t)value);
}

static const struct io_ops cf8_ops = { cf8_read, cf8_write };
static const struct io_ops cfc_ops = { cfc_read, cfc_write };
static const struct io_ops ecam_ops = { ecam_read, ecam_write };

/* ---- registration ----------------------------------------------------- */

static uint64_t align_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) & ~(a - 1);
}

/* Give every BAR an address as firmware would, and enable decoding. */
static int assign_bars(struct pci_device *pd)
{
    struct pci_bus *bus = pd->bus;
    uint16_t cmd = 0;
    for (int i = 0; i < PCI_NUM_BARS; i++) {
        struct pci_bar *b = &pd->bars[i];
        unsigned off = PCI_BAR0 + 4 * (unsigned)i;
        if (b->type == PCI_BAR_IO) {
            uint64_t addr = align_up(bus->io_next, b->size);
            if (addr + b->size > PCI_IO_BASE + PCI_IO_SIZE)
                return vmm_set_error(ENOSPC, "PCI I/O window full (BAR%d, %" PRIu64 " bytes)", i,
                                     b->size);
            bus->io_next = (uint32_t)(addr + b->size);
            pci_set_long(pd, off, (uint32_t)addr | 0x1);
            cmd |= PCI_COMMAND_IO;
        } else if (b->type == PCI_BAR_MEM32 || b->type == PCI_BAR_MEM64) {
            uint64_t addr = align_up(bus->mmio_next, b->size);
            if (addr + b->size > PCI_MMIO_BASE + PCI_MMIO_SIZE)
                return vmm_set_error(ENOSPC, "PCI MMIO window full (BAR%d, %" PRIu64 " bytes)", i,
                                     b->size);
            bus->mmio_next = addr + b->size;
            uint32_t flags = pci_get_long(pd, off) & 0xf;
            pci_set_long(pd, off, (uint32_t)addr | flags);
            if (b->type == PCI_BAR_MEM64)
                pci_set_long(pd, off + 4, (uint32_t)(addr >> 32));
            cmd |= PCI_COMMAND_MEMORY;
        }
    }
    pci_set_word(pd, PCI_COMMAND, cmd);
    return 0;
}

int pci_device_register(struct pci_device *pd)
{
    struct pci_bus *bus = pd->bus;
    int slot = -1;
    pthread_mutex_lock(&bus->lock);
    for (int s = 0; s < PCI_SLOTS; s++) {
        if (!bus->slots[s]) {
            slot = s;
            break;
        }
    }
    pthread_mutex_unlock(&bus->lock);
    if (slot < 0)
        return vmm_set_error(ENOSPC, "PCI bus 0 has no free slot");
    pd->devfn = (uint8_t)(slot << 3);
    if (assign_bars(pd) < 0)
        return -1;
    if (pd->config[PCI_INTERRUPT_PIN])
        pd->config[PCI_INTERRUPT_LINE] = (uint8_t)pci_intx_gsi((unsigned)slot,
                                                               pd->config[PCI_INTERRUPT_PIN]);
    memcpy(pd->config_reset, pd->config, sizeof(pd->config));
    pthread_mutex_lock(&pd->dev.lock);
    update_mappings(pd);
    pthread_mutex_unlock(&pd->dev.lock);
    pthread_mutex_lock(&bus->lock);
    bus->slots[slot] = pd;
    pthread_mutex_unlock(&bus->lock);
    return 0;
}

void pci_device_unregister(struct pci_device *pd)
{
    if (!pd->bus)
        return;
    pthread_mutex_lock(&pd->bus->lock);
    if (pd->bus->slots[pd->devfn >> 3] == pd)
        pd->bus->slots[pd->devfn >> 3] = NULL;
    pthread_mutex_unlock(&pd->bus->lock);
    if (intx_asserted(pd))
        pci_set_intx(pd, false);
    unmap_all(pd);
    pci_msix_release(pd);
}

void pci_device_reset(struct pci_device *pd)
{
    bool was = intx_asserted(pd);
    pd->intx_level = false;
    memcpy(pd->config, pd->config_reset, sizeof(pd->config));
    update_intx(pd, was);
    update_mappings(pd);
    pci_msix_reset(pd);
}

int pci_device_restore_config(struct pci_device *pd, const uint8_t *saved)
{
    if (memcmp(saved, pd->config, 4) || memcmp(saved + PCI_REVISION_ID, pd->config + PCI_REVISION_ID, 4))
        return vmm_set_error(EINVAL, "%s: saved config space is for another device",
                             pd->dev.cls->name);
    bool was = intx_asserted(pd);
    for (unsigned i = 0; i < PCI_CONFIG_SIZE; i++)
        pd->config[i] = (uint8_t)((pd->config[i] & ~pd->wmask[i]) | (saved[i] & pd->wmask[i]));
    update_mappings(pd);
    update_intx(pd, was);
    if (pd->msix.cap)
        pci_msix_control_written(pd);
    return 0;
}

/* ---- the host bridge -------------------------------------------------- */

static int pci_host_realize(struct device *dev)
{
    struct pci_host *h = (struct pci_host *)dev;
    struct pci_bus *bus = &h->bus;
    vmm_machine *m = dev->m;
    if (address_space_map(&m->pio, CF8_PORT, 4, &cf8_ops, bus, NULL, "pci-host") < 0)
        return -1;
    h->mapped_cf8 = true;
    if (address_space_map(&m->pio, CFC_PORT, 4, &cfc_ops, bus, NULL, "pci-host") < 0)
        return -1;
    h->mapped_cfc = true;
    if (address_space_map(&m->mmio, PCI_ECAM_BASE, (uint64_t)PCI_ECAM_BUSES << 20, &ecam_ops,
                          bus, NULL, "pci-host ECAM") < 0)
        return -1;
    h->mapped_ecam = true;
    return 0;
}

static void pci_host_unrealize(struct device *dev)
{
    struct pci_host *h = (struct pci_host *)dev;
    vmm_machine *m = dev->m;
    if (h->mapped_cf8)
        address_space_unmap(&m->pio, CF8_PORT);
    if (h->mapped_cfc)
        address_space_unmap(&m->pio, CFC_PORT);
    if (h->mapped_ecam)
        address_space_unmap(&m->mmio, PCI_ECAM_BASE);
}

/* The bus lives from pci_host_create on: devices realized before a failed
 * start already took routes from it. */
static void pci_host_finalize(struct device *dev)
{
    struct pci_host *h = (struct pci_host *)dev;
    pci_bus_release_routes(&h->bus);
    pthread_mutex_destroy(&h->bus.lock);
    if (dev->m->pci == &h->bus)
        dev->m->pci = NULL;
}

static void pci_host_reset(struct device *dev)
{
    struct pci_host *h = (struct pci_host *)dev;
    pthread_mutex_lock(&h->bus.lock);
    h->bus.cf8 = 0;
    pthread_mutex_unlock(&h->bus.lock);
    memcpy(h->pd.config, h->pd.config_reset, sizeof(h->pd.config));
}

const struct device_class device_pci_host = {
    .name = "pci-host",
    .help = "PCIe host bridge: bus 0, configuration ports 0xcf8/0xcfc and ECAM",
    .instance_size = sizeof(struct pci_host),
    .platform = true,
    .realize = pci_host_realize,
    .unrealize = pci_host_unrealize,
    .finalize = pci_host_finalize,
    .reset = pci_host_reset,
};

/* Runs from the machine type's init, before any device is realized, so PCI
 * devices find m->pci.  The host device goes last in the device list so it
 * is freed after the devices on its bus. */
int pci_host_create(vmm_machine *m)
{
    if (machine_add_device_opts(m, "pci-host", true) < 0)
        return -1;
    struct pci_host *h = (struct pci_host *)m->devices_tail;
    struct pci_bus *bus = &h->bus;
    bus->m = m;
    pthread_mutex_init(&bus->lock, NULL);
    bus->mmio_next = PCI_MMIO_BASE;
    bus->io_next = PCI_IO_BASE;
    bus->next_gsi = PCI_MSI_GSI_BASE;
    m->pci = bus;
    /* The host bridge at 00.0: Red Hat's generic PCIe host bridge IDs. */
    h->pd.dev.m = m;
    if (pci_device_init(&h->pd, 0x1b36, 0x0008, 0x060000, 0, 0x1af4, 0x1100) < 0)
        return -1;
    h->pd.config[PCI_INTERRUPT_PIN] = 0;
    h->pd.wmask[PCI_INTERRUPT_LINE] = 0;
    memcpy(h->pd.config_reset, h->pd.config, sizeof(h->pd.config));
    h->pd.devfn = 0;
    bus->slots[0] = &h->pd;
    return 0;
}

/* ---- ACPI: \_SB.PCI0 ---------------------------------------------------- */

void pci_build_aml(vmm_machine *m, struct aml *a)
{
    (void)m;
    aml_device_open(a, "PCI0");
    aml_name_eisaid(a, "_HID", "PNP0A08");
    aml_name_eisaid(a, "_CID", "PNP0A03");
    aml_name_integer(a, "_SEG", 0);
    aml_name_integer(a, "_BBN", 0);
    aml_name_integer(a, "_UID", 0);

    struct aml_res r;
    aml_res_init(&r);
    aml_res_word_bus(&r, 0, PCI_ECAM_BUSES - 1);
    aml_res_io(&r, CF8_PORT, 8);
    aml_res_word_io(&r, 0x0000, 0x0cf7);
    aml_res_word_io(&r, 0x0d00, 0xffff);
    aml_res_dword_memory(&r, 0x000a0000, 0x000bffff);
    aml_res_dword_memory(&r, PCI_MMIO_BASE, PCI_MMIO_BASE + PCI_MMIO_SIZE - 1);
    aml_name_resources(a, "_CRS", &r);

    /* _PRT: every slot's INTA..INTD to its GSI (no link devices). */
    aml_name(a, "_PRT");
    aml_package_open(a, PCI_SLOTS * 4);
    for (unsigned slot = 0; slot < PCI_SLOTS; slot++) {
        for (unsigned pin = 1; pin <= 4; pin++) {
            aml_package_open(a, 4);
            aml_integer(a, ((uint64_t)slot << 16) | 0xffff);
            aml_integer(a, pin - 1);
            aml_integer(a, 0);
            aml_integer(a, pci_intx_gsi(slot, pin));
            aml_close(a);
        }
    }
    aml_close(a);
    aml_close(a); /* Device */
}
