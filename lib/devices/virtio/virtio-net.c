/* virtio-net (virtio 1.2 §5.1) on a network backend (lib/net).
 *
 * Queues: receiveq/transmitq per queue pair (2k, 2k+1), then the control
 * queue at 2 * max_virtqueue_pairs (index 2 when MQ is not negotiated).
 * Every frame carries the 12-byte virtio_net_hdr (VERSION_1).  With a
 * backend that speaks the header (TAP with IFF_VNET_HDR) it passes through
 * both ways and the offloads the guest negotiated are set on the backend;
 * without one, TX headers are stripped (NEEDS_CSUM completed here) and RX
 * frames get a zero header. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "devices/virtio/virtio.h"
#include "devices/virtio/virtio-net.h"
#include "net/net.h"

#define HDR_LEN ((uint32_t)sizeof(struct virtio_net_hdr))
#define TX_BATCH 256          /* chains per handler run: RX gets a turn */
#define MAX_PAIRS ((VIRTIO_MAX_QUEUES - 1) / 2)

struct virtio_net {
    struct virtio_proxy proxy;     /* first */
    /* properties */
    char *netdev, *mac_opt;
    bool mq, mrg_rxbuf, status_opt, ctrl_vq, ctrl_rx, ctrl_mac_addr;
    bool csum, guest_csum, host_tso4, host_tso6, host_ecn, host_ufo;
    bool guest_tso4, guest_tso6, guest_ecn, guest_ufo;
    uint32_t queue_size;
    /* state */
    struct net_backend *nb;
    uint8_t mac[6], mac_default[6];
    bool link_up;
    unsigned max_pairs, active_pairs;
    bool promisc, allmulti;
    struct rx_elem { uint16_t head; uint32_t len, in_bytes; } *rx_elems;
    struct iovec *tx_iov;
    unsigned tx_iov_cap;
    uint8_t *tx_buf;               /* linear copy for software checksums */
};

static struct virtio_net *net_of(struct virtio_device *vdev)
{
    return (struct virtio_net *)VIRTIO_PROXY_OF(vdev);
}

static bool has(const struct virtio_net *n, unsigned bit)
{
    return virtio_has_feature(&n->proxy.vdev, bit);
}

static void unpop(struct virtqueue *vq, unsigned count)
{
    vq->last_avail_idx = (uint16_t)(vq->last_avail_idx - count);   /* not pushed: back to the driver */
}

/* ---- copying into a chain's writable segments ------------------------------- */

/* Write `len` bytes from the iovec (from byte `soff`) into the chain at
 * chain offset `coff`; marks guest memory dirty; returns bytes written. */
static uint32_t chain_put(struct virtio_device *vdev, const struct vq_chain *c, uint64_t coff,
                          const struct iovec *src, int srccnt, size_t soff, size_t len)
{
    uint32_t done = 0;
    for (unsigned i = 0; i < c->in_count && done < len; i++) {
        const struct vq_iov *seg = &c->in[i];
        if (coff >= seg->len) {
            coff -= seg->len;
            continue;
        }
        size_t room = seg->len - coff, want = len - done;
        size_t n = net_iov_copy_out(src, srccnt, soff + done, (uint8_t *)seg->base + coff,
                                    room < want ? room : want);
        guest_memory_mark_dirty(&virtio_machine(vdev)->mem, seg->gpa + coff, n);
        done += (uint32_t)n;
        coff = 0;
        if (n < (room < want ? room : want))
            break;
    }
    return done;
}

/* ---- receive --------------------------------------------------------------------- */

struct rx_frame {
    struct virtio_net_hdr hdr;     /* what the guest gets */
    const struct iovec *iov;       /* the backend's frame */
    int iovcnt;
    size_t data_off, data_len;     /* Ethernet frame inside iov */
};

/* The header for the guest; false when the frame must be dropped because
 * the guest did not negotiate the offload it uses. */
