/* virtio-net: talk to the Linux network stack on the host side of a TAP.
 * The guest is 10.0.2.15, the host 10.0.2.1: ARP request → the kernel's
 * reply (the guest answers the kernel's ARP requests too), ICMP echo with
 * a payload → the echo reply (checksums and payload checked), and a UDP
 * datagram sent with checksum offload (NEEDS_CSUM, csum_start/offset) that
 * the host's UDP socket must receive.
 * cmdline: transport=pci|mmio; mrg=off (no MRG_RXBUF: 2 KiB buffers; else
 * 256-byte buffers so the echo reply spans several); mq=on (two queue
 * pairs: VQ_PAIRS_SET 2, send on pair 1, receive on both); evil=on (break
 * the virtio-net rules: each must end in NEEDS_RESET, then work again);
 * tso=on (a TCP connection to tcp_port=N, default 9998, and one 4000-byte
 * super-frame with GSO_TCPV4 that the host must acknowledge whole);
 * gtso=on with tso=on and mrg=off (GUEST_CSUM + GUEST_TSO4: the host's
 * answer on that connection arrives as one super-frame in a 64 KiB buffer);
 * flood=N (after the ARP: N UDP datagrams to udp_port as fast as the
 * ring allows, for bench/bench-net.py); starve=on (the ARP reply comes before any RX buffer is posted: the
 * device must hold it); partial=on (with merged 256-byte buffers: one RX buffer
 * posted, the echo reply needs three; the others come one at a time and
 * are notified only when the device's avail_event asks, as Linux does);
 * size=N (ICMP payload bytes, default 600);
 * udp_port=N (default 9999). */
#include "vguest.h"

#define VEC_QUEUE  0x28
#define VEC_CONFIG 0x29
#define VEC_LINE   0x2a
#define WAIT_MS    8000

#define F_CSUM       0
#define F_MAC        5
#define F_HOST_TSO4  11
#define F_GUEST_CSUM 1
#define F_GUEST_TSO4 7
#define F_MRG_RXBUF  15
#define F_STATUS     16
#define F_CTRL_VQ    17
#define F_CTRL_RX    18
#define F_MQ         22

#define HDR_LEN 12
#define NEEDS_CSUM 1

struct net_hdr {
    uint8_t flags, gso_type;
    uint16_t hdr_len, gso_size, csum_start, csum_offset, num_buffers;
};

static struct vdev dev;
static bool mmio, mrg, mq;
static uint8_t mac[6], host_mac[6];
static const uint8_t guest_ip[4] = { 10, 0, 2, 15 }, host_ip[4] = { 10, 0, 2, 1 };

/* Queues: rx0, tx0, rx1, tx1 and the control queue, each its own rings. */
#define NQ 5
static struct vq_desc descs[NQ][VQ_SIZE] __attribute__((aligned(16)));
static struct vq_avail avails[NQ] __attribute__((aligned(4)));
static struct vq_used useds[NQ] __attribute__((aligned(4096)));
static struct vq queues[NQ];
enum { RX0, TX0, RX1, TX1, CTRL };

#define RXBUF_MAX 2048
static uint8_t rxbufs[2][VQ_SIZE][RXBUF_MAX] __attribute__((aligned(64)));
static unsigned rxbuf_len;
static uint8_t txbuf[8192] __attribute__((aligned(64)));
#define BIGBUF (65536 + 64)           /* gtso=on: whole TCP super-frames, no merging */
#define NBIG 4
static uint8_t bigbufs[NBIG][BIGBUF] __attribute__((aligned(64)));
static bool big;
static bool honor_event;             /* partial=on: notify RX only when avail_event asks */
static uint8_t frame[BIGBUF];        /* a received frame, reassembled */
static struct net_hdr frame_hdr;     /* and its header */

static uint8_t *rxbuf(unsigned pair, unsigned i)
{
    return big ? bigbufs[i % NBIG] : rxbufs[pair][i];
}

/* ---- config, queues ----------------------------------------------------------- */

static uint64_t config_base(void)
{
    return mmio ? dev.base + 0x100 : dev.devcfg;
}

static uint16_t config16(unsigned off)
{
    return (uint16_t)(mmio_read8(config_base() + off) | mmio_read8(config_base() + off + 1) << 8);
}

static void queue_init(unsigned slot, unsigned index, uint16_t vector)
{
    struct vq *vq = &queues[slot];
    vq->desc = descs[slot];
    vq->avail = &avails[slot];
    vq->used = &useds[slot];
    if (!vdev_setup_queue(&dev, index, vq, VQ_SIZE, vector))
        guest_fail("queue %u setup failed", index);
}

