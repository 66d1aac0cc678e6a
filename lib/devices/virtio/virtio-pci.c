/* virtio-pci, modern only (virtio 1.2 §4.1): vendor capabilities for the
 * common, notify, ISR and device config structures in BAR 4, MSI-X table
 * and PBA in BAR 1, one MSI-X vector for config changes and one per queue,
 * INTx + ISR when MSI-X is off.  Queue notifications are ioeventfds at
 * notify_base + 4 * queue. */
#include <errno.h>
#include <string.h>
#include "devices/virtio/virtio.h"

#define VIRTIO_PCI_VENDOR      0x1af4
#define VIRTIO_PCI_DEVICE_BASE 0x1040

#define CAP_COMMON 1
#define CAP_NOTIFY 2
#define CAP_ISR    3
#define CAP_DEVICE 4
#define CAP_PCI    5

#define MSIX_BAR   1
#define MSIX_BAR_SIZE 0x1000
#define MSIX_PBA_OFFSET 0x800
#define MODERN_BAR 4
#define MODERN_BAR_SIZE 0x4000
#define COMMON_OFFSET 0x0000
#define COMMON_SIZE   0x38
#define ISR_OFFSET    0x1000
#define DEVICE_OFFSET 0x2000
#define NOTIFY_OFFSET 0x3000
#define NOTIFY_MULTIPLIER 4

/* Common configuration registers. */
enum {
    DEVICE_FEATURE_SELECT = 0, DEVICE_FEATURE = 4, DRIVER_FEATURE_SELECT = 8,
    DRIVER_FEATURE = 12, CONFIG_MSIX_VECTOR = 16, NUM_QUEUES = 18, DEVICE_STATUS = 20,
    CONFIG_GENERATION = 21, QUEUE_SELECT = 22, QUEUE_SIZE = 24, QUEUE_MSIX_VECTOR = 26,
    QUEUE_ENABLE = 28, QUEUE_NOTIFY_OFF = 30, QUEUE_DESC = 32, QUEUE_DRIVER = 40,
    QUEUE_DEVICE = 48,
};

static struct virtio_proxy *proxy_of(struct pci_device *pd)
{
    return (struct virtio_proxy *)pd;
}

/* ---- interrupts ------------------------------------------------------- */

static void pci_notify_vector(struct virtio_proxy *p, uint16_t vector)
{
    if (pci_msix_enabled(&p->pci)) {
        if (vector != VIRTIO_NO_VECTOR)
            pci_msix_notify(&p->pci, vector);
        return;
    }
    pci_set_intx(&p->pci, p->vdev.isr != 0);
}

static void pci_notify_queue(struct virtio_device *vdev, struct virtqueue *vq)
{
    pci_notify_vector(VIRTIO_PROXY_OF(vdev), vq->msix_vector);
}

static void pci_notify_config(struct virtio_device *vdev)
{
    pci_notify_vector(VIRTIO_PROXY_OF(vdev), vdev->config_vector);
}

static const struct virtio_transport_ops pci_transport = { pci_notify_queue, pci_notify_config };

/* ---- common configuration ------------------------------------------------ */

static struct virtqueue *selected(struct virtio_device *vdev)
{
    return vdev->queue_sel < vdev->num_queues ? &vdev->vqs[vdev->queue_sel] : NULL;
}

