/* demo: the bundled `make demo` guest: show what this machine looks like
 * from the inside, then power off through the test-exit port. */
#include "guest.h"

static void show_cpus(void)
{
    uint32_t r[4];
    char vendor[13];
    cpuid(0, 0, r);
    memcpy(vendor, &r[1], 4);
    memcpy(vendor + 4, &r[3], 4);
    memcpy(vendor + 8, &r[2], 4);
    vendor[12] = '\0';
    struct madt_info madt;
    if (madt_parse(&madt)) {
        printf("cpus: %u (MADT), apic ids:", madt.cpu_count);
        for (unsigned i = 0; i < madt.cpu_count && i < MAX_CPUS; i++)
            printf(" %u", madt.apic_ids[i]);
        printf("; vendor %s\n", vendor);
        if (madt.ioapic_count)
            printf("ioapic: %u at 0x%lx, gsi base %u\n", madt.ioapic_count,
                   (unsigned long)madt.ioapic_base, madt.ioapic_gsi_base);
    } else {
        printf("cpus: no MADT; vendor %s\n", vendor);
    }
}

static void show_memory(void)
{
    memmap_print();
    uint64_t ram = 0;
    for (size_t i = 0; i < memmap_count(); i++)
        if (memmap_entry(i)->type == 1)
            ram += memmap_entry(i)->size;
    printf("memory: %lu MiB of RAM\n", (unsigned long)(ram >> 20));
}

static void show_acpi(void)
{
    uint64_t rsdp = acpi_find_rsdp();
    if (!rsdp) {
        printf("acpi: no RSDP\n");
        return;
    }
    bool from_si = start_info()->rsdp_paddr == rsdp;
    printf("acpi: RSDP at 0x%lx (%s), tables:", (unsigned long)rsdp,
           from_si ? "from start_info" : "found by scanning 0xe0000-0xfffff");
    for (size_t i = 0; i < acpi_table_count(); i++)
        printf(" %.4s", acpi_table(i)->signature);
    const struct acpi_sdt_header *fadt = acpi_find_table("FACP");
    if (fadt && fadt->length >= 44) {
        uint64_t dsdt = 0;
        if (fadt->length >= 148)
            memcpy(&dsdt, (const uint8_t *)fadt + 140, 8);    /* X_DSDT */
        if (!dsdt)
            memcpy(&dsdt, (const uint8_t *)fadt + 40, 4);     /* DSDT */
        if (dsdt)
            printf(" %.4s(via FACP)", ((const struct acpi_sdt_header *)(uintptr_t)dsdt)->signature);
    }
    printf("\n");
}

static void show_devices(void)
{
    outb(COM1 + 7, 0x42);
    printf("device: serial 16550 at 0x3f8%s\n", inb(COM1 + 7) == 0x42 ? "" : " (no scratch register)");
    uint8_t regd = cmos_read(0x0d);
    printf("device: rtc at 0x70 %s\n", regd & 0x80 ? "(time valid)" : "(time not valid)");
    printf("device: test-exit at 0x%x\n", TEST_EXIT_PORT);
}

static void show_time(void)
{
    struct rtc_time t;
    rtc_read(&t);
    printf("rtc: %04u-%02u-%02u %02u:%02u:%02u\n", t.year, t.month, t.day,
           t.hour, t.minute, t.second);
}

int main(const struct hvm_start_info *si)
{
    printf("libvmm demo guest: booted via PVH (start_info v%u)\n", si->version);
    printf("cmdline: \"%s\"\n", start_cmdline());
    show_cpus();
    show_memory();
    show_devices();
    show_acpi();
    show_time();
    printf("demo: done, powering off\n");
    return 0;
}
