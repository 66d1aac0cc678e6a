/* Virtio core: status, features, queues, notifications, interrupts. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include "devices/virtio/virtio.h"

#define CORE_FEATURES ((1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_F_INDIRECT_DESC) | \
                       (1ull << VIRTIO_F_EVENT_IDX))

bool virtio_has_feature(const struct virtio_device *vdev, unsigned bit)
{
    return vdev->guest_features & (1ull << bit);
}

static const char *dev_name(const struct virtio_device *vdev)
{
    return vdev->dev->id ? vdev->dev->id : vdev->dev->cls->name;
}

void virtio_set_broken(struct virtio_device *vdev, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    vmm_log(VMM_LOG_WARNING, "virtio", "%s: the driver broke the rules, device needs reset: %s",
            dev_name(vdev), msg);
    if (vdev->broken)
        return;
    vdev->broken = true;
    for (unsigned i = 0; i < vdev->num_queues; i++)
        vdev->vqs[i].ready = false;   /* touch nothing more until reset */
    if (vdev->status & VIRTIO_STATUS_DRIVER_OK) {
        vdev->status |= VIRTIO_STATUS_NEEDS_RESET;
        virtio_config_changed(vdev);
    } else {
        vdev->status |= VIRTIO_STATUS_NEEDS_RESET;
    }
}

void virtio_config_changed(struct virtio_device *vdev)
{
    vdev->config_generation++;
    vdev->isr |= VIRTIO_ISR_CONFIG;
    if (vdev->status & VIRTIO_STATUS_DRIVER_OK)
        vdev->transport->notify_config(vdev);
}

/* ---- queue events in the I/O thread ------------------------------------ */

/* Rounds of one queue event before other sources get a turn. */
#define QUEUE_ROUNDS 64

static bool queue_runnable(const struct virtio_device *vdev, unsigned q)
{
    return !vdev->broken && (vdev->status & VIRTIO_STATUS_DRIVER_OK) && vdev->vqs[q].ready &&
           vdev->ops->queue_notify;
}

/* Notifications stay off while the handler runs; once they are back on,
 * buffers the driver added in the meantime (without a kick) get another
 * round, so a busy driver exits less.  A round that takes nothing means
 * the device waits for something else (backend room, a rate-limit
 * period, frames to receive): its own event brings it back. */
static void run_queue(struct virtio_device *vdev, unsigned q)
{
    struct virtqueue *vq = &vdev->vqs[q];
    for (unsigned round = 0; round < QUEUE_ROUNDS; round++) {
        if (!queue_runnable(vdev, q))
            return;
        uint16_t before = vq->last_avail_idx;
        virtqueue_set_notify(vq, false);
        vdev->ops->queue_notify(vdev, q);
        if (!queue_runnable(vdev, q))
            return;
        virtqueue_set_notify(vq, true);
        if (vq->last_avail_idx == before || !virtqueue_has_work(vq))
            return;
    }
    virtio_queue_kick(vdev, q);
}

static gboolean queue_event_ready(gint fd, GIOCondition cond, gpointer opaque)
{
    (void)cond;
    struct virtio_queue_event *ev = opaque;
    uint64_t count;
    if (read(fd, &count, sizeof(count)) < 0 && errno != EAGAIN)
        return G_SOURCE_CONTINUE;
    struct virtio_device *vdev = ev->vdev;
    pthread_mutex_lock(&vdev->dev->lock);
    run_queue(vdev, ev->index);
    pthread_mutex_unlock(&vdev->dev->lock);
    return G_SOURCE_CONTINUE;
}

/* Watch the queue's eventfd from the machine's I/O context (which exists
 * once the machine runs, i.e. whenever a driver can enable a queue). */
static void attach_event(struct virtio_device *vdev, unsigned q)
{
    struct virtio_queue_event *ev = &vdev->events[q];
    GMainContext *ctx = virtio_machine(vdev)->io_context;
    if (ev->source || ev->fd < 0 || !ctx)
        return;
    ev->source = g_unix_fd_source_new(ev->fd, G_IO_IN);
    g_source_set_callback(ev->source, (GSourceFunc)(void (*)(void))queue_event_ready, ev, NULL);
    g_source_attach(ev->source, ctx);
}

void virtio_queue_kick(struct virtio_device *vdev, unsigned q)
{
    if (q >= vdev->num_queues || vdev->events[q].fd < 0)
        return;
    uint64_t one = 1;
    if (write(vdev->events[q].fd, &one, sizeof(one)) < 0)
        vmm_log(VMM_LOG_WARNING, "virtio", "%s: queue %u: eventfd write failed", dev_name(vdev), q);
}

