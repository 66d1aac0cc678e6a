/* virtio-net: the pure parsers of guest input (virtio-net.h): no device
 * state, so the fuzzer and unit tests call them directly. */
#include <stdio.h>
#include <string.h>
#include "devices/virtio/virtio-net.h"

static bool feature(uint64_t features, unsigned bit)
{
    return features & (1ull << bit);
}

int virtio_net_tx_check(const struct virtio_net_hdr *hdr, size_t frame_len, uint64_t features,
                        char *why, size_t why_len)
{
    uint8_t gso = hdr->gso_type & (uint8_t)~VIRTIO_NET_HDR_GSO_ECN;
    bool csum = hdr->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM;
    if (csum && !feature(features, VIRTIO_NET_F_CSUM)) {
        snprintf(why, why_len, "NEEDS_CSUM without VIRTIO_NET_F_CSUM");
        return -1;
    }
    if (csum && ((size_t)hdr->csum_start + hdr->csum_offset + 2 > frame_len)) {
        snprintf(why, why_len, "checksum at %u+%u beyond the %zu-byte frame", hdr->csum_start,
                 hdr->csum_offset, frame_len);
        return -1;
    }
    bool gso_ok = gso == VIRTIO_NET_HDR_GSO_NONE ||
                  (gso == VIRTIO_NET_HDR_GSO_TCPV4 && feature(features, VIRTIO_NET_F_HOST_TSO4)) ||
                  (gso == VIRTIO_NET_HDR_GSO_TCPV6 && feature(features, VIRTIO_NET_F_HOST_TSO6)) ||
                  (gso == VIRTIO_NET_HDR_GSO_UDP && feature(features, VIRTIO_NET_F_HOST_UFO));
    if (!gso_ok || ((hdr->gso_type & VIRTIO_NET_HDR_GSO_ECN) &&
                    !feature(features, VIRTIO_NET_F_HOST_ECN))) {
        snprintf(why, why_len, "gso_type 0x%x was not negotiated", hdr->gso_type);
        return -1;
    }
    if (gso != VIRTIO_NET_HDR_GSO_NONE && (!csum || !hdr->gso_size)) {
        snprintf(why, why_len, "GSO frame without NEEDS_CSUM or gso_size");
        return -1;
    }
    return 0;
}

static uint8_t decode_rx(const uint8_t *data, size_t len, uint64_t features,
                         struct virtio_net_ctrl *out)
{
    if (!feature(features, VIRTIO_NET_F_CTRL_RX) || out->cmd > VIRTIO_NET_CTRL_RX_NOBCAST ||
        len != 1)
        return VIRTIO_NET_ERR;
    out->on = data[0] != 0;
    return VIRTIO_NET_OK;
}

/* MAC_TABLE_SET: two tables, each le32 entries + 6 bytes per entry, filling
 * the data exactly. */
static bool mac_tables_fit(const uint8_t *data, size_t len)
{
    size_t off = 0;
    for (int t = 0; t < 2; t++) {
        uint32_t entries;
        if (len - off < 4)
            return false;
        memcpy(&entries, data + off, 4);
        off += 4;
        if (entries > (len - off) / 6)
            return false;
        off += (size_t)entries * 6;
    }
    return off == len;
}

static uint8_t decode_mac(const uint8_t *data, size_t len, uint64_t features,
                          struct virtio_net_ctrl *out)
{
    if (out->cmd == VIRTIO_NET_CTRL_MAC_ADDR_SET && feature(features, VIRTIO_NET_F_CTRL_MAC_ADDR) &&
        len == 6 && !(data[0] & 1)) {
        memcpy(out->mac, data, 6);
        return VIRTIO_NET_OK;
    }
    if (out->cmd == VIRTIO_NET_CTRL_MAC_TABLE_SET && feature(features, VIRTIO_NET_F_CTRL_RX) &&
        mac_tables_fit(data, len))
        return VIRTIO_NET_OK;
    return VIRTIO_NET_ERR;
}

#define GUEST_OFFLOAD_BITS ((1ull << VIRTIO_NET_F_GUEST_CSUM) | (1ull << VIRTIO_NET_F_GUEST_TSO4) | \
                            (1ull << VIRTIO_NET_F_GUEST_TSO6) | (1ull << VIRTIO_NET_F_GUEST_ECN) | \
                            (1ull << VIRTIO_NET_F_GUEST_UFO))

uint8_t virtio_net_ctrl_decode(const uint8_t *req, size_t len, uint64_t features,
                               unsigned max_pairs, struct virtio_net_ctrl *out)
{
    memset(out, 0, sizeof(*out));
    if (len < 2 || len > VIRTIO_NET_CTRL_MAX)
        return VIRTIO_NET_ERR;
    out->cls = req[0];
    out->cmd = req[1];
    const uint8_t *data = req + 2;
    len -= 2;
    switch (out->cls) {
    case VIRTIO_NET_CTRL_RX:
        return decode_rx(data, len, features, out);
    case VIRTIO_NET_CTRL_MAC:
        return decode_mac(data, len, features, out);
    case VIRTIO_NET_CTRL_MQ:
        if (!feature(features, VIRTIO_NET_F_MQ) || out->cmd != VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET ||
            len != 2)
            return VIRTIO_NET_ERR;
        memcpy(&out->pairs, data, 2);
        return out->pairs >= 1 && out->pairs <= max_pairs ? VIRTIO_NET_OK : VIRTIO_NET_ERR;
    case VIRTIO_NET_CTRL_GUEST_OFFLOADS:
        if (!feature(features, VIRTIO_NET_F_CTRL_GUEST_OFFLOADS) ||
            out->cmd != VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET || len != 8)
            return VIRTIO_NET_ERR;
        memcpy(&out->offloads, data, 8);
        /* Only receive offloads the driver negotiated may be switched. */
        return out->offloads & ~(features & GUEST_OFFLOAD_BITS) ? VIRTIO_NET_ERR : VIRTIO_NET_OK;
    default:
        return VIRTIO_NET_ERR;
    }
}
