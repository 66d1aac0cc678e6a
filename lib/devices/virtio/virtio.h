/* Virtio core (virtio 1.2, modern devices only): feature negotiation, device
 * status and reset, config generation, queue notifications from ioeventfds
 * handled in the machine's I/O thread, interrupts through the transport.
 *
 * A device fills a `virtio_device_ops` table and does not know whether it
 * sits on virtio-pci or virtio-mmio.  Its instance struct starts with a
 * `struct virtio_proxy` (the transport's state) and is registered as two
 * device classes with VIRTIO_DEVICE_CLASSES() (e.g. "virtio-rng-pci" and
 * "virtio-rng-device").
 *
 * Locking: every callback runs with the device lock (proxy.pci.dev.lock)
 * held — register accesses from vCPUs and queue handlers in the I/O thread
 * alike. */
#ifndef LIBVMM_VIRTIO_H
#define LIBVMM_VIRTIO_H

#include <stdbool.h>
#include <stdint.h>
#include "devices/device.h"
#include "devices/pci.h"
#include "devices/virtio/virtqueue.h"

#define VIRTIO_STATUS_ACKNOWLEDGE 0x01
#define VIRTIO_STATUS_DRIVER      0x02
#define VIRTIO_STATUS_DRIVER_OK   0x04
#define VIRTIO_STATUS_FEATURES_OK 0x08
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED      0x80

#define VIRTIO_F_INDIRECT_DESC 28
#define VIRTIO_F_EVENT_IDX     29
#define VIRTIO_F_VERSION_1     32

#define VIRTIO_ISR_QUEUE  0x1
#define VIRTIO_ISR_CONFIG 0x2

#define VIRTIO_NO_VECTOR  0xffff
#define VIRTIO_MAX_QUEUES 32     /* e.g. virtio-net: 15 queue pairs + control */

#define VIRTIO_ID_NET     1
#define VIRTIO_ID_BLOCK   2
#define VIRTIO_ID_CONSOLE 3
#define VIRTIO_ID_RNG     4

struct virtio_device;

/* What a device model provides. */
struct virtio_device_ops {
    uint16_t device_id;            /* VIRTIO_ID_* */
    uint64_t features;             /* device-specific feature bits (< 24, or e.g. bit 41) */
    unsigned num_queues;           /* at most VIRTIO_MAX_QUEUES */
    uint16_t queue_size;           /* maximum size of each queue (power of two) */
    uint32_t config_size;          /* bytes of device-specific config space */
    uint32_t pci_class;            /* PCI class code (0: 0x00ff00, "other" as QEMU uses) */
    /* Optional: claim backends; fail with vmm_set_error. */
    int (*realize)(struct virtio_device *vdev);
    void (*unrealize)(struct virtio_device *vdev);
    /* Device config space (offset + len inside config_size; len 1, 2, 4 or 8). */
    void (*config_read)(struct virtio_device *vdev, uint32_t offset, void *data, uint32_t len);
    void (*config_write)(struct virtio_device *vdev, uint32_t offset, const void *data,
                         uint32_t len);
    /* The driver notified queue `q`: pop chains with virtio_pop(), push them
     * back with virtio_push(), then virtio_queue_done().  I/O thread. */
    void (*queue_notify)(struct virtio_device *vdev, unsigned q);
    /* Device reset (status 0 or machine reset): drop in-flight work. */
    void (*reset)(struct virtio_device *vdev);
    /* Optional: status changed (e.g. DRIVER_OK: start receiving). */
    void (*status_changed)(struct virtio_device *vdev, uint8_t old_status);
};

/* What a transport provides to the core. */
struct virtio_transport_ops {
    void (*notify_queue)(struct virtio_device *vdev, struct virtqueue *vq);
    void (*notify_config)(struct virtio_device *vdev);
};

struct virtio_queue_event {
    int fd;                        /* eventfd the transport registers as ioeventfd */
    GSource *source;               /* in the machine's I/O context */
    struct virtio_device *vdev;
    unsigned index;
};