void virtio_notify_from_vcpu(struct virtio_device *vdev, unsigned q)
{
    if (q < vdev->num_queues)
        virtio_queue_kick(vdev, q);
}

/* ---- queues for devices ------------------------------------------------ */

int virtio_pop(struct virtio_device *vdev, unsigned q, struct vq_chain *chain)
{
    if (vdev->broken || q >= vdev->num_queues)
        return 0;
    int r = virtqueue_pop(&vdev->vqs[q], chain);
    if (r < 0) {
        virtio_set_broken(vdev, "queue %u: %s", q, vmm_get_error());
        return 0;
    }
    return r;
}

void virtio_push(struct virtio_device *vdev, unsigned q, const struct vq_chain *chain,
                 uint32_t written)
{
    if (!vdev->broken && q < vdev->num_queues)
        virtqueue_push(&vdev->vqs[q], chain, written);
}

void virtio_queue_done(struct virtio_device *vdev, unsigned q)
{
    if (vdev->broken || q >= vdev->num_queues)
        return;
    struct virtqueue *vq = &vdev->vqs[q];
    /* Driver notifications are run_queue's business (back on after each
     * round); this only decides the interrupt. */
    if (virtqueue_should_notify(vq)) {
        vdev->isr |= VIRTIO_ISR_QUEUE;
        vdev->transport->notify_queue(vdev, vq);
    }
}

/* ---- transport side ----------------------------------------------------- */

int virtio_core_init(struct virtio_device *vdev, struct device *dev,
                     const struct virtio_device_ops *ops,
                     const struct virtio_transport_ops *transport)
{
    vdev->dev = dev;
    vdev->ops = ops;
    vdev->transport = transport;
    vdev->num_queues = ops->num_queues;
    if (vdev->num_queues > VIRTIO_MAX_QUEUES)
        return vmm_set_error(EINVAL, "%u queues (at most %u)", ops->num_queues, VIRTIO_MAX_QUEUES);
    vdev->host_features = ops->features | CORE_FEATURES;
    for (unsigned i = 0; i < VIRTIO_MAX_QUEUES; i++)
        vdev->events[i].fd = -1;
    for (unsigned i = 0; i < vdev->num_queues; i++) {
        virtqueue_init(&vdev->vqs[i], &dev->m->mem, ops->queue_size);
        vdev->vqs[i].notify_data = i;
        vdev->events[i] = (struct virtio_queue_event){ .fd = -1, .vdev = vdev, .index = i };
        vdev->events[i].fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (vdev->events[i].fd < 0)
            return vmm_set_error_errno("eventfd");
    }
    if (ops->realize && ops->realize(vdev) < 0)
        return -1;
    return 0;
}

void virtio_core_release(struct virtio_device *vdev)
{
    if (!vdev->ops)
        return;
    if (vdev->ops->unrealize)
        vdev->ops->unrealize(vdev);
    for (unsigned i = 0; i < VIRTIO_MAX_QUEUES; i++) {
        struct virtio_queue_event *ev = &vdev->events[i];
        if (ev->source) {
            g_source_destroy(ev->source);
            g_source_unref(ev->source);
            ev->source = NULL;
        }
        if (ev->fd >= 0)
            close(ev->fd);
        ev->fd = -1;
        virtqueue_release(&vdev->vqs[i]);
    }
}

void virtio_reset(struct virtio_device *vdev)
{
    vdev->status = 0;
    vdev->guest_features = 0;
    vdev->device_feature_sel = vdev->driver_feature_sel = 0;
    vdev->isr = 0;
    vdev->broken = false;
    vdev->queue_sel = 0;
    vdev->config_vector = VIRTIO_NO_VECTOR;
    for (unsigned i = 0; i < vdev->num_queues; i++)
        virtqueue_reset(&vdev->vqs[i]);
    if (vdev->ops->reset)
        vdev->ops->reset(vdev);
}

