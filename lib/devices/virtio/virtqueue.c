/* Split virtqueue processing, device side (virtio 1.2 §2.7). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include "devices/virtio/virtqueue.h"
#include "util/util.h"

uint64_t virtq_desc_bytes(uint16_t size) { return 16ull * size; }
uint64_t virtq_avail_bytes(uint16_t size) { return 6ull + 2ull * size; }
uint64_t virtq_used_bytes(uint16_t size) { return 6ull + 8ull * size; }

static uint16_t load16(const volatile uint16_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static void store16(volatile uint16_t *p, uint16_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

void virtqueue_init(struct virtqueue *vq, struct guest_memory *mem, uint16_t max_size)
{
    memset(vq, 0, sizeof(*vq));
    vq->mem = mem;
    vq->max_size = max_size;
    virtqueue_reset(vq);
}

void virtqueue_release(struct virtqueue *vq)
{
    free(vq->iov);
    vq->iov = NULL;
    vq->iov_cap = 0;
}

void virtqueue_reset(struct virtqueue *vq)
{
    vq->size = vq->max_size;
    vq->desc_gpa = vq->avail_gpa = vq->used_gpa = 0;
    vq->ready = false;
    vq->event_idx = vq->indirect = false;
    vq->msix_vector = 0xffff;
    vq->last_avail_idx = vq->used_idx = 0;
    vq->signalled_used = 0;
    vq->signalled_valid = false;
    vq->desc = NULL;
    vq->avail = vq->used = NULL;
}

static int map_ring(struct virtqueue *vq, const char *what, uint64_t gpa, uint64_t len,
                    unsigned align, void **out)
{
    if (gpa % align)
        return vmm_set_error(EINVAL, "%s ring at 0x%" PRIx64 " is not %u-byte aligned", what, gpa,
                             align);
    *out = guest_memory_ptr(vq->mem, gpa, len);
    if (!*out)
        return vmm_set_error(EFAULT, "%s ring 0x%" PRIx64 "+0x%" PRIx64 " is not in guest RAM",
                             what, gpa, len);
    return 0;
}

int virtqueue_enable(struct virtqueue *vq)
{
    uint16_t n = vq->size;
    if (!n || (n & (n - 1)) || n > vq->max_size)
        return vmm_set_error(EINVAL, "queue size %u is not a power of two in 1..%u", n,
                             vq->max_size);
    void *desc, *avail, *used;
    if (map_ring(vq, "descriptor", vq->desc_gpa, virtq_desc_bytes(n), 16, &desc) < 0 ||
        map_ring(vq, "available", vq->avail_gpa, virtq_avail_bytes(n), 2, &avail) < 0 ||
        map_ring(vq, "used", vq->used_gpa, virtq_used_bytes(n), 4, &used) < 0)
        return -1;
    unsigned cap = (unsigned)n + VIRTQ_INDIRECT_MAX;
    if (cap > vq->iov_cap) {
        struct vq_iov *iov = realloc(vq->iov, cap * sizeof(*iov));
        if (!iov)
            return vmm_set_error(ENOMEM, "out of memory for a %u-entry queue", n);
        vq->iov = iov;
        vq->iov_cap = cap;
    }
    vq->desc = desc;
    vq->avail = avail;
    vq->used = used;
    vq->last_avail_idx = vq->used_idx = 0;  /* indices start at 0 after enable */
    vq->signalled_valid = false;
    vq->ready = true;
    return 0;
}

bool virtqueue_has_work(struct virtqueue *vq)
{
    return vq->ready && load16(&vq->avail[1]) != vq->last_avail_idx;
}

/* State of one chain walk. */
struct walk {
    struct virtqueue *vq;
    struct vq_chain *chain;
    unsigned segs;
    uint64_t total;
};

static int add_segment(struct walk *w, const struct virtq_desc *d)
{
    struct vq_chain *c = w->chain;
    bool writable = d->flags & VIRTQ_DESC_F_WRITE;
    if (!writable && c->in_count)
        return vmm_set_error(EINVAL, "device-readable descriptor after a device-writable one "
                             "(chain head %u)", c->head);
    if (!d->len)
        return 0;
    w->total += d->len;
    if (w->total > UINT32_MAX)
        return vmm_set_error(E2BIG, "chain at head %u is longer than 4 GiB", c->head);
    void *p = guest_memory_ptr(w->vq->mem, d->addr, d->len);
    if (!p)
        return vmm_set_error(EFAULT, "buffer 0x%" PRIx64 "+0x%x (chain head %u) is not in guest RAM",
                             d->addr, d->len, c->head);
    if (w->segs >= w->vq->iov_cap)
        return vmm_set_error(E2BIG, "chain at head %u has too many segments", c->head);
    struct vq_iov seg = { p, d->len, d->addr };
    /* Readable segments all come first (checked above), so one array in
     * chain order holds `out` then `in`. */
    w->vq->iov[w->segs++] = seg;
    if (writable) {
        c->in_count++;
        c->in_bytes += d->len;
    } else {
        c->out_count++;
        c->out_bytes += d->len;
    }
    return 0;
}