struct virtio_device {
    struct device *dev;            /* the transport's device: lock and machine */
    const struct virtio_device_ops *ops;
    const struct virtio_transport_ops *transport;
    uint64_t host_features, guest_features;
    uint32_t device_feature_sel, driver_feature_sel;
    uint8_t status;
    uint8_t config_generation;
    uint8_t isr;
    bool broken;                   /* NEEDS_RESET until the driver resets */
    uint16_t queue_sel;
    uint16_t config_vector;
    unsigned num_queues;
    struct virtqueue vqs[VIRTIO_MAX_QUEUES];
    struct virtio_queue_event events[VIRTIO_MAX_QUEUES];
};

/* ---- for devices --------------------------------------------------------- */
/* Pop the next chain of queue q (1: got one, 0: empty).  A malformed chain
 * marks the device broken and returns 0. */
int virtio_pop(struct virtio_device *vdev, unsigned q, struct vq_chain *chain);
void virtio_push(struct virtio_device *vdev, unsigned q, const struct vq_chain *chain,
                 uint32_t written);
/* After a batch of pushes: interrupt the driver if it asked for one
 * (driver notifications are re-armed by the core after each handler run). */
void virtio_queue_done(struct virtio_device *vdev, unsigned q);
/* The driver broke the rules: log, set NEEDS_RESET, config interrupt. */
void virtio_set_broken(struct virtio_device *vdev, const char *fmt, ...) VMM_PRINTF(2, 3);
/* Device config changed: bump the generation and interrupt. */
void virtio_config_changed(struct virtio_device *vdev);
/* Queue q has work to retry later (rate limits, backends): run the
 * handler again from the I/O thread. */
void virtio_queue_kick(struct virtio_device *vdev, unsigned q);
bool virtio_has_feature(const struct virtio_device *vdev, unsigned bit);
/* The machine (for guest memory and the I/O context). */
static inline vmm_machine *virtio_machine(const struct virtio_device *vdev)
{
    return vdev->dev->m;
}

/* ---- for transports ------------------------------------------------------ */
int virtio_core_init(struct virtio_device *vdev, struct device *dev,
                     const struct virtio_device_ops *ops,
                     const struct virtio_transport_ops *transport);
void virtio_core_release(struct virtio_device *vdev);
void virtio_reset(struct virtio_device *vdev);
void virtio_set_status(struct virtio_device *vdev, uint8_t status);
uint32_t virtio_get_device_features(const struct virtio_device *vdev);
void virtio_set_driver_features(struct virtio_device *vdev, uint32_t value);
/* The driver enabled the selected queue (PCI queue_enable, MMIO QueueReady). */
void virtio_enable_queue(struct virtio_device *vdev, unsigned q);
/* A notify write that reached user space (not caught by the ioeventfd). */
void virtio_notify_from_vcpu(struct virtio_device *vdev, unsigned q);
/* Register (assign) or remove the queue's eventfd as a KVM ioeventfd on a
 * write of `len` bytes to `addr` (PIO or MMIO), optionally only when the
 * written value equals `data`. */
int virtio_ioeventfd(struct virtio_device *vdev, unsigned q, uint64_t addr, unsigned len,
                     bool pio, bool match, uint64_t data, bool assign);
uint64_t virtio_config_read(struct virtio_device *vdev, uint32_t offset, unsigned size);
void virtio_config_write(struct virtio_device *vdev, uint32_t offset, uint64_t value,
                         unsigned size);

/* ---- transports' state and device classes -------------------------------- */
struct virtio_pci_state {
    uint8_t cfg_cap;               /* offset of the PCI_CFG capability */
    uint64_t notify_base;          /* where the notify region is mapped (0: not) */
    bool ioeventfds;               /* registered at notify_base */
};

struct virtio_mmio_state {
    uint64_t base;
    uint32_t gsi;
    int slot;
    bool ioeventfd;
    bool irq_level;
};

/* The head of every virtio device instance. */
struct virtio_proxy {
    struct pci_device pci;         /* starts with struct device (unused PCI part on MMIO) */
    struct virtio_device vdev;
    union {
        struct virtio_pci_state pci;
        struct virtio_mmio_state mmio;
    } t;
};

struct virtio_device_class {
    struct device_class dc;        /* first: the registry holds &cls.dc */
    const struct virtio_device_ops *ops;
};

