/* virtio-console with MULTIPORT (virtio 1.2 §5.3): the control handshake
 * (DEVICE_READY, DEVICE_ADD -> PORT_READY, CONSOLE_PORT, PORT_NAME,
 * PORT_OPEN both ways), then a round trip on the port named
 * org.libvmm.test.0 (the host's greeting, sent before we opened the port,
 * must be held for us; then it answers "reply: " + our line), and on the
 * console port 0 a line through emerg_wr (EMERG_WRITE) and one through
 * its transmitq.  Polled rings, no interrupts.
 * cmdline: transport=pci|mmio; multiport=0: a driver without MULTIPORT
 * (port 0 only, implicitly open): a line out and the host's reply back;
 * bulk=N: then N KiB of i % 251 on the port
 * in 4 KiB writes (the host stops reading for a while: each write must
 * wait, not be lost); linger_ms=N: run N ms after closing the port;
 * reset_open=1: close it by resetting the device instead; toggle=N: open
 * and close the port N times before the round trip; hangup=1: only fill the
 * port's transmitq while the host does not read, until it hangs up;
 * flood0=1: queue 512 KiB on port 0 (never waited for) before the round trip;
 * evil=1 first sends bogus control messages
 * (short, unknown port, unknown event) and a receive buffer too short for
 * a control message, then a device-writable transmit buffer: each must end
 * in NEEDS_RESET, and the device must work after a reset. */
#include "vguest.h"

#define PORT_NAME "org.libvmm.test.0"
#define F_MULTIPORT 1
#define F_EMERG_WRITE 2
#define NPORTS 3                       /* ports whose queues we set up */
#define NQ (2 * (NPORTS + 1))
#define CTRL_RX 2
#define CTRL_TX 3
#define NCTRL_BUFS VQ_SIZE       /* QEMU drops control messages without a buffer */
#define CTRL_BUF 160

enum { DEVICE_READY, DEVICE_ADD, DEVICE_REMOVE, PORT_READY, CONSOLE_PORT, RESIZE, PORT_OPEN,
       PORT_NAME_EV };

struct ctrl { uint32_t id; uint16_t event, value; };

struct port {
    bool added, console, host_open;
    char name[64];
};

static struct vdev dev;
static struct vq_desc descs[NQ][VQ_SIZE] __attribute__((aligned(16)));
static struct vq_avail avails[NQ] __attribute__((aligned(4)));
static struct vq_used useds[NQ] __attribute__((aligned(4)));
static struct vq vqs[NQ];
static uint8_t ctrl_rx_buf[NCTRL_BUFS][CTRL_BUF];
static uint8_t ctrl_tx_buf[16];
static uint8_t rx_buf[128];
static uint8_t tx_buf[4096];
static struct port ports[NPORTS];
static unsigned queues;                /* set up */

static unsigned rxq(unsigned nr) { return nr ? 2 + 2 * nr : 0; }

static uint64_t devcfg(void)
{
    return dev.transport == VT_PCI ? dev.devcfg : dev.base + 0x100;
}

/* One single-descriptor buffer on queue q (descriptor `slot`). */
static void post(unsigned q, unsigned slot, void *buf, uint32_t len, bool writable)
{
    vqs[q].desc[slot] = (struct vq_desc){ (uint64_t)(uintptr_t)buf, len,
                                          writable ? VIRTQ_DESC_F_WRITE : 0, 0 };
    vq_post(&vqs[q], (uint16_t)slot);
    vdev_notify(&dev, q);
}

static uint32_t wait_used(unsigned q, unsigned ms, const char *what)
{
    uint32_t id, len;
    if (!vq_wait_used(&vqs[q], &id, &len, ms))
        guest_fail("%s: queue %u gave no used entry within %u ms", what, q, ms);
    return len;
}

static void send_raw(const void *msg, uint32_t len, const char *what)
{
    memcpy(ctrl_tx_buf, msg, len);
    post(CTRL_TX, 0, ctrl_tx_buf, len, false);
    wait_used(CTRL_TX, 2000, what);
}

static void send_ctrl(uint32_t id, uint16_t event, uint16_t value)
{
    struct ctrl c = { id, event, value };
    send_raw(&c, sizeof(c), "control message");
}

