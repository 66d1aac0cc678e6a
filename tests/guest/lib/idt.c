/* IDT: every exception is reported and ends the test; interrupts go to
 * registered handlers, and an interrupt nobody asked for ends the test too. */
#include "guest.h"

struct idt_gate {
    uint16_t offset_low;
    uint16_t selector;
    uint8_t ist;
    uint8_t type_attr;
    uint16_t offset_mid;
    uint32_t offset_high;
    uint32_t zero;
} __attribute__((packed));

struct idt_pointer {
    uint16_t limit;
    uint64_t base;
} __attribute__((packed));

#define SEL_CODE64 0x08
#define GATE_INTERRUPT_PRESENT 0x8e

extern const uint64_t isr_stub_table[IDT_VECTORS];

static struct idt_gate idt[IDT_VECTORS] __attribute__((aligned(16)));
static interrupt_handler_t handlers[IDT_VECTORS];

static const char *const exception_names[32] = {
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM",
    "#DF", "CSO", "#TS", "#NP", "#SS", "#GP", "#PF", "reserved",
    "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "reserved", "reserved",
    "reserved", "reserved", "reserved", "reserved", "#HV", "#VC", "#SX", "reserved",
};

const char *exception_name(unsigned vector)
{
    return vector < 32 ? exception_names[vector] : "interrupt";
}

void idt_load(void)
{
    struct idt_pointer p = { sizeof(idt) - 1, (uint64_t)(uintptr_t)idt };
    __asm__ volatile("lidt %0" :: "m"(p));
}

void idt_init(void)
{
    for (unsigned v = 0; v < IDT_VECTORS; v++) {
        uint64_t a = isr_stub_table[v];
        idt[v] = (struct idt_gate){
            .offset_low = (uint16_t)a,
            .selector = SEL_CODE64,
            .type_attr = GATE_INTERRUPT_PRESENT,
            .offset_mid = (uint16_t)(a >> 16),
            .offset_high = (uint32_t)(a >> 32),
        };
    }
    idt_load();
}

void idt_set_handler(unsigned vector, interrupt_handler_t h)
{
    if (vector < IDT_VECTORS)
        handlers[vector] = h;
}

/* x2APIC ID when x2APIC is on, else the initial APIC ID from CPUID. */
static unsigned current_cpu(void)
{
    if (rdmsr(MSR_APIC_BASE) & (1u << 10))
        return (unsigned)rdmsr(X2APIC_MSR_ID);
    uint32_t r[4];
    cpuid(1, 0, r);
    return r[1] >> 24;
}

static _Noreturn void report_exception(const struct interrupt_frame *f)
{
    static volatile uint32_t reporting;
    /* A fault while reporting (or on a second CPU at once): just exit. */
    if (__atomic_exchange_n(&reporting, 1, __ATOMIC_ACQUIRE))
        guest_exit(GUEST_EXIT_EXCEPTION(f->vector));
    uint64_t cr2;
    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
    console_break_lock();
    console_flush();
    printf("exception %u (%s) at rip=0x%lx error=0x%lx cpu=%u\n", (unsigned)f->vector,
           exception_name((unsigned)f->vector), (unsigned long)f->rip,
           (unsigned long)f->error_code, current_cpu());
    printf("  rsp=0x%lx rflags=0x%lx cr2=0x%lx rax=0x%lx\n", (unsigned long)f->rsp,
           (unsigned long)f->rflags, (unsigned long)cr2, (unsigned long)f->rax);
    guest_exit(GUEST_EXIT_EXCEPTION(f->vector));
}

void interrupt_dispatch(struct interrupt_frame *f);
void interrupt_dispatch(struct interrupt_frame *f)
{
    unsigned v = (unsigned)f->vector;
    if (v < 32 && !handlers[v])
        report_exception(f);
    if (handlers[v]) {
        handlers[v](f);
        return;
    }
    if (v == VECTOR_SPURIOUS)
        return;    /* spurious APIC interrupts need no EOI */
    console_break_lock();
    printf("unexpected interrupt vector %u at rip=0x%lx\n", v, (unsigned long)f->rip);
    guest_exit(GUEST_EXIT_UNEXPECTED_IRQ);
}
