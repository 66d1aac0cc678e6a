/* smp: every CPU in the MADT is brought up with INIT-SIPI-SIPI and reports
 * in from its own stack in long mode. */
#include "guest.h"

static volatile uint32_t cpus_online = 1;

static void ap_main(unsigned index, uint32_t apic_id)
{
    printf("cpu %u online (apic id %u)\n", index, apic_id);
    __atomic_add_fetch(&cpus_online, 1, __ATOMIC_RELEASE);
}

int main(const struct hvm_start_info *si)
{
    (void)si;
    struct madt_info madt;
    const char *source = "MADT";
    if (!madt_parse(&madt)) {
        source = "MP table";
        if (!mptable_parse(&madt))
            guest_fail("smp: neither an ACPI MADT nor an MP table lists the cpus");
    }
    x2apic_enable();
    printf("smp: %s lists %u cpus:", source, madt.cpu_count);
    for (unsigned i = 0; i < madt.cpu_count && i < MAX_CPUS; i++)
        printf(" %u", madt.apic_ids[i]);
    printf("\n");
    if (madt.cpu_count > MAX_CPUS)
        guest_fail("smp: more than %u cpus", MAX_CPUS);
    printf("cpu 0 online (apic id %u, bsp)\n", x2apic_id());
    unsigned started = smp_start_aps(&madt, ap_main);
    /* The counter moves after each AP has printed its line. */
    for (unsigned waited = 0; cpus_online < 1 + started && waited < 5000; waited++)
        udelay(1000);
    unsigned online = __atomic_load_n(&cpus_online, __ATOMIC_ACQUIRE);
    if (online != madt.cpu_count)
        guest_fail("smp: only %u of %u cpus online", online, madt.cpu_count);
    printf("smp: %u cpus online\n", online);
    return 0;
}