/* Switch the walk to an indirect table; returns its host view. */
static const struct virtq_desc *enter_indirect(struct walk *w, const struct virtq_desc *d,
                                               unsigned *entries)
{
    uint16_t head = w->chain->head;
    if (!w->vq->indirect) {
        vmm_set_error(EINVAL, "indirect descriptor (head %u) without VIRTIO_F_INDIRECT_DESC", head);
        return NULL;
    }
    if (d->flags & VIRTQ_DESC_F_NEXT) {
        vmm_set_error(EINVAL, "descriptor (head %u) has both INDIRECT and NEXT", head);
        return NULL;
    }
    if (!d->len || d->len % sizeof(struct virtq_desc) ||
        d->len / sizeof(struct virtq_desc) > VIRTQ_INDIRECT_MAX) {
        vmm_set_error(EINVAL, "indirect table length %u (head %u) is not 16..%u in steps of 16",
                      d->len, head, VIRTQ_INDIRECT_MAX * 16);
        return NULL;
    }
    const struct virtq_desc *table = guest_memory_ptr(w->vq->mem, d->addr, d->len);
    if (!table) {
        vmm_set_error(EFAULT, "indirect table 0x%" PRIx64 "+0x%x (head %u) is not in guest RAM",
                      d->addr, d->len, head);
        return NULL;
    }
    *entries = d->len / sizeof(struct virtq_desc);
    return table;
}

static void read_desc(const struct virtq_desc *table, unsigned i, struct virtq_desc *out)
{
    /* One copy: the guest may change the table while we look at it. */
    memcpy(out, (const void *)&table[i], sizeof(*out));
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

static int walk_chain(struct walk *w)
{
    struct virtqueue *vq = w->vq;
    const struct virtq_desc *table = vq->desc;
    unsigned entries = vq->size, limit = vq->size, seen = 0;
    bool indirect = false;
    unsigned i = w->chain->head;
    for (;;) {
        if (++seen > limit)
            return vmm_set_error(ELOOP, "chain at head %u loops or is longer than %u descriptors",
                                 w->chain->head, limit);
        struct virtq_desc d;
        read_desc(table, i, &d);
        if (d.flags & VIRTQ_DESC_F_INDIRECT) {
            if (indirect)
                return vmm_set_error(EINVAL, "nested indirect table (head %u)", w->chain->head);
            table = enter_indirect(w, &d, &entries);
            if (!table)
                return -1;
            indirect = true;
            limit = entries;
            seen = 0;
            i = 0;
            continue;
        }
        if (add_segment(w, &d) < 0)
            return -1;
        if (!(d.flags & VIRTQ_DESC_F_NEXT))
            return 0;
        i = d.next;
        if (i >= entries)
            return vmm_set_error(EINVAL, "next index %u (head %u) beyond the %s of %u entries",
                                 i, w->chain->head, indirect ? "indirect table" : "queue",
                                 entries);
    }
}

int virtqueue_pop(struct virtqueue *vq, struct vq_chain *chain)
{
    if (!vq->ready)
        return 0;
    uint16_t avail_idx = load16(&vq->avail[1]);
    if (avail_idx == vq->last_avail_idx)
        return 0;
    if ((uint16_t)(avail_idx - vq->last_avail_idx) > vq->size)
        return vmm_set_error(EINVAL, "available index moved from %u to %u (queue size %u)",
                             vq->last_avail_idx, avail_idx, vq->size);
    uint16_t head = load16(&vq->avail[2 + vq->last_avail_idx % vq->size]);
    if (head >= vq->size)
        return vmm_set_error(EINVAL, "available head %u beyond queue size %u", head, vq->size);
    memset(chain, 0, sizeof(*chain));
    chain->head = head;
    struct walk w = { vq, chain, 0, 0 };
    if (walk_chain(&w) < 0)
        return -1;
    chain->out = vq->iov;
    chain->in = vq->iov + chain->out_count;
    vq->last_avail_idx++;
    return 1;
}

void virtqueue_fill(struct virtqueue *vq, const struct vq_chain *chain, uint32_t written,
                    unsigned offset)
{
    if (!vq->ready)
        return;
    if (written > chain->in_bytes)
        written = (uint32_t)chain->in_bytes;
    unsigned slot = (uint16_t)(vq->used_idx + offset) % vq->size;
    volatile uint8_t *elem = (volatile uint8_t *)vq->used + 4 + 8u * slot;
    uint32_t id = chain->head;
    memcpy((void *)elem, &id, 4);
    memcpy((void *)(elem + 4), &written, 4);
    guest_memory_mark_dirty(vq->mem, vq->used_gpa + 4 + 8u * slot, 8);
}

void virtqueue_flush(struct virtqueue *vq, unsigned count)
{
    if (!vq->ready)
        return;
    vq->used_idx = (uint16_t)(vq->used_idx + count);
    store16(&vq->used[1], vq->used_idx);
    guest_memory_mark_dirty(vq->mem, vq->used_gpa + 2, 2);
}

void virtqueue_push(struct virtqueue *vq, const struct vq_chain *chain, uint32_t written)
{
    virtqueue_fill(vq, chain, written, 0);
    virtqueue_flush(vq, 1);
}

bool virtqueue_should_notify(struct virtqueue *vq)
{
    if (!vq->ready)
        return false;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!vq->event_idx)
        return !(load16(&vq->avail[0]) & VIRTQ_AVAIL_F_NO_INTERRUPT);
    uint16_t old = vq->signalled_used, now = vq->used_idx;
    bool valid = vq->signalled_valid;
    vq->signalled_used = now;
    vq->signalled_valid = true;
    if (!valid)
        return true;
    uint16_t event = load16(&vq->avail[2 + vq->size]);
    /* vring_need_event: did used_idx pass `event` since the last signal? */
    return (uint16_t)(now - event - 1) < (uint16_t)(now - old);
}