static void rx_post(unsigned pair, unsigned slot_in_ring)
{
    struct vq *vq = &queues[pair ? RX1 : RX0];
    vq->desc[slot_in_ring] = (struct vq_desc){ (uint64_t)(uintptr_t)rxbuf(pair, slot_in_ring),
                                               rxbuf_len, VIRTQ_DESC_F_WRITE, 0 };
    vq_post(vq, (uint16_t)slot_in_ring);
}

static void rx_fill(unsigned pair, unsigned rx_index)
{
    for (unsigned i = 0; i < (big ? NBIG : VQ_SIZE); i++)
        rx_post(pair, i);
    vdev_notify(&dev, rx_index);
}

/* After posting RX buffers (avail idx was `old`): notify, or with
 * honor_event only when vring_need_event(avail_event, new, old) says so. */
static void rx_kick(struct vq *vq, unsigned index, uint16_t old)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint16_t now = *(volatile uint16_t *)&vq->avail->idx;
    uint16_t event = *(volatile uint16_t *)&vq->used->avail_event;
    if (!honor_event || (uint16_t)(now - event - 1) < (uint16_t)(now - old))
        vdev_notify(&dev, index);
}

static uint16_t vector_for_queues(void)
{
    return mmio ? 0xffff : 1;
}

static void setup_interrupts(void)
{
    vdev_count_irqs(&dev, VEC_QUEUE, VEC_CONFIG, VEC_LINE);
    if (mmio) {
        if (dev.gsi < 0 || !ioapic_route_level((unsigned)dev.gsi, VEC_LINE))
            guest_fail("virtio-mmio gsi %d is not on the first IOAPIC", dev.gsi);
        printf("virtio-net: interrupts: IOAPIC gsi %d level -> 0x%x\n", dev.gsi, VEC_LINE);
        return;
    }
    if (dev.msix_vectors < 2)
        guest_fail("need 2 MSI-X vectors, have %u", dev.msix_vectors);
    vdev_msix_simple(&dev, VEC_CONFIG, VEC_QUEUE);
    printf("virtio-net: interrupts: MSI-X config -> 0x%x, queues -> 0x%x\n", VEC_CONFIG, VEC_QUEUE);
}

static unsigned ctrl_index(uint16_t max_pairs)
{
    return (dev.features & (1ull << F_MQ)) ? 2u * max_pairs : 2u;
}