static bool rx_header(struct virtio_net *n, struct rx_frame *f)
{
    memset(&f->hdr, 0, sizeof(f->hdr));
    if (n->nb->vnet_hdr)
        net_iov_copy_out(f->iov, f->iovcnt, 0, &f->hdr, offsetof(struct virtio_net_hdr, num_buffers));
    uint8_t gso = f->hdr.gso_type & (uint8_t)~VIRTIO_NET_HDR_GSO_ECN;
    if (!has(n, VIRTIO_NET_F_GUEST_CSUM))
        f->hdr.flags &= (uint8_t)~VIRTIO_NET_HDR_F_DATA_VALID;   /* §5.1.6.4.1: flags zero */
    if ((f->hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) && !has(n, VIRTIO_NET_F_GUEST_CSUM))
        return false;
    if (gso == VIRTIO_NET_HDR_GSO_NONE)
        return true;
    return (gso == VIRTIO_NET_HDR_GSO_TCPV4 && has(n, VIRTIO_NET_F_GUEST_TSO4)) ||
           (gso == VIRTIO_NET_HDR_GSO_TCPV6 && has(n, VIRTIO_NET_F_GUEST_TSO6)) ||
           (gso == VIRTIO_NET_HDR_GSO_UDP && has(n, VIRTIO_NET_F_GUEST_UFO));
}

/* Header + data from frame offset `off` into chain c; returns bytes. */
static uint32_t rx_fill(struct virtio_device *vdev, const struct vq_chain *c, struct rx_frame *f,
                        size_t *off, bool first)
{
    uint32_t put = 0;
    if (first) {
        struct iovec h = { &f->hdr, HDR_LEN };
        put = chain_put(vdev, c, 0, &h, 1, 0, HDR_LEN);
    }
    uint64_t room = c->in_bytes - put;
    size_t want = f->data_len - *off < room ? f->data_len - *off : (size_t)room;
    uint32_t n = chain_put(vdev, c, put, f->iov, f->iovcnt, f->data_off + *off, want);
    *off += n;
    return put + n;
}

/* Pop the next RX chain: 1 got one, 0 none, -1 the device is broken. */
static int rx_pop(struct virtio_net *n, unsigned q, struct vq_chain *c)
{
    struct virtio_device *vdev = &n->proxy.vdev;
    if (virtio_pop(vdev, q, c) <= 0)
        return vdev->broken ? -1 : 0;
    if (c->out_count) {
        virtio_set_broken(vdev, "receive queue %u: buffer (head %u) is device-readable", q, c->head);
        return -1;
    }
    if (c->in_bytes < HDR_LEN) {
        virtio_set_broken(vdev, "receive queue %u: buffer (head %u) of %llu bytes is smaller "
                          "than the %u-byte header", q, c->head, (unsigned long long)c->in_bytes,
                          HDR_LEN);
        return -1;
    }
    return 1;
}

/* num_buffers of the first chain: found before later pops reuse the
 * chain's segment arrays, written once the count is known.  The header
 * may straddle segments, so each of the two bytes is located on its own. */
struct num_buffers_at {
    uint8_t *p[2];
    uint64_t gpa[2];
};

static void locate_num_buffers(const struct vq_chain *c, struct num_buffers_at *at)
{
    for (unsigned k = 0; k < 2; k++) {
        uint64_t off = offsetof(struct virtio_net_hdr, num_buffers) + k;
        for (unsigned i = 0; i < c->in_count; off -= c->in[i].len, i++) {
            if (off < c->in[i].len) {
                at->p[k] = (uint8_t *)c->in[i].base + off;
                at->gpa[k] = c->in[i].gpa + off;
                break;
            }
        }
    }
}

static void store_num_buffers(struct virtio_device *vdev, const struct num_buffers_at *at,
                              uint16_t count)
{
    for (unsigned k = 0; k < 2; k++) {
        if (!at->p[k])
            continue;   /* cannot happen: the chain holds the whole header */
        *at->p[k] = (uint8_t)(count >> (8 * k));
        guest_memory_mark_dirty(&virtio_machine(vdev)->mem, at->gpa[k], 1);
    }
}

/* Fill as many chains as the frame needs (one without MRG_RXBUF).
 * Returns the chains used, 0 when there are not enough buffers (none
 * consumed), -1 when the driver broke the rules. */
