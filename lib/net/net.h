/* Network backends ("netdevs", lib/net): what a NIC model talks to.
 *
 * A backend moves Ethernet frames between one NIC (its peer) and the host:
 * TAP today; macvtap, vhost-net, user-mode NAT and sockets plug in through
 * the same `net_backend_ops`.  A machine keeps a registry of its netdevs by
 * id; a NIC finds its netdev at realize and attaches to it.
 *
 * Frames carry a virtio_net_hdr in front when the backend's header is on
 * (net_backend_vnet_hdr): offloaded checksums and GSO cross the boundary
 * untouched.  Without it frames are plain Ethernet.
 *
 * Threads: frames reach the peer from the machine's I/O thread only.  The
 * peer's receive() may answer 0 ("no RX buffers"): the backend keeps that
 * frame, stops polling the queue, and delivers it first when the peer calls
 * net_backend_rx_ready() (from any thread).  net_backend_send() returns 0
 * when the host side is full: the backend watches for room and calls the
 * peer's tx_ready() (I/O thread) so the NIC retries. */
#ifndef LIBVMM_NET_INT_H
#define LIBVMM_NET_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>
#include "machine/machine.h"

#define NET_MAX_QUEUES 16          /* queue pairs of one netdev */
#define NET_MAX_FRAME  (65536 + 64) /* largest frame incl. any header */

/* virtio 1.2 §5.1.6: the header every frame carries on VERSION_1 devices. */
struct virtio_net_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
    uint16_t num_buffers;
};
#define VIRTIO_NET_HDR_F_NEEDS_CSUM 1
#define VIRTIO_NET_HDR_F_DATA_VALID 2
#define VIRTIO_NET_HDR_GSO_NONE  0
#define VIRTIO_NET_HDR_GSO_TCPV4 1
#define VIRTIO_NET_HDR_GSO_UDP   3
#define VIRTIO_NET_HDR_GSO_TCPV6 4
#define VIRTIO_NET_HDR_GSO_ECN   0x80

/* Receive offloads the backend may hand the NIC (what the guest accepts). */
struct net_offloads {
    bool csum, tso4, tso6, ecn, ufo;
};

struct net_backend;

/* The NIC side.  All callbacks run in the machine's I/O thread. */
struct net_peer {
    void *opaque;
    const char *name;              /* the NIC's id or type, for listings */
    /* A frame for queue pair q.  Returns the bytes taken (or dropped), 0
     * when the NIC has no room now (the backend holds the frame until
     * net_backend_rx_ready), -1 when the frame is dropped as bad. */
    ssize_t (*receive)(void *opaque, unsigned q, const struct iovec *iov, int iovcnt);
    /* The host side has room again after net_backend_send returned 0. */
    void (*tx_ready)(void *opaque, unsigned q);
    /* The link went up or down (set_link). */
    void (*link_changed)(void *opaque, bool up);
};

struct net_backend_ops {
    const char *type;              /* "tap" */
    size_t instance_size;          /* starts with struct net_backend */
    const struct vmm_prop *props;  /* besides the common "id" */
    /* Open host resources from the applied properties; vmm_set_error. */
    int (*open)(struct net_backend *nb);
    void (*close)(struct net_backend *nb);
    /* Send one frame (header first when vnet_hdr is on) on queue pair q:
     * bytes sent, 0 when the host side is full (retry after tx_ready), -1
     * on a hard error (the frame is lost; error set). */
    ssize_t (*send)(struct net_backend *nb, unsigned q, const struct iovec *iov, int iovcnt);
    /* Read one frame of queue pair q into buf: length, 0 when none now, -1
     * on error.  The core polls and delivers. */
    ssize_t (*recv)(struct net_backend *nb, unsigned q, void *buf, size_t size);
    /* File descriptor to poll for queue pair q (-1: none). */
    int (*queue_fd)(struct net_backend *nb, unsigned q);
    /* Optional: header length the NIC uses (e.g. 12) / receive offloads /
     * queue pairs in use (the rest are detached). */
    int (*set_vnet_hdr_len)(struct net_backend *nb, unsigned len);
    int (*set_offloads)(struct net_backend *nb, const struct net_offloads *o);
    int (*set_queues)(struct net_backend *nb, unsigned active);
};

