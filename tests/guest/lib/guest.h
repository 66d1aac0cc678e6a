/*
 * Freestanding runtime for libvmm's 64-bit test guests.
 *
 * A guest program provides `int main(const struct hvm_start_info *si)`;
 * returning 0 exits with GUEST_EXIT_SUCCESS, anything else with
 * GUEST_EXIT_FAILURE.  See tests/guest/README.md for the exit convention.
 */
#ifndef GUEST_H
#define GUEST_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "idt_vectors.h"

/* ---- exit codes written to the isa-debug-exit port (status = code*2+1) */
#define TEST_EXIT_PORT            0xf4
#define GUEST_EXIT_SUCCESS        0x10  /* status 33 */
#define GUEST_EXIT_FAILURE        0x11  /* status 35 */
#define GUEST_EXIT_BAD_BOOT       0x12  /* status 37: no valid start_info */
#define GUEST_EXIT_UNEXPECTED_IRQ 0x13  /* status 39 */
#define GUEST_EXIT_EXCEPTION(v)   (0x20 + (v)) /* status 65 + 2*vector */

_Noreturn void guest_exit(uint32_t code);
_Noreturn void guest_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void halt_forever(void);

/* ---- PVH start info (Xen public arch-x86/hvm/start_info.h) */
#define HVM_START_MAGIC 0x336ec578u

struct hvm_start_info {
    uint32_t magic;
    uint32_t version;
    uint32_t flags;
    uint32_t nr_modules;
    uint64_t modlist_paddr;
    uint64_t cmdline_paddr;
    uint64_t rsdp_paddr;
    uint64_t memmap_paddr;      /* version >= 1 */
    uint32_t memmap_entries;    /* version >= 1 */
    uint32_t reserved;
};

struct hvm_memmap_entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;              /* e820 types: 1 RAM, 2 reserved, 3 ACPI... */
    uint32_t reserved;
};

int main(const struct hvm_start_info *si);

const struct hvm_start_info *start_info(void);
const char *start_cmdline(void);   /* "" when the loader gave none */
uint64_t cmdline_u64(const char *key, uint64_t fallback); /* "key=123" */
bool cmdline_is(const char *key, const char *value);      /* "key=value" */
size_t memmap_count(void);
const struct hvm_memmap_entry *memmap_entry(size_t i);
const char *memmap_type_name(uint32_t type);
void memmap_print(void);
uint64_t memmap_ram_top_below_4g(void); /* end of the highest RAM < 4 GiB */
uint64_t memmap_ram_above_4g(void);     /* bytes of RAM at or above 4 GiB */

/* ---- port I/O, MMIO, MSRs, misc instructions */
static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline uint32_t mmio_read32(uint64_t addr) { return *(volatile uint32_t *)(uintptr_t)addr; }
static inline void mmio_write32(uint64_t addr, uint32_t v) { *(volatile uint32_t *)(uintptr_t)addr = v; }
static inline uint8_t mmio_read8(uint64_t addr) { return *(volatile uint8_t *)(uintptr_t)addr; }
static inline void mmio_write8(uint64_t addr, uint8_t v) { *(volatile uint8_t *)(uintptr_t)addr = v; }