static int rx_place(struct virtio_net *n, unsigned q, struct rx_frame *f)
{
    struct virtio_device *vdev = &n->proxy.vdev;
    struct virtqueue *vq = &vdev->vqs[q];
    bool mrg = has(n, VIRTIO_NET_F_MRG_RXBUF);
    struct num_buffers_at at = { { NULL, NULL }, { 0, 0 } };
    size_t off = 0;
    unsigned count = 0;
    struct vq_chain c;
    do {
        if (count == vq->size || count == n->queue_size) {   /* (a loaded state may
                                                                 claim a bigger ring) */
            unpop(vq, count);  /* the whole ring cannot hold it: drop */
            return -2;
        }
        int r = rx_pop(n, q, &c);
        if (r <= 0) {
            if (r == 0)
                unpop(vq, count);
            return r;
        }
        if (count == 0)
            locate_num_buffers(&c, &at);
        uint32_t len = rx_fill(vdev, &c, f, &off, count == 0);
        n->rx_elems[count++] = (struct rx_elem){ c.head, len, (uint32_t)c.in_bytes };
    } while (mrg && off < f->data_len);
    if (off < f->data_len) {
        vmm_log(VMM_LOG_DEBUG, "virtio-net", "a %zu-byte frame does not fit a %u-byte buffer: "
                "dropped", f->data_len, n->rx_elems[0].in_bytes);
        unpop(vq, count);
        return -2;     /* dropped; the buffer stays for the next frame */
    }
    store_num_buffers(vdev, &at, (uint16_t)count);
    return (int)count;
}

/* All chains of the frame with one used index update: a driver polling
 * the ring must never see the first buffer (num_buffers = N) before the
 * other N - 1 are there. */
static void rx_publish(struct virtio_net *n, unsigned q, unsigned count)
{
    struct virtio_device *vdev = &n->proxy.vdev;
    if (vdev->broken)
        return;
    for (unsigned i = 0; i < count; i++) {
        struct vq_chain c = { .head = n->rx_elems[i].head, .in_bytes = n->rx_elems[i].in_bytes };
        virtqueue_fill(&vdev->vqs[q], &c, n->rx_elems[i].len, i);
    }
    virtqueue_flush(&vdev->vqs[q], count);
    virtio_queue_done(vdev, q);
}

static bool rx_possible(struct virtio_net *n, unsigned pair)
{
    struct virtio_device *vdev = &n->proxy.vdev;
    return (vdev->status & VIRTIO_STATUS_DRIVER_OK) && !vdev->broken && vdev->vqs[2 * pair].ready;
}

static ssize_t receive_locked(struct virtio_net *n, unsigned pair, const struct iovec *iov,
                              int iovcnt)
{
    size_t total = net_iov_size(iov, iovcnt);
    size_t in_hdr = n->nb->vnet_hdr ? HDR_LEN : 0;
    if (!n->link_up || pair >= n->active_pairs)
        return (ssize_t)total;                       /* dropped, as on a cable pulled */
    if (!rx_possible(n, pair))
        return 0;
    if (total < in_hdr + 14)
        return -1;
    struct rx_frame f = { .iov = iov, .iovcnt = iovcnt, .data_off = in_hdr,
                          .data_len = total - in_hdr };
    if (!rx_header(n, &f))
        return -1;
    struct virtqueue *vq = &n->proxy.vdev.vqs[2 * pair];
    for (int attempt = 0; attempt < 2; attempt++) {
        int r = rx_place(n, 2 * pair, &f);
        if (r == -1)
            return 0;                                /* broken: hold until reset */
        if (r == -2)
            return -1;                               /* too big for the buffer */
        if (r > 0) {
            rx_publish(n, 2 * pair, (unsigned)r);
            return (ssize_t)total;
        }
        /* No room: ask for a kick when the driver adds buffers beyond
         * those it has posted now (a merged frame may have found some, but
         * not enough: avail_event at last_avail_idx would not ask for the
         * next ones), then look once more (the driver may have added
         * buffers before it saw the request). */
        virtqueue_notify_on_more(vq);
        if (!virtqueue_has_work(vq))
            break;
    }
    return 0;
}

static ssize_t net_receive(void *opaque, unsigned pair, const struct iovec *iov, int iovcnt)
{
    struct virtio_net *n = opaque;
    pthread_mutex_lock(&n->proxy.pci.dev.lock);
    ssize_t r = receive_locked(n, pair, iov, iovcnt);
    pthread_mutex_unlock(&n->proxy.pci.dev.lock);
    return r;
}

static bool feature(uint64_t features, unsigned bit)
{
    return features & (1ull << bit);
}

/* ---- transmit ------------------------------------------------------------------ */

static struct iovec *tx_iov(struct virtio_net *n, unsigned count)
{
    if (count > n->tx_iov_cap) {
        struct iovec *iov = realloc(n->tx_iov, count * sizeof(*iov));
        if (!iov)
            return NULL;
        n->tx_iov = iov;
        n->tx_iov_cap = count;
    }
    return n->tx_iov;
}

