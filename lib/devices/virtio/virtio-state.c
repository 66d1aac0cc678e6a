/* Saved state of a virtio device on either transport: the core's status,
 * features and queues, plus (virtio-pci) the config space's writable bytes.
 * post_load refuses anything the device could not run with. */
#include <errno.h>
#include <string.h>
#include "devices/virtio/virtio.h"

#define KNOWN_STATUS (VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_DRIVER_OK | \
                      VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED)

static int virtio_post_load(void *opaque, uint32_t version)
{
    struct virtio_state *s = opaque;
    s->has_msix = version >= 2;
    if (s->num_queues > VIRTIO_MAX_QUEUES)
        return vmm_set_error(EINVAL, "virtio: %u queues (at most %u)", s->num_queues,
                             VIRTIO_MAX_QUEUES);
    if (s->status & ~KNOWN_STATUS)
        return vmm_set_error(EINVAL, "virtio: unknown status bits 0x%x", s->status);
    if (s->broken > 1 || s->isr > 3)
        return vmm_set_error(EINVAL, "virtio: broken %u / isr 0x%x out of range", s->broken, s->isr);
    for (unsigned i = 0; i < VIRTIO_MAX_QUEUES; i++) {
        uint16_t n = s->q_size[i];
        if (s->q_ready[i] > 1)
            return vmm_set_error(EINVAL, "virtio: queue %u ready flag %u", i, s->q_ready[i]);
        if (i >= s->num_queues && (s->q_ready[i] || n))
            return vmm_set_error(EINVAL, "virtio: queue %u beyond the %u queues is set", i,
                                 s->num_queues);
        if (s->q_ready[i] && (!n || (n & (n - 1))))
            return vmm_set_error(EINVAL, "virtio: ready queue %u has size %u", i, n);
        if (s->q_ready[i] && (uint16_t)(s->q_used_idx[i] - s->q_last_avail[i]) != 0 &&
            (uint16_t)(s->q_last_avail[i] - s->q_used_idx[i]) > n)
            return vmm_set_error(EINVAL, "virtio: queue %u has %u chains in flight (size %u)", i,
                                 (uint16_t)(s->q_last_avail[i] - s->q_used_idx[i]), n);
    }
    return 0;
}

static const struct state_field virtio_fields[] = {
    STATE_FIELD(struct virtio_state, status, STATE_U8),
    STATE_FIELD(struct virtio_state, config_generation, STATE_U8),
    STATE_FIELD(struct virtio_state, isr, STATE_U8),
    STATE_FIELD(struct virtio_state, broken, STATE_U8),
    STATE_FIELD(struct virtio_state, guest_features, STATE_U64),
    STATE_FIELD(struct virtio_state, device_feature_sel, STATE_U32),
    STATE_FIELD(struct virtio_state, driver_feature_sel, STATE_U32),
    STATE_FIELD(struct virtio_state, queue_sel, STATE_U16),
    STATE_FIELD(struct virtio_state, config_vector, STATE_U16),
    STATE_FIELD(struct virtio_state, num_queues, STATE_U16),
    STATE_BYTES_FIELD(struct virtio_state, q_ready),
    /* u16 arrays travel as raw bytes (state.h has no u16 arrays; x86 is
     * little endian like the stream). */
    STATE_BYTES_FIELD(struct virtio_state, q_size),
    STATE_BYTES_FIELD(struct virtio_state, q_vector),
    STATE_BYTES_FIELD(struct virtio_state, q_last_avail),
    STATE_BYTES_FIELD(struct virtio_state, q_used_idx),
    STATE_ARRAY(struct virtio_state, q_desc, STATE_U64_ARRAY),
    STATE_ARRAY(struct virtio_state, q_avail, STATE_U64_ARRAY),
    STATE_ARRAY(struct virtio_state, q_used, STATE_U64_ARRAY),
    STATE_BYTES_FIELD(struct virtio_state, pci_config),
    { "msix_table", STATE_BYTES, offsetof(struct virtio_state, msix_table),
      sizeof(((struct virtio_state *)0)->msix_table), 2 },
    STATE_FIELD_V(struct virtio_state, msix_pba, STATE_U64, 2),
    STATE_END,
};