static uint64_t common_read(struct virtio_proxy *p, uint64_t off, unsigned size)
{
    struct virtio_device *vdev = &p->vdev;
    struct virtqueue *vq = selected(vdev);
    uint64_t v = 0;
    switch (off) {
    case DEVICE_FEATURE_SELECT: v = vdev->device_feature_sel; break;
    case DEVICE_FEATURE: v = virtio_get_device_features(vdev); break;
    case DRIVER_FEATURE_SELECT: v = vdev->driver_feature_sel; break;
    case DRIVER_FEATURE:
        v = vdev->driver_feature_sel < 2 ? (uint32_t)(vdev->guest_features >> (32 * vdev->driver_feature_sel)) : 0;
        break;
    case CONFIG_MSIX_VECTOR: v = vdev->config_vector; break;
    case NUM_QUEUES: v = vdev->num_queues; break;
    case DEVICE_STATUS: v = vdev->status; break;
    case CONFIG_GENERATION: v = vdev->config_generation; break;
    case QUEUE_SELECT: v = vdev->queue_sel; break;
    case QUEUE_SIZE: v = vq ? vq->size : 0; break;
    case QUEUE_MSIX_VECTOR: v = vq ? vq->msix_vector : VIRTIO_NO_VECTOR; break;
    case QUEUE_ENABLE: v = vq ? vq->ready : 0; break;
    case QUEUE_NOTIFY_OFF: v = vq ? vdev->queue_sel : 0; break;
    case QUEUE_DESC: v = vq ? vq->desc_gpa : 0; break;
    case QUEUE_DESC + 4: v = vq ? vq->desc_gpa >> 32 : 0; break;
    case QUEUE_DRIVER: v = vq ? vq->avail_gpa : 0; break;
    case QUEUE_DRIVER + 4: v = vq ? vq->avail_gpa >> 32 : 0; break;
    case QUEUE_DEVICE: v = vq ? vq->used_gpa : 0; break;
    case QUEUE_DEVICE + 4: v = vq ? vq->used_gpa >> 32 : 0; break;
    default: break;
    }
    return size == 8 ? v : v & ((1ull << (8 * size)) - 1);
}

static uint16_t valid_vector(struct virtio_proxy *p, uint64_t v)
{
    return v < p->pci.msix.nvec ? (uint16_t)v : VIRTIO_NO_VECTOR;
}

/* Set the low or high half (or all) of a 64-bit queue address. */
static void set_addr(uint64_t *addr, uint64_t off_in_field, uint64_t value, unsigned size)
{
    if (size == 8)
        *addr = value;
    else if (off_in_field == 0)
        *addr = (*addr & ~0xffffffffull) | (uint32_t)value;
    else
        *addr = (*addr & 0xffffffffull) | (uint64_t)(uint32_t)value << 32;
}

static void common_write(struct virtio_proxy *p, uint64_t off, uint64_t value, unsigned size)
{
    struct virtio_device *vdev = &p->vdev;
    struct virtqueue *vq = selected(vdev);
    bool queue_idle = vq && !vq->ready;
    switch (off) {
    case DEVICE_FEATURE_SELECT: vdev->device_feature_sel = (uint32_t)value; break;
    case DRIVER_FEATURE_SELECT: vdev->driver_feature_sel = (uint32_t)value; break;
    case DRIVER_FEATURE: virtio_set_driver_features(vdev, (uint32_t)value); break;
    case CONFIG_MSIX_VECTOR: vdev->config_vector = valid_vector(p, value); break;
    case DEVICE_STATUS:
        virtio_set_status(vdev, (uint8_t)value);
        if (value == 0) {
            pci_set_intx(&p->pci, false);
        }
        break;
    case QUEUE_SELECT: vdev->queue_sel = (uint16_t)value; break;
    case QUEUE_SIZE: if (queue_idle) vq->size = (uint16_t)value; break;
    case QUEUE_MSIX_VECTOR: if (vq) vq->msix_vector = valid_vector(p, value); break;
    case QUEUE_ENABLE:
        if (queue_idle && value == 1)
            virtio_enable_queue(vdev, vdev->queue_sel);
        break;
    case QUEUE_DESC: case QUEUE_DESC + 4:
        if (queue_idle) set_addr(&vq->desc_gpa, off - QUEUE_DESC, value, size);
        break;
    case QUEUE_DRIVER: case QUEUE_DRIVER + 4:
        if (queue_idle) set_addr(&vq->avail_gpa, off - QUEUE_DRIVER, value, size);
        break;
    case QUEUE_DEVICE: case QUEUE_DEVICE + 4:
        if (queue_idle) set_addr(&vq->used_gpa, off - QUEUE_DEVICE, value, size);
        break;
    default: break;   /* read-only or reserved */
    }
}

/* ---- BAR 4: common | ISR | device | notify ---------------------------------- */

static uint64_t modern_read(void *opaque, uint64_t off, unsigned size)
{
    struct virtio_proxy *p = proxy_of(opaque);
    if (off < COMMON_OFFSET + COMMON_SIZE)
        return common_read(p, off - COMMON_OFFSET, size);
    if (off == ISR_OFFSET) {
        uint8_t isr = p->vdev.isr;
        p->vdev.isr = 0;            /* reading acknowledges */
        pci_set_intx(&p->pci, false);
        return isr;
    }
    if (off >= DEVICE_OFFSET && off < NOTIFY_OFFSET)
        return virtio_config_read(&p->vdev, (uint32_t)(off - DEVICE_OFFSET), size);
    return 0;
}

