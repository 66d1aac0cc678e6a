/* virtio-mmio version 2 (virtio 1.2 §4.2) on machine type microvm: fixed
 * 512-byte slots from VIRTIO_MMIO_BASE, slot N on GSI 16 + N (level
 * triggered while InterruptStatus is non-zero), announced to the guest in
 * the DSDT as LNRO0005 devices. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include "devices/virtio/virtio.h"
#include "machine/acpi-aml.h"

#define VIRTIO_MMIO_BASE   0xfeb00000ull
#define VIRTIO_MMIO_STRIDE 0x200
#define VIRTIO_MMIO_SLOTS  8
#define VIRTIO_MMIO_GSI    16
#define VIRTIO_MMIO_MAGIC  0x74726976u   /* "virt" */
#define VIRTIO_MMIO_VENDOR 0x4d564c4cu   /* "LLVM" read little endian: libvmm */

enum {
    MAGIC = 0x000, VERSION = 0x004, DEVICE_ID = 0x008, VENDOR_ID = 0x00c,
    DEVICE_FEATURES = 0x010, DEVICE_FEATURES_SEL = 0x014, DRIVER_FEATURES = 0x020,
    DRIVER_FEATURES_SEL = 0x024, QUEUE_SEL = 0x030, QUEUE_NUM_MAX = 0x034, QUEUE_NUM = 0x038,
    QUEUE_READY = 0x044, QUEUE_NOTIFY = 0x050, INTERRUPT_STATUS = 0x060,
    INTERRUPT_ACK = 0x064, STATUS = 0x070, QUEUE_DESC_LOW = 0x080, QUEUE_DESC_HIGH = 0x084,
    QUEUE_DRIVER_LOW = 0x090, QUEUE_DRIVER_HIGH = 0x094, QUEUE_DEVICE_LOW = 0x0a0,
    QUEUE_DEVICE_HIGH = 0x0a4, CONFIG_GENERATION = 0x0fc, CONFIG = 0x100,
};

static void update_irq(struct virtio_proxy *p)
{
    bool level = p->vdev.isr != 0;
    if (level != p->t.mmio.irq_level) {
        p->t.mmio.irq_level = level;
        machine_set_irq(p->pci.dev.m, p->t.mmio.gsi, level);
    }
}

static void mmio_notify(struct virtio_device *vdev, struct virtqueue *vq)
{
    (void)vq;
    update_irq(VIRTIO_PROXY_OF(vdev));
}

static void mmio_notify_config(struct virtio_device *vdev)
{
    update_irq(VIRTIO_PROXY_OF(vdev));
}

static const struct virtio_transport_ops mmio_transport = { mmio_notify, mmio_notify_config };

static struct virtqueue *selected(struct virtio_device *vdev)
{
    return vdev->queue_sel < vdev->num_queues ? &vdev->vqs[vdev->queue_sel] : NULL;
}

static uint64_t mmio_read(void *opaque, uint64_t off, unsigned size)
{
    struct virtio_proxy *p = opaque;
    struct virtio_device *vdev = &p->vdev;
    if (off >= CONFIG)
        return virtio_config_read(vdev, (uint32_t)(off - CONFIG), size);
    if (size != 4)
        return 0;   /* registers are 32-bit */
    struct virtqueue *vq = selected(vdev);
    switch (off) {
    case MAGIC: return VIRTIO_MMIO_MAGIC;
    case VERSION: return 2;
    case DEVICE_ID: return vdev->ops->device_id;
    case VENDOR_ID: return VIRTIO_MMIO_VENDOR;
    case DEVICE_FEATURES: return virtio_get_device_features(vdev);
    case QUEUE_NUM_MAX: return vq ? vq->max_size : 0;
    case QUEUE_READY: return vq ? vq->ready : 0;
    case INTERRUPT_STATUS: return vdev->isr;
    case STATUS: return vdev->status;
    case CONFIG_GENERATION: return vdev->config_generation;
    default: return 0;
    }
}

