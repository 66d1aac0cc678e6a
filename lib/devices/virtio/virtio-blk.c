/* virtio-blk (virtio 1.2 §5.2) on the block layer.
 *
 * Requests are parsed by virtio-blk-req.c and run asynchronously through
 * vmm_block_submit; completions arrive on the image's completion eventfd,
 * watched in the machine's I/O context, and run under the device lock.
 * Each request remembers the device's generation: a reset or unrealize
 * bumps it and drains the image, so no completion ever touches a reset
 * queue.  I/O errors follow werror/rerror (report, ignore, stop: keep the
 * request, pause the machine, retry on resume) and emit BLOCK_IO_ERROR.
 * Reads (writes) popped in one queue run that follow each other on the
 * disk are merged into one block-layer request (merge=on): its result,
 * error policy and retry apply to every chain in it. */
#include <endian.h>
#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include "devices/virtio/virtio.h"
#include "devices/virtio/virtio-blk.h"
#include "machine/drives.h"

enum blk_error_action { ACTION_REPORT, ACTION_IGNORE, ACTION_STOP };
static const char *const action_names[] = { "report", "ignore", "stop", NULL };

struct blk_inflight {
    struct virtio_blk *blk;
    unsigned q;
    uint64_t generation;
    struct vq_chain *chain;              /* clone: outlives the queue's scratch */
    struct virtio_blk_request req;       /* the first chain's: covers the merged ones' data */
    struct blk_inflight *merged, *merged_last;   /* chains merged after it, in disk order */
    unsigned nmerged;
    struct blk_inflight *next, *prev;    /* in `inflight` or `retry`; in `merged`: next one */
};

struct virtio_blk {
    struct virtio_proxy proxy;           /* first: transport and virtio core */
    char *drive_id;                      /* properties */
    char *serial;
    uint32_t num_queues;
    uint32_t queue_size;
    int werror, rerror;
    bool merge;
    struct machine_drive *drive;         /* claimed at realize */
    struct virtio_blk_config config;     /* little-endian, as the driver reads it */
    struct virtio_blk_limits limits;
    GSource *completion;                 /* the image's completion fd in the I/O context */
    uint64_t generation;                 /* bumped by reset: stale completions are dropped */
    struct blk_inflight *inflight;       /* submitted to the block layer */
    struct blk_inflight *retry;          /* failed with werror/rerror=stop, retried on resume */
    uint32_t to_notify;                  /* queues pushed since the last virtio_queue_done */
    bool listening;                      /* RESUME listener installed */
    atomic_bool resumed;                 /* RESUME seen: the retry list may run */
};

static struct virtio_blk *blk_of(struct virtio_device *vdev)
{
    return (struct virtio_blk *)VIRTIO_PROXY_OF(vdev);
}

static const char *blk_name(struct virtio_blk *blk)
{
    struct device *dev = &blk->proxy.pci.dev;
    return dev->id ? dev->id : dev->cls->name;
}

/* ---- request lists --------------------------------------------------------- */

static void list_add(struct blk_inflight **head, struct blk_inflight *r)
{
    r->prev = NULL;
    r->next = *head;
    if (*head)
        (*head)->prev = r;
    *head = r;
}

static void list_del(struct blk_inflight **head, struct blk_inflight *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else if (*head == r)
        *head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->next = r->prev = NULL;
}

static void request_free(struct blk_inflight *r)
{
    while (r->merged) {
        struct blk_inflight *m = r->merged;
        r->merged = m->next;
        m->next = NULL;
        request_free(m);
    }
    virtio_blk_request_clear(&r->req);
    vq_chain_free(r->chain);
    g_free(r);
}

static void free_list(struct blk_inflight **head)
{
    while (*head) {
        struct blk_inflight *r = *head;
        list_del(head, r);
        request_free(r);
    }
}

/* ---- completion -------------------------------------------------------------- */

static enum vmm_block_op block_op(uint32_t type)
{
    switch (type) {
    case VIRTIO_BLK_T_IN: return VMM_BLOCK_OP_READ;
    case VIRTIO_BLK_T_OUT: return VMM_BLOCK_OP_WRITE;
    case VIRTIO_BLK_T_FLUSH: return VMM_BLOCK_OP_FLUSH;
    case VIRTIO_BLK_T_DISCARD: return VMM_BLOCK_OP_DISCARD;
    default: return VMM_BLOCK_OP_WRITE_ZEROES;
    }
}

