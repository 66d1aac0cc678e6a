/* virtio-console (virtio 1.2 §5.3) with MULTIPORT: port 0 (receiveq 0,
 * transmitq 1), the control queues (2, 3), then port N on queues 2N+2 and
 * 2N+3.  Ports are child devices as in QEMU ("virtconsole" and
 * "virtserialport,chardev=ID,name=NAME[,nr=N][,bus=ID]") or, for the
 * plain console, the device's own chardev= property (port 0).
 *
 * Every port talks to a chardev (lib/chardev).  Host to guest: the chardev
 * is read only while the port can take data (guest port open, a receive
 * buffer posted); otherwise it stays unread (backpressure).  Guest to host:
 * written while a host peer is connected, dropped otherwise (QEMU's rule);
 * a full backend holds the buffer until it drains.  Control messages to
 * the driver are generated from per-port pending flags, so however often a
 * host peer connects and leaves, nothing grows without bound. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "chardev/chardev.h"
#include "devices/virtio/virtio-console.h"
#include "devices/virtio/virtio.h"

#define VCON_F_SIZE        0
#define VCON_F_MULTIPORT   1
#define VCON_F_EMERG_WRITE 2

#define VCON_MAX_NAME 127

struct vcon_port {
    struct virtio_console *vc;
    unsigned nr;
    struct device *owner;          /* the port device (or the console device itself) */
    struct chardev *chr;
    const char *name;              /* owned by the port device's properties; NULL: none */
    bool console;
    /* Run-time state, cleared by reset. */
    bool ready;                    /* the driver sent PORT_READY(1) */
    bool guest_open;
    bool host_open;                /* what the chardev says */
    unsigned pending;              /* PEND_* messages for the driver */
    bool rx_held;                  /* rx_chain popped, not yet pushed */
    struct vq_chain rx_chain;
    struct vq_chain *tx_chain;     /* partly written to a full backend */
    uint64_t tx_done;
    /* VSERPORT_CHANGE reports (kept across resets). */
    GSource *change_src;           /* a report pending */
    bool reported_open;
    gint64 reported_at;            /* monotonic µs of the last report (0: none) */
};

enum { PEND_ADD = 1, PEND_CONSOLE = 2, PEND_NAME = 4, PEND_OPEN = 8 };

struct virtio_console {
    struct virtio_proxy proxy;     /* first: transport and virtio core */
    uint32_t max_ports;
    char *chardev;                 /* port 0 (console) without a child device */
    unsigned ignored_logs;         /* bad control messages logged so far */
    struct vcon_port ports[VCON_MAX_PORTS];
};

struct vcon_port_dev {
    struct device dev;             /* first */
    char *chardev;
    char *name;
    char *bus;
    uint32_t nr;
    struct virtio_console *parent;
};

struct vcon_ctrl {
    uint32_t id;
    uint16_t event, value;
};

static struct virtio_console *vcon_of(struct virtio_device *vdev)
{
    return (struct virtio_console *)VIRTIO_PROXY_OF(vdev);
}

static const char *vcon_name(struct virtio_console *vc)
{
    struct device *dev = &vc->proxy.pci.dev;
    return dev->id ? dev->id : dev->cls->name;
}

static bool multiport(struct virtio_console *vc)
{
    return virtio_has_feature(&vc->proxy.vdev, VCON_F_MULTIPORT);
}

static unsigned rx_queue(unsigned nr)
{
    return nr ? 2 + 2 * nr : 0;
}

/* Port number of a data queue, or -1 for the control queues. */
static int port_of_queue(unsigned q)
{
    if (q < 2)
        return 0;
    if (q < 4)
        return -1;
    return (int)(q - 2) / 2;
}

static bool port_present(const struct vcon_port *p)
{
    return p->chr != NULL;
}

/* After handling queue q: interrupt for what was pushed, and ask to be
 * notified of what the driver adds next (EVENT_IDX needs avail_event
 * moved even when nothing was pushed). */