void virtqueue_notify_on_more(struct virtqueue *vq)
{
    if (!vq->ready)
        return;
    if (!vq->event_idx) {
        virtqueue_set_notify(vq, true);
        return;
    }
    store16(&vq->used[2 + 4 * vq->size], load16(&vq->avail[1]));
    guest_memory_mark_dirty(vq->mem, vq->used_gpa + 4 + 8ull * vq->size, 2);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

void virtqueue_set_notify(struct virtqueue *vq, bool enable)
{
    if (!vq->ready)
        return;
    if (vq->event_idx) {
        if (enable) {
            store16(&vq->used[2 + 4 * vq->size], vq->last_avail_idx);
            guest_memory_mark_dirty(vq->mem, vq->used_gpa + 4 + 8ull * vq->size, 2);
        }
    } else {
        uint16_t flags = load16(&vq->used[0]);
        flags = enable ? (flags & ~VIRTQ_USED_F_NO_NOTIFY) : (flags | VIRTQ_USED_F_NO_NOTIFY);
        store16(&vq->used[0], flags);
        guest_memory_mark_dirty(vq->mem, vq->used_gpa, 2);
    }
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

uint32_t vq_chain_write(struct virtqueue *vq, const struct vq_chain *chain, const void *data,
                        uint32_t len)
{
    const uint8_t *src = data;
    uint32_t done = 0;
    for (unsigned i = 0; i < chain->in_count && done < len; i++) {
        uint32_t n = chain->in[i].len < len - done ? chain->in[i].len : len - done;
        memcpy(chain->in[i].base, src + done, n);
        guest_memory_mark_dirty(vq->mem, chain->in[i].gpa, n);
        done += n;
    }
    return done;
}

uint32_t vq_chain_read(const struct vq_chain *chain, void *data, uint32_t len)
{
    uint8_t *dst = data;
    uint32_t done = 0;
    for (unsigned i = 0; i < chain->out_count && done < len; i++) {
        uint32_t n = chain->out[i].len < len - done ? chain->out[i].len : len - done;
        memcpy(dst + done, chain->out[i].base, n);
        done += n;
    }
    return done;
}

struct vq_chain *vq_chain_clone(const struct vq_chain *chain)
{
    unsigned n = chain->out_count + chain->in_count;
    struct vq_chain *copy = malloc(sizeof(*copy) + (n ? n : 1) * sizeof(struct vq_iov));
    if (!copy)
        return NULL;
    *copy = *chain;
    struct vq_iov *segs = (struct vq_iov *)(copy + 1);
    if (chain->out_count)
        memcpy(segs, chain->out, chain->out_count * sizeof(*segs));
    if (chain->in_count)
        memcpy(segs + chain->out_count, chain->in, chain->in_count * sizeof(*segs));
    copy->out = segs;
    copy->in = segs + chain->out_count;
    return copy;
}

void vq_chain_free(struct vq_chain *chain)
{
    free(chain);
}