/* The frame behind the header as an iovec (guest memory, read only). */
static int tx_frame_iov(struct virtio_net *n, const struct vq_chain *c, unsigned first,
                        struct iovec **out)
{
    struct iovec *iov = tx_iov(n, c->out_count + 1);
    if (!iov)
        return -1;
    int cnt = (int)first;
    uint64_t skip = HDR_LEN;
    for (unsigned i = 0; i < c->out_count; i++) {
        if (skip >= c->out[i].len) {
            skip -= c->out[i].len;
            continue;
        }
        iov[cnt++] = (struct iovec){ (uint8_t *)c->out[i].base + skip, c->out[i].len - skip };
        skip = 0;
    }
    *out = iov;
    return cnt;
}

/* Without a header on the backend: complete NEEDS_CSUM in a copy. */
static ssize_t tx_send_plain(struct virtio_net *n, unsigned pair, const struct virtio_net_hdr *h,
                             struct iovec *iov, int cnt, size_t len)
{
    if (!(h->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM))
        return net_backend_send(n->nb, pair, iov, cnt);
    net_iov_copy_out(iov, cnt, 0, n->tx_buf, len);
    net_checksum_complete(n->tx_buf, len, h->csum_start, h->csum_offset);
    struct iovec one = { n->tx_buf, len };
    return net_backend_send(n->nb, pair, &one, 1);
}

enum tx_result { TX_DONE, TX_FULL, TX_BROKEN };

static enum tx_result tx_one(struct virtio_net *n, unsigned pair, const struct vq_chain *c)
{
    struct virtio_device *vdev = &n->proxy.vdev;
    if (c->in_count || c->out_bytes < HDR_LEN) {
        virtio_set_broken(vdev, "transmit queue %u: chain (head %u) has %s", 2 * pair + 1, c->head,
                          c->in_count ? "device-writable buffers"
                                      : "fewer bytes than the 12-byte header");
        return TX_BROKEN;
    }
    size_t len = (size_t)(c->out_bytes - HDR_LEN);
    struct virtio_net_hdr h;
    char why[128];
    vq_chain_read(c, &h, HDR_LEN);
    if (virtio_net_tx_check(&h, len, vdev->guest_features, why, sizeof(why)) < 0) {
        virtio_set_broken(vdev, "transmit queue %u: chain (head %u): %s", 2 * pair + 1, c->head,
                          why);
        return TX_BROKEN;
    }
    if (!n->link_up || len < 14 || len > NET_MAX_FRAME - HDR_LEN)
        return TX_DONE;                                   /* dropped */
    h.num_buffers = 0;
    bool hdr = n->nb->vnet_hdr;
    struct iovec *iov;
    int cnt = tx_frame_iov(n, c, hdr, &iov);
    if (cnt < 0)
        return TX_DONE;                                   /* no memory: dropped */
    if (hdr)
        iov[0] = (struct iovec){ &h, HDR_LEN };
    ssize_t r = hdr ? net_backend_send(n->nb, pair, iov, cnt)
                    : tx_send_plain(n, pair, &h, iov, cnt, len);
    if (r < 0)
        vmm_log(VMM_LOG_DEBUG, "virtio-net", "%s", vmm_get_error());
    return r == 0 ? TX_FULL : TX_DONE;
}

static void handle_tx(struct virtio_net *n, unsigned pair)
{
    struct virtio_device *vdev = &n->proxy.vdev;
    unsigned q = 2 * pair + 1, sent = 0;
    struct vq_chain c;
    bool more = false;
    while (virtio_pop(vdev, q, &c) > 0) {
        enum tx_result r = tx_one(n, pair, &c);
        if (r == TX_BROKEN)
            return;
        if (r == TX_FULL) {
            unpop(&vdev->vqs[q], 1);      /* retried when the backend has room */
            break;
        }
        virtio_push(vdev, q, &c, 0);
        if (++sent == TX_BATCH) {
            more = true;
            break;
        }
    }
    if (sent)
        virtio_queue_done(vdev, q);
    else
        virtqueue_set_notify(&vdev->vqs[q], true);
    if (more)
        virtio_queue_kick(vdev, q);      /* the rest after other work */
}

static void net_tx_ready(void *opaque, unsigned pair)
{
    struct virtio_net *n = opaque;
    virtio_queue_kick(&n->proxy.vdev, 2 * pair + 1);
}

