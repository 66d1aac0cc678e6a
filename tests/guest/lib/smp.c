/*
 * AP bring-up: copy the real-mode trampoline below 1 MiB, then per AP send
 * INIT and two SIPIs through the x2APIC ICR (the MultiProcessor spec's
 * INIT-SIPI-SIPI sequence) and wait for the AP to report in.
 */
#include "guest.h"

#define AP_STACK_SIZE 8192
#define ICR_INIT      0x00000500u
#define ICR_STARTUP   0x00000600u
#define ICR_ASSERT    0x00004000u
#define AP_REPORT_TIMEOUT_US 5000000u

extern const uint8_t ap_trampoline[], ap_trampoline_end[];
extern volatile uint64_t ap_boot_stack;

static uint8_t ap_stacks[MAX_CPUS][AP_STACK_SIZE]
    __attribute__((section(".stacks"), aligned(16)));

static volatile uint32_t ap_booting_index;
static volatile uint32_t ap_booted;      /* set by the AP once it runs C */
static ap_main_t ap_fn;

/* Called from entry.S on the AP's own stack. */
void ap_start(void);
void ap_start(void)
{
    unsigned index = ap_booting_index;
    idt_load();
    x2apic_enable();
    uint32_t id = x2apic_id();
    __atomic_store_n(&ap_booted, 1, __ATOMIC_RELEASE);
    if (ap_fn)
        ap_fn(index, id);
}

static bool wait_booted(uint64_t timeout_us)
{
    for (uint64_t waited = 0; waited < timeout_us; waited += 1000) {
        if (__atomic_load_n(&ap_booted, __ATOMIC_ACQUIRE))
            return true;
        udelay(1000);
    }
    return __atomic_load_n(&ap_booted, __ATOMIC_ACQUIRE);
}

static bool start_one(unsigned index, uint32_t apic_id)
{
    ap_booting_index = index;
    ap_boot_stack = (uint64_t)(uintptr_t)(ap_stacks[index] + AP_STACK_SIZE);
    __atomic_store_n(&ap_booted, 0, __ATOMIC_RELEASE);
    x2apic_send_ipi(apic_id, ICR_INIT | ICR_ASSERT);
    udelay(10000);
    for (int sipi = 0; sipi < 2; sipi++) {
        x2apic_send_ipi(apic_id, ICR_STARTUP | ICR_ASSERT | (AP_TRAMPOLINE_ADDR >> 12));
        if (wait_booted(sipi == 0 ? 200 : AP_REPORT_TIMEOUT_US))
            return true;
    }
    return false;
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

unsigned smp_start_aps(const struct madt_info *madt, ap_main_t fn)
{
    size_t tramp_len = (size_t)(ap_trampoline_end - ap_trampoline);
    const struct hvm_start_info *si = start_info();
    if (overlaps(AP_TRAMPOLINE_ADDR, tramp_len, (uintptr_t)si, sizeof(*si)))
        guest_fail("smp: start_info at 0x%lx overlaps the AP trampoline at 0x%x",
                   (unsigned long)(uintptr_t)si, AP_TRAMPOLINE_ADDR);
    memcpy((void *)(uintptr_t)AP_TRAMPOLINE_ADDR, ap_trampoline, tramp_len);
    ap_fn = fn;
    uint32_t self = x2apic_id();
    unsigned started = 0, index = 1;
    unsigned n = madt->cpu_count < MAX_CPUS ? madt->cpu_count : MAX_CPUS;
    for (unsigned i = 0; i < n; i++) {
        uint32_t id = madt->apic_ids[i];
        if (id == self)
            continue;
        if (start_one(index, id))
            started++;
        else
            printf("smp: cpu %u (apic id %u) did not report in\n", index, id);
        index++;
    }
    return started;
}
