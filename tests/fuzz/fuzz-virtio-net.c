/* libFuzzer harness for virtio-net's parsers of guest input
 * (lib/devices/virtio/virtio-net-parse.c, lib/net/net-util.c).
 *
 * Input: 8 bytes of negotiated features, 1 byte max_virtqueue_pairs, then a
 * guest buffer used twice: as a control-queue request (class, command,
 * data) and as a transmit chain (12-byte virtio_net_hdr + frame).  Besides
 * sanitizer reports the harness traps when an accepted command breaks its
 * contract (pairs out of range, multicast MAC, offloads not negotiated), a
 * refused transmit header comes without a reason, or a header the check
 * accepted cannot have its checksum completed in software. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "devices/virtio/virtio-net.h"

#define RX_OFFLOADS ((1ull << VIRTIO_NET_F_GUEST_CSUM) | (1ull << VIRTIO_NET_F_GUEST_TSO4) | \
                     (1ull << VIRTIO_NET_F_GUEST_TSO6) | (1ull << VIRTIO_NET_F_GUEST_ECN) | \
                     (1ull << VIRTIO_NET_F_GUEST_UFO))

static void check_ctrl(const uint8_t *req, size_t len, uint64_t features, unsigned max_pairs)
{
    struct virtio_net_ctrl cmd;
    if (virtio_net_ctrl_decode(req, len, features, max_pairs, &cmd) != VIRTIO_NET_OK)
        return;
    if (cmd.cls == VIRTIO_NET_CTRL_MQ && (cmd.pairs < 1 || cmd.pairs > max_pairs))
        __builtin_trap();
    if (cmd.cls == VIRTIO_NET_CTRL_MAC && cmd.cmd == VIRTIO_NET_CTRL_MAC_ADDR_SET && (cmd.mac[0] & 1))
        __builtin_trap();
    if (cmd.cls == VIRTIO_NET_CTRL_GUEST_OFFLOADS && (cmd.offloads & ~(features & RX_OFFLOADS)))
        __builtin_trap();
}

static void check_tx(const uint8_t *buf, size_t len, uint64_t features)
{
    struct virtio_net_hdr hdr;
    char why[128] = "";
    if (len < sizeof(hdr))
        return;
    memcpy(&hdr, buf, sizeof(hdr));
    size_t frame_len = len - sizeof(hdr);
    if (virtio_net_tx_check(&hdr, frame_len, features, why, sizeof(why)) < 0) {
        if (!why[0])
            __builtin_trap();
        return;
    }
    if (!(hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM))
        return;
    uint8_t *frame = malloc(frame_len ? frame_len : 1);
    if (!frame)
        return;
    memcpy(frame, buf + sizeof(hdr), frame_len);
    if (net_checksum_complete(frame, frame_len, hdr.csum_start, hdr.csum_offset) < 0)
        __builtin_trap();
    free(frame);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 9)
        return 0;
    uint64_t features;
    memcpy(&features, data, 8);
    unsigned max_pairs = data[8] % 16;
    check_ctrl(data + 9, size - 9, features, max_pairs);
    check_tx(data + 9, size - 9, features);
    return 0;
}
