/* pci-enum: bus 0 through configuration mechanism #1 and ECAM (which must
 * agree), the virtio device's BARs sized and one of them moved: the device
 * must answer at the new address and no longer at the old one. */
#include "vguest.h"

static bool compare_mechanisms(unsigned slot)
{
    for (unsigned reg = 0; reg < 64; reg += 4) {
        if (reg == 0x04)
            continue;   /* status bits may change between reads */
        uint32_t a = pci_cf8_read32(slot, reg), b = pci_ecam_read32(slot, reg);
        if (a != b) {
            printf("FAIL: 00:%02x.0 reg 0x%02x: 0xcf8 gives 0x%08x, ECAM 0x%08x\n", slot, reg, a, b);
            return false;
        }
    }
    return true;
}

static unsigned enumerate(bool ecam)
{
    unsigned found = 0;
    for (unsigned slot = 0; slot < 32; slot++) {
        uint32_t id = pci_cf8_read32(slot, 0);
        if ((id & 0xffff) == 0xffff)
            continue;
        if (ecam && !compare_mechanisms(slot))
            guest_fail("configuration mechanisms disagree");
        uint32_t class_rev = pci_cf8_read32(slot, 8);
        printf("pci: 00:%02x.0 %04x:%04x class %06x\n", slot, id & 0xffff, id >> 16,
               class_rev >> 8);
        found++;
    }
    return found;
}

/* The BAR holding the virtio common configuration (vendor cap type 1). */
static int common_bar(unsigned slot, uint32_t *offset)
{
    for (unsigned cap = pci_find_cap(slot, 0x09, 0); cap; cap = pci_find_cap(slot, 0x09, cap)) {
        if (pci_read8(slot, cap + 3) == 1) {
            *offset = pci_read32(slot, cap + 8);
            return pci_read8(slot, cap + 4);
        }
    }
    return -1;
}

