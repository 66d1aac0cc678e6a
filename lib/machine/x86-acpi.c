/* ACPI tables (RSDP, XSDT, FADT, FACS, MADT, DSDT) and the e820 map. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "devices/acpi-pm.h"
#include "devices/pci.h"
#include "devices/virtio/virtio.h"
#include "machine/acpi-aml.h"
#include "machine/machine.h"
#include "machine/x86.h"

unsigned x86_build_e820(const vmm_machine *m, struct e820_entry *out)
{
    unsigned n = 0;
    out[n++] = (struct e820_entry){ 0, X86_EBDA_START, E820_RAM };
    out[n++] = (struct e820_entry){ X86_EBDA_START, 0xa0000 - X86_EBDA_START, E820_RESERVED };
    out[n++] = (struct e820_entry){ X86_ACPI_ADDR, X86_HIMEM_START - X86_ACPI_ADDR, E820_RESERVED };
    out[n++] = (struct e820_entry){ X86_HIMEM_START, m->ram_below_4g - X86_HIMEM_START, E820_RAM };
    if (m->pci) /* the ECAM window: Linux uses MCFG only when it is reserved */
        out[n++] = (struct e820_entry){ PCI_ECAM_BASE, (uint64_t)PCI_ECAM_BUSES << 20, E820_RESERVED };
    if (m->ram_above_4g)
        out[n++] = (struct e820_entry){ 1ull << 32, m->ram_above_4g, E820_RAM };
    return n;
}

/* Tables are laid out one after another in a buffer that becomes guest
 * memory at X86_ACPI_ADDR. */
struct acpi_builder {
    uint8_t buf[16384];
    size_t len;
};