/* Negotiate, read the config, set up the queues, DRIVER_OK. */
static void start(uint64_t want)
{
    if (!vdev_negotiate(&dev, want))
        guest_fail("feature negotiation failed");
    setup_interrupts();
    uint16_t max_pairs = (dev.features & (1ull << F_MQ)) ? config16(8) : 1;
    uint16_t v = vector_for_queues();
    queue_init(RX0, 0, v);
    queue_init(TX0, 1, v);
    if (dev.features & (1ull << F_MQ)) {
        queue_init(RX1, 2, v);
        queue_init(TX1, 3, v);
    }
    if (dev.features & (1ull << F_CTRL_VQ))
        queue_init(CTRL, ctrl_index(max_pairs), v);
    vdev_set_status(&dev, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    if (vdev_status(&dev) & STATUS_NEEDS_RESET)
        guest_fail("device needs reset right after DRIVER_OK");
}

/* Wait for a used entry, then (briefly) for its interrupt: the used entry
 * may be visible before the interrupt arrives. */
static bool wait_used(struct vq *vq, uint32_t *id, uint32_t *len, unsigned ms)
{
    unsigned before = vdev_queue_irqs;
    irq_enable();
    bool ok = vq_wait_used(vq, id, len, ms);
    for (unsigned t = 0; ok && vdev_queue_irqs == before && t < 5000; t++)
        udelay(100);
    irq_disable();
    return ok;
}

/* ---- control queue --------------------------------------------------------------- */

static uint8_t ctrl_cmd[16], ctrl_ack;

static uint8_t ctrl(uint8_t cls, uint8_t cmd, const void *data, unsigned len)
{
    struct vq *vq = &queues[CTRL];
    ctrl_cmd[0] = cls;
    ctrl_cmd[1] = cmd;
    memcpy(ctrl_cmd + 2, data, len);
    ctrl_ack = 0xee;
    vq->desc[0] = (struct vq_desc){ (uint64_t)(uintptr_t)ctrl_cmd, 2 + len, VIRTQ_DESC_F_NEXT, 1 };
    vq->desc[1] = (struct vq_desc){ (uint64_t)(uintptr_t)&ctrl_ack, 1, VIRTQ_DESC_F_WRITE, 0 };
    vq_post(vq, 0);
    vdev_notify(&dev, ctrl_index(config16(8)));
    uint32_t id, l;
    if (!wait_used(vq, &id, &l, WAIT_MS))
        guest_fail("control command %u/%u: no answer", cls, cmd);
    return ctrl_ack;
}

/* ---- frames ---------------------------------------------------------------------- */

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

static uint32_t sum_add(uint32_t sum, const uint8_t *p, unsigned len)
{
    for (unsigned i = 0; i + 1 < len; i += 2)
        sum += (uint32_t)p[i] << 8 | p[i + 1];
    if (len & 1)
        sum += (uint32_t)p[len - 1] << 8;
    return sum;
}

static uint16_t sum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

static uint16_t inet_csum(const uint8_t *p, unsigned len)
{
    return (uint16_t)~sum_fold(sum_add(0, p, len));
}

static unsigned eth(uint8_t *f, const uint8_t *dst, uint16_t type)
{
    memcpy(f, dst, 6);
    memcpy(f + 6, mac, 6);
    put16(f + 12, type);
    return 14;
}

static unsigned ipv4(uint8_t *p, uint8_t proto, unsigned payload)
{
    static uint16_t ident = 1;
    memset(p, 0, 20);
    p[0] = 0x45;
    put16(p + 2, (uint16_t)(20 + payload));
    put16(p + 4, ident++);
    p[8] = 64;
    p[9] = proto;
    memcpy(p + 12, guest_ip, 4);
    memcpy(p + 16, host_ip, 4);
    put16(p + 10, inet_csum(p, 20));
    return 20;
}

/* Post one frame (already in txbuf after the header) on pair `pair`. */
static struct vq *post_tx(unsigned pair, unsigned len, const struct net_hdr *h)
{
    struct vq *vq = &queues[pair ? TX1 : TX0];
    memset(txbuf, 0, HDR_LEN);
    if (h)
        memcpy(txbuf, h, HDR_LEN);
    vq->desc[0] = (struct vq_desc){ (uint64_t)(uintptr_t)txbuf, HDR_LEN + len, 0, 0 };
    vq_post(vq, 0);
    vdev_notify(&dev, pair ? 3 : 1);
    return vq;
}

/* Send and wait for the completion. */
static void send(unsigned pair, unsigned len, const struct net_hdr *h)
{
    struct vq *vq = post_tx(pair, len, h);
    uint32_t id, l;
    if (!wait_used(vq, &id, &l, WAIT_MS))
        guest_fail("transmit on pair %u: not completed", pair);
}

static unsigned arp(uint8_t *f, uint16_t op, const uint8_t *tha, const uint8_t *tpa)
{
    static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    unsigned o = eth(f, op == 1 ? bcast : tha, 0x0806);
    put16(f + o, 1);
    put16(f + o + 2, 0x0800);
    f[o + 4] = 6;
    f[o + 5] = 4;
    put16(f + o + 6, op);
    memcpy(f + o + 8, mac, 6);
    memcpy(f + o + 14, guest_ip, 4);
    memcpy(f + o + 18, tha, 6);
    memcpy(f + o + 24, tpa, 4);
    return o + 28;
}

/* Take one received frame (all its buffers) from RX queue `slot`, copy it
 * to `frame`, re-post the buffers.  Returns its length, 0 when none. */
static unsigned take_frame(unsigned slot)
{
    struct vq *vq = &queues[slot];
    unsigned pair = slot == RX1, index = pair ? 2 : 0;
    uint32_t id, len;
    if (*(volatile uint16_t *)&vq->used->idx == vq->last_used || !vq_wait_used(vq, &id, &len, 1))
        return 0;
    if (id >= VQ_SIZE || len < HDR_LEN || len > rxbuf_len)
        guest_fail("RX used entry id %u len %u", id, len);
    memcpy(&frame_hdr, rxbuf(pair, id), HDR_LEN);
    unsigned nbuf = mrg ? frame_hdr.num_buffers : 1, total = len - HDR_LEN;
    if (!nbuf || nbuf > VQ_SIZE)
        guest_fail("RX num_buffers %u", nbuf);
    /* A frame's used entries are published together: the rest are there. */
    uint16_t ready = (uint16_t)(*(volatile uint16_t *)&vq->used->idx - vq->last_used);
    if (ready < nbuf - 1)
        guest_fail("RX num_buffers %u, but only %u more used entries published", nbuf, ready);
    memcpy(frame, rxbuf(pair, id) + HDR_LEN, total);
    uint16_t old = vq->avail->idx;
    rx_post(pair, id);
    for (unsigned b = 1; b < nbuf; b++) {
        if (!vq_wait_used(vq, &id, &len, 1000) || id >= VQ_SIZE || len > rxbuf_len ||
            total + len > sizeof(frame))
            guest_fail("RX buffer %u of %u missing or bad", b + 1, nbuf);
        memcpy(frame + total, rxbuf(pair, id), len);
        total += len;
        rx_post(pair, id);
    }
    rx_kick(vq, index, old);
    if (nbuf > 1)
        printf("virtio-net: a %u-byte frame arrived in %u merged buffers\n", total, nbuf);
    return total;
}

/* Answer the kernel's ARP requests for our address. */
static void answer_arp(unsigned len)
{
    if (len < 42 || be16(frame + 12) != 0x0806 || be16(frame + 20) != 1 ||
        memcmp(frame + 38, guest_ip, 4))
        return;
    uint8_t sha[6], spa[4];
    memcpy(sha, frame + 22, 6);
    memcpy(spa, frame + 28, 4);
    unsigned n = arp(txbuf + HDR_LEN, 2, sha, spa);
    send(0, n, NULL);
    printf("virtio-net: answered the host's ARP request\n");
}

typedef bool (*frame_match)(unsigned len);

/* Wait up to `ms` for a frame `match` accepts, on either RX queue; 0 when
 * none came. */
static unsigned try_receive(frame_match match, const char *what, unsigned ms)
{
    for (unsigned t = 0; t < ms * 10; t++) {
        for (unsigned s = 0; s < (mq ? 2u : 1u); s++) {
            unsigned len;
            while ((len = take_frame(s ? RX1 : RX0)) != 0) {
                if (match(len)) {
                    if (s)
                        printf("virtio-net: %s came on queue pair 1\n", what);
                    return len;
                }
                answer_arp(len);
            }
        }
        irq_enable();
        udelay(100);
        irq_disable();
    }
    return 0;
}

static unsigned receive(frame_match match, const char *what)
{
    unsigned len = try_receive(match, what, WAIT_MS);
    if (!len)
        guest_fail("%s: nothing within %u ms", what, WAIT_MS);
    return len;
}

static bool is_arp_reply(unsigned len)
{
    return len >= 42 && be16(frame + 12) == 0x0806 && be16(frame + 20) == 2 &&
           !memcmp(frame + 28, host_ip, 4) && !memcmp(frame + 32, mac, 6);
}

static unsigned ping_size;

static bool is_echo_reply(unsigned len)
{
    const uint8_t *ip = frame + 14, *icmp = frame + 34;
    return len >= 42 + ping_size && be16(frame + 12) == 0x0800 && ip[9] == 1 &&
           !memcmp(ip + 12, host_ip, 4) && icmp[0] == 0 && be16(icmp + 4) == 0x4e54;
}

/* partial=on: the reply waits in the device for buffers (one posted, it
 * needs three); post two more, one at a time, notifying as asked. */
static void post_one_by_one(unsigned pair)
{
    struct vq *vq = &queues[pair ? RX1 : RX0];
    udelay(300000);
    if (*(volatile uint16_t *)&vq->used->idx != vq->last_used)
        guest_fail("partial: a used RX entry while the frame cannot fit");
    for (unsigned slot = 1; slot <= 2; slot++) {
        uint16_t old = vq->avail->idx;
        rx_post(pair, slot);
        rx_kick(vq, pair ? 2 : 0, old);
        udelay(100000);
    }
    printf("virtio-net: partial: two more RX buffers posted one at a time\n");
}

static void ping(unsigned pair, uint16_t seq)
{
    uint8_t *f = txbuf + HDR_LEN;
    unsigned o = eth(f, host_mac, 0x0800);
    o += ipv4(f + o, 1, 8 + ping_size);
    uint8_t *icmp = f + o;
    memset(icmp, 0, 8);
    icmp[0] = 8;
    put16(icmp + 4, 0x4e54);
    put16(icmp + 6, seq);
    for (unsigned i = 0; i < ping_size; i++)
        icmp[8 + i] = (uint8_t)(i * 7 + seq);
    put16(icmp + 2, inet_csum(icmp, 8 + ping_size));
    send(pair, o + 8 + ping_size, NULL);
    if (honor_event)
        post_one_by_one(pair);
    unsigned len = receive(is_echo_reply, "ICMP echo reply");
    const uint8_t *ip = frame + 14, *r = frame + 34;
    unsigned ip_len = be16(ip + 2);
    if (inet_csum(ip, 20) != 0)
        guest_fail("echo reply: bad IPv4 header checksum");
    if (ip_len != 28 + ping_size || inet_csum(r, ip_len - 20) != 0)
        guest_fail("echo reply: IP length %u or ICMP checksum wrong", ip_len);
    if (be16(r + 6) != seq)
        guest_fail("echo reply: sequence %u, sent %u", be16(r + 6), seq);
    for (unsigned i = 0; i < ping_size; i++)
        if (r[8 + i] != (uint8_t)(i * 7 + seq))
            guest_fail("echo reply: payload byte %u differs", i);
    printf("virtio-net: pair %u: ICMP echo reply seq %u, %u payload bytes match (frame %u bytes)\n",
           pair, seq, ping_size, len);
}

/* UDP with the checksum left to the device (NEEDS_CSUM). */
static void udp_offloaded(uint16_t port)
{
    static const char msg[] = "libvmm-virtio-net-csum-offload";
    unsigned plen = sizeof(msg) - 1;
    uint8_t *f = txbuf + HDR_LEN;
    unsigned o = eth(f, host_mac, 0x0800);
    o += ipv4(f + o, 17, 8 + plen);
    uint8_t *udp = f + o;
    put16(udp, 40000);
    put16(udp + 2, port);
    put16(udp + 4, (uint16_t)(8 + plen));
    memcpy(udp + 8, msg, plen);
    /* The pseudo-header sum goes in the checksum field, not inverted. */
    uint32_t s = sum_add(0, guest_ip, 4);
    s = sum_add(s, host_ip, 4);
    s += 17 + 8 + plen;
    put16(udp + 6, sum_fold(s));
    struct net_hdr h = { NEEDS_CSUM, 0, 0, 0, (uint16_t)o, 6, 0 };
    send(0, o + 8 + plen, &h);
    printf("virtio-net: sent UDP to port %u with NEEDS_CSUM (csum_start %u, offset 6)\n", port, o);
}

/* ---- tso=on: one TCP super-frame the host kernel segments -------------------- */

#define TSO_BYTES 4000
#define TCP_SYN 0x02
#define TCP_ACK 0x10
#define TCP_PSH 0x08
static uint32_t host_seq;
static uint16_t tso_port;

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)(v >> 16));
    put16(p + 2, (uint16_t)v);
}