void virtio_set_status(struct virtio_device *vdev, uint8_t status)
{
    uint8_t old = vdev->status;
    if (status == 0) {
        virtio_reset(vdev);
        if (vdev->ops->status_changed)
            vdev->ops->status_changed(vdev, old);
        return;
    }
    if ((status & VIRTIO_STATUS_FEATURES_OK) && !(old & VIRTIO_STATUS_FEATURES_OK)) {
        /* Refuse FEATURES_OK (the driver reads it back) for features we did
         * not offer, or a driver without VERSION_1. */
        if ((vdev->guest_features & ~vdev->host_features) ||
            !virtio_has_feature(vdev, VIRTIO_F_VERSION_1))
            status &= (uint8_t)~VIRTIO_STATUS_FEATURES_OK;
    }
    /* NEEDS_RESET is the device's to set; keep it until reset. */
    vdev->status = (uint8_t)((status & ~VIRTIO_STATUS_NEEDS_RESET) |
                             (old & VIRTIO_STATUS_NEEDS_RESET));
    for (unsigned i = 0; i < vdev->num_queues; i++) {
        vdev->vqs[i].event_idx = virtio_has_feature(vdev, VIRTIO_F_EVENT_IDX);
        vdev->vqs[i].indirect = virtio_has_feature(vdev, VIRTIO_F_INDIRECT_DESC);
    }
    if ((status & VIRTIO_STATUS_DRIVER_OK) && !(old & VIRTIO_STATUS_DRIVER_OK)) {
        if (vdev->broken)
            virtio_config_changed(vdev);   /* broken before DRIVER_OK: tell the driver now */
        for (unsigned i = 0; i < vdev->num_queues; i++) {
            attach_event(vdev, i);
            if (vdev->vqs[i].ready)
                virtio_queue_kick(vdev, i);   /* buffers posted before DRIVER_OK */
        }
    }
    if (vdev->ops->status_changed && vdev->status != old)
        vdev->ops->status_changed(vdev, old);
}

uint32_t virtio_get_device_features(const struct virtio_device *vdev)
{
    if (vdev->device_feature_sel > 1)
        return 0;
    return (uint32_t)(vdev->host_features >> (32 * vdev->device_feature_sel));
}

void virtio_set_driver_features(struct virtio_device *vdev, uint32_t value)
{
    if (vdev->status & VIRTIO_STATUS_FEATURES_OK)
        return;   /* frozen once accepted */
    if (vdev->driver_feature_sel > 1)
        return;
    unsigned shift = 32 * vdev->driver_feature_sel;
    vdev->guest_features = (vdev->guest_features & ~(0xffffffffull << shift)) |
                           ((uint64_t)value << shift);
}

void virtio_enable_queue(struct virtio_device *vdev, unsigned q)
{
    if (q >= vdev->num_queues || vdev->broken)
        return;
    struct virtqueue *vq = &vdev->vqs[q];
    vq->event_idx = virtio_has_feature(vdev, VIRTIO_F_EVENT_IDX);
    vq->indirect = virtio_has_feature(vdev, VIRTIO_F_INDIRECT_DESC);
    if (virtqueue_enable(vq) < 0) {
        virtio_set_broken(vdev, "queue %u: %s", q, vmm_get_error());
        return;
    }
    attach_event(vdev, q);
}

uint64_t virtio_config_read(struct virtio_device *vdev, uint32_t offset, unsigned size)
{
    uint64_t v = 0;
    if (!vdev->ops->config_read || offset >= vdev->ops->config_size ||
        size > vdev->ops->config_size - offset)
        return 0;
    vdev->ops->config_read(vdev, offset, &v, size);
    return v;
}

void virtio_config_write(struct virtio_device *vdev, uint32_t offset, uint64_t value,
                         unsigned size)
{
    if (!vdev->ops->config_write || offset >= vdev->ops->config_size ||
        size > vdev->ops->config_size - offset)
        return;
    vdev->ops->config_write(vdev, offset, &value, size);
}

int virtio_ioeventfd(struct virtio_device *vdev, unsigned q, uint64_t addr, unsigned len,
                     bool pio, bool match, uint64_t data, bool assign)
{
    if (q >= vdev->num_queues || vdev->events[q].fd < 0)
        return vmm_set_error(EINVAL, "no event for queue %u", q);
    struct kvm_ioeventfd io = {
        .datamatch = match ? data : 0,
        .addr = addr,
        .len = len,
        .fd = vdev->events[q].fd,
        .flags = (pio ? KVM_IOEVENTFD_FLAG_PIO : 0) | (match ? KVM_IOEVENTFD_FLAG_DATAMATCH : 0) |
                 (assign ? 0 : KVM_IOEVENTFD_FLAG_DEASSIGN),
    };
    if (ioctl(virtio_machine(vdev)->vm.vm_fd, KVM_IOEVENTFD, &io) < 0)
        return vmm_set_error_errno("KVM_IOEVENTFD %s 0x%llx", assign ? "assign" : "deassign",
                                   (unsigned long long)addr);
    return 0;
}