static void queue_finished(struct virtio_device *vdev, unsigned q, bool pushed)
{
    if (pushed)
        virtio_queue_done(vdev, q);
    else if (!vdev->broken)
        virtqueue_set_notify(&vdev->vqs[q], true);
}

/* ---- control messages to the driver (control receiveq, queue 2) -------- */

static void queue_ctrl(struct vcon_port *p, unsigned what)
{
    p->pending |= what;
}

/* The next message for port p (false: nothing pending). */
static bool next_ctrl(struct vcon_port *p, struct vcon_ctrl *msg, unsigned *flag)
{
    static const unsigned order[] = { PEND_ADD, PEND_CONSOLE, PEND_NAME, PEND_OPEN };
    for (size_t i = 0; i < VMM_ARRAY_SIZE(order); i++) {
        if (!(p->pending & order[i]))
            continue;
        *flag = order[i];
        msg->id = p->nr;
        msg->value = 1;
        switch (order[i]) {
        case PEND_ADD: msg->event = VCON_DEVICE_ADD; break;
        case PEND_CONSOLE: msg->event = VCON_CONSOLE_PORT; break;
        case PEND_NAME: msg->event = VCON_PORT_NAME; break;
        default:
            msg->event = VCON_PORT_OPEN;
            msg->value = p->host_open;
            break;
        }
        return true;
    }
    return false;
}

static struct vcon_port *port_with_pending(struct virtio_console *vc)
{
    for (unsigned i = 0; i < vc->max_ports; i++)
        if (vc->ports[i].pending)
            return &vc->ports[i];
    return NULL;
}

/* Write one message into a popped chain; false when it does not fit. */
static bool fill_ctrl(struct virtio_console *vc, const struct vq_chain *c, struct vcon_port *p,
                      const struct vcon_ctrl *msg, uint32_t *written)
{
    uint8_t buf[sizeof(*msg) + VCON_MAX_NAME + 1];
    uint32_t len = sizeof(*msg);
    memcpy(buf, msg, sizeof(*msg));
    if (msg->event == VCON_PORT_NAME) {
        size_t n = strlen(p->name) + 1;   /* with the NUL, as QEMU sends it */
        memcpy(buf + len, p->name, n);
        len += (uint32_t)n;
    }
    if (c->out_count || c->in_bytes < len) {
        virtio_set_broken(&vc->proxy.vdev, "control receive buffer (head %u): %s", c->head,
                          c->out_count ? "device-readable" : "too short for a control message");
        return false;
    }
    *written = vq_chain_write(&vc->proxy.vdev.vqs[VCON_CTRL_RX], c, buf, len);
    return true;
}

static void flush_ctrl(struct virtio_console *vc)
{
    struct virtio_device *vdev = &vc->proxy.vdev;
    bool pushed = false;
    struct vcon_port *p;
    while (multiport(vc) && (p = port_with_pending(vc)) != NULL) {
        struct vcon_ctrl msg;
        unsigned flag;
        struct vq_chain c;
        uint32_t written;
        if (!next_ctrl(p, &msg, &flag) || virtio_pop(vdev, VCON_CTRL_RX, &c) <= 0)
            break;
        if (!fill_ctrl(vc, &c, p, &msg, &written))
            return;
        p->pending &= ~flag;
        virtio_push(vdev, VCON_CTRL_RX, &c, written);
        pushed = true;
    }
    queue_finished(vdev, VCON_CTRL_RX, pushed);
}

/* ---- control messages from the driver (control transmitq, queue 3) ----- */

/* A guest can send bad messages in a loop: the first few are logged. */
#define VCON_MAX_IGNORED_LOGS 16

static void log_ignored(struct virtio_console *vc, const char *fmt, unsigned a, unsigned b)
{
    if (vc->ignored_logs >= VCON_MAX_IGNORED_LOGS)
        return;
    char what[96];
    snprintf(what, sizeof(what), fmt, a, b);
    bool last = ++vc->ignored_logs == VCON_MAX_IGNORED_LOGS;
    vmm_log(VMM_LOG_WARNING, "virtio-console", "%s: control message ignored: %s%s", vcon_name(vc),
            what, last ? " (further ones are not logged)" : "");
}