static uint32_t tcp_pseudo(unsigned tcp_len)
{
    return sum_add(sum_add(0, guest_ip, 4), host_ip, 4) + 6 + tcp_len;
}

/* A TCP segment in txbuf: returns the frame length; *tcp_at its offset. */
static unsigned tcp(uint8_t flags, uint32_t seq, uint32_t ack, unsigned payload, unsigned *tcp_at)
{
    uint8_t *f = txbuf + HDR_LEN;
    unsigned o = eth(f, host_mac, 0x0800);
    o += ipv4(f + o, 6, 20 + payload);
    uint8_t *t = f + o;
    memset(t, 0, 20);
    put16(t, 40001);
    put16(t + 2, tso_port);
    put32(t + 4, seq);
    put32(t + 8, ack);
    t[12] = 5 << 4;
    t[13] = flags;
    put16(t + 14, 65535);
    for (unsigned i = 0; i < payload; i++)
        t[20 + i] = (uint8_t)('a' + i % 26);
    *tcp_at = o;
    return o + 20 + payload;
}

static bool is_syn_ack(unsigned len)
{
    const uint8_t *t = frame + 34;
    return len >= 54 && be16(frame + 12) == 0x0800 && frame[23] == 6 && be16(t) == tso_port &&
           be16(t + 2) == 40001 && (t[13] & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK) &&
           be32(t + 8) == 1001;
}