static void push_status(struct virtio_blk *blk, unsigned q, const struct vq_chain *chain,
                        const struct virtio_blk_request *req, uint8_t status)
{
    *req->status = status;
    virtio_blk_mark_dirty(&virtio_machine(&blk->proxy.vdev)->mem, chain);
    virtio_push(&blk->proxy.vdev, q, chain, req->written);
    blk->to_notify |= 1u << q;
}

static void notify_pushed(struct virtio_blk *blk)
{
    for (unsigned q = 0; blk->to_notify; q++) {
        if (blk->to_notify & (1u << q))
            virtio_queue_done(&blk->proxy.vdev, q);
        blk->to_notify &= ~(1u << q);
    }
}

/* Answer every chain of the (maybe merged) request and count each as a
 * guest request; the first one carries the bytes of all. */
static void complete(struct blk_inflight *r, uint8_t status)
{
    struct virtio_blk *blk = r->blk;
    enum vmm_block_op op = block_op(r->req.type);
    bool failed = status != VIRTIO_BLK_S_OK;
    machine_drive_account(blk->drive, op, r->req.length, failed);
    push_status(blk, r->q, r->chain, &r->req, status);
    for (struct blk_inflight *m = r->merged; m; m = m->next) {
        machine_drive_account(blk->drive, op, 0, failed);
        push_status(blk, m->q, m->chain, &m->req, status);
    }
    request_free(r);
}

/* BLOCK_IO_ERROR (and the pause for action stop) leave the device lock:
 * the event callback may call the API, and pausing waits for vCPUs that
 * may be waiting for this device. */
struct io_error_event {
    vmm_machine *m;
    char *device, *node, *reason;
    const char *operation, *action;
    bool nospace;
};

static void io_error_event_free(gpointer opaque)
{
    struct io_error_event *e = opaque;
    g_free(e->device);
    g_free(e->node);
    g_free(e->reason);
    g_free(e);
}

static gboolean io_error_event_run(gpointer opaque)
{
    struct io_error_event *e = opaque;
    machine_emit_block_io_error(e->m, e->device, e->node, e->operation, e->action, e->nospace,
                                e->reason);
    if (!strcmp(e->action, "stop") && vmm_machine_pause(e->m) < 0)
        machine_log(e->m, VMM_LOG_WARNING, "virtio-blk", "%s: cannot stop after an I/O error: %s",
                    e->device, vmm_get_error());
    return G_SOURCE_REMOVE;
}

static void report_io_error(struct virtio_blk *blk, const struct blk_inflight *r,
                            enum blk_error_action action, int err, const char *why)
{
    vmm_machine *m = virtio_machine(&blk->proxy.vdev);
    struct io_error_event *e = g_new0(struct io_error_event, 1);
    e->m = m;
    e->device = g_strdup(blk_name(blk));
    e->node = g_strdup(blk->drive->id);
    e->reason = g_strdup(err ? g_strerror(err) : why);   /* QEMU's reason: strerror */
    e->operation = r->req.type == VIRTIO_BLK_T_IN ? "read" : "write";
    e->action = action_names[action];
    e->nospace = err == ENOSPC;
    machine_log(m, VMM_LOG_WARNING, "virtio-blk", "%s: %s error at offset %llu (action %s): %s",
                e->device, e->operation, (unsigned long long)r->req.offset, e->action,
                why && *why ? why : e->reason);
    GSource *src = g_idle_source_new();
    g_source_set_priority(src, G_PRIORITY_DEFAULT);   /* busy queues must not delay the stop */
    g_source_set_callback(src, io_error_event_run, e, io_error_event_free);
    g_source_attach(src, m->io_context);
    g_source_unref(src);
}

static void request_failed(struct blk_inflight *r, int err, const char *why)
{
    struct virtio_blk *blk = r->blk;
    enum blk_error_action action = r->req.type == VIRTIO_BLK_T_IN ? blk->rerror : blk->werror;
    report_io_error(blk, r, action, err, why);
    if (action == ACTION_STOP) {
        /* Resubmitted after the next RESUME only, not on every notify:
         * the machine is about to stop and the error is likely to last. */
        atomic_store(&blk->resumed, false);
        list_add(&blk->retry, r);
        return;
    }
    complete(r, action == ACTION_IGNORE ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR);
}

/* Block layer callback: on the I/O thread in dispatch, or on the thread
 * draining in reset/unrealize; the device lock is held either way. */
static void request_done(void *opaque, int ret)
{
    struct blk_inflight *r = opaque;
    struct virtio_blk *blk = r->blk;
    list_del(&blk->inflight, r);
    if (r->generation != blk->generation) {
        request_free(r);            /* the queue was reset meanwhile */
        return;
    }
    if (ret < 0)
        request_failed(r, vmm_get_errno(), vmm_get_error());
    else
        complete(r, VIRTIO_BLK_S_OK);
}