static void device_ready(struct virtio_console *vc, uint16_t value)
{
    if (!value) {
        vmm_log(VMM_LOG_WARNING, "virtio-console", "%s: the driver failed to initialise",
                vcon_name(vc));
        return;
    }
    for (unsigned i = 0; i < vc->max_ports; i++)
        if (port_present(&vc->ports[i]))
            queue_ctrl(&vc->ports[i], PEND_ADD);
}

static void port_ready(struct virtio_console *vc, struct vcon_port *p, uint16_t value)
{
    if (!value) {
        vmm_log(VMM_LOG_WARNING, "virtio-console", "%s: the driver could not add port %u",
                vcon_name(vc), p->nr);
        return;
    }
    p->ready = true;
    if (p->console)
        queue_ctrl(p, PEND_CONSOLE);
    if (p->name)
        queue_ctrl(p, PEND_NAME);
    if (p->host_open)
        queue_ctrl(p, PEND_OPEN);
}

/* VSERPORT_CHANGE: reported from a source in the I/O loop, without the
 * device lock (an event callback may pause the machine, which waits for the
 * vCPUs).  One report pending per port at most, reading the state when it
 * runs, and at most one report a second per port, as QEMU rate-limits this
 * event: a guest toggling its port in a loop must not flood the embedder
 * or get QMP clients dropped for unread output. */
#define VCON_CHANGE_INTERVAL_US G_USEC_PER_SEC

static gboolean report_port_change(gpointer opaque)
{
    struct vcon_port *p = opaque;
    struct device *dev = &p->vc->proxy.pci.dev;
    pthread_mutex_lock(&dev->lock);
    bool open = p->guest_open, changed = open != p->reported_open;
    char *id = changed ? strdup(p->owner && p->owner->id ? p->owner->id : "") : NULL;
    p->reported_open = open;
    if (changed)
        p->reported_at = g_get_monotonic_time();
    g_source_unref(p->change_src);
    p->change_src = NULL;
    pthread_mutex_unlock(&dev->lock);
    if (id)
        machine_emit(dev->m, VMM_EVENT_VSERPORT_CHANGE, 1, NULL, id, open ? "open" : "closed");
    free(id);
    return G_SOURCE_REMOVE;
}

/* The guest side of port p changed (device lock held, any thread). */
static void port_changed(struct vcon_port *p)
{
    GMainContext *ctx = p->vc->proxy.pci.dev.m->io_context;
    if (p->change_src || !ctx)
        return;   /* the pending report reads the state when it runs */
    gint64 now = g_get_monotonic_time();
    gint64 due = p->reported_at ? p->reported_at + VCON_CHANGE_INTERVAL_US : now;
    p->change_src = due > now ? g_timeout_source_new((guint)((due - now + 999) / 1000))
                              : g_idle_source_new();
    g_source_set_callback(p->change_src, report_port_change, p, NULL);
    g_source_attach(p->change_src, ctx);
}

static void guest_port_open(struct virtio_console *vc, struct vcon_port *p, uint16_t value)
{
    bool open = value != 0;
    if (open == p->guest_open)
        return;
    p->guest_open = open;
    vmm_log(VMM_LOG_INFO, "virtio-console", "%s: port %u%s%s: guest %s", vcon_name(vc), p->nr,
            p->name ? " " : "", p->name ? p->name : "", open ? "opened" : "closed");
    port_changed(p);
    if (open)
        chardev_accept_input(p->chr);
}

static void handle_ctrl(struct virtio_console *vc, const struct vcon_ctrl *msg)
{
    if (msg->event == VCON_DEVICE_READY) {
        device_ready(vc, msg->value);
        return;
    }
    if (msg->id >= vc->max_ports || !port_present(&vc->ports[msg->id])) {
        log_ignored(vc, "event %u for port %u, which does not exist", msg->event, msg->id);
        return;
    }
    struct vcon_port *p = &vc->ports[msg->id];
    switch (msg->event) {
    case VCON_PORT_READY:
        port_ready(vc, p, msg->value);
        break;
    case VCON_PORT_OPEN:
        guest_port_open(vc, p, msg->value);
        break;
    default:
        log_ignored(vc, "unknown event %u (port %u)", msg->event, msg->id);
    }
}