static bool acks_all(unsigned len)
{
    const uint8_t *t = frame + 34;
    return len >= 54 && be16(frame + 12) == 0x0800 && frame[23] == 6 && be16(t) == tso_port &&
           (t[13] & TCP_ACK) && be32(t + 8) == 1001 + TSO_BYTES;
}

static void tcp_tso(void)
{
    unsigned at;
    /* SYN, checksummed here. */
    unsigned len = tcp(TCP_SYN, 1000, 0, 0, &at);
    uint8_t *t = txbuf + HDR_LEN + at;
    put16(t + 16, (uint16_t)~sum_fold(sum_add(tcp_pseudo(20), t, 20)));
    send(0, len, NULL);
    receive(is_syn_ack, "TCP SYN-ACK");
    host_seq = be32(frame + 34 + 4);
    /* ACK + 4000 bytes in one frame: the host segments it (HOST_TSO4). */
    len = tcp(TCP_ACK | TCP_PSH, 1001, host_seq + 1, TSO_BYTES, &at);
    t = txbuf + HDR_LEN + at;
    put16(t + 16, sum_fold(tcp_pseudo(20 + TSO_BYTES)));
    struct net_hdr h = { NEEDS_CSUM, 1 /* GSO_TCPV4 */, (uint16_t)(at + 20), 1448, (uint16_t)at, 16, 0 };
    send(0, len, &h);
    printf("virtio-net: sent a %u-byte TCP frame with GSO_TCPV4 (gso_size 1448)\n", len);
    receive(acks_all, "TCP ACK of the super-frame");
    printf("virtio-net: tso: the host acknowledged all %u bytes\n", TSO_BYTES);
}

