/* ACPI: RSDP -> XSDT/RSDT -> tables; MADT for CPUs and the IOAPIC. */
#include "guest.h"

struct acpi_rsdp {
    char signature[8];           /* "RSD PTR " */
    uint8_t checksum;            /* first 20 bytes */
    char oem_id[6];
    uint8_t revision;            /* 0: ACPI 1.0, 2: has XSDT */
    uint32_t rsdt_address;
    uint32_t length;
    uint64_t xsdt_address;
    uint8_t extended_checksum;
    uint8_t reserved[3];
} __attribute__((packed));

#define MADT_LAPIC   0
#define MADT_IOAPIC  1
#define MADT_IRQ_OVERRIDE 2
#define MADT_X2APIC  9
#define MADT_ENABLED 1u
#define MADT_ONLINE_CAPABLE 2u

/* The EBDA segment from the BIOS data area (0x40e), if it looks sane.  Read
 * through asm: gcc rejects plain loads from addresses in the first page. */
static uint64_t ebda_base(void)
{
    uint16_t segment;
    __asm__ volatile("movw (%1), %0" : "=r"(segment) : "r"((uintptr_t)0x40e));
    uint64_t base = (uint64_t)segment << 4;
    return base >= 0x80000 && base < 0xa0000 ? base : 0;
}

bool acpi_checksum_ok(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint8_t sum = 0;
    for (size_t i = 0; i < n; i++)
        sum = (uint8_t)(sum + b[i]);
    return sum == 0;
}

static bool rsdp_valid(const struct acpi_rsdp *r)
{
    if (memcmp(r->signature, "RSD PTR ", 8) != 0 || !acpi_checksum_ok(r, 20))
        return false;
    return r->revision < 2 || acpi_checksum_ok(r, r->length);
}

uint64_t acpi_find_rsdp(void)
{
    const struct hvm_start_info *si = start_info();
    if (si && si->rsdp_paddr && rsdp_valid((const void *)(uintptr_t)si->rsdp_paddr))
        return si->rsdp_paddr;
    /* The first KiB of the EBDA, then the BIOS area, 16-byte aligned. */
    uint64_t ebda = ebda_base();
    if (ebda)
        for (uint64_t a = ebda; a < ebda + 1024; a += 16)
            if (rsdp_valid((const void *)(uintptr_t)a))
                return a;
    for (uint64_t a = 0xe0000; a < 0x100000; a += 16)
        if (rsdp_valid((const void *)(uintptr_t)a))
            return a;
    return 0;
}

/* Root table: entries of 8 bytes (XSDT) or 4 bytes (RSDT). */
static const struct acpi_sdt_header *root;
static size_t root_entry_size;
static bool root_looked_up;

static void find_root(void)
{
    if (root_looked_up)
        return;
    root_looked_up = true;
    uint64_t rsdp_addr = acpi_find_rsdp();
    if (!rsdp_addr)
        return;
    const struct acpi_rsdp *r = (const void *)(uintptr_t)rsdp_addr;
    if (r->revision >= 2 && r->xsdt_address) {
        root = (const void *)(uintptr_t)r->xsdt_address;
        root_entry_size = 8;
    } else {
        root = (const void *)(uintptr_t)r->rsdt_address;
        root_entry_size = 4;
    }
    if (!acpi_checksum_ok(root, root->length)) {
        printf("acpi: root table %.4s has a bad checksum\n", root->signature);
        root = NULL;
    }
}

size_t acpi_table_count(void)
{
    find_root();
    if (!root)
        return 0;
    return (root->length - sizeof(*root)) / root_entry_size;
}

const struct acpi_sdt_header *acpi_table(size_t i)
{
    const uint8_t *entries = (const uint8_t *)root + sizeof(*root);
    uint64_t addr = 0;
    memcpy(&addr, entries + i * root_entry_size, root_entry_size);
    return (const void *)(uintptr_t)addr;
}

const struct acpi_sdt_header *acpi_find_table(const char sig[4])
{
    for (size_t i = 0; i < acpi_table_count(); i++) {
        const struct acpi_sdt_header *t = acpi_table(i);
        if (memcmp(t->signature, sig, 4) == 0)
            return t;
    }
    return NULL;
}

static void madt_add_cpu(struct madt_info *out, uint32_t apic_id, uint32_t flags)
{
    if (!(flags & MADT_ENABLED))
        return;    /* online-capable CPUs are hotplug slots, not running CPUs */
    if (out->cpu_count < MAX_CPUS)
        out->apic_ids[out->cpu_count] = apic_id;
    out->cpu_count++;
}

