/* PCI configuration access and BAR handling for the test guests. */
#include "vguest.h"

uint64_t pci_ecam_base;

bool pci_find_ecam(void)
{
    const struct acpi_sdt_header *mcfg = acpi_find_table("MCFG");
    if (!mcfg || mcfg->length < 44 + 16)
        return false;
    const uint8_t *e = (const uint8_t *)mcfg + 44;
    uint64_t base;
    memcpy(&base, e, 8);
    uint16_t segment = (uint16_t)(e[8] | e[9] << 8);
    if (segment != 0 || e[10] != 0)
        return false;
    pci_ecam_base = base;
    return true;
}

uint32_t pci_cf8_read32(unsigned slot, unsigned reg)
{
    outl(0xcf8, 0x80000000u | slot << 11 | (reg & 0xfc));
    return inl(0xcfc);
}

void pci_cf8_write32(unsigned slot, unsigned reg, uint32_t v)
{
    outl(0xcf8, 0x80000000u | slot << 11 | (reg & 0xfc));
    outl(0xcfc, v);
}

uint32_t pci_ecam_read32(unsigned slot, unsigned reg)
{
    return mmio_read32(pci_ecam_base + ((uint64_t)slot << 15) + (reg & 0xffc));
}

void pci_ecam_write32(unsigned slot, unsigned reg, uint32_t v)
{
    mmio_write32(pci_ecam_base + ((uint64_t)slot << 15) + (reg & 0xffc), v);
}

uint32_t pci_read32(unsigned slot, unsigned reg)
{
    return pci_ecam_base ? pci_ecam_read32(slot, reg) : pci_cf8_read32(slot, reg);
}

void pci_write32(unsigned slot, unsigned reg, uint32_t v)
{
    if (pci_ecam_base)
        pci_ecam_write32(slot, reg, v);
    else
        pci_cf8_write32(slot, reg, v);
}

uint16_t pci_read16(unsigned slot, unsigned reg)
{
    return (uint16_t)(pci_read32(slot, reg & ~3u) >> (8 * (reg & 2)));
}

uint8_t pci_read8(unsigned slot, unsigned reg)
{
    return (uint8_t)(pci_read32(slot, reg & ~3u) >> (8 * (reg & 3)));
}

/* Read-modify-write of the containing dword.  Callers never touch the
 * status register's write-1-to-clear bits through this. */
void pci_write16(unsigned slot, unsigned reg, uint16_t v)
{
    uint32_t d = pci_read32(slot, reg & ~3u);
    unsigned shift = 8 * (reg & 2);
    d = (d & ~(0xffffu << shift)) | (uint32_t)v << shift;
    if ((reg & ~3u) == 0x04)
        d &= 0xffff;    /* never write 1s back into the status register */
    pci_write32(slot, reg & ~3u, d);
}

unsigned pci_find_cap(unsigned slot, uint8_t id, unsigned after)
{
    if (!(pci_read16(slot, 0x06) & 0x10))
        return 0;
    unsigned off = after ? pci_read8(slot, after + 1) : pci_read8(slot, 0x34);
    for (unsigned guard = 0; off && guard < 48; guard++) {
        off &= 0xfc;
        if (pci_read8(slot, off) == id)
            return off;
        off = pci_read8(slot, off + 1);
    }
    return 0;
}

uint64_t pci_bar_addr(unsigned slot, unsigned bar)
{
    uint32_t lo = pci_read32(slot, 0x10 + 4 * bar);
    if (lo & 1)
        return lo & ~3u;
    uint64_t addr = lo & ~0xfu;
    if ((lo & 6) == 4)
        addr |= (uint64_t)pci_read32(slot, 0x14 + 4 * bar) << 32;
    return addr;
}

void pci_bar_set(unsigned slot, unsigned bar, uint64_t addr)
{
    uint32_t lo = pci_read32(slot, 0x10 + 4 * bar);
    pci_write32(slot, 0x10 + 4 * bar, (uint32_t)addr);
    if (!(lo & 1) && (lo & 6) == 4)
        pci_write32(slot, 0x14 + 4 * bar, (uint32_t)(addr >> 32));
}

uint64_t pci_bar_size(unsigned slot, unsigned bar, bool *is_io, bool *is64)
{
    unsigned reg = 0x10 + 4 * bar;
    uint16_t cmd = pci_read16(slot, 0x04);
    pci_write16(slot, 0x04, cmd & ~3u);          /* no decoding while sizing */
    uint32_t lo = pci_read32(slot, reg);
    *is_io = lo & 1;
    *is64 = !*is_io && (lo & 6) == 4;
    pci_write32(slot, reg, 0xffffffffu);
    uint32_t mask_lo = pci_read32(slot, reg);
    pci_write32(slot, reg, lo);
    uint64_t mask = *is_io ? (mask_lo & ~3u) : (mask_lo & ~0xfu);
    if (*is64) {
        uint32_t hi = pci_read32(slot, reg + 4);
        pci_write32(slot, reg + 4, 0xffffffffu);
        mask |= (uint64_t)pci_read32(slot, reg + 4) << 32;
        pci_write32(slot, reg + 4, hi);
    } else {
        mask |= 0xffffffff00000000ull;
    }
    if (*is_io)
        mask |= 0xffff0000u;     /* I/O BARs may leave the upper half 0 */
    pci_write16(slot, 0x04, cmd);
    return mask_lo == 0 ? 0 : ~mask + 1;
}

int pci_find_device(uint16_t vendor, uint16_t device_a, uint16_t device_b)
{
    for (unsigned slot = 0; slot < 32; slot++) {
        uint32_t id = pci_read32(slot, 0);
        if ((id & 0xffff) != vendor)
            continue;
        uint16_t dev = (uint16_t)(id >> 16);
        if (dev == device_a || dev == device_b || device_a == 0xffff)
            return (int)slot;
    }
    return -1;
}