static bool is_host_data(unsigned len)
{
    const uint8_t *t = frame + 34;
    return len > 54 && be16(frame + 12) == 0x0800 && frame[23] == 6 && be16(t) == tso_port &&
           be16(frame + 16) + 14u > 54;
}

/* gtso=on: the host's reply comes as one super-frame (GUEST_TSO4) with
 * the TCP payload it sent: 'A' + i % 26. */
static void tcp_receive_super_frame(void)
{
    unsigned len = receive(is_host_data, "TCP data from the host");
    const uint8_t *t = frame + 34;
    unsigned payload = be16(frame + 16) - 40u;
    if (be32(t + 4) != host_seq + 1)
        guest_fail("gtso: data at seq %u, expected %u", be32(t + 4), host_seq + 1);
    for (unsigned i = 0; i < payload; i++)
        if (t[20 + i] != (uint8_t)('A' + i % 26))
            guest_fail("gtso: payload byte %u differs", i);
    printf("virtio-net: gtso: a %u-byte TCP frame, gso_type %u, gso_size %u, flags %u, payload ok\n",
           len, frame_hdr.gso_type, frame_hdr.gso_size, frame_hdr.flags);
    if (frame_hdr.gso_type != 1 || !frame_hdr.gso_size || payload <= frame_hdr.gso_size)
        guest_fail("gtso: expected a TCPv4 super-frame (more payload than gso_size)");
}

/* ---- flood=N: N UDP datagrams as fast as the ring allows (bench/bench-net.py) */

#define FLOOD_FRAME 106               /* 14 + 20 + 8 + 64 payload */
static uint8_t flood_frames[VQ_SIZE][HDR_LEN + FLOOD_FRAME] __attribute__((aligned(64)));

static void flood_frame(uint8_t *buf, uint16_t port, unsigned i)
{
    memset(buf, 0, HDR_LEN);
    uint8_t *f = buf + HDR_LEN;
    unsigned o = eth(f, host_mac, 0x0800);
    o += ipv4(f + o, 17, 8 + 64);
    uint8_t *udp = f + o;
    put16(udp, 40002);
    put16(udp + 2, port);
    put16(udp + 4, 8 + 64);
    put16(udp + 6, 0);                 /* no UDP checksum (IPv4 allows it) */
    memset(udp + 8, 'a' + (int)i, 64);
}

static void flood(unsigned count, uint16_t port)
{
    struct vq *vq = &queues[TX0];
    for (unsigned i = 0; i < VQ_SIZE; i++)
        flood_frame(flood_frames[i], port, i);
    unsigned sent = 0, done = 0;
    uint64_t start = rdtsc();
    while (done < count) {
        for (; sent < count && sent - done < VQ_SIZE; sent++) {
            unsigned slot = sent % VQ_SIZE;
            vq->desc[slot] = (struct vq_desc){ (uint64_t)(uintptr_t)flood_frames[slot],
                                               HDR_LEN + FLOOD_FRAME, 0, 0 };
            vq_post(vq, (uint16_t)slot);
        }
        vdev_notify(&dev, 1);
        uint32_t id, len;
        if (!vq_wait_used(vq, &id, &len, WAIT_MS))
            guest_fail("flood: %u of %u sent, then no completion", done, count);
        done++;
        while (*(volatile uint16_t *)&vq->used->idx != vq->last_used && vq_wait_used(vq, &id, &len, 1))
            done++;
    }
    printf("virtio-net: flood: %u datagrams sent (%lu TSC ticks)\n", count,
           (unsigned long)(rdtsc() - start));
}

/* link=watch: the host turns the link off and on again (QMP set_link);
 * each change must come with a config interrupt and the new status. */
static void wait_link(bool up)
{
    unsigned before = vdev_config_irqs;
    printf("virtio-net: waiting for the link to go %s\n", up ? "up" : "down");
    irq_enable();
    for (unsigned t = 0; t < 600000 && (vdev_config_irqs == before || !!(config16(6) & 1) != up); t++)
        udelay(100);
    irq_disable();
    if (!!(config16(6) & 1) != up || vdev_config_irqs == before)
        guest_fail("link %s: status 0x%x, %u config interrupts", up ? "up" : "down", config16(6),
                   vdev_config_irqs - before);
    printf("virtio-net: link %s (config interrupt)\n", up ? "up" : "down");
}

/* ---- malicious driver ---------------------------------------------------------------- */

static void expect_needs_reset(const char *what)
{
    for (unsigned t = 0; t < WAIT_MS * 10 && !(vdev_status(&dev) & STATUS_NEEDS_RESET); t++)
        udelay(100);
    if (!(vdev_status(&dev) & STATUS_NEEDS_RESET))
        guest_fail("%s: no NEEDS_RESET", what);
    printf("evil: %s: NEEDS_RESET\n", what);
}

