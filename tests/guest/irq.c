/* irq: x2APIC timer ticks, a self-IPI, and an IOAPIC-routed interrupt from
 * COM1 (THR-empty on IRQ 4) all arrive at their vectors. */
#include "guest.h"

#define TIMER_TICKS_WANTED 3
#define TIMER_PERIOD 10000000u    /* APIC bus ticks: 10 ms at KVM's 1 GHz */
#define COM1_IRQ 4
#define UART_IER 1
#define UART_IIR 2
#define UART_MCR 4
#define WAIT_TSC_CYCLES 20000000000ull   /* >= ~5 s at any plausible TSC rate */

static volatile unsigned timer_ticks, self_ipis, com1_irqs;
static volatile uint8_t com1_iir;

static void on_timer(struct interrupt_frame *f)
{
    (void)f;
    timer_ticks++;
    x2apic_eoi();
}

static void on_self_ipi(struct interrupt_frame *f)
{
    (void)f;
    self_ipis++;
    x2apic_eoi();
}

static void on_com1(struct interrupt_frame *f)
{
    (void)f;
    com1_iir = inb(COM1 + UART_IIR);   /* reading IIR clears THR-empty */
    outb(COM1 + UART_IER, 0);
    com1_irqs++;
    x2apic_eoi();
}

/* Interrupts on, poll until *counter reaches want or the TSC says "too long". */
static bool wait_for(volatile unsigned *counter, unsigned want)
{
    uint64_t start = rdtsc();
    irq_enable();
    while (*counter < want && rdtsc() - start < WAIT_TSC_CYCLES)
        cpu_relax();
    irq_disable();
    return *counter >= want;
}

static bool test_timer(void)
{
    idt_set_handler(VECTOR_TIMER, on_timer);
    x2apic_timer_start(VECTOR_TIMER, TIMER_PERIOD, true);
    bool ok = wait_for(&timer_ticks, TIMER_TICKS_WANTED);
    x2apic_timer_stop();
    printf("irq: x2apic timer: %u ticks%s\n", timer_ticks, ok ? "" : " (too few)");
    return ok;
}

static bool test_self_ipi(void)
{
    idt_set_handler(VECTOR_SELF_IPI, on_self_ipi);
    x2apic_self_ipi(VECTOR_SELF_IPI);
    bool ok = wait_for(&self_ipis, 1);
    printf("irq: self-ipi: %s\n", ok ? "delivered" : "never arrived");
    return ok;
}

static bool test_ioapic(const struct madt_info *madt, bool have_madt)
{
    if (have_madt && madt->ioapic_count)
        ioapic_set_base(madt->ioapic_base);
    uint32_t version = ioapic_read(0x01);
    unsigned pins = ioapic_max_redirection() + 1;
    printf("irq: ioapic version 0x%x, %u pins\n", version & 0xff, pins);
    if (pins < 16 || pins > 240) {
        printf("irq: ioapic does not answer sensibly\n");
        return false;
    }
    uint32_t pin = have_madt ? madt->isa_irq_gsi[COM1_IRQ] - madt->ioapic_gsi_base : COM1_IRQ;
    if (pin >= pins) {
        printf("irq: com1's GSI is not on the first ioapic\n");
        return false;
    }
    uint8_t vector = VECTOR_IOAPIC_BASE + COM1_IRQ;
    idt_set_handler(vector, on_com1);
    ioapic_route(pin, vector, (uint8_t)x2apic_id());
    uint32_t entry = ioapic_read((uint8_t)(0x10 + 2 * pin));
    if ((entry & 0x1ffff) != vector) {
        printf("irq: ioapic entry reads back 0x%x\n", entry);
        return false;
    }
    outb(COM1 + UART_MCR, 0x0b);       /* DTR, RTS, OUT2 (IRQ enable on PCs) */
    outb(COM1 + UART_IER, 0x02);       /* THR empty */
    bool ok = wait_for(&com1_irqs, 1);
    outb(COM1 + UART_IER, 0);
    outb(COM1 + UART_MCR, 0x03);
    console_flush();
    ioapic_mask(pin);
    printf("irq: ioapic pin %u (com1): %s, iir=0x%x\n", pin,
           ok ? "delivered" : "never arrived", com1_iir);
    return ok && (com1_iir & 0x0f) == 0x02;
}

int main(const struct hvm_start_info *si)
{
    (void)si;
    struct madt_info madt;
    bool have_madt = madt_parse(&madt);
    pic_mask_all();
    x2apic_enable();
    printf("irq: x2apic id %u, version 0x%x\n", x2apic_id(),
           (unsigned)rdmsr(X2APIC_MSR_VERSION));
    bool ok = test_timer();
    ok &= test_self_ipi();
    ok &= test_ioapic(&madt, have_madt);
    if (!ok)
        return 1;
    printf("irq: ok\n");
    return 0;
}