static void ctrl_tx(struct virtio_console *vc)
{
    struct virtio_device *vdev = &vc->proxy.vdev;
    struct vq_chain c;
    bool pushed = false;
    while (virtio_pop(vdev, VCON_CTRL_TX, &c) > 0) {
        if (c.in_count) {
            virtio_set_broken(vdev, "control message (head %u) has device-writable buffers",
                              c.head);
            return;
        }
        struct vcon_ctrl msg;
        if (vq_chain_read(&c, &msg, sizeof(msg)) != sizeof(msg))
            log_ignored(vc, "%u bytes, a control message has %u", (unsigned)c.out_bytes,
                        (unsigned)sizeof(msg));
        else
            handle_ctrl(vc, &msg);
        virtio_push(vdev, VCON_CTRL_TX, &c, 0);
        pushed = true;
    }
    queue_finished(vdev, VCON_CTRL_TX, pushed);
    flush_ctrl(vc);
}

/* ---- data: guest to host ----------------------------------------------- */

/* Write the chain from tx_done on; false when the backend is full. */
static bool write_chain(struct vcon_port *p, const struct vq_chain *c)
{
    uint64_t skip = p->tx_done;
    for (unsigned i = 0; i < c->out_count; i++) {
        const struct vq_iov *seg = &c->out[i];
        if (skip >= seg->len) {
            skip -= seg->len;
            continue;
        }
        size_t want = seg->len - skip;
        size_t n = chardev_write(p->chr, (const uint8_t *)seg->base + skip, want);
        p->tx_done += n;
        if (n < want)
            return false;
        skip = 0;
    }
    return true;
}

static void finish_tx(struct virtio_console *vc, unsigned q, const struct vq_chain *c)
{
    virtio_push(&vc->proxy.vdev, q, c, 0);
    vc->ports[port_of_queue(q)].tx_done = 0;
}

/* The held chain first; false while the backend stays full. */
static bool resume_tx(struct virtio_console *vc, struct vcon_port *p, unsigned q)
{
    if (!p->tx_chain)
        return true;
    if (!write_chain(p, p->tx_chain))
        return false;
    finish_tx(vc, q, p->tx_chain);
    vq_chain_free(p->tx_chain);
    p->tx_chain = NULL;
    virtio_queue_done(&vc->proxy.vdev, q);
    return true;
}

static void port_tx(struct virtio_console *vc, struct vcon_port *p, unsigned q)
{
    struct virtio_device *vdev = &vc->proxy.vdev;
    struct vq_chain c;
    bool pushed = false;
    if (!resume_tx(vc, p, q))
        return;
    while (virtio_pop(vdev, q, &c) > 0) {
        if (c.in_count) {
            virtio_set_broken(vdev, "port %u: transmit buffer (head %u) is device-writable",
                              p->nr, c.head);
            return;
        }
        /* Without a host peer the data is dropped, as QEMU does. */
        if (port_present(p) && p->host_open && !write_chain(p, &c)) {
            p->tx_chain = vq_chain_clone(&c);
            if (p->tx_chain)
                break;                  /* resumed by write_ready */
            /* Out of memory: drop the rest rather than stall the port. */
        }
        finish_tx(vc, q, &c);
        pushed = true;
    }
    queue_finished(vdev, q, pushed);
}

static void port_write_ready(void *opaque)
{
    struct vcon_port *p = opaque;
    virtio_queue_kick(&p->vc->proxy.vdev, rx_queue(p->nr) + 1);
}

/* ---- data: host to guest ----------------------------------------------- */