static void evil(uint64_t want)
{
    /* 1: a TX chain shorter than the header. */
    start(want);
    queues[TX0].desc[0] = (struct vq_desc){ (uint64_t)(uintptr_t)txbuf, 6, 0, 0 };
    vq_post(&queues[TX0], 0);
    vdev_notify(&dev, 1);
    expect_needs_reset("transmit chain shorter than the header");
    /* 2: an RX buffer smaller than the header, then a frame arrives. */
    start(want);
    queues[RX0].desc[0] = (struct vq_desc){ (uint64_t)(uintptr_t)rxbufs[0][0], 8,
                                            VIRTQ_DESC_F_WRITE, 0 };
    vq_post(&queues[RX0], 0);
    vdev_notify(&dev, 0);
    /* Any frame will do (the kernel may send its own first): the device
     * may break before it completes this one. */
    post_tx(0, arp(txbuf + HDR_LEN, 1, (const uint8_t[6]){ 0 }, host_ip), NULL);
    expect_needs_reset("receive buffer smaller than the header");
    /* 3: checksum offload the driver did not negotiate. */
    start(want & ~(1ull << F_CSUM));
    struct net_hdr h = { NEEDS_CSUM, 0, 0, 0, 14, 6, 0 };
    memcpy(txbuf, &h, HDR_LEN);
    queues[TX0].desc[0] = (struct vq_desc){ (uint64_t)(uintptr_t)txbuf, HDR_LEN + 60, 0, 0 };
    vq_post(&queues[TX0], 0);
    vdev_notify(&dev, 1);
    expect_needs_reset("NEEDS_CSUM without VIRTIO_NET_F_CSUM");
    /* 4: a control request without a writable ack byte. */
    start(want);
    queues[CTRL].desc[0] = (struct vq_desc){ (uint64_t)(uintptr_t)ctrl_cmd, 3, 0, 0 };
    vq_post(&queues[CTRL], 0);
    vdev_notify(&dev, ctrl_index(1));
    expect_needs_reset("control request without an ack buffer");
}

/* ---- main ------------------------------------------------------------------------------ */

static void read_mac(void)
{
    for (unsigned i = 0; i < 6; i++)
        mac[i] = mmio_read8(config_base() + i);
    printf("virtio-net: mac %02x:%02x:%02x:%02x:%02x:%02x, link %s\n", mac[0], mac[1], mac[2],
           mac[3], mac[4], mac[5],
           !(dev.features & (1ull << F_STATUS)) ? "unknown" : (config16(6) & 1) ? "up" : "down");
}

/* The host's MAC from the ARP reply in `frame`. */
static void learn_host_mac(void)
{
    memcpy(host_mac, frame + 22, 6);
    printf("virtio-net: ARP: 10.0.2.1 is at %02x:%02x:%02x:%02x:%02x:%02x\n", host_mac[0],
           host_mac[1], host_mac[2], host_mac[3], host_mac[4], host_mac[5]);
}

/* ARP for the host, once a second: the host side may still be setting
 * up its address (a tap the VMM created). */
static void resolve_host(void)
{
    unsigned tries = 0;
    do {
        if (++tries > 20)
            guest_fail("ARP reply: none after %u requests", tries - 1);
        send(0, arp(txbuf + HDR_LEN, 1, (const uint8_t[6]){ 0 }, host_ip), NULL);
    } while (!try_receive(is_arp_reply, "ARP reply", 1000));
    learn_host_mac();
}

/* starve=on: the ARP reply arrives while no receive buffer is posted; the
 * device must keep it (the backend holds it and stops reading) and hand it
 * over once buffers come. */
static void resolve_host_starved(void)
{
    send(0, arp(txbuf + HDR_LEN, 1, (const uint8_t[6]){ 0 }, host_ip), NULL);
    udelay(500000);
    if (*(volatile uint16_t *)&queues[RX0].used->idx != 0)
        guest_fail("starve: a used RX entry without any buffer posted");
    rx_fill(0, 0);
    receive(is_arp_reply, "ARP reply held while no RX buffer was posted");
    learn_host_mac();
    printf("virtio-net: starve: the ARP reply waited for RX buffers and arrived\n");
}

static void use_two_pairs(void)
{
    uint16_t max_pairs = config16(8);
    if (max_pairs < 2)
        guest_fail("mq: max_virtqueue_pairs %u", max_pairs);
    uint16_t pairs = 2;
    if (ctrl(4, 0, &pairs, 2) != 0)
        guest_fail("mq: VQ_PAIRS_SET 2 refused");
    rx_fill(1, 2);
    printf("virtio-net: mq: %u pairs offered, 2 in use\n", max_pairs);
}