static gboolean completions_ready(gint fd, GIOCondition cond, gpointer opaque)
{
    (void)fd;
    (void)cond;
    struct virtio_blk *blk = opaque;
    pthread_mutex_lock(&blk->proxy.pci.dev.lock);
    if (blk->drive)
        vmm_block_dispatch(blk->drive->blk);
    notify_pushed(blk);
    pthread_mutex_unlock(&blk->proxy.pci.dev.lock);
    return G_SOURCE_CONTINUE;
}

static void watch_completions(struct virtio_blk *blk)
{
    GMainContext *ctx = virtio_machine(&blk->proxy.vdev)->io_context;
    if (blk->completion || !ctx)
        return;
    int fd = vmm_block_completion_fd(blk->drive->blk);
    if (fd < 0)
        return;
    blk->completion = g_unix_fd_source_new(fd, G_IO_IN);
    g_source_set_callback(blk->completion, (GSourceFunc)(void (*)(void))completions_ready, blk,
                          NULL);
    g_source_attach(blk->completion, ctx);
}

/* ---- submission ----------------------------------------------------------------- */

static void submit(struct blk_inflight *r)
{
    struct virtio_blk *blk = r->blk;
    struct vmm_block_request br = {
        .size = sizeof(br), .op = block_op(r->req.type), .offset = r->req.offset,
        .length = r->req.length, .iov = r->req.iov, .iovcnt = r->req.iovcnt,
        .flags = r->req.flags, .done = request_done, .user_data = r,
    };
    r->generation = blk->generation;
    list_add(&blk->inflight, r);
    if (vmm_block_submit(blk->drive->blk, &br) < 0) {
        list_del(&blk->inflight, r);
        request_failed(r, vmm_get_errno(), vmm_get_error());
    }
}

/* Resubmit what stopped the machine; a request that fails again joins a
 * fresh retry list (and stops the machine again). */
static void retry_stopped(struct virtio_blk *blk)
{
    struct blk_inflight *list = blk->retry;
    blk->retry = NULL;
    while (list) {
        struct blk_inflight *r = list;
        list_del(&list, r);
        submit(r);
    }
}

/* Submit the request the queue run has been gathering, if any. */
static void submit_pending(struct virtio_blk *blk, struct blk_inflight **pending)
{
    struct blk_inflight *r = *pending;
    if (!r)
        return;
    *pending = NULL;
    if (r->nmerged)
        machine_drive_account_merged(blk->drive, block_op(r->req.type), r->nmerged);
    submit(r);
}

/* Join `r` to the pending request when it continues it on the disk, else
 * submit the pending one and let `r` start the next. */
static void gather(struct virtio_blk *blk, struct blk_inflight **pending, struct blk_inflight *r)
{
    struct blk_inflight *head = *pending;
    if (head && blk->merge && virtio_blk_can_merge(&head->req, &r->req)) {
        virtio_blk_merge(&head->req, &r->req);
        virtio_blk_request_clear(&r->req);   /* its data is in the head's iovec now */
        if (head->merged_last)
            head->merged_last->next = r;
        else
            head->merged = r;
        head->merged_last = r;
        head->nmerged++;
        return;
    }
    submit_pending(blk, pending);
    *pending = r;
}

/* One popped chain: answer it now or gather it for the block layer.
 * Returns false when the driver broke the protocol (the device is broken
 * now). */
static bool handle_chain(struct virtio_blk *blk, unsigned q, const struct vq_chain *c,
                         struct blk_inflight **pending)
{
    struct virtio_blk_request req;
    switch (virtio_blk_parse(c, &blk->limits, &req)) {
    case VIRTIO_BLK_BROKEN:
        virtio_set_broken(&blk->proxy.vdev, "queue %u: %s", q, vmm_get_error());
        return false;
    case VIRTIO_BLK_DONE:
        push_status(blk, q, c, &req, req.result);
        virtio_blk_request_clear(&req);
        return true;
    case VIRTIO_BLK_SUBMIT:
        break;
    }
    struct blk_inflight *r = g_new0(struct blk_inflight, 1);
    r->blk = blk;
    r->q = q;
    r->req = req;
    r->chain = vq_chain_clone(c);
    if (!r->chain) {
        push_status(blk, q, c, &req, VIRTIO_BLK_S_IOERR);
        virtio_blk_request_clear(&r->req);
        g_free(r);
        return true;
    }
    gather(blk, pending, r);
    return true;
}