static void modern_write(void *opaque, uint64_t off, uint64_t value, unsigned size)
{
    struct virtio_proxy *p = proxy_of(opaque);
    if (off < COMMON_OFFSET + COMMON_SIZE)
        common_write(p, off - COMMON_OFFSET, value, size);
    else if (off >= DEVICE_OFFSET && off < NOTIFY_OFFSET)
        virtio_config_write(&p->vdev, (uint32_t)(off - DEVICE_OFFSET), value, size);
    else if (off >= NOTIFY_OFFSET && (off - NOTIFY_OFFSET) % NOTIFY_MULTIPLIER == 0)
        virtio_notify_from_vcpu(&p->vdev, (unsigned)((off - NOTIFY_OFFSET) / NOTIFY_MULTIPLIER));
}

static const struct io_ops modern_ops = { modern_read, modern_write };

static uint64_t msix_bar_read(void *opaque, uint64_t off, unsigned size)
{
    return pci_msix_read(opaque, off, size);
}

static void msix_bar_write(void *opaque, uint64_t off, uint64_t value, unsigned size)
{
    pci_msix_write(opaque, off, value, size);
}

static const struct io_ops msix_ops = { msix_bar_read, msix_bar_write };

/* ---- notifications follow BAR 4 ------------------------------------------ */

static void set_ioeventfds(struct virtio_proxy *p, uint64_t bar_addr, bool assign)
{
    for (unsigned q = 0; q < p->vdev.num_queues; q++) {
        uint64_t addr = bar_addr + NOTIFY_OFFSET + (uint64_t)q * NOTIFY_MULTIPLIER;
        if (virtio_ioeventfd(&p->vdev, q, addr, 2, false, false, 0, assign) < 0)
            vmm_log(VMM_LOG_WARNING, "virtio", "%s: %s", p->pci.dev.cls->name, vmm_get_error());
    }
}

static void bar_moved(struct pci_device *pd, int bar, uint64_t old_addr, uint64_t new_addr)
{
    struct virtio_proxy *p = proxy_of(pd);
    if (bar != MODERN_BAR)
        return;
    if (old_addr && p->t.pci.ioeventfds)
        set_ioeventfds(p, old_addr, false);
    p->t.pci.ioeventfds = false;
    if (new_addr) {
        set_ioeventfds(p, new_addr, true);
        p->t.pci.ioeventfds = true;
    }
    p->t.pci.notify_base = new_addr;
}

/* ---- VIRTIO_PCI_CAP_PCI_CFG: BAR access through config space ------------ */

static bool in_cfg_window(const struct virtio_proxy *p, unsigned offset, unsigned size)
{
    unsigned data = p->t.pci.cfg_cap + 16u;
    return p->t.pci.cfg_cap && offset < data + 4 && data < offset + size;
}

/* The window's target: BAR 4 only, 1/2/4 bytes, naturally aligned. */
static bool cfg_target(struct virtio_proxy *p, uint32_t *off, unsigned *len)
{
    struct pci_device *pd = &p->pci;
    unsigned cap = p->t.pci.cfg_cap;
    *off = pci_get_long(pd, cap + 8);
    *len = pci_get_long(pd, cap + 12);
    return pd->config[cap + 4] == MODERN_BAR && (*len == 1 || *len == 2 || *len == 4) &&
           *off % *len == 0 && *off < MODERN_BAR_SIZE;
}

static uint32_t cfg_read_hook(struct pci_device *pd, unsigned offset, unsigned size,
                              uint32_t value)
{
    struct virtio_proxy *p = proxy_of(pd);
    uint32_t off;
    unsigned len;
    if (!in_cfg_window(p, offset, size) || !cfg_target(p, &off, &len))
        return value;
    pci_set_long(pd, p->t.pci.cfg_cap + 16u, (uint32_t)modern_read(pd, off, len));
    uint32_t v = 0;
    for (unsigned i = 0; i < size; i++)
        v |= (uint32_t)pd->config[offset + i] << (8 * i);
    return v;
}

