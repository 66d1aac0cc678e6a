/*
 * Power-off through ACPI (the S5 sleep state) and reset through the i8042,
 * for when no test-exit port ends the machine.
 *
 * S5's SLP_TYP comes from the DSDT's \_S5 package.  Fixed-hardware ACPI
 * writes SLP_TYP|SLP_EN to PM1a_CNT; hardware-reduced ACPI (FADT flag
 * HW_REDUCED_ACPI) writes them to SLEEP_CONTROL_REG instead.
 */
#include "guest.h"

#define FADT_DSDT          40
#define FADT_SMI_CMD       48
#define FADT_ACPI_ENABLE   52
#define FADT_PM1A_CNT_BLK  64
#define FADT_FLAGS         112
#define FADT_X_DSDT        140
#define FADT_X_PM1A_CNT    172
#define FADT_SLEEP_CONTROL 244
#define FADT_HW_REDUCED    (1u << 20)
#define PM1_SCI_EN         0x0001
#define PM1_SLP_TYP_SHIFT  10
#define PM1_SLP_EN         0x2000
#define SLEEP_CTL_SLP_TYP_SHIFT 2
#define SLEEP_CTL_SLP_EN   0x20
#define GAS_MEMORY 0
#define GAS_IO     1

struct gas {
    uint8_t space_id, bit_width, bit_offset, access_size;
    uint64_t address;
} __attribute__((packed));

static uint32_t get32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* AML PkgLength: bits 7:6 of the lead byte count the extra bytes. */
static const uint8_t *skip_pkg_length(const uint8_t *p)
{
    return p + 1 + (*p >> 6);
}

/* First element of Name(_S5_, Package() {a, b, ...}): a is SLP_TYPa. */
static int s5_sleep_type(const struct acpi_sdt_header *dsdt)
{
    const uint8_t *p = (const uint8_t *)dsdt + sizeof(*dsdt);
    const uint8_t *end = (const uint8_t *)dsdt + dsdt->length;
    for (; p + 8 < end; p++) {
        if (memcmp(p, "_S5_", 4) != 0 || p[4] != 0x12)   /* PackageOp */
            continue;
        const uint8_t *q = skip_pkg_length(p + 5) + 1;   /* then NumElements */
        if (q >= end)
            return -1;
        switch (*q) {
        case 0x00: return 0;            /* ZeroOp */
        case 0x01: return 1;            /* OneOp */
        case 0x0a: return q + 1 < end ? q[1] : -1;  /* BytePrefix */
        default: return *q <= 7 ? *q : -1;
        }
    }
    return -1;
}

static void gas_write8(const struct gas *g, uint8_t v)
{
    if (g->space_id == GAS_IO)
        outb((uint16_t)g->address, v);
    else if (g->space_id == GAS_MEMORY)
        mmio_write8(g->address, v);
}

bool acpi_poweroff(void)
{
    const struct acpi_sdt_header *fadt = acpi_find_table("FACP");
    if (!fadt || fadt->length < FADT_PM1A_CNT_BLK + 4)
        return false;
    const uint8_t *f = (const uint8_t *)fadt;
    uint64_t dsdt_addr = 0;
    if (fadt->length >= FADT_X_DSDT + 8)
        memcpy(&dsdt_addr, f + FADT_X_DSDT, 8);
    if (!dsdt_addr)
        dsdt_addr = get32(f + FADT_DSDT);
    if (!dsdt_addr)
        return false;
    int slp_typ = s5_sleep_type((const void *)(uintptr_t)dsdt_addr);
    if (slp_typ < 0) {
        printf("poweroff: no \\_S5 in the DSDT\n");
        return false;
    }
    uint32_t flags = fadt->length >= FADT_FLAGS + 4 ? get32(f + FADT_FLAGS) : 0;
    if ((flags & FADT_HW_REDUCED) && fadt->length >= FADT_SLEEP_CONTROL + 12) {
        struct gas ctl;
        memcpy(&ctl, f + FADT_SLEEP_CONTROL, sizeof(ctl));
        printf("poweroff: ACPI S5 (SLP_TYP %d) via the sleep control register\n", slp_typ);
        gas_write8(&ctl, (uint8_t)((slp_typ << SLEEP_CTL_SLP_TYP_SHIFT) | SLEEP_CTL_SLP_EN));
    } else {
        uint16_t pm1a = (uint16_t)get32(f + FADT_PM1A_CNT_BLK);
        if (!pm1a)
            return false;
        uint32_t smi_cmd = get32(f + FADT_SMI_CMD);
        uint8_t enable = f[FADT_ACPI_ENABLE];
        if (smi_cmd && enable && !(inw(pm1a) & PM1_SCI_EN)) {
            outb((uint16_t)smi_cmd, enable);     /* legacy -> ACPI mode */
            for (unsigned i = 0; i < 1000 && !(inw(pm1a) & PM1_SCI_EN); i++)
                cpu_relax();
        }
        printf("poweroff: ACPI S5 (SLP_TYP %d) via PM1a_CNT at 0x%x\n", slp_typ, pm1a);
        outw(pm1a, (uint16_t)((slp_typ << PM1_SLP_TYP_SHIFT) | PM1_SLP_EN));
    }
    /* Give the VMM time to act on it; the TSC needs no APIC set-up. */
    for (uint64_t start = rdtsc(); rdtsc() - start < 1000000000ull;)
        cpu_relax();
    return false;    /* still running */
}

void i8042_reset(void)
{
    printf("reset: through the i8042\n");
    for (unsigned i = 0; i < 10000 && (inb(0x64) & 0x02); i++)
        cpu_relax();
    outb(0x64, 0xfe);    /* pulse the CPU reset line */
}