static bool port_accepts(struct virtio_console *vc, const struct vcon_port *p)
{
    struct virtio_device *vdev = &vc->proxy.vdev;
    if (vdev->broken || !(vdev->status & VIRTIO_STATUS_DRIVER_OK))
        return false;
    if (p->nr && !multiport(vc))
        return false;
    return !multiport(vc) || p->guest_open;
}

/* Hold the next receive buffer; its size, 0 when none. */
static size_t hold_rx_buffer(struct virtio_console *vc, struct vcon_port *p)
{
    struct virtio_device *vdev = &vc->proxy.vdev;
    unsigned q = rx_queue(p->nr);
    while (!p->rx_held) {
        if (!vdev->vqs[q].ready || virtio_pop(vdev, q, &p->rx_chain) <= 0)
            return 0;
        if (p->rx_chain.out_count) {
            virtio_set_broken(vdev, "port %u: receive buffer (head %u) is device-readable", p->nr,
                              p->rx_chain.head);
            return 0;
        }
        if (p->rx_chain.in_bytes)
            p->rx_held = true;
        else
            virtio_push(vdev, q, &p->rx_chain, 0);   /* nothing fits in it: give it back */
    }
    return (size_t)p->rx_chain.in_bytes;
}

static size_t port_can_receive(void *opaque)
{
    struct vcon_port *p = opaque;
    struct virtio_console *vc = p->vc;
    pthread_mutex_lock(&vc->proxy.pci.dev.lock);
    size_t room = port_accepts(vc, p) ? hold_rx_buffer(vc, p) : 0;
    struct virtqueue *vq = &vc->proxy.vdev.vqs[rx_queue(p->nr)];
    if (!room && vq->ready && !vc->proxy.vdev.broken)
        virtqueue_set_notify(vq, true);   /* tell us when buffers come */
    pthread_mutex_unlock(&vc->proxy.pci.dev.lock);
    return room;
}

static void port_receive(void *opaque, const uint8_t *data, size_t len)
{
    struct vcon_port *p = opaque;
    struct virtio_console *vc = p->vc;
    struct virtio_device *vdev = &vc->proxy.vdev;
    unsigned q = rx_queue(p->nr);
    pthread_mutex_lock(&vc->proxy.pci.dev.lock);
    /* A reset between can_receive and now dropped the buffer: so is the data. */
    if (p->rx_held && port_accepts(vc, p)) {
        uint32_t n = len > UINT32_MAX ? UINT32_MAX : (uint32_t)len;
        uint32_t written = vq_chain_write(&vdev->vqs[q], &p->rx_chain, data, n);
        virtio_push(vdev, q, &p->rx_chain, written);
        p->rx_held = false;
        virtio_queue_done(vdev, q);
    }
    pthread_mutex_unlock(&vc->proxy.pci.dev.lock);
}

/* ---- host peer events -------------------------------------------------- */

static void port_event(void *opaque, enum chardev_event ev)
{
    struct vcon_port *p = opaque;
    struct virtio_console *vc = p->vc;
    pthread_mutex_lock(&vc->proxy.pci.dev.lock);
    p->host_open = ev == CHARDEV_OPENED;
    if (!p->host_open && p->tx_chain) {
        unsigned q = rx_queue(p->nr) + 1;
        finish_tx(vc, q, p->tx_chain);   /* the rest goes nowhere */
        vq_chain_free(p->tx_chain);
        p->tx_chain = NULL;
        virtio_queue_done(&vc->proxy.vdev, q);
        /* The chains behind it waited for write_ready, which will not come
         * now (the connection and its buffer are gone): drop them too. */
        virtio_queue_kick(&vc->proxy.vdev, q);
    }
    if (p->ready) {
        queue_ctrl(p, PEND_OPEN);
        flush_ctrl(vc);
    }
    pthread_mutex_unlock(&vc->proxy.pci.dev.lock);
}

static const struct chardev_frontend port_frontend = {
    .can_receive = port_can_receive,
    .receive = port_receive,
    .event = port_event,
    .write_ready = port_write_ready,
};

/* ---- virtio device ----------------------------------------------------- */