static void cfg_written(struct pci_device *pd, unsigned offset, unsigned size)
{
    struct virtio_proxy *p = proxy_of(pd);
    uint32_t off;
    unsigned len;
    if (in_cfg_window(p, offset, size) && cfg_target(p, &off, &len))
        modern_write(pd, off, pci_get_long(pd, p->t.pci.cfg_cap + 16u), len);
}

/* ---- capabilities ------------------------------------------------------ */

static int add_cap(struct pci_device *pd, uint8_t type, uint32_t offset, uint32_t length,
                   uint8_t extra)
{
    uint8_t len = (uint8_t)(16 + extra);
    uint8_t at = pci_device_add_capability(pd, PCI_CAP_ID_VNDR, len);
    if (!at)
        return vmm_set_error(ENOSPC, "no room for virtio capability %u", type);
    pd->config[at + 2] = len;
    pd->config[at + 3] = type;
    pd->config[at + 4] = MODERN_BAR;
    pci_set_long(pd, at + 8, offset);
    pci_set_long(pd, at + 12, length);
    if (type == CAP_NOTIFY)
        pci_set_long(pd, at + 16, NOTIFY_MULTIPLIER);
    if (type == CAP_PCI) {
        /* bar, offset, length and the data window are the driver's. */
        memset(pd->wmask + at + 4, 0xff, 1);
        memset(pd->wmask + at + 8, 0xff, 12);
        pd->config[at + 4] = 0;
        ((struct virtio_proxy *)pd)->t.pci.cfg_cap = at;
    }
    return 0;
}

static int realize(struct virtio_proxy *p)
{
    struct device *dev = &p->pci.dev;
    const struct virtio_device_ops *ops = ((const struct virtio_device_class *)dev->cls)->ops;
    struct pci_device *pd = &p->pci;
    uint32_t class_code = ops->pci_class ? ops->pci_class : 0x00ff00;
    if (pci_device_init(pd, VIRTIO_PCI_VENDOR, (uint16_t)(VIRTIO_PCI_DEVICE_BASE + ops->device_id),
                        class_code, 1, VIRTIO_PCI_VENDOR, 0x40) < 0)
        return -1;
    if (virtio_core_init(&p->vdev, dev, ops, &pci_transport) < 0)
        return -1;
    pci_device_add_bar(pd, MSIX_BAR, PCI_BAR_MEM32, MSIX_BAR_SIZE, &msix_ops);
    pci_device_add_bar(pd, MODERN_BAR, PCI_BAR_MEM64, MODERN_BAR_SIZE, &modern_ops);
    if (add_cap(pd, CAP_COMMON, COMMON_OFFSET, COMMON_SIZE, 0) < 0 ||
        add_cap(pd, CAP_ISR, ISR_OFFSET, 1, 0) < 0 ||
        (ops->config_size && add_cap(pd, CAP_DEVICE, DEVICE_OFFSET, ops->config_size, 0) < 0) ||
        add_cap(pd, CAP_NOTIFY, NOTIFY_OFFSET, NOTIFY_MULTIPLIER * p->vdev.num_queues, 4) < 0 ||
        add_cap(pd, CAP_PCI, 0, 0, 4) < 0)
        return -1;
    if (pci_device_add_msix(pd, p->vdev.num_queues + 1, MSIX_BAR, 0, MSIX_PBA_OFFSET) < 0)
        return -1;
    pd->bar_moved = bar_moved;
    pd->config_read_hook = cfg_read_hook;
    pd->config_written = cfg_written;
    return pci_device_register(pd);
}

int virtio_pci_realize(struct device *dev)
{
    struct virtio_proxy *p = (struct virtio_proxy *)dev;
    if (realize(p) < 0) {
        virtio_pci_unrealize(dev);   /* nothing leaks from a failed realize */
        return -1;
    }
    return 0;
}

void virtio_pci_unrealize(struct device *dev)
{
    struct virtio_proxy *p = (struct virtio_proxy *)dev;
    pci_device_unregister(&p->pci);   /* unmaps BAR 4: ioeventfds go with it */
    virtio_core_release(&p->vdev);
    memset(&p->vdev, 0, sizeof(p->vdev));
}

void virtio_pci_reset(struct device *dev)
{
    struct virtio_proxy *p = (struct virtio_proxy *)dev;
    virtio_reset(&p->vdev);
    pci_device_reset(&p->pci);
}