int main(const struct hvm_start_info *si)
{
    (void)si;
    x2apic_enable();
    pic_mask_all();
    mmio = cmdline_is("transport", "mmio");
    mrg = !cmdline_is("mrg", "off");
    mq = cmdline_is("mq", "on");
    ping_size = (unsigned)cmdline_u64("size", 600);
    if (ping_size > 1400)
        guest_fail("size=%u: at most 1400", ping_size);
    if (!mmio)
        pci_find_ecam();
    if (mmio ? !vdev_find_mmio(&dev, 1) : !vdev_find_pci(&dev, 1))
        guest_fail("no virtio-net device on %s", mmio ? "virtio-mmio" : "PCI");
    uint64_t want = (1ull << F_MAC) | (1ull << F_STATUS) | (1ull << F_CSUM) | (1ull << F_CTRL_VQ) |
                    (1ull << F_CTRL_RX) | (1ull << VIRTIO_F_EVENT_IDX) |
                    (mrg ? 1ull << F_MRG_RXBUF : 0) | (mq ? 1ull << F_MQ : 0) |
                    (cmdline_is("tso", "on") ? 1ull << F_HOST_TSO4 : 0) |
                    (cmdline_is("gtso", "on") ? (1ull << F_GUEST_CSUM) | (1ull << F_GUEST_TSO4) : 0);
    big = cmdline_is("gtso", "on");
    if (big && mrg)
        guest_fail("gtso=on needs mrg=off (whole super-frames in 64 KiB buffers)");
    rxbuf_len = mrg ? 256 : RXBUF_MAX;
    if (cmdline_is("evil", "on")) {
        evil(want);
        start(want);
        rx_fill(0, 0);
        read_mac();
        resolve_host();
        printf("virtio-net: works after the resets\nvirtio-net-evil: ok\n");
        return 0;
    }
    start(want);
    printf("virtio-net: features 0x%lx (mrg_rxbuf %s, csum %s, ctrl_vq %s, mq %s)\n",
           (unsigned long)dev.features, dev.features & (1ull << F_MRG_RXBUF) ? "yes" : "no",
           dev.features & (1ull << F_CSUM) ? "yes" : "no",
           dev.features & (1ull << F_CTRL_VQ) ? "yes" : "no",
           dev.features & (1ull << F_MQ) ? "yes" : "no");
    if (mrg != !!(dev.features & (1ull << F_MRG_RXBUF)) || (mq && !(dev.features & (1ull << F_MQ))))
        guest_fail("the device did not offer what this test needs");
    read_mac();
    bool starve = cmdline_is("starve", "on");
    honor_event = cmdline_is("partial", "on");
    if (honor_event && (!mrg || ping_size < 600))
        guest_fail("partial=on needs merged buffers and size >= 600");
    if (honor_event) {
        rx_post(0, 0);                 /* one 256-byte buffer only */
        vdev_notify(&dev, 0);
    } else if (!starve) {
        rx_fill(0, 0);
    }
    if (dev.features & (1ull << F_CTRL_RX)) {
        uint8_t on = 1;
        if (ctrl(0, 0, &on, 1) != 0)
            guest_fail("control: PROMISC on refused");
        printf("virtio-net: control: promiscuous mode on: ok\n");
    }
    if (mq)
        use_two_pairs();
    if (starve)
        resolve_host_starved();
    else
        resolve_host();
    if (cmdline_u64("flood", 0)) {
        flood((unsigned)cmdline_u64("flood", 0), (uint16_t)cmdline_u64("udp_port", 9999));
        vdev_reset(&dev);
        printf("virtio-net: ok\n");
        return 0;
    }
    ping(0, 1);
    if (mq)
        ping(1, 2);
    if (dev.features & (1ull << F_CSUM))
        udp_offloaded((uint16_t)cmdline_u64("udp_port", 9999));
    if (cmdline_is("tso", "on")) {
        if (!(dev.features & (1ull << F_HOST_TSO4)))
            guest_fail("tso: the device does not offer HOST_TSO4");
        tso_port = (uint16_t)cmdline_u64("tcp_port", 9998);
        tcp_tso();
        if (big)
            tcp_receive_super_frame();
    }
    if (cmdline_is("link", "watch")) {
        wait_link(false);
        wait_link(true);
        ping(0, 3);
    }
    printf("virtio-net: %u queue interrupts, %u config interrupts\n", vdev_queue_irqs,
           vdev_config_irqs);
    if (!vdev_queue_irqs)
        guest_fail("no queue interrupts");
    if (vdev_status(&dev) & STATUS_NEEDS_RESET)
        guest_fail("device reports NEEDS_RESET");
    vdev_reset(&dev);
    if (!mmio)
        vdev_msix_enable(&dev, false);
    printf("virtio-net: ok\n");
    return 0;
}