const struct state_desc virtio_state_desc = {
    .name = "virtio", .version = 2, .min_version = 1,
    .size = sizeof(struct virtio_state), .fields = virtio_fields,
    .post_load = virtio_post_load,
};

void virtio_proxy_save(struct device *dev, void *state)
{
    struct virtio_proxy *p = (struct virtio_proxy *)dev;
    struct virtio_device *vdev = &p->vdev;
    struct virtio_state *s = state;
    memset(s, 0, sizeof(*s));
    s->status = vdev->status;
    s->config_generation = vdev->config_generation;
    s->isr = vdev->isr;
    s->broken = vdev->broken;
    s->guest_features = vdev->guest_features;
    s->device_feature_sel = vdev->device_feature_sel;
    s->driver_feature_sel = vdev->driver_feature_sel;
    s->queue_sel = vdev->queue_sel;
    s->config_vector = vdev->config_vector;
    s->num_queues = (uint16_t)vdev->num_queues;
    for (unsigned i = 0; i < vdev->num_queues; i++) {
        const struct virtqueue *vq = &vdev->vqs[i];
        s->q_size[i] = vq->size;
        s->q_ready[i] = vq->ready;
        s->q_vector[i] = vq->msix_vector;
        s->q_last_avail[i] = vq->last_avail_idx;
        s->q_used_idx[i] = vq->used_idx;
        s->q_desc[i] = vq->desc_gpa;
        s->q_avail[i] = vq->avail_gpa;
        s->q_used[i] = vq->used_gpa;
    }
    if (p->pci.bus) {
        memcpy(s->pci_config, p->pci.config, sizeof(s->pci_config));
        pci_msix_save(&p->pci, s->msix_table, sizeof(s->msix_table), &s->msix_pba);
    }
}

int virtio_proxy_load(struct device *dev, const void *state)
{
    struct virtio_proxy *p = (struct virtio_proxy *)dev;
    struct virtio_device *vdev = &p->vdev;
    const struct virtio_state *s = state;
    if (s->num_queues != vdev->num_queues)
        return vmm_set_error(EINVAL, "%s: state has %u queues, the device %u", dev->cls->name,
                             s->num_queues, vdev->num_queues);
    virtio_reset(vdev);
    /* A version 1 stream has no table: the vectors stay masked from reset. */
    if (p->pci.bus && s->has_msix &&
        pci_msix_restore(&p->pci, s->msix_table, sizeof(s->msix_table), s->msix_pba) < 0)
        return -1;
    if (p->pci.bus && pci_device_restore_config(&p->pci, s->pci_config) < 0)
        return -1;
    vdev->status = s->status;
    vdev->config_generation = s->config_generation;
    vdev->isr = s->isr;
    vdev->broken = s->broken;
    vdev->guest_features = s->guest_features & vdev->host_features;
    vdev->device_feature_sel = s->device_feature_sel;
    vdev->driver_feature_sel = s->driver_feature_sel;
    vdev->queue_sel = s->queue_sel;
    vdev->config_vector = s->config_vector;
    for (unsigned i = 0; i < vdev->num_queues; i++) {
        struct virtqueue *vq = &vdev->vqs[i];
        if (s->q_size[i] > vq->max_size)
            return vmm_set_error(EINVAL, "%s: queue %u size %u exceeds %u", dev->cls->name, i,
                                 s->q_size[i], vq->max_size);
        vq->size = s->q_size[i];
        vq->msix_vector = s->q_vector[i];
        vq->desc_gpa = s->q_desc[i];
        vq->avail_gpa = s->q_avail[i];
        vq->used_gpa = s->q_used[i];
        vq->event_idx = virtio_has_feature(vdev, VIRTIO_F_EVENT_IDX);
        vq->indirect = virtio_has_feature(vdev, VIRTIO_F_INDIRECT_DESC);
        if (s->q_ready[i] && !vdev->broken) {
            if (virtqueue_enable(vq) < 0)
                return vmm_error_prefix("%s: queue %u", dev->cls->name, i);
            vq->last_avail_idx = s->q_last_avail[i];
            vq->used_idx = s->q_used_idx[i];
        }
    }
    return 0;
}