/* ---- control queue -------------------------------------------------------------- */

static struct net_offloads offloads_from(uint64_t bits)
{
    return (struct net_offloads){
        .csum = feature(bits, VIRTIO_NET_F_GUEST_CSUM),
        .tso4 = feature(bits, VIRTIO_NET_F_GUEST_TSO4),
        .tso6 = feature(bits, VIRTIO_NET_F_GUEST_TSO6),
        .ecn = feature(bits, VIRTIO_NET_F_GUEST_ECN),
        .ufo = feature(bits, VIRTIO_NET_F_GUEST_UFO),
    };
}

static void set_active_pairs(struct virtio_net *n, unsigned pairs)
{
    if (net_backend_set_queues(n->nb, pairs) < 0)
        vmm_log(VMM_LOG_WARNING, "virtio-net", "%s", vmm_get_error());
    for (unsigned i = pairs; i < n->active_pairs; i++)
        net_backend_rx_stop(n->nb, i);
    unsigned old = n->active_pairs;
    n->active_pairs = pairs;
    for (unsigned i = old; i < pairs; i++)
        net_backend_rx_ready(n->nb, i);
}

static uint8_t apply_ctrl(struct virtio_net *n, const struct virtio_net_ctrl *cmd)
{
    switch (cmd->cls) {
    case VIRTIO_NET_CTRL_RX:
        if (cmd->cmd == VIRTIO_NET_CTRL_RX_PROMISC)
            n->promisc = cmd->on;
        else if (cmd->cmd == VIRTIO_NET_CTRL_RX_ALLMULTI)
            n->allmulti = cmd->on;
        return VIRTIO_NET_OK;   /* the backend delivers everything anyway */
    case VIRTIO_NET_CTRL_MAC:
        if (cmd->cmd == VIRTIO_NET_CTRL_MAC_ADDR_SET)
            memcpy(n->mac, cmd->mac, 6);
        return VIRTIO_NET_OK;
    case VIRTIO_NET_CTRL_MQ:
        set_active_pairs(n, cmd->pairs);
        return VIRTIO_NET_OK;
    case VIRTIO_NET_CTRL_GUEST_OFFLOADS: {
        struct net_offloads o = offloads_from(cmd->offloads);
        return net_backend_set_offloads(n->nb, &o) < 0 ? VIRTIO_NET_ERR : VIRTIO_NET_OK;
    }
    default:
        return VIRTIO_NET_ERR;
    }
}

static void handle_ctrl(struct virtio_net *n, unsigned q)
{
    struct virtio_device *vdev = &n->proxy.vdev;
    struct vq_chain c;
    bool pushed = false;
    uint8_t req[VIRTIO_NET_CTRL_MAX];
    while (virtio_pop(vdev, q, &c) > 0) {
        if (c.out_bytes < 2 || c.in_bytes < 1) {
            virtio_set_broken(vdev, "control queue: request (head %u) without %s", c.head,
                              c.out_bytes < 2 ? "class and command" : "a writable ack byte");
            return;
        }
        uint32_t len = c.out_bytes > sizeof(req) ? (uint32_t)sizeof(req) : (uint32_t)c.out_bytes;
        vq_chain_read(&c, req, len);
        struct virtio_net_ctrl cmd;
        uint8_t ack = c.out_bytes > sizeof(req) ? VIRTIO_NET_ERR   /* longer than any command */
                      : virtio_net_ctrl_decode(req, len, vdev->guest_features, n->max_pairs, &cmd);
        if (ack == VIRTIO_NET_OK)
            ack = apply_ctrl(n, &cmd);
        vmm_log(VMM_LOG_DEBUG, "virtio-net", "control class %u command %u: %s", req[0], req[1],
                ack == VIRTIO_NET_OK ? "ok" : "error");
        vq_chain_write(&vdev->vqs[q], &c, &ack, 1);
        virtio_push(vdev, q, &c, 1);
        pushed = true;
    }
    if (pushed)
        virtio_queue_done(vdev, q);
}

/* ---- queues, config, status ------------------------------------------------------- */

static unsigned ctrl_queue(struct virtio_net *n)
{
    return has(n, VIRTIO_NET_F_MQ) ? 2 * n->max_pairs : 2;
}

