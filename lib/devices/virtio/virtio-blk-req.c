/* virtio-blk request parsing (virtio 1.2 §5.2.6): header, data and status
 * byte out of a validated chain.  Everything here is guest-controlled:
 * protocol violations are BROKEN, bad requests are answered with a status. */
#include <endian.h>
#include <errno.h>
#include <string.h>
#include <glib.h>
#include "libvmm/block.h"
#include "devices/virtio/virtio-blk.h"
#include "util/util.h"

/* Copy up to `len` bytes starting `skip` bytes into the segments. */
static uint64_t segs_read(const struct vq_iov *seg, unsigned count, uint64_t skip, void *out,
                          uint64_t len)
{
    uint64_t done = 0;
    for (unsigned i = 0; i < count && done < len; i++) {
        if (skip >= seg[i].len) {
            skip -= seg[i].len;
            continue;
        }
        uint64_t n = MIN((uint64_t)seg[i].len - skip, len - done);
        memcpy((uint8_t *)out + done, (const uint8_t *)seg[i].base + skip, n);
        done += n;
        skip = 0;
    }
    return done;
}

/* The segments' bytes [skip, skip + len) as an iovec array. */
static struct iovec *segs_iov(const struct vq_iov *seg, unsigned count, uint64_t skip,
                              uint64_t len, int *iovcnt)
{
    struct iovec *iov = g_new(struct iovec, count ? count : 1);
    int n = 0;
    for (unsigned i = 0; i < count && len; i++) {
        if (skip >= seg[i].len) {
            skip -= seg[i].len;
            continue;
        }
        uint64_t take = MIN((uint64_t)seg[i].len - skip, len);
        iov[n++] = (struct iovec){ (uint8_t *)seg[i].base + skip, take };
        len -= take;
        skip = 0;
    }
    *iovcnt = n;
    return iov;
}

static enum virtio_blk_verdict answer(struct virtio_blk_request *req, uint8_t result)
{
    req->result = result;
    return VIRTIO_BLK_DONE;
}

static bool range_ok(const struct virtio_blk_limits *lim, uint64_t sector, uint64_t sectors)
{
    return sector <= lim->capacity && sectors <= lim->capacity - sector;
}

/* Data segments beyond what the device takes fail the request. */
static bool segments_ok(const struct virtio_blk_limits *lim, const struct iovec *iov, int n)
{
    if (lim->seg_max && (uint32_t)n > lim->seg_max)
        return false;
    for (int i = 0; i < n; i++)
        if (lim->size_max && iov[i].iov_len > lim->size_max)
            return false;
    return true;
}

static enum virtio_blk_verdict parse_rw(const struct vq_chain *c,
                                        const struct virtio_blk_limits *lim, uint64_t sector,
                                        struct virtio_blk_request *req)
{
    bool is_read = req->type == VIRTIO_BLK_T_IN;
    if (is_read ? c->out_bytes != VIRTIO_BLK_HDR_BYTES : c->in_bytes != 1) {
        vmm_set_error(EPROTO, "%s request (head %u) has %s data buffers", is_read ? "read" : "write",
                      c->head, is_read ? "device-readable" : "device-writable");
        return VIRTIO_BLK_BROKEN;
    }
    uint64_t len = is_read ? c->in_bytes - 1 : c->out_bytes - VIRTIO_BLK_HDR_BYTES;
    if (len % VIRTIO_BLK_SECTOR || !range_ok(lim, sector, len / VIRTIO_BLK_SECTOR))
        return answer(req, VIRTIO_BLK_S_IOERR);
    if (!is_read && lim->read_only)
        return answer(req, VIRTIO_BLK_S_IOERR);
    req->iov = is_read ? segs_iov(c->in, c->in_count, 0, len, &req->iovcnt)
                       : segs_iov(c->out, c->out_count, VIRTIO_BLK_HDR_BYTES, len, &req->iovcnt);
    if (!segments_ok(lim, req->iov, req->iovcnt))
        return answer(req, VIRTIO_BLK_S_IOERR);
    req->offset = sector * VIRTIO_BLK_SECTOR;
    req->length = len;
    req->flags = is_read ? 0 : lim->write_flags;
    return len ? VIRTIO_BLK_SUBMIT : answer(req, VIRTIO_BLK_S_OK);
}