static void le(uint8_t *p, uint64_t v, unsigned bytes)
{
    for (unsigned i = 0; i < bytes; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint8_t checksum(const uint8_t *p, size_t len)
{
    uint8_t sum = 0;
    for (size_t i = 0; i < len; i++)
        sum = (uint8_t)(sum + p[i]);
    return (uint8_t)-sum;
}

/* Reserve `len` bytes aligned to `align`; returns the offset. */
static size_t reserve(struct acpi_builder *b, size_t len, size_t align)
{
    b->len = (b->len + align - 1) & ~(align - 1);
    size_t off = b->len;
    b->len += len;
    return off;
}

static uint64_t gpa(size_t off)
{
    return X86_ACPI_ADDR + off;
}

static void header(uint8_t *t, const char *sig, uint32_t len, uint8_t rev)
{
    memcpy(t, sig, 4);
    le(t + 4, len, 4);
    t[8] = rev;
    memcpy(t + 10, "LIBVMM", 6);
    memcpy(t + 16, "LIBVMM  ", 8);
    le(t + 24, 1, 4);
    memcpy(t + 28, "LVMM", 4);
    le(t + 32, 1, 4);
}

static void finish(uint8_t *t, uint32_t len)
{
    t[9] = 0;
    t[9] = checksum(t, len);
}

/* Generic address structure for a system I/O register. */
static void gas_io(uint8_t *p, unsigned bits, uint64_t port)
{
    p[0] = 1;                 /* system I/O space */
    p[1] = (uint8_t)bits;
    p[2] = 0;
    p[3] = bits == 8 ? 1 : bits == 16 ? 2 : 3; /* access size */
    le(p + 4, port, 8);
}

/* \_SB content: PCI0 on pc, the virtio-mmio devices on microvm. */
static void build_sb(const vmm_machine *m, struct aml *sb)
{
    if (m->pci)
        pci_build_aml((vmm_machine *)m, sb);
    virtio_mmio_build_aml((vmm_machine *)m, sb);
}

static int build_dsdt(struct acpi_builder *b, const vmm_machine *m, size_t *out)
{
    struct aml sb, a;
    aml_init(&sb);
    aml_init(&a);
    build_sb(m, &sb);
    if (sb.len) {
        aml_scope_open(&a, "\\_SB");
        aml_bytes(&a, sb.data, sb.len);
        aml_close(&a);
    }
    /* Name (_S5, Package (4) { 5, 5, 0, 0 }): the S5 sleep type acpi-pm
     * treats as power off. */
    aml_name(&a, "_S5");
    aml_package_open(&a, 4);
    aml_integer(&a, ACPI_S5_SLP_TYP);
    aml_integer(&a, ACPI_S5_SLP_TYP);
    aml_integer(&a, 0);
    aml_integer(&a, 0);
    aml_close(&a);
    int ret = aml_finish(&sb) < 0 || aml_finish(&a) < 0 ? -1 : 0;
    uint32_t len = (uint32_t)(36 + a.len);
    if (ret == 0 && b->len + len + 16 > sizeof(b->buf))
        ret = vmm_set_error(ENOSPC, "ACPI tables: the DSDT does not fit");
    if (ret == 0) {
        size_t off = reserve(b, len, 16);
        uint8_t *t = b->buf + off;
        header(t, "DSDT", len, 2);
        memcpy(t + 36, a.data, a.len);
        finish(t, len);
        *out = off;
    }
    aml_free(&sb);
    aml_free(&a);
    return ret;
}

/* MCFG: one ECAM window for segment 0, the buses of PCI0. */
static size_t build_mcfg(struct acpi_builder *b)
{
    const uint32_t len = 44 + 16;
    size_t off = reserve(b, len, 16);
    uint8_t *t = b->buf + off;
    header(t, "MCFG", len, 1);
    le(t + 44, PCI_ECAM_BASE, 8);
    le(t + 52, 0, 2);                          /* segment */
    t[54] = 0;                                 /* first bus */
    t[55] = PCI_ECAM_BUSES - 1;                /* last bus */
    finish(t, len);
    return off;
}

static size_t build_facs(struct acpi_builder *b)
{
    size_t off = reserve(b, 64, 64);
    uint8_t *t = b->buf + off;
    memcpy(t, "FACS", 4);
    le(t + 4, 64, 4);
    t[32] = 2; /* version */
    return off;
}

static size_t build_fadt(struct acpi_builder *b, size_t dsdt, size_t facs)
{
    const uint32_t len = 276;
    size_t off = reserve(b, len, 16);
    uint8_t *t = b->buf + off;
    header(t, "FACP", len, 6);
    /* FIRMWARE_CTRL stays 0: ACPI 6 wants only X_FIRMWARE_CTRL set. */
    le(t + 40, gpa(dsdt), 4);
    le(t + 46, ACPI_SCI_GSI, 2);
    le(t + 56, ACPI_PM1_EVT, 4);
    le(t + 64, ACPI_PM1_CNT, 4);
    le(t + 76, ACPI_PM_TMR, 4);
    t[88] = 4;                                 /* PM1_EVT_LEN */
    t[89] = 2;                                 /* PM1_CNT_LEN */
    t[91] = 4;                                 /* PM_TMR_LEN */
    le(t + 96, 0x65, 2);                       /* no C2 */
    le(t + 98, 0x3e9, 2);                      /* no C3 */
    t[108] = 0x32;                             /* RTC century register */
    le(t + 109, 0x3, 2);                       /* legacy devices, 8042 */
    le(t + 112, (1u << 0) | (1u << 2) | (1u << 5) | (1u << 10), 4); /* WBINVD, C1, no sleep button, reset reg */
    gas_io(t + 116, 8, ACPI_RESET_REG);
    t[128] = ACPI_RESET_VALUE;
    le(t + 132, gpa(facs), 8);
    le(t + 140, gpa(dsdt), 8);
    gas_io(t + 148, 32, ACPI_PM1_EVT);
    gas_io(t + 172, 16, ACPI_PM1_CNT);
    gas_io(t + 208, 32, ACPI_PM_TMR);
    memcpy(t + 268, "LIBVMM\0\0", 8);          /* hypervisor vendor */
    finish(t, len);
    return off;
}

static size_t build_madt(struct acpi_builder *b, unsigned cpus)
{
    uint32_t len = 44 + 8 * cpus + 12 + 10 * 2 + 6;
    size_t off = reserve(b, len, 16);
    uint8_t *t = b->buf + off, *p = t + 44;
    header(t, "APIC", len, 3);
    le(t + 36, X86_LAPIC_ADDR, 4);
    le(t + 40, 1, 4);                          /* PCAT_COMPAT: 8259s present */
    for (unsigned i = 0; i < cpus; i++, p += 8) {
        p[0] = 0;                              /* processor local APIC */
        p[1] = 8;
        p[2] = (uint8_t)i;                     /* ACPI processor UID */
        p[3] = (uint8_t)i;                     /* APIC ID */
        le(p + 4, 1, 4);                       /* enabled */
    }
    p[0] = 1;                                  /* I/O APIC */
    p[1] = 12;
    p[2] = 0;                                  /* IOAPIC ID */
    le(p + 4, X86_IOAPIC_ADDR, 4);
    le(p + 8, 0, 4);                           /* GSI base */
    p += 12;
    /* IRQ0 (PIT) arrives on GSI 2; the SCI is level triggered, active high. */
    static const struct { uint8_t irq; uint32_t gsi; uint16_t flags; } overrides[] = {
        { 0, 2, 0 }, { ACPI_SCI_GSI, ACPI_SCI_GSI, 0x000d },
    };
    for (unsigned i = 0; i < 2; i++, p += 10) {
        p[0] = 2;
        p[1] = 10;
        p[2] = 0;                              /* ISA bus */
        p[3] = overrides[i].irq;
        le(p + 4, overrides[i].gsi, 4);
        le(p + 8, overrides[i].flags, 2);
    }
    p[0] = 4;                                  /* local APIC NMI: all CPUs, LINT1 */
    p[1] = 6;
    p[2] = 0xff;
    le(p + 3, 0, 2);
    p[5] = 1;
    finish(t, len);
    return off;
}

static size_t build_xsdt(struct acpi_builder *b, const size_t *tables, unsigned n)
{
    uint32_t len = 36 + 8 * n;
    size_t off = reserve(b, len, 16);
    uint8_t *t = b->buf + off;
    header(t, "XSDT", len, 1);
    for (unsigned i = 0; i < n; i++)
        le(t + 36 + 8 * i, gpa(tables[i]), 8);
    finish(t, len);
    return off;
}

static void build_rsdp(struct acpi_builder *b, size_t rsdp, size_t xsdt)
{
    uint8_t *t = b->buf + rsdp;
    memcpy(t, "RSD PTR ", 8);
    memcpy(t + 9, "LIBVMM", 6);
    t[15] = 2;                                 /* ACPI 2.0+ */
    le(t + 20, 36, 4);
    le(t + 24, gpa(xsdt), 8);
    t[8] = checksum(t, 20);
    t[32] = checksum(t, 36);
}

int x86_build_acpi(vmm_machine *m)
{
    struct acpi_builder *b = calloc(1, sizeof(*b));
    if (!b)
        return vmm_set_error(ENOMEM, "out of memory");
    if (m->nr_vcpus > 255) {
        free(b);
        return vmm_set_error(EINVAL, "ACPI tables: at most 255 vCPUs");
    }
    /* The RSDP first, on a 16-byte boundary in the BIOS area guests scan. */
    size_t rsdp = reserve(b, 36, 16);
    size_t dsdt = 0;
    if (build_dsdt(b, m, &dsdt) < 0) {
        free(b);
        return -1;
    }
    size_t facs = build_facs(b);
    size_t tables[3];
    unsigned n = 0;
    tables[n++] = build_fadt(b, dsdt, facs);
    tables[n++] = build_madt(b, m->nr_vcpus);
    if (m->pci)
        tables[n++] = build_mcfg(b);
    size_t xsdt = build_xsdt(b, tables, n);
    build_rsdp(b, rsdp, xsdt);
    int ret = guest_memory_write(&m->mem, X86_ACPI_ADDR, b->buf, b->len);
    free(b);
    if (ret < 0)
        return vmm_set_error(ENOSPC, "ACPI tables do not fit in guest RAM");
    m->rsdp_addr = gpa(rsdp);
    return 0;
}