static void blk_queue_notify(struct virtio_device *vdev, unsigned q)
{
    struct virtio_blk *blk = blk_of(vdev);
    watch_completions(blk);
    virtio_blk_limits_negotiated(&blk->limits, blk->drive->writethrough,
                                 virtio_has_feature(vdev, VIRTIO_BLK_F_FLUSH));
    if (atomic_exchange(&blk->resumed, false))
        retry_stopped(blk);
    struct vq_chain c;
    struct blk_inflight *pending = NULL;
    bool ok = true;
    while (ok && virtio_pop(vdev, q, &c) > 0)
        ok = handle_chain(blk, q, &c, &pending);
    submit_pending(blk, &pending);
    if (ok)
        notify_pushed(blk);
}

/* ---- reset, resume, lifecycle ------------------------------------------------------ */

/* Forget every request: completions still in the block layer are waited
 * for (they write into guest RAM) and dropped. */
static void drop_requests(struct virtio_blk *blk)
{
    blk->generation++;
    if (blk->drive && blk->inflight)
        vmm_block_drain(blk->drive->blk);
    free_list(&blk->inflight);   /* none left after the drain; defensive */
    free_list(&blk->retry);
    blk->to_notify = 0;
}

static void blk_reset(struct virtio_device *vdev)
{
    drop_requests(blk_of(vdev));
}

/* RESUME: retry what failed with action stop (from the resumer's thread:
 * only kick the queue, the I/O thread does the work). */
static void on_machine_event(void *opaque, const struct vmm_event *ev)
{
    struct virtio_blk *blk = opaque;
    if (ev->type == VMM_EVENT_RESUME) {
        atomic_store(&blk->resumed, true);
        virtio_queue_kick(&blk->proxy.vdev, 0);
    }
}

static void blk_unrealize(struct virtio_device *vdev)
{
    struct virtio_blk *blk = blk_of(vdev);
    vmm_machine *m = virtio_machine(vdev);
    if (blk->listening)
        machine_remove_listener(m, on_machine_event, blk);
    blk->listening = false;
    drop_requests(blk);
    if (blk->completion) {
        g_source_destroy(blk->completion);
        g_source_unref(blk->completion);
        blk->completion = NULL;
    }
    if (blk->drive)
        machine_drive_release(m, blk->drive);
    blk->drive = NULL;
}

static uint32_t discard_alignment_sectors(vmm_block *image)
{
    int64_t cluster = vmm_block_cluster_size(image);
    uint64_t align = cluster > 4096 ? (uint64_t)cluster : 4096;
    return (uint32_t)(align / VIRTIO_BLK_SECTOR);
}

static void build_config(struct virtio_blk *blk)
{
    struct virtio_blk_limits *lim = &blk->limits;
    vmm_block *image = blk->drive->blk;
    *lim = (struct virtio_blk_limits){
        .capacity = (uint64_t)vmm_block_size(image) / VIRTIO_BLK_SECTOR,
        .seg_max = blk->queue_size - 2, .size_max = 1u << 20,
        .max_discard_sectors = 0x3fffff, .max_write_zeroes_sectors = 0x3fffff,
        .read_only = blk->drive->read_only, .discard = blk->drive->discard_unmap,
        .flush = true, .serial = blk->serial,
        .write_flags = blk->drive->writethrough ? VMM_BLOCK_REQ_FUA : 0,
    };
    struct virtio_blk_config *c = &blk->config;
    memset(c, 0, sizeof(*c));
    c->capacity = htole64(lim->capacity);
    c->size_max = htole32(lim->size_max);
    c->seg_max = htole32(lim->seg_max);
    c->blk_size = htole32(VIRTIO_BLK_SECTOR);
    c->min_io_size = htole16(1);
    c->num_queues = htole16((uint16_t)blk->num_queues);
    c->max_discard_sectors = htole32(lim->max_discard_sectors);
    c->max_discard_seg = htole32(1);
    c->discard_sector_alignment = htole32(discard_alignment_sectors(image));
    c->max_write_zeroes_sectors = htole32(lim->max_write_zeroes_sectors);
    c->max_write_zeroes_seg = htole32(1);
    c->write_zeroes_may_unmap = lim->discard;
}

static int check_properties(struct virtio_blk *blk)
{
    if (!blk->drive_id || !*blk->drive_id)
        return vmm_set_error(EINVAL, "drive is required (drive=ID of a drive or block node)");
    if (blk->serial && strlen(blk->serial) > VIRTIO_BLK_ID_BYTES)
        return vmm_set_error(EINVAL, "serial '%s' is longer than %u bytes", blk->serial,
                             VIRTIO_BLK_ID_BYTES);
    if (blk->queue_size & (blk->queue_size - 1))
        return vmm_set_error(EINVAL, "queue-size %u is not a power of two", blk->queue_size);
    return 0;
}