static void net_queue_notify(struct virtio_device *vdev, unsigned q)
{
    struct virtio_net *n = net_of(vdev);
    if (has(n, VIRTIO_NET_F_CTRL_VQ) && q == ctrl_queue(n)) {
        handle_ctrl(n, q);
        return;
    }
    unsigned pair = q / 2;
    if (pair >= n->active_pairs)
        return;
    if (q % 2)
        handle_tx(n, pair);
    else
        net_backend_rx_ready(n->nb, pair);    /* new buffers: deliver again */
}

static void net_config_read(struct virtio_device *vdev, uint32_t offset, void *data, uint32_t len)
{
    struct virtio_net *n = net_of(vdev);
    struct virtio_net_config cfg;
    memcpy(cfg.mac, n->mac, 6);
    cfg.status = n->link_up ? VIRTIO_NET_S_LINK_UP : 0;
    cfg.max_virtqueue_pairs = (uint16_t)n->max_pairs;
    memcpy(data, (uint8_t *)&cfg + offset, len);   /* the core bounds offset + len */
}

static void net_link_changed(void *opaque, bool up)
{
    struct virtio_net *n = opaque;
    pthread_mutex_lock(&n->proxy.pci.dev.lock);
    if (n->link_up != up) {
        n->link_up = up;
        if (n->proxy.vdev.host_features & (1ull << VIRTIO_NET_F_STATUS))
            virtio_config_changed(&n->proxy.vdev);
    }
    pthread_mutex_unlock(&n->proxy.pci.dev.lock);
}

static void net_status_changed(struct virtio_device *vdev, uint8_t old)
{
    struct virtio_net *n = net_of(vdev);
    if (!(vdev->status & VIRTIO_STATUS_DRIVER_OK) || (old & VIRTIO_STATUS_DRIVER_OK))
        return;
    struct net_offloads o = offloads_from(vdev->guest_features);
    if (net_backend_set_offloads(n->nb, &o) < 0)
        vmm_log(VMM_LOG_WARNING, "virtio-net", "%s", vmm_get_error());
    set_active_pairs(n, 1);                       /* MQ: one pair until VQ_PAIRS_SET */
    net_backend_rx_ready(n->nb, 0);
}

static void net_reset(struct virtio_device *vdev)
{
    struct virtio_net *n = net_of(vdev);
    if (!n->nb)
        return;
    for (unsigned i = 0; i < n->max_pairs; i++)
        net_backend_rx_stop(n->nb, i);
    n->active_pairs = 1;
    memcpy(n->mac, n->mac_default, 6);
    n->promisc = n->allmulti = false;
    struct net_offloads none = { 0 };
    net_backend_set_offloads(n->nb, &none);
}

/* ---- realize ------------------------------------------------------------------------ */

static int parse_mac(const char *text, uint8_t mac[6])
{
    unsigned b[6];
    char end;
    if (sscanf(text, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5],
               &end) != 6 || strlen(text) != 17)
        return vmm_set_error(EINVAL, "mac: '%s' is not an address like 52:54:00:12:34:56", text);
    if (b[0] & 1)
        return vmm_set_error(EINVAL, "mac: '%s' is a multicast address", text);
    for (int i = 0; i < 6; i++)
        mac[i] = (uint8_t)b[i];
    return 0;
}

/* A stable locally administered address (52:54:00 like QEMU) from the
 * netdev id, so a guest sees the same MAC on every boot. */
static void default_mac(const char *seed, uint8_t mac[6])
{
    uint32_t h = 2166136261u;
    for (const char *p = seed; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    const uint8_t m[6] = { 0x52, 0x54, 0x00, (uint8_t)(h >> 16), (uint8_t)(h >> 8), (uint8_t)h };
    memcpy(mac, m, 6);
}

#define BIT(f) (1ull << VIRTIO_NET_F_##f)
#define OFFERED_BITS (BIT(CSUM) | BIT(GUEST_CSUM) | BIT(CTRL_GUEST_OFFLOADS) | BIT(MAC) |           \
                      BIT(GUEST_TSO4) | BIT(GUEST_TSO6) | BIT(GUEST_ECN) | BIT(GUEST_UFO) |        \
                      BIT(HOST_TSO4) | BIT(HOST_TSO6) | BIT(HOST_ECN) | BIT(HOST_UFO) |            \
                      BIT(MRG_RXBUF) | BIT(STATUS) | BIT(CTRL_VQ) | BIT(CTRL_RX) | BIT(MQ) |       \
                      BIT(CTRL_MAC_ADDR))

