/* 16550A UART (isa-serial): interrupt driven, 16-byte receive FIFO, modem
 * control loopback.  Output goes to the machine's console; input arrives
 * from the I/O thread through serial_receive(). */
#include <errno.h>
#include <glib.h>
#include <string.h>
#include "devices/device.h"
#include "devices/device-state.h"

#define HOST_QUEUE_MAX (1u << 20)

enum { RBR_THR = 0, IER = 1, IIR_FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7 };

#define IER_RDI  0x01   /* received data available */
#define IER_THRI 0x02   /* transmitter holding register empty */
#define IER_RLSI 0x04   /* receiver line status */
#define IER_MSI  0x08   /* modem status */
#define IIR_NONE 0x01
#define IIR_MSI  0x00
#define IIR_THRI 0x02
#define IIR_RDI  0x04
#define IIR_RLSI 0x06
#define IIR_FIFO 0xc0
#define FCR_ENABLE 0x01
#define FCR_CLEAR_RX 0x02
#define LCR_DLAB 0x80
#define MCR_LOOP 0x10
#define LSR_DR   0x01
#define LSR_OE   0x02
#define LSR_BI   0x10
#define LSR_THRE 0x20
#define LSR_TEMT 0x40
#define MSR_CTS  0x10
#define MSR_DSR  0x20
#define MSR_DCD  0x80


struct serial {
    struct device dev;
    uint32_t iobase, irq;
    struct serial_state s;
    bool irq_level;
    GByteArray *host_queue;         /* input waiting for FIFO room */
};

static unsigned rx_capacity(const struct serial *u)
{
    return (u->s.fcr & FCR_ENABLE) ? UART_FIFO_SIZE : 1;
}

static uint8_t pending_interrupt(const struct serial *u)
{
    const struct serial_state *s = &u->s;
    if ((s->ier & IER_RLSI) && (s->lsr & (LSR_OE | LSR_BI)))
        return IIR_RLSI;
    if ((s->ier & IER_RDI) && s->rx_count)
        return IIR_RDI;
    if ((s->ier & IER_THRI) && s->thr_pending)
        return IIR_THRI;
    if ((s->ier & IER_MSI) && (s->msr & 0x0f))
        return IIR_MSI;
    return IIR_NONE;
}

static void update_irq(struct serial *u)
{
    bool level = pending_interrupt(u) != IIR_NONE;
    if (level != u->irq_level) {
        u->irq_level = level;
        machine_set_irq(u->dev.m, u->irq, level);
    }
}

/* Move host input into the FIFO while it has room. */
static void refill_fifo(struct serial *u)
{
    struct serial_state *s = &u->s;
    unsigned room = rx_capacity(u) - s->rx_count;
    unsigned take = MIN(room, u->host_queue->len);
    if (!take)
        return;
    memcpy(s->rx_fifo + s->rx_count, u->host_queue->data, take);
    s->rx_count += take;
    g_byte_array_remove_range(u->host_queue, 0, take);
    s->lsr |= LSR_DR;
}

static uint8_t pop_rx(struct serial *u)
{
    struct serial_state *s = &u->s;
    if (!s->rx_count)
        return 0;
    uint8_t byte = s->rx_fifo[0];
    memmove(s->rx_fifo, s->rx_fifo + 1, --s->rx_count);
    refill_fifo(u);
    if (!s->rx_count)
        s->lsr &= ~LSR_DR;
    return byte;
}

static void transmit(struct serial *u, uint8_t byte)
{
    if (u->s.mcr & MCR_LOOP) {
        g_byte_array_append(u->host_queue, &byte, 1);
        refill_fifo(u);
    } else {
        machine_console_output(u->dev.m, &byte, 1);
    }
    u->s.thr_pending = 1;
    u->s.lsr |= LSR_THRE | LSR_TEMT;
}

static uint8_t modem_status(const struct serial *u)
{
    if (!(u->s.mcr & MCR_LOOP))
        return u->s.msr;
    /* Loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD. */
    uint8_t mcr = u->s.mcr;
    return (uint8_t)(((mcr & 0x01) << 5) | ((mcr & 0x02) << 3) | ((mcr & 0x04) << 4) |
                     ((mcr & 0x08) << 4) | (u->s.msr & 0x0f));
}

static uint64_t serial_read(void *opaque, uint64_t offset, unsigned size)
{
    (void)size;
    struct serial *u = opaque;
    struct serial_state *s = &u->s;
    uint8_t value = 0xff;
    switch (offset) {
    case RBR_THR:
        value = (s->lcr & LCR_DLAB) ? s->dll : pop_rx(u);
        break;
    case IER:
        value = (s->lcr & LCR_DLAB) ? s->dlm : s->ier;
        break;
    case IIR_FCR: {
        uint8_t iir = pending_interrupt(u);
        if (iir == IIR_THRI)
            s->thr_pending = 0; /* reading IIR acknowledges THRE */
        value = iir | ((s->fcr & FCR_ENABLE) ? IIR_FIFO : 0);
        break;
    }
    case LCR:
        value = s->lcr;
        break;
    case MCR:
        value = s->mcr;
        break;
    case LSR:
        value = s->lsr;
        s->lsr &= ~(LSR_OE | LSR_BI);
        break;
    case MSR:
        value = modem_status(u);
        s->msr &= 0xf0; /* reading clears the delta bits */
        break;
    case SCR:
        value = s->scr;
        break;
    }
    update_irq(u);
    return value;
}