static void vcon_queue_notify(struct virtio_device *vdev, unsigned q)
{
    struct virtio_console *vc = vcon_of(vdev);
    if (q >= 2 && !multiport(vc))
        return;   /* only port 0 exists without MULTIPORT */
    if (q == VCON_CTRL_RX) {
        flush_ctrl(vc);
        return;
    }
    if (q == VCON_CTRL_TX) {
        ctrl_tx(vc);
        return;
    }
    struct vcon_port *p = &vc->ports[port_of_queue(q)];
    if (q & 1)
        port_tx(vc, p, q);
    else if (port_present(p))
        chardev_accept_input(p->chr);   /* new receive buffers */
}

static void port_reset(struct vcon_port *p)
{
    if (p->guest_open)
        port_changed(p);   /* the reset closed it, as QEMU reports */
    p->ready = p->guest_open = false;
    p->pending = 0;
    p->rx_held = false;
    vq_chain_free(p->tx_chain);
    p->tx_chain = NULL;
    p->tx_done = 0;
}

static void vcon_reset(struct virtio_device *vdev)
{
    struct virtio_console *vc = vcon_of(vdev);
    for (unsigned i = 0; i < VCON_MAX_PORTS; i++)
        port_reset(&vc->ports[i]);
}

static void vcon_status_changed(struct virtio_device *vdev, uint8_t old)
{
    struct virtio_console *vc = vcon_of(vdev);
    bool now_ok = (vdev->status & VIRTIO_STATUS_DRIVER_OK) && !(old & VIRTIO_STATUS_DRIVER_OK);
    if (now_ok && port_present(&vc->ports[0]))
        chardev_accept_input(vc->ports[0].chr);   /* without MULTIPORT port 0 is open */
}

struct vcon_config {
    uint16_t cols, rows;
    uint32_t max_nr_ports;
    uint32_t emerg_wr;
} __attribute__((packed));

static void vcon_config_read(struct virtio_device *vdev, uint32_t offset, void *data, uint32_t len)
{
    struct vcon_config cfg = { .max_nr_ports = vcon_of(vdev)->max_ports };
    memcpy(data, (uint8_t *)&cfg + offset, len);
}

/* emerg_wr: one character to the console port, even before the driver is up. */
static void vcon_config_write(struct virtio_device *vdev, uint32_t offset, const void *data,
                              uint32_t len)
{
    struct vcon_port *p0 = &vcon_of(vdev)->ports[0];
    if (offset != offsetof(struct vcon_config, emerg_wr) || len != 4 || !port_present(p0))
        return;
    uint8_t ch = *(const uint8_t *)data;
    chardev_write(p0->chr, &ch, 1);
}

/* ---- ports ------------------------------------------------------------- */

static int attach_port(struct virtio_console *vc, unsigned nr, struct device *owner,
                       struct chardev *chr, const char *name, bool console)
{
    struct vcon_port *p = &vc->ports[nr];
    char who[128];
    snprintf(who, sizeof(who), "%s port %u", vcon_name(vc), nr);
    if (chardev_attach(chr, &port_frontend, p, who) < 0)
        return -1;
    pthread_mutex_lock(&vc->proxy.pci.dev.lock);
    *p = (struct vcon_port){ .vc = vc, .nr = nr, .owner = owner, .chr = chr, .name = name,
                             .console = console, .host_open = chardev_connected(chr) };
    pthread_mutex_unlock(&vc->proxy.pci.dev.lock);
    return 0;
}

static void detach_port(struct virtio_console *vc, struct vcon_port *p)
{
    if (!port_present(p))
        return;
    /* The port device may outlive us (freed after us): forget it. */
    if (p->owner && p->owner != &vc->proxy.pci.dev)
        ((struct vcon_port_dev *)p->owner)->parent = NULL;
    chardev_detach(p->chr);
    vq_chain_free(p->tx_chain);
    if (p->change_src) {
        g_source_destroy(p->change_src);
        g_source_unref(p->change_src);
    }
    /* Keep vc and nr: a chardev callback already on its way (a realize that
     * failed while the I/O thread runs) finds an absent port, not NULL. */
    *p = (struct vcon_port){ .vc = vc, .nr = p->nr };
}