static void setup(void)
{
    if (!vdev_negotiate(&dev, (1ull << F_MULTIPORT) | (1ull << F_EMERG_WRITE)))
        guest_fail("feature negotiation failed");
    if (!(dev.features & (1ull << F_MULTIPORT)))
        guest_fail("the device does not offer MULTIPORT (features 0x%lx)",
                   (unsigned long)vdev_offered(&dev));
    uint32_t max_ports = mmio_read32(devcfg() + 4);
    queues = 2 * (max_ports + 1) < NQ ? 2 * (max_ports + 1) : NQ;
    for (unsigned q = 0; q < queues; q++) {
        vqs[q] = (struct vq){ .desc = descs[q], .avail = &avails[q], .used = &useds[q] };
        if (!vdev_setup_queue(&dev, q, &vqs[q], VQ_SIZE, 0xffff))
            guest_fail("queue %u setup failed", q);
    }
    vdev_set_status(&dev, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    printf("virtio-console: MULTIPORT, max_nr_ports %u, %u queues set up\n", max_ports, queues);
    memset(ports, 0, sizeof(ports));
}

/* ---- the malicious part ------------------------------------------------ */

static void expect_needs_reset(const char *what)
{
    for (unsigned i = 0; i < 20000 && !(vdev_status(&dev) & STATUS_NEEDS_RESET); i++)
        udelay(100);
    if (!(vdev_status(&dev) & STATUS_NEEDS_RESET))
        guest_fail("%s: no NEEDS_RESET within 2 s", what);
    printf("evil: %s: NEEDS_RESET\n", what);
}

static void evil(void)
{
    setup();
    post(CTRL_RX, 0, ctrl_rx_buf[0], 4, true);   /* too short for any message */
    struct ctrl bad_port = { 99, PORT_OPEN, 1 }, bad_event = { 1, 42, 0 };
    send_raw(&bad_port, 4, "short control message");
    send_raw(&bad_port, sizeof(bad_port), "port out of range");
    for (unsigned i = 0; i < 20; i++)   /* the device logs the first few only */
        send_raw(&bad_event, sizeof(bad_event), "unknown event");
    printf("evil: bogus control messages: the device answered each\n");
    struct ctrl ready = { 0, DEVICE_READY, 1 };
    send_raw(&ready, sizeof(ready), "DEVICE_READY");
    expect_needs_reset("short control receive buffer");

    setup();
    post(1, 0, tx_buf, 16, true);
    expect_needs_reset("device-writable transmit buffer");
}

/* ---- the control handshake --------------------------------------------- */

static void handle(const struct ctrl *c, const uint8_t *extra, uint32_t extra_len)
{
    if (c->event == DEVICE_ADD && c->id >= NPORTS) {
        printf("virtio-console: port %u is beyond the queues we set up\n", c->id);
        send_ctrl(c->id, PORT_READY, 0);
        return;
    }
    if (c->id >= NPORTS)
        guest_fail("event %u for port %u, which was never added", c->event, c->id);
    struct port *p = &ports[c->id];
    switch (c->event) {
    case DEVICE_ADD:
        p->added = true;
        send_ctrl(c->id, PORT_READY, 1);
        break;
    case CONSOLE_PORT:
        p->console = true;
        printf("virtio-console: port %u is the console\n", c->id);
        send_ctrl(c->id, PORT_OPEN, 1);        /* as Linux opens its hvc */
        break;
    case PORT_NAME_EV:
        if (extra_len && !extra[extra_len - 1])
            extra_len--;                       /* QEMU sends a NUL, the spec does not ask for it */
        if (extra_len >= sizeof(p->name))
            guest_fail("port %u: name of %u bytes", c->id, extra_len);
        memcpy(p->name, extra, extra_len);
        p->name[extra_len] = 0;
        printf("virtio-console: port %u is named %s\n", c->id, p->name);
        break;
    case PORT_OPEN:
        p->host_open = c->value;
        printf("virtio-console: port %u: host %s\n", c->id,
               c->value ? "connected" : "disconnected");
        break;
    default:
        printf("virtio-console: control event %u for port %u ignored\n", c->event, c->id);
    }
}

static int named_port(void)
{
    for (unsigned i = 0; i < NPORTS; i++)
        if (ports[i].added && !strncmp(ports[i].name, PORT_NAME, sizeof(ports[i].name)))
            return (int)i;
    return -1;
}

static bool handshake_done(void)
{
    int np = named_port();
    return np >= 0 && ports[np].host_open && ports[0].added && ports[0].console &&
           ports[0].host_open;
}

static void handshake(void)
{
    for (unsigned i = 0; i < NCTRL_BUFS; i++)
        post(CTRL_RX, i, ctrl_rx_buf[i], CTRL_BUF, true);
    send_ctrl(0, DEVICE_READY, 1);
    for (unsigned waited = 0; !handshake_done(); ) {
        uint32_t id, len;
        if (!vq_wait_used(&vqs[CTRL_RX], &id, &len, 100)) {
            if ((waited += 100) > 30000)
                guest_fail("handshake incomplete after 30 s (named port %d)", named_port());
            continue;
        }
        if (id >= NCTRL_BUFS || len < sizeof(struct ctrl) || len > CTRL_BUF)
            guest_fail("control message: buffer %u, %u bytes", id, len);
        struct ctrl c;
        uint8_t extra[CTRL_BUF];
        memcpy(&c, ctrl_rx_buf[id], sizeof(c));
        memcpy(extra, ctrl_rx_buf[id] + sizeof(c), len - sizeof(c));
        post(CTRL_RX, id, ctrl_rx_buf[id], CTRL_BUF, true);   /* before answering */
        handle(&c, extra, len - (uint32_t)sizeof(c));
    }
}

/* ---- data ---------------------------------------------------------------- */

static void write_port(unsigned nr, const char *text)
{
    uint32_t n = (uint32_t)strlen(text);
    memcpy(tx_buf, text, n);
    post(rxq(nr) + 1, 0, tx_buf, n, false);
    wait_used(rxq(nr) + 1, 2000, "port write");
}

/* kib KiB of i % 251: more than the host's socket takes while it does not
 * read, so some writes wait for it. */
static void write_bulk(unsigned nr, uint64_t kib)
{
    uint32_t i = 0;
    for (uint64_t k = 0; k < kib / 4; k++) {
        for (unsigned j = 0; j < sizeof(tx_buf); j++, i = i == 250 ? 0 : i + 1)
            tx_buf[j] = (uint8_t)i;
        post(rxq(nr) + 1, 0, tx_buf, sizeof(tx_buf), false);
        wait_used(rxq(nr) + 1, 30000, "bulk write");
    }
    printf("virtio-console: bulk: %lu KiB written\n", (unsigned long)(kib / 4 * 4));
}

/* hangup=1: fill every transmit slot with 64 KiB at once, more than the
 * host's socket takes; the host never reads and hangs up: every buffer must
 * come back (the ones behind the one the device was writing too), whether
 * the device notices the hangup writing or reading (a receive buffer is
 * posted, so it reads). */
static void hangup_while_full(unsigned nr)
{
    static uint8_t flood[65536];
    memset(flood, 'h', sizeof(flood));
    post(rxq(nr), 0, rx_buf, sizeof(rx_buf), true);   /* the device reads the socket too */
    for (unsigned slot = 0; slot < VQ_SIZE; slot++)
        post(rxq(nr) + 1, slot, flood, sizeof(flood), false);
    printf("virtio-console: hangup: %u x 64 KiB posted\n", (unsigned)VQ_SIZE);
    for (unsigned i = 0; i < VQ_SIZE; i++)
        wait_used(rxq(nr) + 1, 10000, "transmit buffer after the host hung up");
    printf("virtio-console: hangup: all %u buffers returned\n", (unsigned)VQ_SIZE);
}

/* Collect one line from the host (it may come in pieces). */
static void read_line(unsigned nr, char *line, unsigned cap)
{
    unsigned have = 0;
    while (have == 0 || line[have - 1] != '\n') {
        post(rxq(nr), 0, rx_buf, sizeof(rx_buf), true);
        uint32_t len = wait_used(rxq(nr), 20000, "host reply");
        if (have + len >= cap)
            guest_fail("the host sent more than %u bytes", cap);
        memcpy(line + have, rx_buf, len);
        have += len;
    }
    line[have] = 0;
}

/* ---- without MULTIPORT --------------------------------------------------- */

/* Port 0 only: no control queue tells us when the host is there, so the
 * line goes out again until the host's reply comes back. */
static void single_port(void)
{
    if (!vdev_negotiate(&dev, 0))
        guest_fail("feature negotiation failed");
    for (unsigned q = 0; q < 2; q++) {
        vqs[q] = (struct vq){ .desc = descs[q], .avail = &avails[q], .used = &useds[q] };
        if (!vdev_setup_queue(&dev, q, &vqs[q], VQ_SIZE, 0xffff))
            guest_fail("queue %u setup failed", q);
    }
    vdev_set_status(&dev, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    printf("virtio-console: no MULTIPORT (features 0x%lx), port 0 only\n",
           (unsigned long)dev.features);
    static const char hello[] = "console: hello without MULTIPORT\n";
    char line[128];
    unsigned have = 0;
    post(0, 0, rx_buf, sizeof(rx_buf), true);
    for (unsigned tries = 0; have == 0 || line[have - 1] != '\n'; tries++) {
        if (tries == 40)
            guest_fail("no reply on port 0 within 20 s");
        if (!have)
            write_port(0, hello);
        uint32_t id, len;
        if (!vq_wait_used(&vqs[0], &id, &len, 500))
            continue;
        if (have + len >= sizeof(line))
            guest_fail("the host sent more than %u bytes", (unsigned)sizeof(line));
        memcpy(line + have, rx_buf, len);
        have += len;
        post(0, 0, rx_buf, sizeof(rx_buf), true);
    }
    line[have] = 0;
    printf("virtio-console: port 0 replied: %s", line);
    if (strncmp(line, "reply: ", 7) || strncmp(line + 7, hello, sizeof(line) - 7))
        guest_fail("unexpected reply");
}

int main(const struct hvm_start_info *si)
{
    (void)si;
    pic_mask_all();
    bool mmio = cmdline_is("transport", "mmio");
    if (!mmio)
        pci_find_ecam();
    if (mmio ? !vdev_find_mmio(&dev, 3) : !vdev_find_pci(&dev, 3))
        guest_fail("no virtio-console device on %s", mmio ? "virtio-mmio" : "PCI");
    if (mmio)
        printf("virtio-console: virtio-mmio at 0x%lx\n", (unsigned long)dev.base);
    else
        printf("virtio-console: virtio-pci at 00:%02x.0\n", dev.slot);
    if (cmdline_u64("evil", 0))
        evil();
    if (cmdline_is("multiport", "0")) {
        single_port();
        printf("virtio-console: ok\n");
        return 0;
    }

    setup();
    handshake();
    int np = named_port();
    printf("virtio-console: handshake done, %s is port %d\n", PORT_NAME, np);

    /* flood0=1: queue 8 x 64 KiB on the console port first, without waiting
     * (a host end that does not read them must not stall the other port). */
    static uint8_t flood0[65536];
    if (cmdline_u64("flood0", 0)) {
        for (unsigned i = 0; i < sizeof(flood0); i++)
            flood0[i] = i % 61 == 60 ? '\n' : 'f';   /* a terminal turns \n into \r\n */
        for (unsigned slot = 0; slot < VQ_SIZE; slot++)
            post(1, slot, flood0, sizeof(flood0), false);
        printf("virtio-console: flood0: %u x 64 KiB queued on port 0\n", (unsigned)VQ_SIZE);
    }
    if (cmdline_u64("hangup", 0)) {
        send_ctrl((uint32_t)np, PORT_OPEN, 1);
        hangup_while_full((unsigned)np);
        printf("virtio-console: ok\n");
        return 0;
    }
    /* toggle=N: open and close the port N times first (a guest flooding
     * the host with VSERPORT_CHANGE; the host reports one a second). */
    for (uint64_t i = 0, n = cmdline_u64("toggle", 0); i < n; i++) {
        send_ctrl((uint32_t)np, PORT_OPEN, 1);
        udelay(20);
        send_ctrl((uint32_t)np, PORT_OPEN, 0);
        udelay(20);
    }
    if (cmdline_u64("toggle", 0))
        printf("virtio-console: port toggled %lu times\n", (unsigned long)cmdline_u64("toggle", 0));
    send_ctrl((uint32_t)np, PORT_OPEN, 1);
    char line[256];
    read_line((unsigned)np, line, sizeof(line));   /* sent when the host connected */
    printf("virtio-console: held while the port was closed: %s", line);
    if (strlen(line) != 11 || strncmp(line, "early bird\n", 11))
        guest_fail("the host's greeting was lost or changed");
    static const char hello[] = "hello from the guest on " PORT_NAME "\n";
    write_port((unsigned)np, hello);
    read_line((unsigned)np, line, sizeof(line));
    printf("virtio-console: host replied: %s", line);
    if (strlen(line) != 7 + sizeof(hello) - 1 || strncmp(line, "reply: ", 7) ||
        memcmp(line + 7, hello, sizeof(hello) - 1))
        guest_fail("unexpected reply");
    if (cmdline_u64("bulk", 0))
        write_bulk((unsigned)np, cmdline_u64("bulk", 0));
    if (cmdline_u64("flood0", 0)) {
        printf("virtio-console: ok\n");   /* port 0's queue is still full */
        return 0;
    }

    if (!(dev.features & (1ull << F_EMERG_WRITE)))
        guest_fail("the device does not offer EMERG_WRITE");
    for (const char *c = "emerg: ok\n"; *c; c++)
        mmio_write32(devcfg() + 8, (uint8_t)*c);   /* emerg_wr: one character each */
    printf("virtio-console: emergency write used\n");
    write_port(0, "console: hello from port 0\n");
    printf("virtio-console: console line written\n");
    if (cmdline_u64("reset_open", 0)) {
        vdev_reset(&dev);   /* the port goes with the reset: the host hears of it */
        printf("virtio-console: device reset with the port open\n");
    } else {
        send_ctrl((uint32_t)np, PORT_OPEN, 0);
    }
    /* linger_ms: keep running so the host reports the close (QEMU and libvmm
     * send VSERPORT_CHANGE at most once a second per port). */
    udelay(cmdline_u64("linger_ms", 0) * 1000);
    printf("virtio-console: ok\n");
    return 0;
}