static int blk_realize(struct virtio_device *vdev)
{
    struct virtio_blk *blk = blk_of(vdev);
    vmm_machine *m = virtio_machine(vdev);
    if (check_properties(blk) < 0)
        return -1;
    blk->drive = machine_drive_claim(m, blk->drive_id, vdev->dev);
    if (!blk->drive)
        return -1;
    if (vmm_block_completion_fd(blk->drive->blk) < 0)
        return -1;
    vdev->num_queues = blk->num_queues;
    for (unsigned i = 0; i < blk->num_queues; i++)
        virtqueue_init(&vdev->vqs[i], &m->mem, (uint16_t)blk->queue_size);
    for (unsigned i = 0; i < blk->num_queues; i++)
        vdev->vqs[i].notify_data = i;
    if (blk->drive->read_only)
        vdev->host_features |= 1ull << VIRTIO_BLK_F_RO;
    build_config(blk);
    if (machine_add_listener(m, on_machine_event, blk) < 0)
        return -1;
    blk->listening = true;
    return 0;
}

static void blk_config_read(struct virtio_device *vdev, uint32_t offset, void *data, uint32_t len)
{
    memcpy(data, (const uint8_t *)&blk_of(vdev)->config + offset, len);
}

static const struct virtio_device_ops blk_ops = {
    .device_id = VIRTIO_ID_BLOCK,
    .features = (1ull << VIRTIO_BLK_F_SIZE_MAX) | (1ull << VIRTIO_BLK_F_SEG_MAX) |
                (1ull << VIRTIO_BLK_F_BLK_SIZE) | (1ull << VIRTIO_BLK_F_FLUSH) |
                (1ull << VIRTIO_BLK_F_TOPOLOGY) | (1ull << VIRTIO_BLK_F_MQ) |
                (1ull << VIRTIO_BLK_F_DISCARD) | (1ull << VIRTIO_BLK_F_WRITE_ZEROES),
    .num_queues = VIRTIO_BLK_MAX_QUEUES,   /* realize trims to num-queues */
    .queue_size = 256,
    .config_size = sizeof(struct virtio_blk_config),
    .pci_class = 0x010000,                 /* mass storage, SCSI (as QEMU) */
    .realize = blk_realize,
    .unrealize = blk_unrealize,
    .config_read = blk_config_read,
    .queue_notify = blk_queue_notify,
    .reset = blk_reset,
};

static const struct vmm_prop blk_props[] = {
    { "drive", VMM_PROP_STR, offsetof(struct virtio_blk, drive_id), NULL,
      "the drive (vmm_machine_add_drive id or blockdev-add node-name)", NULL, 0, 0 },
    { "serial", VMM_PROP_STR, offsetof(struct virtio_blk, serial), NULL,
      "disk serial number (GET_ID, up to 20 bytes)", NULL, 0, 0 },
    { "num-queues", VMM_PROP_U32, offsetof(struct virtio_blk, num_queues), "1",
      "request queues (multiqueue)", NULL, 1, VIRTIO_BLK_MAX_QUEUES },
    { "queue-size", VMM_PROP_U32, offsetof(struct virtio_blk, queue_size), "256",
      "entries per queue (a power of two)", NULL, 4, 1024 },
    { "werror", VMM_PROP_ENUM, offsetof(struct virtio_blk, werror), "report",
      "on write errors: report to the guest, ignore, or stop the machine", action_names, 0, 0 },
    { "rerror", VMM_PROP_ENUM, offsetof(struct virtio_blk, rerror), "report",
      "on read errors: report to the guest, ignore, or stop the machine", action_names, 0, 0 },
    { "merge", VMM_PROP_BOOL, offsetof(struct virtio_blk, merge), "on",
      "merge adjacent reads (writes) of one queue run into one block-layer request", NULL, 0, 0 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

VIRTIO_DEVICE_CLASSES(virtio_blk, "virtio-blk", "block device", struct virtio_blk, blk_props,
                      &blk_ops);

bool virtio_blk_uses_drive(const struct device *dev, const char *id)
{
    if (dev->cls != &device_virtio_blk_pci.dc && dev->cls != &device_virtio_blk_mmio.dc)
        return false;
    const struct virtio_blk *blk = (const struct virtio_blk *)dev;
    return blk->drive_id && !strcmp(blk->drive_id, id);
}