static int vcon_realize(struct virtio_device *vdev)
{
    struct virtio_console *vc = vcon_of(vdev);
    vdev->num_queues = 2 * (vc->max_ports + 1);
    for (unsigned i = 0; i < VCON_MAX_PORTS; i++)
        vc->ports[i] = (struct vcon_port){ .vc = vc, .nr = i };
    if (!vc->chardev)
        return 0;
    struct chardev *chr = chardev_find(vdev->dev->m, vc->chardev);
    if (!chr)
        return vmm_set_error(ENOENT, "chardev '%s' does not exist (add it with --chardev "
                             "first)", vc->chardev);
    return attach_port(vc, 0, vdev->dev, chr, NULL, true);
}

static void vcon_unrealize(struct virtio_device *vdev)
{
    struct virtio_console *vc = vcon_of(vdev);
    for (unsigned i = 0; i < VCON_MAX_PORTS; i++)
        detach_port(vc, &vc->ports[i]);
}

static const struct virtio_device_ops vcon_ops = {
    .device_id = VIRTIO_ID_CONSOLE,
    .features = (1ull << VCON_F_MULTIPORT) | (1ull << VCON_F_EMERG_WRITE),
    .num_queues = 2 * (VCON_MAX_PORTS + 1),   /* realize trims to max_ports */
    .queue_size = 128,
    .config_size = sizeof(struct vcon_config),
    .pci_class = 0x078000,                     /* communication controller, other */
    .realize = vcon_realize,
    .unrealize = vcon_unrealize,
    .config_read = vcon_config_read,
    .config_write = vcon_config_write,
    .queue_notify = vcon_queue_notify,
    .reset = vcon_reset,
    .status_changed = vcon_status_changed,
};

#define STR2(x) #x
#define STR(x) STR2(x)