static void set_half(uint64_t *addr, bool high, uint32_t value)
{
    *addr = high ? (*addr & 0xffffffffull) | (uint64_t)value << 32
                 : (*addr & ~0xffffffffull) | value;
}

static void mmio_write(void *opaque, uint64_t off, uint64_t value64, unsigned size)
{
    struct virtio_proxy *p = opaque;
    struct virtio_device *vdev = &p->vdev;
    if (off >= CONFIG) {
        virtio_config_write(vdev, (uint32_t)(off - CONFIG), value64, size);
        return;
    }
    if (size != 4)
        return;
    uint32_t value = (uint32_t)value64;
    struct virtqueue *vq = selected(vdev);
    bool idle = vq && !vq->ready;
    switch (off) {
    case DEVICE_FEATURES_SEL: vdev->device_feature_sel = value; break;
    case DRIVER_FEATURES: virtio_set_driver_features(vdev, value); break;
    case DRIVER_FEATURES_SEL: vdev->driver_feature_sel = value; break;
    case QUEUE_SEL: vdev->queue_sel = (uint16_t)value; break;
    case QUEUE_NUM: if (idle) vq->size = (uint16_t)(value > 0xffff ? 0 : value); break;
    case QUEUE_READY:
        if (idle && value == 1)
            virtio_enable_queue(vdev, vdev->queue_sel);
        else if (vq && value == 0)
            vq->ready = false;
        break;
    case QUEUE_NOTIFY: virtio_notify_from_vcpu(vdev, value); break;
    case INTERRUPT_ACK:
        vdev->isr &= (uint8_t)~value;
        update_irq(p);
        break;
    case STATUS:
        virtio_set_status(vdev, (uint8_t)value);
        update_irq(p);
        break;
    case QUEUE_DESC_LOW: case QUEUE_DESC_HIGH:
        if (idle) set_half(&vq->desc_gpa, off == QUEUE_DESC_HIGH, value);
        break;
    case QUEUE_DRIVER_LOW: case QUEUE_DRIVER_HIGH:
        if (idle) set_half(&vq->avail_gpa, off == QUEUE_DRIVER_HIGH, value);
        break;
    case QUEUE_DEVICE_LOW: case QUEUE_DEVICE_HIGH:
        if (idle) set_half(&vq->used_gpa, off == QUEUE_DEVICE_HIGH, value);
        break;
    default: break;
    }
}

static const struct io_ops mmio_ops = { mmio_read, mmio_write };

static bool is_mmio_proxy(const struct device *d)
{
    return d->cls->realize == virtio_mmio_realize;
}

/* The first slot no other virtio-mmio device of this machine holds. */
static int free_slot(vmm_machine *m, const struct device *self)
{
    bool used[VIRTIO_MMIO_SLOTS] = { false };
    for (struct device *d = m->devices; d; d = d->next) {
        if (d != self && d->realized && is_mmio_proxy(d)) {
            int s = ((const struct virtio_proxy *)d)->t.mmio.slot;
            if (s >= 0 && s < VIRTIO_MMIO_SLOTS)
                used[s] = true;
        }
    }
    for (int s = 0; s < VIRTIO_MMIO_SLOTS; s++)
        if (!used[s])
            return s;
    return -1;
}

