/* virtio-net protocol definitions (virtio 1.2 §5.1) and the pure parsers
 * of guest input the device uses: the transmit header check and the
 * control-queue command decoder.  No KVM, no threads: the fuzzer
 * (tests/fuzz/fuzz-virtio-net.c) and unit tests call them directly. */
#ifndef LIBVMM_VIRTIO_NET_H
#define LIBVMM_VIRTIO_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "net/net.h"

#define VIRTIO_NET_F_CSUM                0
#define VIRTIO_NET_F_GUEST_CSUM          1
#define VIRTIO_NET_F_CTRL_GUEST_OFFLOADS 2
#define VIRTIO_NET_F_MAC                 5
#define VIRTIO_NET_F_GUEST_TSO4          7
#define VIRTIO_NET_F_GUEST_TSO6          8
#define VIRTIO_NET_F_GUEST_ECN           9
#define VIRTIO_NET_F_GUEST_UFO           10
#define VIRTIO_NET_F_HOST_TSO4           11
#define VIRTIO_NET_F_HOST_TSO6           12
#define VIRTIO_NET_F_HOST_ECN            13
#define VIRTIO_NET_F_HOST_UFO            14
#define VIRTIO_NET_F_MRG_RXBUF           15
#define VIRTIO_NET_F_STATUS              16
#define VIRTIO_NET_F_CTRL_VQ             17
#define VIRTIO_NET_F_CTRL_RX             18
#define VIRTIO_NET_F_MQ                  22
#define VIRTIO_NET_F_CTRL_MAC_ADDR       23

#define VIRTIO_NET_S_LINK_UP 1

/* Device configuration layout (the fields this device offers). */
struct virtio_net_config {
    uint8_t mac[6];
    uint16_t status;
    uint16_t max_virtqueue_pairs;
} __attribute__((packed));

/* Control queue classes and commands. */
#define VIRTIO_NET_CTRL_RX                0
#define VIRTIO_NET_CTRL_RX_PROMISC        0
#define VIRTIO_NET_CTRL_RX_ALLMULTI       1
#define VIRTIO_NET_CTRL_RX_ALLUNI         2
#define VIRTIO_NET_CTRL_RX_NOMULTI        3
#define VIRTIO_NET_CTRL_RX_NOUNI          4
#define VIRTIO_NET_CTRL_RX_NOBCAST        5
#define VIRTIO_NET_CTRL_MAC               1
#define VIRTIO_NET_CTRL_MAC_TABLE_SET     0
#define VIRTIO_NET_CTRL_MAC_ADDR_SET      1
#define VIRTIO_NET_CTRL_MQ                4
#define VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET   0
#define VIRTIO_NET_CTRL_GUEST_OFFLOADS     5
#define VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET 0
#define VIRTIO_NET_OK  0
#define VIRTIO_NET_ERR 1

#define VIRTIO_NET_CTRL_MAX 4096   /* longest command accepted (MAC tables) */

/* A decoded control command. */
struct virtio_net_ctrl {
    uint8_t cls, cmd;
    bool on;                       /* RX mode commands */
    uint8_t mac[6];                /* MAC_ADDR_SET */
    uint16_t pairs;                /* MQ_VQ_PAIRS_SET */
    uint64_t offloads;             /* GUEST_OFFLOADS_SET: feature bits */
};

/* Decode the device-readable part of a control request (class, command,
 * data) against the negotiated features: VIRTIO_NET_OK with *out filled,
 * or VIRTIO_NET_ERR (unknown, not negotiated, malformed). */
uint8_t virtio_net_ctrl_decode(const uint8_t *req, size_t len, uint64_t features,
                               unsigned max_pairs, struct virtio_net_ctrl *out);

/* Check a transmit header against the negotiated features and the frame
 * length behind it: 0, or -1 with the broken rule in `why`. */
int virtio_net_tx_check(const struct virtio_net_hdr *hdr, size_t frame_len, uint64_t features,
                        char *why, size_t why_len);

#endif