static const struct vmm_prop vcon_props[] = {
    { "max_ports", VMM_PROP_U32, offsetof(struct virtio_console, max_ports), STR(VCON_MAX_PORTS),
      "number of ports (2 queues each, port 0 included)", NULL, 1, VCON_MAX_PORTS },
    { "chardev", VMM_PROP_STR, offsetof(struct virtio_console, chardev), NULL,
      "chardev id for port 0 as the console (or add a virtconsole device)", NULL, 0, 0 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

VIRTIO_DEVICE_CLASSES(virtio_console, "virtio-console", "console and named serial ports",
                      struct virtio_console, vcon_props, &vcon_ops);
VIRTIO_DEVICE_CLASSES(virtio_serial, "virtio-serial", "virtio-console under QEMU's name",
                      struct virtio_console, vcon_props, &vcon_ops);

/* ---- the port devices (virtconsole, virtserialport) --------------------- */

#define NR_AUTO UINT32_MAX

static bool is_console_device(const struct device *d)
{
    return d->cls == &device_virtio_console_pci.dc || d->cls == &device_virtio_console_mmio.dc ||
           d->cls == &device_virtio_serial_pci.dc || d->cls == &device_virtio_serial_mmio.dc;
}

/* bus=ID or QEMU's bus name ID.0; without bus= the first console device. */
static bool bus_matches(const struct device *d, const char *bus)
{
    if (!bus)
        return true;
    if (!d->id)
        return false;
    size_t n = strlen(d->id);
    return !strncmp(bus, d->id, n) && (!bus[n] || !strcmp(bus + n, ".0"));
}

static struct virtio_console *find_parent(vmm_machine *m, const char *bus)
{
    for (struct device *d = m->devices; d; d = d->next)
        if (is_console_device(d) && bus_matches(d, bus))
            return (struct virtio_console *)d;
    return NULL;
}

static int pick_nr(struct virtio_console *vc, uint32_t nr, bool console)
{
    if (nr != NR_AUTO) {
        if (nr >= vc->max_ports)
            return vmm_set_error(ERANGE, "nr=%u: the device has max_ports=%u", nr, vc->max_ports);
        if (port_present(&vc->ports[nr]))
            return vmm_set_error(EEXIST, "port %u is taken", nr);
        return (int)nr;
    }
    /* Port 0 is the console's (QEMU's rule); serial ports start at 1. */
    for (uint32_t i = console ? 0 : 1; i < vc->max_ports; i++)
        if (!port_present(&vc->ports[i]))
            return (int)i;
    return vmm_set_error(ENOSPC, "all %u ports are taken (raise max_ports)", vc->max_ports);
}

static int port_check_name(const struct vcon_port_dev *pd)
{
    if (pd->name && (strlen(pd->name) > VCON_MAX_NAME || !*pd->name))
        return vmm_set_error(EINVAL, "name must have 1 to %u characters", VCON_MAX_NAME);
    return 0;
}

static int port_realize(struct device *dev)
{
    struct vcon_port_dev *pd = (struct vcon_port_dev *)dev;
    bool console = !strcmp(dev->cls->name, "virtconsole");
    if (!pd->chardev)
        return vmm_set_error(EINVAL, "chardev= is required");
    if (port_check_name(pd) < 0)
        return -1;
    struct chardev *chr = chardev_find(dev->m, pd->chardev);
    if (!chr)
        return vmm_set_error(ENOENT, "chardev '%s' does not exist (add it with --chardev first)",
                             pd->chardev);
    struct virtio_console *vc = find_parent(dev->m, pd->bus);
    if (!vc)
        return vmm_set_error(ENODEV, pd->bus ? "no virtio-serial device '%s'" :
                             "no virtio-serial device%s (add virtio-serial-pci or -device first)",
                             pd->bus ? pd->bus : "");
    if (!vc->proxy.pci.dev.realized)
        return vmm_set_error(EINVAL, "add %s before its ports", vcon_name(vc));
    int nr = pick_nr(vc, pd->nr, console);
    if (nr < 0 || attach_port(vc, (unsigned)nr, dev, chr, pd->name, console) < 0)
        return -1;
    pd->parent = vc;
    pd->nr = (uint32_t)nr;
    return 0;
}

/* The parent may be gone first (devices are freed in creation order). */
static void port_unrealize(struct device *dev)
{
    struct vcon_port_dev *pd = (struct vcon_port_dev *)dev;
    struct virtio_console *vc = pd->parent;
    if (vc && pd->nr < VCON_MAX_PORTS && vc->ports[pd->nr].owner == dev)
        detach_port(vc, &vc->ports[pd->nr]);
    pd->parent = NULL;
}

static const struct vmm_prop port_props[] = {
    { "chardev", VMM_PROP_STR, offsetof(struct vcon_port_dev, chardev), NULL,
      "chardev id of the host end", NULL, 0, 0 },
    { "name", VMM_PROP_STR, offsetof(struct vcon_port_dev, name), NULL,
      "port name the guest sees (e.g. org.qemu.guest_agent.0)", NULL, 0, 0 },
    { "nr", VMM_PROP_U32, offsetof(struct vcon_port_dev, nr), "4294967295",
      "port number (default: the first free one)", NULL, 0, 0 },
    { "bus", VMM_PROP_STR, offsetof(struct vcon_port_dev, bus), NULL,
      "the virtio-serial device's id (or ID.0); default: the first one", NULL, 0, 0 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

const struct device_class device_virtconsole = {
    .name = "virtconsole", .help = "console port of a virtio-serial device",
    .instance_size = sizeof(struct vcon_port_dev), .props = port_props, .user_creatable = true,
    .realize = port_realize, .unrealize = port_unrealize,
};

const struct device_class device_virtserialport = {
    .name = "virtserialport", .help = "named port of a virtio-serial device",
    .instance_size = sizeof(struct vcon_port_dev), .props = port_props, .user_creatable = true,
    .realize = port_realize, .unrealize = port_unrealize,
};