int main(const struct hvm_start_info *si)
{
    (void)si;
    bool ecam = pci_find_ecam();
    if (ecam)
        printf("pci: ECAM at 0x%lx (from MCFG)\n", (unsigned long)pci_ecam_base);
    else
        printf("pci: no MCFG, configuration mechanism #1 only\n");
    if (cmdline_is("need", "ecam") && !ecam)
        guest_fail("no MCFG table");
    unsigned n = enumerate(ecam);
    printf("pci: %u functions on bus 0%s\n", n, ecam ? ", 0xcf8 and ECAM agree" : "");
    int slot = pci_find_device(0x1af4, 0xffff, 0);
    if (slot < 0)
        guest_fail("no virtio device on bus 0");
    unsigned caps = 0, vendor_caps = 0;
    bool msix = false;
    for (unsigned cap = pci_find_cap((unsigned)slot, 0x09, 0); cap;
         cap = pci_find_cap((unsigned)slot, 0x09, cap))
        vendor_caps++;
    msix = pci_find_cap((unsigned)slot, 0x11, 0) != 0;
    caps = vendor_caps + msix;
    printf("pci: virtio at 00:%02x.0: %u capabilities, %u virtio structures, MSI-X %s\n", slot,
           caps, vendor_caps, msix ? "yes" : "no");
    if (vendor_caps < 3 || !msix)
        guest_fail("virtio capabilities missing");

    for (unsigned bar = 0; bar < 6; bar++) {
        bool io, is64;
        uint64_t size = pci_bar_size((unsigned)slot, bar, &io, &is64);
        if (size) {
            if (size & (size - 1))
                guest_fail("BAR%u size 0x%lx is not a power of two", bar, (unsigned long)size);
            uint64_t addr = pci_bar_addr((unsigned)slot, bar);
            if (addr & (size - 1))
                guest_fail("BAR%u at 0x%lx is not aligned to its size", bar, (unsigned long)addr);
            printf("pci: BAR%u %s size 0x%lx\n", bar, io ? "io" : is64 ? "mem64" : "mem32",
                   (unsigned long)size);
        }
        if (is64)
            bar++;
    }

    uint32_t offset;
    int bar = common_bar((unsigned)slot, &offset);
    if (bar < 0)
        guest_fail("no common configuration structure");
    pci_write16((unsigned)slot, 0x04, pci_read16((unsigned)slot, 0x04) | 0x2);
    uint64_t old = pci_bar_addr((unsigned)slot, (unsigned)bar);
    uint64_t target = old == 0xd0000000ull ? 0xd0100000ull : 0xd0000000ull;
    if (old >= (1ull << 32)) {
        pci_bar_set((unsigned)slot, (unsigned)bar, target);
        old = target;
        target = 0xd0100000ull;
    }
    /* num_queues (offset 18) and the device feature word 0 as a fingerprint. */
    mmio_write32(old + offset, 0);
    uint32_t f_old = mmio_read32(old + offset + 4);
    uint32_t nq = *(volatile uint16_t *)(uintptr_t)(old + offset + 18);
    pci_bar_set((unsigned)slot, (unsigned)bar, target);
    if (pci_bar_addr((unsigned)slot, (unsigned)bar) != target)
        guest_fail("BAR%d reads 0x%lx after writing 0x%lx", bar,
                   (unsigned long)pci_bar_addr((unsigned)slot, (unsigned)bar), (unsigned long)target);
    mmio_write32(target + offset, 0);
    uint32_t f_new = mmio_read32(target + offset + 4);
    uint32_t nq_new = *(volatile uint16_t *)(uintptr_t)(target + offset + 18);
    uint32_t at_old = mmio_read32(old + offset + 4);
    printf("pci: BAR%d moved 0x%lx -> 0x%lx: features 0x%08x -> 0x%08x, %u queues, old address reads 0x%08x\n",
           bar, (unsigned long)old, (unsigned long)target, f_old, f_new, nq_new, at_old);
    if (f_new != f_old || nq_new != nq || !nq)
        guest_fail("the device does not answer at the new BAR address");
    if (at_old == f_old)
        guest_fail("the device still answers at the old BAR address");
    /* Decoding off: the BAR must go quiet. */
    pci_write16((unsigned)slot, 0x04, pci_read16((unsigned)slot, 0x04) & ~0x2);
    uint32_t off_read = mmio_read32(target + offset + 4);
    pci_write16((unsigned)slot, 0x04, pci_read16((unsigned)slot, 0x04) | 0x2);
    if (off_read == f_old)
        guest_fail("memory decoding off, yet the BAR still answers");
    printf("pci: memory decoding off silences the BAR, on restores it (features 0x%08x)\n",
           mmio_read32(target + offset + 4));
    /* VIRTIO_PCI_CAP_PCI_CFG: the same register through config space. */
    unsigned cfg = 0;
    for (unsigned cap = pci_find_cap((unsigned)slot, 0x09, 0); cap;
         cap = pci_find_cap((unsigned)slot, 0x09, cap))
        if (pci_read8((unsigned)slot, cap + 3) == 5)
            cfg = cap;
    if (!cfg)
        guest_fail("no VIRTIO_PCI_CAP_PCI_CFG capability");
    uint32_t word = pci_read32((unsigned)slot, cfg + 4);
    pci_write32((unsigned)slot, cfg + 4, (word & ~0xffu) | (uint32_t)bar);
    pci_write32((unsigned)slot, cfg + 8, offset + 4);   /* device_feature */
    pci_write32((unsigned)slot, cfg + 12, 4);
    uint32_t via_cfg = pci_read32((unsigned)slot, cfg + 16);
    printf("pci: PCI_CFG window reads device_feature 0x%08x\n", via_cfg);
    if (via_cfg != f_old)
        guest_fail("PCI_CFG window: 0x%08x, the BAR says 0x%08x", via_cfg, f_old);
    pci_write32((unsigned)slot, cfg + 8, offset);       /* device_feature_select */
    pci_write32((unsigned)slot, cfg + 16, 1);
    uint32_t high = mmio_read32(target + offset + 4);
    printf("pci: PCI_CFG window write selects feature word 1: 0x%08x\n", high);
    if (!(high & 1))
        guest_fail("feature word 1 lacks VERSION_1 after a PCI_CFG write");
    mmio_write32(target + offset, 0);
    printf("pci-enum: ok\n");
    return 0;
}