static uint64_t if_set(bool cond, uint64_t bits)
{
    return cond ? bits : 0;
}

/* What this instance offers: properties and what the backend can do. */
static uint64_t instance_features(const struct virtio_net *n)
{
    const struct net_backend *nb = n->nb;
    bool host_gso = n->csum && nb->vnet_hdr;       /* the backend segments */
    bool guest_off = n->guest_csum && nb->offloads_ok;
    return BIT(MAC) | if_set(n->status_opt, BIT(STATUS)) | if_set(n->mrg_rxbuf, BIT(MRG_RXBUF)) |
           if_set(n->csum, BIT(CSUM)) |
           if_set(host_gso && n->host_tso4, BIT(HOST_TSO4)) |
           if_set(host_gso && n->host_tso6, BIT(HOST_TSO6)) |
           if_set(host_gso && n->host_ecn && (n->host_tso4 || n->host_tso6), BIT(HOST_ECN)) |
           if_set(host_gso && n->host_ufo && nb->ufo_ok, BIT(HOST_UFO)) |
           if_set(guest_off, BIT(GUEST_CSUM)) |
           if_set(guest_off && n->guest_tso4, BIT(GUEST_TSO4)) |
           if_set(guest_off && n->guest_tso6, BIT(GUEST_TSO6)) |
           if_set(guest_off && n->guest_ecn && (n->guest_tso4 || n->guest_tso6), BIT(GUEST_ECN)) |
           if_set(guest_off && n->guest_ufo && nb->ufo_ok, BIT(GUEST_UFO)) |
           if_set(n->ctrl_vq, BIT(CTRL_VQ)) |
           if_set(n->ctrl_vq && guest_off, BIT(CTRL_GUEST_OFFLOADS)) |
           if_set(n->ctrl_vq && n->ctrl_rx, BIT(CTRL_RX)) |
           if_set(n->ctrl_vq && n->ctrl_mac_addr, BIT(CTRL_MAC_ADDR)) |
           if_set(n->ctrl_vq && n->max_pairs > 1, BIT(MQ));
}

static int check_config(struct virtio_net *n, struct net_backend **out)
{
    if (!n->netdev)
        return vmm_set_error(EINVAL, "netdev=ID is required (see --netdev / vmm_machine_add_netdev)");
    /* n->nb stays NULL until attached: a failed realize unrealizes, and
     * must not detach the NIC that has this netdev. */
    struct net_backend *nb = net_backend_find(virtio_machine(&n->proxy.vdev), n->netdev);
    if (!nb)
        return vmm_set_error(ENOENT, "netdev: no netdev with id '%s'", n->netdev);
    if (n->queue_size < 16 || n->queue_size > 1024 || (n->queue_size & (n->queue_size - 1)))
        return vmm_set_error(EINVAL, "queue-size: %u is not a power of two from 16 to 1024",
                             n->queue_size);
    if (nb->queues > 1 && !n->mq)
        return vmm_set_error(EINVAL, "netdev '%s' has %u queues: set mq=on", n->netdev,
                             nb->queues);
    if (nb->queues > MAX_PAIRS)
        return vmm_set_error(EINVAL, "netdev '%s' has %u queues; at most %u", n->netdev,
                             nb->queues, MAX_PAIRS);
    if (n->mq && !n->ctrl_vq)
        return vmm_set_error(EINVAL, "mq=on needs ctrl_vq=on");
    if (n->mac_opt && parse_mac(n->mac_opt, n->mac_default) < 0)
        return -1;
    if (!n->mac_opt)
        default_mac(n->netdev, n->mac_default);
    *out = nb;
    return 0;
}

static int net_realize(struct virtio_device *vdev)
{
    struct virtio_net *n = net_of(vdev);
    struct net_backend *nb = NULL;
    if (check_config(n, &nb) < 0)
        return -1;
    n->nb = nb;      /* for instance_features; cleared again unless attached */
    n->max_pairs = n->mq ? nb->queues : 1;
    n->rx_elems = calloc(n->queue_size, sizeof(*n->rx_elems));
    n->tx_buf = malloc(NET_MAX_FRAME);
    if (!n->rx_elems || !n->tx_buf) {
        n->nb = NULL;
        return vmm_set_error(ENOMEM, "out of memory");
    }
    vdev->num_queues = 2 * n->max_pairs + (n->ctrl_vq ? 1 : 0);
    for (unsigned i = 0; i < vdev->num_queues; i++) {
        vdev->vqs[i].max_size = (uint16_t)n->queue_size;
        virtqueue_reset(&vdev->vqs[i]);
    }
    vdev->host_features = (vdev->host_features & ~OFFERED_BITS) | instance_features(n);
    memcpy(n->mac, n->mac_default, 6);
    n->link_up = n->nb->link_up;
    n->active_pairs = 1;
    struct device *dev = &n->proxy.pci.dev;
    struct net_peer peer = { n, dev->id ? dev->id : dev->cls->name, net_receive, net_tx_ready,
                             net_link_changed };
    if (net_backend_attach(n->nb, &peer) < 0) {
        n->nb = NULL;
        return -1;
    }
    return 0;
}

