/* echo: interrupt-driven serial input.  The UART raises IRQ 4 (through the
 * IOAPIC) when bytes arrive; the handler drains the receive FIFO and main
 * echoes each line back as "echo: <line>" until the line "quit". */
#include "guest.h"

#define COM1_IRQ 4
#define UART_RBR 0
#define UART_IER 1
#define UART_MCR 4
#define UART_LSR 5
#define LSR_DATA_READY 0x01
#define LINE_MAX 128
#define RING_SIZE 1024
#define IDLE_TSC_CYCLES 60000000000ull   /* give up after ~20 s without input */

static volatile uint8_t ring[RING_SIZE];
static volatile unsigned ring_head, ring_tail, rx_irqs;

static void on_com1(struct interrupt_frame *f)
{
    (void)f;
    while (inb(COM1 + UART_LSR) & LSR_DATA_READY) {
        uint8_t c = inb(COM1 + UART_RBR);
        if (ring_head - ring_tail < RING_SIZE)
            ring[ring_head++ % RING_SIZE] = c;
    }
    rx_irqs++;
    x2apic_eoi();
}

static unsigned com1_pin(void)
{
    struct madt_info madt;
    if (!madt_parse(&madt))
        return COM1_IRQ;
    if (madt.ioapic_count)
        ioapic_set_base(madt.ioapic_base);
    return madt.isa_irq_gsi[COM1_IRQ] - madt.ioapic_gsi_base;
}

/* Next byte of input, sleeping until the UART interrupts; -1 on timeout. */
static int next_byte(void)
{
    uint64_t start = rdtsc();
    while (ring_tail == ring_head) {
        if (rdtsc() - start > IDLE_TSC_CYCLES)
            return -1;
        wait_for_interrupt();
    }
    return ring[ring_tail++ % RING_SIZE];
}

int main(const struct hvm_start_info *si)
{
    (void)si;
    x2apic_enable();
    pic_mask_all();
    unsigned pin = com1_pin();
    uint8_t vector = VECTOR_IOAPIC_BASE + COM1_IRQ;
    idt_set_handler(vector, on_com1);
    ioapic_route(pin, vector, (uint8_t)x2apic_id());
    outb(COM1 + UART_MCR, 0x0b);          /* DTR, RTS, OUT2 (IRQ enable on PCs) */
    outb(COM1 + UART_IER, 0x01);          /* received data available */
    printf("echo: ready\n");
    char line[LINE_MAX];
    unsigned len = 0, lines = 0;
    for (;;) {
        int c = next_byte();
        if (c < 0)
            guest_fail("no input for too long (%u lines so far, %u interrupts)", lines, rx_irqs);
        if (c == '\r')
            continue;
        if (c != '\n') {
            if (len < LINE_MAX - 1)
                line[len++] = (char)c;
            continue;
        }
        line[len] = '\0';
        lines++;
        if (!strcmp(line, "quit"))
            break;
        printf("echo: %s\n", line);
        len = 0;
    }
    outb(COM1 + UART_IER, 0);
    printf("echo: %u lines, %u receive interrupts\n", lines, rx_irqs);
    return rx_irqs ? 0 : 1;
}