static inline uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((uint64_t)hi << 32) | lo;
}
static inline void wrmsr(uint32_t msr, uint64_t v)
{
    __asm__ volatile("wrmsr" :: "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)) : "memory");
}
static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}
static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}
static inline void irq_enable(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void irq_disable(void) { __asm__ volatile("cli" ::: "memory"); }
/* sti;hlt: the interrupt shadow makes the wakeup race-free. */
static inline void wait_for_interrupt(void) { __asm__ volatile("sti; hlt; cli" ::: "memory"); }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

/* ---- string helpers (also what gcc may call on its own) */
void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strncmp(const char *a, const char *b, size_t n);
int strcmp(const char *a, const char *b);

/* ---- console: 16550 UART at COM1, polled */
#define COM1 0x3f8
void console_init(void);
void console_putc(char c);
void console_write(const char *s, size_t n);
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vprintf(const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void console_break_lock(void);     /* exception path: take the console */
/* Forget FIFO credit: call after touching the UART's registers directly. */
void console_flush(void);

/* ---- spinlock (xchg-based; no cmpxchg16b, no fancy atomics) */
typedef struct { volatile uint32_t locked; } spinlock_t;
void spin_lock(spinlock_t *l);
void spin_unlock(spinlock_t *l);

/* ---- interrupts and exceptions */
struct interrupt_frame {
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
    uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
    uint64_t vector, error_code;
    uint64_t rip, cs, rflags, rsp, ss;
};
typedef void (*interrupt_handler_t)(struct interrupt_frame *f);
void idt_init(void);           /* done by guest_start on the BSP */
void idt_load(void);           /* per CPU (APs) */
void idt_set_handler(unsigned vector, interrupt_handler_t h);
const char *exception_name(unsigned vector);

/* ---- x2APIC */
#define MSR_APIC_BASE       0x1b
#define X2APIC_MSR_ID       0x802
#define X2APIC_MSR_VERSION  0x803
#define X2APIC_MSR_TPR      0x808
#define X2APIC_MSR_EOI      0x80b
#define X2APIC_MSR_SVR      0x80f
#define X2APIC_MSR_ICR      0x830
#define X2APIC_MSR_LVT_TIMER 0x832
#define X2APIC_MSR_LVT_LINT0 0x835
#define X2APIC_MSR_LVT_LINT1 0x836
#define X2APIC_MSR_TIMER_INIT 0x838
#define X2APIC_MSR_TIMER_CUR  0x839
#define X2APIC_MSR_TIMER_DIV  0x83e
#define X2APIC_MSR_SELF_IPI   0x83f
#define APIC_LVT_MASKED     (1u << 16)
#define APIC_TIMER_PERIODIC (1u << 17)

bool x2apic_supported(void);
void x2apic_enable(void);      /* APIC_BASE EN|EXTD, software-enable, mask LINTs */
uint32_t x2apic_id(void);
void x2apic_eoi(void);
void x2apic_send_ipi(uint32_t dest, uint32_t icr_low);
void x2apic_self_ipi(uint8_t vector);
void x2apic_timer_start(uint8_t vector, uint32_t initial_count, bool periodic);
void x2apic_timer_stop(void);
/* Busy-wait using the APIC timer as a clock (KVM's APIC bus: 1 tick = 1 ns). */
void udelay(uint64_t us);
void pic_mask_all(void);       /* keep the legacy 8259s quiet */

/* ---- IOAPIC */
#define IOAPIC_DEFAULT_BASE 0xfec00000u
void ioapic_set_base(uint64_t base);
uint32_t ioapic_read(uint8_t reg);
void ioapic_write(uint8_t reg, uint32_t v);
unsigned ioapic_max_redirection(void);
/* Edge-triggered, active-high, fixed delivery to one physical APIC ID. */
void ioapic_route(unsigned pin, uint8_t vector, uint8_t dest_apic_id);
void ioapic_mask(unsigned pin);

/* ---- CMOS / RTC */
uint8_t cmos_read(uint8_t reg);
void cmos_write(uint8_t reg, uint8_t v);
struct rtc_time { unsigned year, month, day, hour, minute, second; };
void rtc_read(struct rtc_time *t);

/* ---- ACPI */
struct acpi_sdt_header {
    char signature[4];
    uint32_t length;
    uint8_t revision;
    uint8_t checksum;
    char oem_id[6];
    char oem_table_id[8];
    uint32_t oem_revision;
    uint32_t creator_id;
    uint32_t creator_revision;
} __attribute__((packed));

#define MAX_CPUS 32
struct madt_info {
    unsigned cpu_count;               /* enabled processors */
    uint32_t apic_ids[MAX_CPUS];
    unsigned ioapic_count;
    uint64_t ioapic_base;             /* first IOAPIC */
    uint32_t ioapic_gsi_base;
    uint64_t lapic_base;
    uint32_t isa_irq_gsi[16];         /* ISA IRQ -> GSI (interrupt source overrides) */
};
uint64_t acpi_find_rsdp(void);        /* start_info first, then 0xe0000-0xfffff */
bool acpi_checksum_ok(const void *p, size_t n);
size_t acpi_table_count(void);
const struct acpi_sdt_header *acpi_table(size_t i);
const struct acpi_sdt_header *acpi_find_table(const char sig[4]);
bool madt_parse(struct madt_info *out);
bool mptable_parse(struct madt_info *out);  /* MP spec 1.4 tables, same result */

/* ---- power: ACPI S5 power-off (returns only if it did not work), i8042 reset */
bool acpi_poweroff(void);
void i8042_reset(void);

/* ---- SMP */
#define AP_TRAMPOLINE_ADDR 0x8000
typedef void (*ap_main_t)(unsigned cpu_index, uint32_t apic_id);
/* Start every AP listed in the MADT; each runs fn on its own stack.
 * Returns the number of APs that reported in. */
unsigned smp_start_aps(const struct madt_info *madt, ap_main_t fn);

#endif