struct discard_seg {
    uint64_t sector;
    uint32_t num_sectors;
    uint32_t flags;
};

static enum virtio_blk_verdict parse_discard(const struct vq_chain *c,
                                             const struct virtio_blk_limits *lim,
                                             struct virtio_blk_request *req)
{
    bool zeroes = req->type == VIRTIO_BLK_T_WRITE_ZEROES;
    uint64_t payload = c->out_bytes - VIRTIO_BLK_HDR_BYTES;
    if (c->in_bytes != 1 || payload % sizeof(struct discard_seg)) {
        vmm_set_error(EPROTO, "%s request (head %u): %llu payload bytes, %llu writable",
                      zeroes ? "write-zeroes" : "discard", c->head, (unsigned long long)payload,
                      (unsigned long long)c->in_bytes);
        return VIRTIO_BLK_BROKEN;
    }
    if (payload != sizeof(struct discard_seg))   /* max_*_seg is 1 */
        return answer(req, VIRTIO_BLK_S_IOERR);
    struct discard_seg s;
    segs_read(c->out, c->out_count, VIRTIO_BLK_HDR_BYTES, &s, sizeof(s));
    uint64_t sector = le64toh(s.sector);
    uint32_t count = le32toh(s.num_sectors), flags = le32toh(s.flags);
    if ((flags & ~VIRTIO_BLK_WZ_F_UNMAP) || (!zeroes && flags))
        return answer(req, VIRTIO_BLK_S_UNSUPP);
    uint32_t max = zeroes ? lim->max_write_zeroes_sectors : lim->max_discard_sectors;
    if (lim->read_only || count > max || !range_ok(lim, sector, count))
        return answer(req, VIRTIO_BLK_S_IOERR);
    if (!count || (!zeroes && !lim->discard))
        return answer(req, VIRTIO_BLK_S_OK);   /* discard=ignore: a hint we may drop */
    req->offset = sector * VIRTIO_BLK_SECTOR;
    req->length = (uint64_t)count * VIRTIO_BLK_SECTOR;
    if (zeroes && (flags & VIRTIO_BLK_WZ_F_UNMAP) && lim->discard)
        req->flags = VMM_BLOCK_REQ_MAY_UNMAP;
    return VIRTIO_BLK_SUBMIT;
}

static enum virtio_blk_verdict answer_get_id(const struct vq_chain *c,
                                             const struct virtio_blk_limits *lim,
                                             struct virtio_blk_request *req)
{
    if (c->out_bytes != VIRTIO_BLK_HDR_BYTES) {
        vmm_set_error(EPROTO, "get-id request (head %u) has device-readable data", c->head);
        return VIRTIO_BLK_BROKEN;
    }
    char id[VIRTIO_BLK_ID_BYTES] = { 0 };
    if (lim->serial)
        memcpy(id, lim->serial, MIN(strlen(lim->serial), sizeof(id)));
    uint64_t room = MIN(c->in_bytes - 1, (uint64_t)sizeof(id));
    int n;
    struct iovec *iov = segs_iov(c->in, c->in_count, 0, room, &n);
    uint64_t done = 0;
    for (int i = 0; i < n; i++) {
        memcpy(iov[i].iov_base, id + done, iov[i].iov_len);
        done += iov[i].iov_len;
    }
    g_free(iov);
    return answer(req, VIRTIO_BLK_S_OK);
}