static void serial_write(void *opaque, uint64_t offset, uint64_t value64, unsigned size)
{
    (void)size;
    struct serial *u = opaque;
    struct serial_state *s = &u->s;
    uint8_t value = (uint8_t)value64;
    switch (offset) {
    case RBR_THR:
        if (s->lcr & LCR_DLAB)
            s->dll = value;
        else
            transmit(u, value);
        break;
    case IER:
        if (s->lcr & LCR_DLAB) {
            s->dlm = value;
        } else {
            /* Enabling THRE while the holder is empty raises it at once. */
            if ((value & IER_THRI) && !(s->ier & IER_THRI) && (s->lsr & LSR_THRE))
                s->thr_pending = 1;
            s->ier = value & 0x0f;
        }
        break;
    case IIR_FCR:
        if ((value ^ s->fcr) & FCR_ENABLE || (value & FCR_CLEAR_RX)) {
            s->rx_count = 0;
            s->lsr &= ~LSR_DR;
        }
        s->fcr = value & 0xc9;
        refill_fifo(u);
        break;
    case LCR:
        s->lcr = value;
        break;
    case MCR:
        s->mcr = value & 0x1f;
        break;
    case SCR:
        s->scr = value;
        break;
    default:
        break; /* LSR and MSR are read-only */
    }
    update_irq(u);
}

static const struct io_ops serial_ops = { serial_read, serial_write };

void serial_receive(struct device *dev, const uint8_t *data, size_t len)
{
    struct serial *u = (struct serial *)dev;
    pthread_mutex_lock(&dev->lock);
    if (u->host_queue->len + len > HOST_QUEUE_MAX) {
        len = HOST_QUEUE_MAX - u->host_queue->len;
        u->s.lsr |= LSR_OE;
    }
    g_byte_array_append(u->host_queue, data, (guint)len);
    refill_fifo(u);
    update_irq(u);
    pthread_mutex_unlock(&dev->lock);
}

static int serial_realize(struct device *dev)
{
    struct serial *u = (struct serial *)dev;
    u->host_queue = g_byte_array_new();
    return device_map_pio(dev, u->iobase, 8, &serial_ops);
}

static void serial_unrealize(struct device *dev)
{
    struct serial *u = (struct serial *)dev;
    g_byte_array_unref(u->host_queue);
}

static void serial_reset(struct device *dev)
{
    struct serial *u = (struct serial *)dev;
    memset(&u->s, 0, sizeof(u->s));
    u->s.lsr = LSR_THRE | LSR_TEMT;
    u->s.msr = MSR_DCD | MSR_DSR | MSR_CTS;
    u->s.dll = 0x0c; /* 9600 baud */
    update_irq(u);
}

static void serial_save(struct device *dev, void *state)
{
    memcpy(state, &((struct serial *)dev)->s, sizeof(struct serial_state));
}

static int serial_load(struct device *dev, const void *state)
{
    struct serial *u = (struct serial *)dev;
    memcpy(&u->s, state, sizeof(u->s));
    update_irq(u);
    return 0;
}

static int serial_post_load(void *opaque, uint32_t version)
{
    (void)version;
    struct serial_state *s = opaque;
    if (s->rx_count > UART_FIFO_SIZE)
        return vmm_set_error(EINVAL, "serial: rx_count %u exceeds the %u-byte FIFO",
                             s->rx_count, UART_FIFO_SIZE);
    if (!(s->fcr & FCR_ENABLE) && s->rx_count > 1)
        return vmm_set_error(EINVAL, "serial: %u bytes queued with the FIFO off", s->rx_count);
    if (!!(s->lsr & LSR_DR) != !!s->rx_count)
        return vmm_set_error(EINVAL, "serial: LSR data-ready disagrees with the FIFO");
    return 0;
}

static const struct state_field serial_fields[] = {
    STATE_FIELD(struct serial_state, ier, STATE_U8),
    STATE_FIELD(struct serial_state, lcr, STATE_U8),
    STATE_FIELD(struct serial_state, mcr, STATE_U8),
    STATE_FIELD(struct serial_state, lsr, STATE_U8),
    STATE_FIELD(struct serial_state, msr, STATE_U8),
    STATE_FIELD(struct serial_state, scr, STATE_U8),
    STATE_FIELD(struct serial_state, fcr, STATE_U8),
    STATE_FIELD(struct serial_state, dll, STATE_U8),
    STATE_FIELD(struct serial_state, dlm, STATE_U8),
    STATE_FIELD(struct serial_state, thr_pending, STATE_U8),
    STATE_FIELD(struct serial_state, rx_count, STATE_U8),
    STATE_BYTES_FIELD(struct serial_state, rx_fifo),
    STATE_END,
};

const struct state_desc serial_state_desc = {
    .name = "serial", .version = 1, .min_version = 1,
    .size = sizeof(struct serial_state), .fields = serial_fields,
    .post_load = serial_post_load,
};

static const struct vmm_prop serial_props[] = {
    { "iobase", VMM_PROP_U32, offsetof(struct serial, iobase), "0x3f8", "I/O port base",
      NULL, 0, 0xfff8 },
    { "irq", VMM_PROP_U32, offsetof(struct serial, irq), "4", "ISA interrupt line", NULL, 0, 23 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

const struct device_class device_serial = {
    .name = "isa-serial",
    .help = "16550A UART",
    .instance_size = sizeof(struct serial),
    .props = serial_props,
    .user_creatable = true,
    .realize = serial_realize,
    .unrealize = serial_unrealize,
    .reset = serial_reset,
    .state = &serial_state_desc,
    .save = serial_save,
    .load = serial_load,
};