#define VIRTIO_PROXY_OF(vdev) ((struct virtio_proxy *)((char *)(vdev) - offsetof(struct virtio_proxy, vdev)))

int virtio_pci_realize(struct device *dev);
void virtio_pci_unrealize(struct device *dev);
void virtio_pci_reset(struct device *dev);
int virtio_mmio_realize(struct device *dev);
void virtio_mmio_unrealize(struct device *dev);
void virtio_mmio_reset(struct device *dev);
void virtio_proxy_save(struct device *dev, void *state);
int virtio_proxy_load(struct device *dev, const void *state);

/* Saved state shared by both transports (lib/migration/state.h). */
struct virtio_state {
    uint8_t status, config_generation, isr, broken;
    uint64_t guest_features;
    uint32_t device_feature_sel, driver_feature_sel;
    uint16_t queue_sel, config_vector;
    uint16_t num_queues;
    uint16_t q_size[VIRTIO_MAX_QUEUES];
    uint8_t q_ready[VIRTIO_MAX_QUEUES];
    uint16_t q_vector[VIRTIO_MAX_QUEUES];
    uint16_t q_last_avail[VIRTIO_MAX_QUEUES];
    uint16_t q_used_idx[VIRTIO_MAX_QUEUES];
    uint64_t q_desc[VIRTIO_MAX_QUEUES];
    uint64_t q_avail[VIRTIO_MAX_QUEUES];
    uint64_t q_used[VIRTIO_MAX_QUEUES];
    uint8_t pci_config[PCI_CONFIG_SIZE];
    /* Version 2: virtio-pci's MSI-X vector table and pending bits. */
    uint8_t msix_table[(VIRTIO_MAX_QUEUES + 1) * PCI_MSIX_ENTRY_SIZE];
    uint64_t msix_pba;
    uint8_t has_msix;              /* not in the stream: the loaded version had it */
};
extern const struct state_desc virtio_state_desc;
/* Max queue size and queue count post_load checks against. */
#define VIRTIO_STATE_MAX_QUEUE_SIZE VIRTQ_MAX_SIZE

/* Two classes per device: NAME-pci and NAME-device (virtio-mmio). */
#define VIRTIO_DEVICE_CLASSES(var, base, help_, type, props_, ops_)                     \
    const struct virtio_device_class device_##var##_pci = {                               \
        .dc = { .name = base "-pci", .help = help_ " (virtio-pci)",                       \
                .instance_size = sizeof(type), .props = props_, .user_creatable = true,   \
                .realize = virtio_pci_realize, .unrealize = virtio_pci_unrealize,         \
                .reset = virtio_pci_reset, .state = &virtio_state_desc,                   \
                .save = virtio_proxy_save, .load = virtio_proxy_load },                   \
        .ops = ops_ };                                                                     \
    const struct virtio_device_class device_##var##_mmio = {                              \
        .dc = { .name = base "-device", .help = help_ " (virtio-mmio)",                   \
                .instance_size = sizeof(type), .props = props_, .user_creatable = true,   \
                .realize = virtio_mmio_realize, .unrealize = virtio_mmio_unrealize,       \
                .reset = virtio_mmio_reset, .state = &virtio_state_desc,                  \
                .save = virtio_proxy_save, .load = virtio_proxy_load },                   \
        .ops = ops_ }

extern const struct virtio_device_class device_virtio_rng_pci, device_virtio_rng_mmio;
extern const struct virtio_device_class device_virtio_net_pci, device_virtio_net_mmio;
extern const struct virtio_device_class device_virtio_blk_pci, device_virtio_blk_mmio;
extern const struct virtio_device_class device_virtio_console_pci, device_virtio_console_mmio,
    device_virtio_serial_pci, device_virtio_serial_mmio;

/* microvm: describe the virtio-mmio devices in the DSDT (acpi-aml.h). */
struct aml;
void virtio_mmio_build_aml(vmm_machine *m, struct aml *a);
/* "virtio_mmio.device=512@0xBASE:GSI ..." for every virtio-mmio device
 * ("" when none); g_free the result. */
char *virtio_mmio_cmdline(vmm_machine *m);

#endif
