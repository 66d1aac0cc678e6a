/* virtio-rng (virtio 1.2 §5.4): one request queue; every device-writable
 * buffer is filled from the host's getrandom().  Rate limit like QEMU's:
 * at most max-bytes per period milliseconds (max-bytes=0: unlimited). */
#include <errno.h>
#include <string.h>
#include <sys/random.h>
#include "devices/virtio/virtio.h"

struct virtio_rng {
    struct virtio_proxy proxy;     /* first: transport and virtio core */
    uint64_t max_bytes;            /* per period; 0 = unlimited */
    uint32_t period_ms;
    uint64_t quota;                /* bytes left in this period */
    int64_t period_start_us;       /* 0: no period running */
    GSource *refill;               /* timer until the next period */
};

static struct virtio_rng *rng_of(struct virtio_device *vdev)
{
    return (struct virtio_rng *)VIRTIO_PROXY_OF(vdev);
}

static void stop_refill(struct virtio_rng *rng)
{
    if (rng->refill) {
        g_source_destroy(rng->refill);
        g_source_unref(rng->refill);
        rng->refill = NULL;
    }
}

static gboolean refill_due(gpointer opaque)
{
    struct virtio_rng *rng = opaque;
    if (g_source_is_destroyed(g_main_current_source()))
        return G_SOURCE_REMOVE;
    virtio_queue_kick(&rng->proxy.vdev, 0);
    return G_SOURCE_REMOVE;
}

/* Bytes we may hand out now; arms the refill timer when none. */
static uint64_t allowance(struct virtio_rng *rng)
{
    if (!rng->max_bytes)
        return UINT64_MAX;
    int64_t now = g_get_monotonic_time();
    int64_t period_us = (int64_t)rng->period_ms * 1000;
    /* A period starts with the first request after the last one ended
     * (as QEMU's timer does), not at reset. */
    if (!rng->period_start_us || now - rng->period_start_us >= period_us) {
        rng->period_start_us = now;
        rng->quota = rng->max_bytes;
    }
    if (!rng->quota && !rng->refill) {
        GMainContext *ctx = virtio_machine(&rng->proxy.vdev)->io_context;
        int64_t wait_ms = (rng->period_start_us + period_us - now + 999) / 1000;
        rng->refill = g_timeout_source_new((guint)(wait_ms > 0 ? wait_ms : 1));
        g_source_set_callback(rng->refill, refill_due, rng, NULL);
        g_source_attach(rng->refill, ctx);
    }
    return rng->quota;
}

static uint32_t fill(struct virtio_device *vdev, const struct vq_chain *chain, uint64_t budget)
{
    uint32_t done = 0;
    for (unsigned i = 0; i < chain->in_count && done < budget; i++) {
        const struct vq_iov *seg = &chain->in[i];
        uint32_t want = (uint32_t)(seg->len < budget - done ? seg->len : budget - done);
        uint32_t got = 0;
        while (got < want) {
            ssize_t n = getrandom((uint8_t *)seg->base + got, want - got, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            got += (uint32_t)n;
        }
        guest_memory_mark_dirty(&virtio_machine(vdev)->mem, seg->gpa, got);
        done += got;
        if (got < want)
            break;
    }
    return done;
}

static void rng_queue_notify(struct virtio_device *vdev, unsigned q)
{
    struct virtio_rng *rng = rng_of(vdev);
    struct vq_chain chain;
    bool pushed = false;
    for (;;) {
        if (!virtqueue_has_work(&vdev->vqs[q]))
            break;
        uint64_t budget = allowance(rng);   /* may arm the refill timer */
        if (!budget)
            break;
        if (virtio_pop(vdev, q, &chain) <= 0)
            break;
        if (chain.out_count) {
            virtio_set_broken(vdev, "entropy request (head %u) has device-readable buffers",
                              chain.head);
            return;
        }
        uint32_t n = fill(vdev, &chain, budget);
        if (rng->max_bytes)
            rng->quota -= n;
        virtio_push(vdev, q, &chain, n);
        pushed = true;
    }
    if (pushed)
        virtio_queue_done(vdev, q);
    else
        virtqueue_set_notify(&vdev->vqs[q], true);
}

static void rng_reset(struct virtio_device *vdev)
{
    struct virtio_rng *rng = rng_of(vdev);
    stop_refill(rng);
    rng->quota = rng->max_bytes;
    rng->period_start_us = 0;
}

static void rng_unrealize(struct virtio_device *vdev)
{
    stop_refill(rng_of(vdev));
}

static int rng_realize(struct virtio_device *vdev)
{
    struct virtio_rng *rng = rng_of(vdev);
    if (rng->max_bytes && !rng->period_ms)
        return vmm_set_error(EINVAL, "period must be at least 1 ms when max-bytes is set");
    return 0;
}

static const struct virtio_device_ops rng_ops = {
    .device_id = VIRTIO_ID_RNG,
    .num_queues = 1,
    .queue_size = 256,
    .realize = rng_realize,
    .unrealize = rng_unrealize,
    .queue_notify = rng_queue_notify,
    .reset = rng_reset,
};

static const struct vmm_prop rng_props[] = {
    { "max-bytes", VMM_PROP_U64, offsetof(struct virtio_rng, max_bytes), "0",
      "most bytes of entropy per period (0: unlimited)", NULL, 0, 0 },
    { "period", VMM_PROP_U32, offsetof(struct virtio_rng, period_ms), "65536",
      "rate-limit period in milliseconds", NULL, 1, UINT32_MAX },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

VIRTIO_DEVICE_CLASSES(virtio_rng, "virtio-rng", "entropy source", struct virtio_rng, rng_props,
                      &rng_ops);