/* Per queue pair: polling state, the frame held for a full NIC. */
struct net_queue {
    struct net_backend *nb;
    unsigned index;
    GSource *rx_source, *tx_source;
    uint8_t *held;                 /* a frame the peer could not take yet */
    size_t held_len;
    bool rx_wanted;                /* the peer wants frames (set by rx_ready) */
    unsigned stops;                /* rx_stop calls: a frame from before one is not held */
};

struct net_backend {
    const struct net_backend_ops *ops;
    vmm_machine *m;
    char *id;
    unsigned queues;               /* queue pairs (tap: fds) */
    bool vnet_hdr;                 /* frames carry a virtio_net_hdr */
    bool offloads_ok;              /* receive offloads can be set */
    bool ufo_ok;                   /* ... including UFO */
    bool link_up;
    bool peer_attached;
    struct net_peer peer;
    pthread_mutex_t lock;          /* queue polling state */
    struct net_queue q[NET_MAX_QUEUES];
    uint8_t *buf;                  /* receive buffer (I/O thread) */
    struct net_backend *next;
};

/* ---- registry (per machine) ----------------------------------------------- */
/* Parse "TYPE,id=ID,..." and open the backend. */
struct net_backend *net_backend_create(vmm_machine *m, const char *spec);
struct net_backend *net_backend_find(vmm_machine *m, const char *id);
void net_backend_free(struct net_backend *nb);
/* Free every netdev of the machine (after its devices and I/O thread). */
void net_release_all(vmm_machine *m);

/* ---- for NICs ---------------------------------------------------------- */
/* Attach as the netdev's only peer; fails when it has one. */
int net_backend_attach(struct net_backend *nb, const struct net_peer *peer);
void net_backend_detach(struct net_backend *nb);
/* The peer wants frames on queue pair q (again). */
void net_backend_rx_ready(struct net_backend *nb, unsigned q);
/* Stop delivering on queue pair q and drop a held frame (NIC reset). */
void net_backend_rx_stop(struct net_backend *nb, unsigned q);
ssize_t net_backend_send(struct net_backend *nb, unsigned q, const struct iovec *iov, int iovcnt);
int net_backend_set_vnet_hdr_len(struct net_backend *nb, unsigned len);
int net_backend_set_offloads(struct net_backend *nb, const struct net_offloads *o);
int net_backend_set_queues(struct net_backend *nb, unsigned active);
/* One line for listings (HMP "info network"): "ID: type=tap,key=value,...,
 * link=up|down[, peer NIC]"; the caller frees it. */
char *net_backend_describe(struct net_backend *nb);
/* Link up/down: tells the peer. */
void net_backend_set_link(struct net_backend *nb, bool up);

/* ---- helpers for NICs and backends ------------------------------------------ */
/* Copy up to `len` bytes starting `skip` bytes into the iovec. */
size_t net_iov_copy_out(const struct iovec *iov, int iovcnt, size_t skip, void *dst, size_t len);
size_t net_iov_size(const struct iovec *iov, int iovcnt);
/* Complete a NEEDS_CSUM frame in place: the ones' complement sum of
 * frame[start..len) stored at start + offset.  -1 when out of bounds. */
int net_checksum_complete(uint8_t *frame, size_t len, size_t start, size_t offset);
/* The Internet checksum (RFC 1071) of data, folded, not inverted, added
 * to `sum`. */
uint32_t net_checksum_add(uint32_t sum, const void *data, size_t len);
uint16_t net_checksum_fold(uint32_t sum);

extern const struct net_backend_ops net_tap_ops;

#endif
