/* Polled 16550 console on COM1 and a small printf. */
#include "guest.h"

#define UART_THR 0
#define UART_IER 1
#define UART_DLL 0
#define UART_DLM 1
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define LSR_THRE 0x20
#define LCR_DLAB 0x80
#define LCR_8N1  0x03

#define UART_IIR 2
#define UART_FIFO_DEPTH 16

static spinlock_t console_lock;
static unsigned tx_burst = 1;   /* bytes we may write per THR-empty: 16 with a FIFO */
static unsigned tx_room;        /* bytes left in the current burst */

void console_init(void)
{
    outb(COM1 + UART_IER, 0x00);
    outb(COM1 + UART_LCR, LCR_DLAB);
    outb(COM1 + UART_DLL, 0x01);      /* 115200 baud */
    outb(COM1 + UART_DLM, 0x00);
    outb(COM1 + UART_LCR, LCR_8N1);
    outb(COM1 + UART_FCR, 0x07);      /* enable and clear FIFOs */
    outb(COM1 + UART_MCR, 0x03);      /* DTR, RTS; OUT2 stays off: no IRQ */
    /* IIR bits 7:6 = 11: a 16550A whose FIFO took, so THR-empty means 16 free. */
    tx_burst = (inb(COM1 + UART_IIR) & 0xc0) == 0xc0 ? UART_FIFO_DEPTH : 1;
    tx_room = 0;
}

static void uart_putc(char c)
{
    if (!tx_room) {
        /* Bounded: a UART that never says "empty" must not hang the guest. */
        for (unsigned i = 0; i < 100000 && !(inb(COM1 + UART_LSR) & LSR_THRE); i++)
            cpu_relax();
        tx_room = tx_burst;
    }
    outb(COM1 + UART_THR, (uint8_t)c);
    tx_room--;
}

void console_putc(char c)
{
    if (c == '\n')
        uart_putc('\r');
    uart_putc(c);
}

void console_write(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        console_putc(s[i]);
}

void console_flush(void)
{
    tx_room = 0;
}

void console_break_lock(void)
{
    spin_unlock(&console_lock);
}

/* ---- formatting */
struct sink {
    char *buf;       /* NULL: console */
    size_t size, len;
};

static void sink_put(struct sink *s, char c)
{
    if (!s->buf)
        console_putc(c);
    else if (s->len + 1 < s->size)
        s->buf[s->len] = c;
    s->len++;
}

static void put_padded(struct sink *s, const char *digits, size_t n, unsigned width,
                       bool zero, bool left, bool neg)
{
    size_t total = n + (neg ? 1 : 0);
    if (neg && zero)
        sink_put(s, '-');
    if (!left)
        for (size_t i = total; i < width; i++)
            sink_put(s, zero ? '0' : ' ');
    if (neg && !zero)
        sink_put(s, '-');
    for (size_t i = 0; i < n; i++)
        sink_put(s, digits[i]);
    if (left)
        for (size_t i = total; i < width; i++)
            sink_put(s, ' ');
}

static void put_number(struct sink *s, uint64_t v, unsigned base, bool upper,
                       unsigned width, bool zero, bool left, bool neg)
{
    char tmp[24];
    size_t n = 0;
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    do {
        tmp[n++] = digits[v % base];
        v /= base;
    } while (v);
    char out[24];
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    put_padded(s, out, n, width, zero, left, neg);
}

static void format(struct sink *s, const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            sink_put(s, *fmt);
            continue;
        }
        fmt++;
        bool zero = false, left = false;
        for (;; fmt++) {
            if (*fmt == '0')
                zero = true;
            else if (*fmt == '-')
                left = true;
            else
                break;
        }
        unsigned width = 0;
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (unsigned)(*fmt++ - '0');
        size_t precision = (size_t)-1;
        if (*fmt == '.') {
            precision = 0;
            for (fmt++; *fmt >= '0' && *fmt <= '9'; fmt++)
                precision = precision * 10 + (size_t)(*fmt - '0');
        }
        int longs = 0;
        while (*fmt == 'l') {
            longs++;
            fmt++;
        }
        if (*fmt == 'z') {
            longs = 1;
            fmt++;
        }
        switch (*fmt) {
        case 'd':
        case 'i': {
            int64_t v = longs ? va_arg(ap, int64_t) : va_arg(ap, int);
            bool neg = v < 0;
            put_number(s, neg ? (uint64_t)0 - (uint64_t)v : (uint64_t)v, 10, false, width, zero, left, neg);
            break;
        }
        case 'u':
        case 'x':
        case 'X': {
            uint64_t v = longs ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
            unsigned base = *fmt == 'u' ? 10 : 16;
            put_number(s, v, base, *fmt == 'X', width, zero, left, false);
            break;
        }
        case 'p':
            sink_put(s, '0');
            sink_put(s, 'x');
            put_number(s, (uintptr_t)va_arg(ap, void *), 16, false, width, zero, left, false);
            break;
        case 'c': {
            char c = (char)va_arg(ap, int);
            put_padded(s, &c, 1, width, false, left, false);
            break;
        }
        case 's': {
            const char *str = va_arg(ap, const char *);
            if (!str)
                str = "(null)";
            size_t n = 0;
            while (n < precision && str[n])
                n++;
            put_padded(s, str, n, width, false, left, false);
            break;
        }
        case '%':
            sink_put(s, '%');
            break;
        case '\0':
            return;
        default:
            sink_put(s, '%');
            sink_put(s, *fmt);
            break;
        }
    }
}

int vprintf(const char *fmt, va_list ap)
{
    struct sink s = { 0 };
    spin_lock(&console_lock);
    format(&s, fmt, ap);
    spin_unlock(&console_lock);
    return (int)s.len;
}

int printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vprintf(fmt, ap);
    va_end(ap);
    return n;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    struct sink s = { .buf = buf, .size = size };
    va_list ap;
    va_start(ap, fmt);
    format(&s, fmt, ap);
    va_end(ap);
    if (size)
        buf[s.len < size ? s.len : size - 1] = '\0';
    return (int)s.len;
}