static int realize(struct virtio_proxy *p)
{
    struct device *dev = &p->pci.dev;
    const struct virtio_device_ops *ops = ((const struct virtio_device_class *)dev->cls)->ops;
    if (dev->m->pci)
        return vmm_set_error(ENODEV, "virtio-mmio devices need machine type microvm "
                             "(use the -pci variant on pc)");
    int slot = free_slot(dev->m, dev);
    if (slot < 0)
        return vmm_set_error(ENOSPC, "all %d virtio-mmio slots are taken", VIRTIO_MMIO_SLOTS);
    p->t.mmio.slot = slot;
    p->t.mmio.base = VIRTIO_MMIO_BASE + (uint64_t)slot * VIRTIO_MMIO_STRIDE;
    p->t.mmio.gsi = VIRTIO_MMIO_GSI + (unsigned)slot;
    if (virtio_core_init(&p->vdev, dev, ops, &mmio_transport) < 0)
        return -1;
    if (device_map_mmio(dev, p->t.mmio.base, VIRTIO_MMIO_STRIDE, &mmio_ops) < 0)
        return -1;
    for (unsigned q = 0; q < p->vdev.num_queues; q++) {
        if (virtio_ioeventfd(&p->vdev, q, p->t.mmio.base + QUEUE_NOTIFY, 4, false, true, q,
                             true) < 0) {
            /* Without it, notifications still work through the exit path. */
            vmm_log(VMM_LOG_WARNING, "virtio", "%s: %s", dev->cls->name, vmm_get_error());
            break;
        }
        p->t.mmio.ioeventfd = true;
    }
    return 0;
}

int virtio_mmio_realize(struct device *dev)
{
    struct virtio_proxy *p = (struct virtio_proxy *)dev;
    p->t.mmio.slot = -1;
    if (realize(p) < 0) {
        virtio_mmio_unrealize(dev);
        return -1;
    }
    return 0;
}

void virtio_mmio_unrealize(struct device *dev)
{
    struct virtio_proxy *p = (struct virtio_proxy *)dev;
    if (p->t.mmio.ioeventfd)
        for (unsigned q = 0; q < p->vdev.num_queues; q++)
            virtio_ioeventfd(&p->vdev, q, p->t.mmio.base + QUEUE_NOTIFY, 4, false, true, q, false);
    p->t.mmio.ioeventfd = false;
    if (p->t.mmio.base)
        address_space_unmap(&dev->m->mmio, p->t.mmio.base);
    p->t.mmio.base = 0;
    virtio_core_release(&p->vdev);
    memset(&p->vdev, 0, sizeof(p->vdev));
}

void virtio_mmio_reset(struct device *dev)
{
    struct virtio_proxy *p = (struct virtio_proxy *)dev;
    virtio_reset(&p->vdev);
    update_irq(p);
}

/* Linux's virtio_mmio.device=SIZE@BASE:IRQ syntax (kernel-parameters.txt),
 * one per device, for kernels that boot without ACPI. */
char *virtio_mmio_cmdline(vmm_machine *m)
{
    GString *s = g_string_new(NULL);
    for (struct device *d = m->devices; d; d = d->next) {
        if (!d->realized || !is_mmio_proxy(d))
            continue;
        const struct virtio_proxy *p = (const struct virtio_proxy *)d;
        g_string_append_printf(s, "%svirtio_mmio.device=%u@0x%" PRIx64 ":%u", s->len ? " " : "",
                               VIRTIO_MMIO_STRIDE, p->t.mmio.base, p->t.mmio.gsi);
    }
    return g_string_free(s, FALSE);
}

void virtio_mmio_build_aml(vmm_machine *m, struct aml *a)
{
    for (struct device *d = m->devices; d; d = d->next) {
        if (!d->realized || !is_mmio_proxy(d))
            continue;
        const struct virtio_proxy *p = (const struct virtio_proxy *)d;
        char name[5];
        snprintf(name, sizeof(name), "VR%02X", (unsigned)p->t.mmio.slot & 0xff);
        aml_device_open(a, name);
        aml_name_string(a, "_HID", "LNRO0005");
        aml_name_integer(a, "_UID", (uint64_t)p->t.mmio.slot);
        aml_name_integer(a, "_CCA", 1);
        struct aml_res r;
        aml_res_init(&r);
        aml_res_memory32_fixed(&r, (uint32_t)p->t.mmio.base, VIRTIO_MMIO_STRIDE);
        aml_res_interrupt(&r, p->t.mmio.gsi, 1, 0);
        aml_name_resources(a, "_CRS", &r);
        aml_close(a);
    }
}
