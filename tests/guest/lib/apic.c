/* x2APIC (MSR interface only: xAPIC MMIO is not used), IOAPIC, legacy PIC. */
#include "guest.h"

#define APIC_BASE_EN   (1u << 11)
#define APIC_BASE_EXTD (1u << 10)
#define APIC_SVR_ENABLE (1u << 8)
#define TIMER_DIVIDE_BY_1 0xb

bool x2apic_supported(void)
{
    uint32_t r[4];
    cpuid(1, 0, r);
    return r[2] & (1u << 21);
}

void x2apic_enable(void)
{
    if (!x2apic_supported())
        printf("x2apic: CPUID.1:ECX[21] is clear; trying x2APIC mode anyway\n");
    uint64_t base = rdmsr(MSR_APIC_BASE);
    /* Disabled -> x2APIC directly is an invalid transition: go via xAPIC. */
    if (!(base & APIC_BASE_EN)) {
        base |= APIC_BASE_EN;
        wrmsr(MSR_APIC_BASE, base);
    }
    if (!(base & APIC_BASE_EXTD))
        wrmsr(MSR_APIC_BASE, base | APIC_BASE_EXTD);
    wrmsr(X2APIC_MSR_SVR, APIC_SVR_ENABLE | VECTOR_SPURIOUS);
    wrmsr(X2APIC_MSR_TPR, 0);
    wrmsr(X2APIC_MSR_LVT_LINT0, APIC_LVT_MASKED);
    wrmsr(X2APIC_MSR_LVT_LINT1, APIC_LVT_MASKED);
}

uint32_t x2apic_id(void)
{
    return (uint32_t)rdmsr(X2APIC_MSR_ID);
}

void x2apic_eoi(void)
{
    wrmsr(X2APIC_MSR_EOI, 0);
}

void x2apic_send_ipi(uint32_t dest, uint32_t icr_low)
{
    wrmsr(X2APIC_MSR_ICR, ((uint64_t)dest << 32) | icr_low);
}

void x2apic_self_ipi(uint8_t vector)
{
    wrmsr(X2APIC_MSR_SELF_IPI, vector);
}

void x2apic_timer_start(uint8_t vector, uint32_t initial_count, bool periodic)
{
    wrmsr(X2APIC_MSR_TIMER_DIV, TIMER_DIVIDE_BY_1);
    wrmsr(X2APIC_MSR_LVT_TIMER, vector | (periodic ? APIC_TIMER_PERIODIC : 0));
    wrmsr(X2APIC_MSR_TIMER_INIT, initial_count);
}

void x2apic_timer_stop(void)
{
    wrmsr(X2APIC_MSR_TIMER_INIT, 0);
    wrmsr(X2APIC_MSR_LVT_TIMER, APIC_LVT_MASKED | VECTOR_TIMER);
}

void udelay(uint64_t us)
{
    /* Masked one-shot countdowns of at most ~4 s each. */
    if (!(rdmsr(MSR_APIC_BASE) & APIC_BASE_EXTD))
        x2apic_enable();    /* the timer MSRs #GP in xAPIC mode */
    while (us) {
        uint64_t chunk = us > 4000000 ? 4000000 : us;
        wrmsr(X2APIC_MSR_TIMER_DIV, TIMER_DIVIDE_BY_1);
        wrmsr(X2APIC_MSR_LVT_TIMER, APIC_LVT_MASKED | VECTOR_TIMER);
        wrmsr(X2APIC_MSR_TIMER_INIT, (uint32_t)(chunk * 1000));
        /* Bounded by the TSC too (assuming < 10 GHz), so a timer that
         * never counts down cannot hang the guest. */
        uint64_t start = rdtsc();
        while (rdmsr(X2APIC_MSR_TIMER_CUR) != 0 && rdtsc() - start < chunk * 10000)
            cpu_relax();
        us -= chunk;
    }
}

void pic_mask_all(void)
{
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}

/* ---- IOAPIC: IOREGSEL at +0x00, IOWIN at +0x10 */
static uint64_t ioapic_base = IOAPIC_DEFAULT_BASE;

void ioapic_set_base(uint64_t base)
{
    ioapic_base = base;
}

uint32_t ioapic_read(uint8_t reg)
{
    mmio_write32(ioapic_base, reg);
    return mmio_read32(ioapic_base + 0x10);
}

void ioapic_write(uint8_t reg, uint32_t v)
{
    mmio_write32(ioapic_base, reg);
    mmio_write32(ioapic_base + 0x10, v);
}

unsigned ioapic_max_redirection(void)
{
    return (ioapic_read(0x01) >> 16) & 0xff;
}

void ioapic_route(unsigned pin, uint8_t vector, uint8_t dest_apic_id)
{
    uint8_t reg = (uint8_t)(0x10 + 2 * pin);
    ioapic_write(reg, APIC_LVT_MASKED);
    ioapic_write((uint8_t)(reg + 1), (uint32_t)dest_apic_id << 24);
    ioapic_write(reg, vector);   /* fixed, physical, active high, edge, unmasked */
}

void ioapic_mask(unsigned pin)
{
    ioapic_write((uint8_t)(0x10 + 2 * pin), APIC_LVT_MASKED);
}