static void net_unrealize(struct virtio_device *vdev)
{
    struct virtio_net *n = net_of(vdev);
    if (n->nb)
        net_backend_detach(n->nb);
    n->nb = NULL;
    free(n->rx_elems);
    free(n->tx_iov);
    free(n->tx_buf);
    n->rx_elems = NULL;
    n->tx_iov = NULL;
    n->tx_buf = NULL;
    n->tx_iov_cap = 0;
}

static const struct virtio_device_ops net_ops = {
    .device_id = VIRTIO_ID_NET,
    .features = OFFERED_BITS,
    .num_queues = 2 * MAX_PAIRS + 1,   /* realize trims to this instance's pairs */
    .queue_size = 256,
    .config_size = sizeof(struct virtio_net_config),
    .pci_class = 0x020000,             /* network controller, Ethernet */
    .realize = net_realize,
    .unrealize = net_unrealize,
    .config_read = net_config_read,
    .queue_notify = net_queue_notify,
    .reset = net_reset,
    .status_changed = net_status_changed,
};

#define NET_BOOL(name, field, def, help)                                                     \
    { name, VMM_PROP_BOOL, offsetof(struct virtio_net, field), def, help, NULL, 0, 0 }

static const struct vmm_prop net_props[] = {
    { "netdev", VMM_PROP_STR, offsetof(struct virtio_net, netdev), NULL,
      "id of the network backend (--netdev / vmm_machine_add_netdev)", NULL, 0, 0 },
    { "mac", VMM_PROP_STR, offsetof(struct virtio_net, mac_opt), NULL,
      "MAC address (default: 52:54:00 and a hash of the netdev id)", NULL, 0, 0 },
    { "queue-size", VMM_PROP_U32, offsetof(struct virtio_net, queue_size), "256",
      "entries per queue (power of two, 16 to 1024)", NULL, 16, 1024 },
    NET_BOOL("mq", mq, "off", "one queue pair per backend queue (multiqueue)"),
    NET_BOOL("mrg_rxbuf", mrg_rxbuf, "on", "offer mergeable receive buffers"),
    NET_BOOL("status", status_opt, "on", "offer the link status"),
    NET_BOOL("ctrl_vq", ctrl_vq, "on", "offer the control queue"),
    NET_BOOL("ctrl_rx", ctrl_rx, "on", "offer RX mode and MAC table commands"),
    NET_BOOL("ctrl_mac_addr", ctrl_mac_addr, "on", "offer setting the MAC through the control queue"),
    NET_BOOL("csum", csum, "on", "offer transmit checksum offload"),
    NET_BOOL("guest_csum", guest_csum, "on", "offer receive checksum offload"),
    NET_BOOL("host_tso4", host_tso4, "on", "offer TCPv4 segmentation offload"),
    NET_BOOL("host_tso6", host_tso6, "on", "offer TCPv6 segmentation offload"),
    NET_BOOL("host_ecn", host_ecn, "on", "offer TSO with ECN"),
    NET_BOOL("host_ufo", host_ufo, "on", "offer UDP fragmentation offload"),
    NET_BOOL("guest_tso4", guest_tso4, "on", "offer receiving TCPv4 super-frames"),
    NET_BOOL("guest_tso6", guest_tso6, "on", "offer receiving TCPv6 super-frames"),
    NET_BOOL("guest_ecn", guest_ecn, "on", "offer receiving super-frames with ECN"),
    NET_BOOL("guest_ufo", guest_ufo, "on", "offer receiving UFO super-frames"),
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

VIRTIO_DEVICE_CLASSES(virtio_net, "virtio-net", "network card", struct virtio_net, net_props,
                      &net_ops);
