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
#define MADT_X2APIC  9
#define MADT_ENABLED 1u
#define MADT_ONLINE_CAPABLE 2u

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
    /* Legacy BIOS area, 16-byte aligned. */
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