static enum virtio_blk_verdict parse_type(const struct vq_chain *c,
                                          const struct virtio_blk_limits *lim, uint64_t sector,
                                          struct virtio_blk_request *req)
{
    switch (req->type) {
    case VIRTIO_BLK_T_IN:
    case VIRTIO_BLK_T_OUT:
        return parse_rw(c, lim, sector, req);
    case VIRTIO_BLK_T_FLUSH:
        if (!lim->flush)
            return answer(req, VIRTIO_BLK_S_UNSUPP);
        return lim->read_only ? answer(req, VIRTIO_BLK_S_OK) : VIRTIO_BLK_SUBMIT;
    case VIRTIO_BLK_T_GET_ID:
        return answer_get_id(c, lim, req);
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
        return parse_discard(c, lim, req);
    default:
        return answer(req, VIRTIO_BLK_S_UNSUPP);
    }
}

enum virtio_blk_verdict virtio_blk_parse(const struct vq_chain *c,
                                         const struct virtio_blk_limits *lim,
                                         struct virtio_blk_request *req)
{
    memset(req, 0, sizeof(*req));
    struct { uint32_t type, reserved; uint64_t sector; } hdr;
    if (c->out_bytes < sizeof(hdr) || vq_chain_read(c, &hdr, sizeof(hdr)) != sizeof(hdr)) {
        vmm_set_error(EPROTO, "request (head %u): header is %llu bytes, not %u", c->head,
                      (unsigned long long)c->out_bytes, VIRTIO_BLK_HDR_BYTES);
        return VIRTIO_BLK_BROKEN;
    }
    if (!c->in_count || !c->in[c->in_count - 1].len) {
        vmm_set_error(EPROTO, "request (head %u) has no writable status byte", c->head);
        return VIRTIO_BLK_BROKEN;
    }
    const struct vq_iov *last = &c->in[c->in_count - 1];
    req->status = (uint8_t *)last->base + last->len - 1;
    req->written = (uint32_t)MIN(c->in_bytes, (uint64_t)UINT32_MAX);
    req->type = le32toh(hdr.type);
    enum virtio_blk_verdict v = parse_type(c, lim, le64toh(hdr.sector), req);
    if (v == VIRTIO_BLK_BROKEN)
        virtio_blk_request_clear(req);
    return v;
}

void virtio_blk_request_clear(struct virtio_blk_request *req)
{
    g_free(req->iov);
    req->iov = NULL;
    req->iovcnt = 0;
}

bool virtio_blk_can_merge(const struct virtio_blk_request *merged,
                          const struct virtio_blk_request *next)
{
    bool rw = merged->type == VIRTIO_BLK_T_IN || merged->type == VIRTIO_BLK_T_OUT;
    if (!rw || next->type != merged->type || next->flags != merged->flags)
        return false;
    if (merged->offset + merged->length != next->offset)
        return false;
    return merged->length + next->length <= VIRTIO_BLK_MERGE_MAX_BYTES &&
           merged->iovcnt + next->iovcnt <= VIRTIO_BLK_MERGE_MAX_IOV;
}

void virtio_blk_merge(struct virtio_blk_request *merged, const struct virtio_blk_request *next)
{
    merged->iov = g_renew(struct iovec, merged->iov, merged->iovcnt + next->iovcnt);
    memcpy(merged->iov + merged->iovcnt, next->iov, sizeof(*next->iov) * (size_t)next->iovcnt);
    merged->iovcnt += next->iovcnt;
    merged->length += next->length;
}

void virtio_blk_limits_negotiated(struct virtio_blk_limits *lim, bool writethrough,
                                  bool flush_negotiated)
{
    /* FLUSH requests are still served (as QEMU does): they cost nothing. */
    lim->write_flags = writethrough || !flush_negotiated ? VMM_BLOCK_REQ_FUA : 0;
}

void virtio_blk_mark_dirty(struct guest_memory *mem, const struct vq_chain *c)
{
    for (unsigned i = 0; i < c->in_count; i++)
        guest_memory_mark_dirty(mem, c->in[i].gpa, c->in[i].len);
}
