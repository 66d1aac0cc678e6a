/* serial: the console works, printf formats, and COM1 behaves like a
 * 16550A (scratch register, FIFO identification, loopback). */
#include "guest.h"

#define UART_RBR 0
#define UART_THR 0
#define UART_IIR 2
#define UART_FCR 2
#define UART_MCR 4
#define UART_LSR 5
#define UART_SCR 7
#define MCR_LOOP 0x10

static bool check_format(void)
{
    char buf[96];
    snprintf(buf, sizeof(buf), "%d|%u|%x|%05d|%-3s|%lx|%.2s|%c", -42, 42u, 0xbeefu, 7, "ok",
             0x123456789abcul, "xyz", '!');
    const char *want = "-42|42|beef|00007|ok |123456789abc|xy|!";
    if (strcmp(buf, want) != 0) {
        printf("serial: printf gave \"%s\", want \"%s\"\n", buf, want);
        return false;
    }
    return true;
}

static bool check_scratch(void)
{
    outb(COM1 + UART_SCR, 0x5a);
    uint8_t a = inb(COM1 + UART_SCR);
    outb(COM1 + UART_SCR, 0xa5);
    uint8_t b = inb(COM1 + UART_SCR);
    if (a != 0x5a || b != 0xa5) {
        printf("serial: scratch register read 0x%x/0x%x\n", a, b);
        return false;
    }
    return true;
}

static void drain_transmitter(void)
{
    while (!(inb(COM1 + UART_LSR) & 0x40))   /* TEMT: FIFO and shifter empty */
        cpu_relax();
    console_flush();
}

static bool check_fifo_id(void)
{
    drain_transmitter();                      /* FCR=7 clears the TX FIFO */
    outb(COM1 + UART_FCR, 0x07);
    uint8_t iir = inb(COM1 + UART_IIR);
    if ((iir & 0xc0) != 0xc0) {
        printf("serial: IIR 0x%x does not identify a 16550A with FIFOs\n", iir);
        return false;
    }
    return true;
}

static bool check_loopback(void)
{
    /* Drain the transmitter so the byte cannot reach the console. */
    drain_transmitter();
    while (inb(COM1 + UART_LSR) & 0x01)
        (void)inb(COM1 + UART_RBR);
    outb(COM1 + UART_MCR, MCR_LOOP | 0x03);
    outb(COM1 + UART_THR, 'Z');
    uint8_t lsr = 0;
    for (unsigned i = 0; i < 10000 && !((lsr = inb(COM1 + UART_LSR)) & 0x01); i++)
        cpu_relax();
    uint8_t got = inb(COM1 + UART_RBR);
    outb(COM1 + UART_MCR, 0x03);
    console_flush();
    if (!(lsr & 0x01) || got != 'Z') {
        printf("serial: loopback gave lsr=0x%x data=0x%x\n", lsr, got);
        return false;
    }
    return true;
}

int main(const struct hvm_start_info *si)
{
    printf("hello from the guest\n");
    printf("serial: start_info version %u, cmdline \"%s\"\n", si->version, start_cmdline());
    bool ok = check_format() & check_scratch() & check_fifo_id() & check_loopback();
    if (!ok)
        return 1;
    printf("serial: ok\n");
    return 0;
}