bool madt_parse(struct madt_info *out)
{
    memset(out, 0, sizeof(*out));
    for (uint32_t irq = 0; irq < 16; irq++)
        out->isa_irq_gsi[irq] = irq;    /* identity unless overridden */
    const struct acpi_sdt_header *madt = acpi_find_table("APIC");
    if (!madt || !acpi_checksum_ok(madt, madt->length))
        return false;
    const uint8_t *p = (const uint8_t *)madt;
    uint32_t lapic;
    memcpy(&lapic, p + 36, 4);
    out->lapic_base = lapic;
    for (size_t off = 44; off + 2 <= madt->length;) {
        uint8_t type = p[off], len = p[off + 1];
        if (len < 2 || off + len > madt->length)
            break;
        const uint8_t *e = p + off;
        uint32_t u32;
        if (type == MADT_LAPIC && len >= 8) {
            memcpy(&u32, e + 4, 4);
            madt_add_cpu(out, e[3], u32);
        } else if (type == MADT_X2APIC && len >= 16) {
            uint32_t id;
            memcpy(&id, e + 4, 4);
            memcpy(&u32, e + 8, 4);
            madt_add_cpu(out, id, u32);
        } else if (type == MADT_IRQ_OVERRIDE && len >= 10) {
            /* bus 0 (ISA), source IRQ, GSI */
            if (e[2] == 0 && e[3] < 16)
                memcpy(&out->isa_irq_gsi[e[3]], e + 4, 4);
        } else if (type == MADT_IOAPIC && len >= 12) {
            if (out->ioapic_count++ == 0) {
                memcpy(&u32, e + 4, 4);
                out->ioapic_base = u32;
                memcpy(&out->ioapic_gsi_base, e + 8, 4);
            }
        }
        off += len;
    }
    return true;
}

/* ---- Intel MultiProcessor Specification 1.4 tables (fallback) */
struct mp_floating_pointer {
    char signature[4];           /* "_MP_" */
    uint32_t config_table;
    uint8_t length;              /* in 16-byte units */
    uint8_t spec_rev;
    uint8_t checksum;
    uint8_t features[5];
} __attribute__((packed));

struct mp_config_header {
    char signature[4];           /* "PCMP" */
    uint16_t base_length;
    uint8_t spec_rev;
    uint8_t checksum;
    char oem_id[8];
    char product_id[12];
    uint32_t oem_table;
    uint16_t oem_table_size;
    uint16_t entry_count;
    uint32_t lapic_address;
    uint16_t ext_length;
    uint8_t ext_checksum;
    uint8_t reserved;
} __attribute__((packed));

#define MP_PROCESSOR 0
#define MP_IOAPIC    2
#define MP_ENABLED   1u

static const struct mp_floating_pointer *mp_scan(uint64_t start, uint64_t len)
{
    for (uint64_t a = start; a + 16 <= start + len; a += 16) {
        const struct mp_floating_pointer *f = (const void *)(uintptr_t)a;
        if (memcmp(f->signature, "_MP_", 4) == 0 && f->length == 1 && acpi_checksum_ok(f, 16))
            return f;
    }
    return NULL;
}

bool mptable_parse(struct madt_info *out)
{
    memset(out, 0, sizeof(*out));
    for (uint32_t irq = 0; irq < 16; irq++)
        out->isa_irq_gsi[irq] = irq;
    uint64_t ebda = ebda_base();
    const struct mp_floating_pointer *f = NULL;
    if (ebda)
        f = mp_scan(ebda, 1024);
    if (!f)
        f = mp_scan(0x9fc00, 1024);
    if (!f)
        f = mp_scan(0xf0000, 0x10000);
    if (!f || !f->config_table)
        return false;
    const struct mp_config_header *h = (const void *)(uintptr_t)f->config_table;
    if (memcmp(h->signature, "PCMP", 4) != 0 || !acpi_checksum_ok(h, h->base_length))
        return false;
    out->lapic_base = h->lapic_address;
    const uint8_t *e = (const uint8_t *)(h + 1), *end = (const uint8_t *)h + h->base_length;
    /* Walk by length, as Linux does: some firmware (qboot) leaves entry_count 0. */
    while (e + 8 <= end) {
        if (e[0] == MP_PROCESSOR) {
            madt_add_cpu(out, e[1], e[3] & MP_ENABLED);
            e += 20;
        } else {
            if (e[0] == MP_IOAPIC && (e[3] & MP_ENABLED) && out->ioapic_count++ == 0) {
                uint32_t addr;
                memcpy(&addr, e + 4, 4);
                out->ioapic_base = addr;
            }
            e += 8;
        }
    }
    return true;
}
