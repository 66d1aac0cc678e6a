/* qcow2 internal snapshots: the snapshot table (with its extra data) and
 * create / list / goto / delete.  Every operation computes the new state
 * and switches to it with one header write (qcow2_switch_state), so a crash
 * leaves either the old or the new image, never a mix. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "qcow2.h"

#define SN_HEADER 40
#define SN_EXTRA_WRITE 24   /* vm_state_size_large, disk_size, icount */

static void free_one(struct qcow2_snapshot *sn)
{
    free(sn->id);
    free(sn->name);
    free(sn->extra);
    memset(sn, 0, sizeof(*sn));
}

static void free_list(struct qcow2_snapshot *list, uint32_t nb)
{
    if (!list)
        return;
    for (uint32_t i = 0; i < nb; i++)
        free_one(&list[i]);
    free(list);
}

void qcow2_free_snapshots(struct qcow2_state *s)
{
    free_list(s->snapshots, s->nb_snapshots);
    s->snapshots = NULL;
}

int qcow2_read_snapshots(struct block_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    s->snapshots = NULL;
    s->snapshots_size = 0;
    if (!s->nb_snapshots)
        return 0;
    int64_t flen = block_node_getlength(bs->file);
    if (flen < 0)
        return (int)flen;
    s->snapshots = calloc(s->nb_snapshots, sizeof(*s->snapshots));
    if (!s->snapshots)
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory for %u snapshots", s->nb_snapshots);
    uint64_t pos = s->snapshots_offset;
    int r = 0;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        struct qcow2_snapshot *sn = &s->snapshots[i];
        uint8_t h[SN_HEADER];
        if (pos - s->snapshots_offset + SN_HEADER > QCOW2_MAX_SNAPSHOT_TABLE ||
            pos + SN_HEADER > (uint64_t)flen) {
            r = QCOW2_ERR(EINVAL, "qcow2: snapshot table entry %u lies beyond the end of the "
                          "file or the table size limit", i);
            break;
        }
        r = block_node_pread(bs->file, pos, h, SN_HEADER);
        if (r < 0)
            break;
        sn->l1_offset = qcow2_be64(h);
        sn->l1_size = qcow2_be32(h + 8);
        uint16_t id_len = qcow2_be16(h + 12), name_len = qcow2_be16(h + 14);
        sn->date_sec = qcow2_be32(h + 16);
        sn->date_nsec = qcow2_be32(h + 20);
        sn->vm_clock_nsec = qcow2_be64(h + 24);
        sn->vm_state_size = qcow2_be32(h + 32);
        sn->extra_size = qcow2_be32(h + 36);
        sn->disk_size = bs->size;
        sn->icount = UINT64_MAX;
        if (sn->extra_size > QCOW2_MAX_SNAPSHOT_EXTRA) {
            r = QCOW2_ERR(EFBIG, "qcow2: too much extra metadata in snapshot table entry %u "
                          "(%u bytes)", i, sn->extra_size);
            break;
        }
        uint64_t body = (uint64_t)sn->extra_size + id_len + name_len;
        pos += SN_HEADER;
        if (pos - s->snapshots_offset + body > QCOW2_MAX_SNAPSHOT_TABLE ||
            pos + body > (uint64_t)flen) {
            r = QCOW2_ERR(EFBIG, "qcow2: snapshot table is too large or beyond the end of "
                          "the file");
            break;
        }
        uint8_t *b = malloc(body ? body : 1);
        if (!b) {
            r = QCOW2_ERR(ENOMEM, "qcow2: out of memory");
            break;
        }
        r = body ? block_node_pread(bs->file, pos, b, body) : 0;
        if (r >= 0) {
            sn->extra = malloc(sn->extra_size ? sn->extra_size : 1);
            sn->id = strndup((char *)b + sn->extra_size, id_len);
            sn->name = strndup((char *)b + sn->extra_size + id_len, name_len);
            if (!sn->extra || !sn->id || !sn->name)
                r = QCOW2_ERR(ENOMEM, "qcow2: out of memory");
            else
                memcpy(sn->extra, b, sn->extra_size);
        }
        free(b);
        if (r < 0)
            break;
        if (sn->extra_size >= 8)
            sn->vm_state_size = qcow2_be64(sn->extra);
        if (sn->extra_size >= 16)
            sn->disk_size = qcow2_be64(sn->extra + 8);
        if (sn->extra_size >= 24)
            sn->icount = qcow2_be64(sn->extra + 16);
        pos = qcow2_align_up(pos + body, 8);
        /* like qemu, a bad L1 reference leaves the image usable; check
         * reports it and snapshot operations refuse it */
        if (sn->l1_offset & (s->cluster_size - 1))
            sn->bad_l1 = "L1 table is not cluster aligned";
        else if ((uint64_t)sn->l1_size * 8 > QCOW2_MAX_L1_BYTES)
            sn->bad_l1 = "L1 table is too large";
        else if (sn->l1_size && (sn->l1_offset > (uint64_t)flen ||
                                 (uint64_t)sn->l1_size * 8 > (uint64_t)flen - sn->l1_offset))
            sn->bad_l1 = "L1 table extends beyond the end of the file";
    }
    if (r < 0) {
        qcow2_free_snapshots(s);
        return r;
    }
    s->snapshots_size = pos - s->snapshots_offset;
    return 0;
}

int qcow2_snapshot_table_bytes(struct qcow2_state *s, const struct qcow2_snapshot *sn,
                               uint32_t nb, uint8_t **buf, uint64_t *len)
{
    (void)s;
    uint64_t total = 0;
    for (uint32_t i = 0; i < nb; i++) {
        uint32_t extra = sn[i].extra_size > SN_EXTRA_WRITE ? sn[i].extra_size : SN_EXTRA_WRITE;
        total += qcow2_align_up(SN_HEADER + extra + strlen(sn[i].id) + strlen(sn[i].name), 8);
    }
    if (total > QCOW2_MAX_SNAPSHOT_TABLE)
        return QCOW2_ERR(EFBIG, "qcow2: snapshot table would be too large");
    uint8_t *b = calloc(1, total ? total : 1);
    if (!b)
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
    uint64_t pos = 0;
    for (uint32_t i = 0; i < nb; i++) {
        const struct qcow2_snapshot *p = &sn[i];
        uint32_t extra = p->extra_size > SN_EXTRA_WRITE ? p->extra_size : SN_EXTRA_WRITE;
        size_t id_len = strlen(p->id), name_len = strlen(p->name);
        uint8_t *h = b + pos;
        qcow2_put64(h, p->l1_offset);
        qcow2_put32(h + 8, p->l1_size);
        qcow2_put16(h + 12, (uint16_t)id_len);
        qcow2_put16(h + 14, (uint16_t)name_len);
        qcow2_put32(h + 16, p->date_sec);
        qcow2_put32(h + 20, p->date_nsec);
        qcow2_put64(h + 24, p->vm_clock_nsec);
        qcow2_put32(h + 32, p->vm_state_size > UINT32_MAX ? 0 : (uint32_t)p->vm_state_size);
        qcow2_put32(h + 36, extra);
        uint8_t *e = h + SN_HEADER;
        if (p->extra_size)
            memcpy(e, p->extra, p->extra_size);
        qcow2_put64(e, p->vm_state_size);
        qcow2_put64(e + 8, p->disk_size);
        qcow2_put64(e + 16, p->icount);
        memcpy(e + extra, p->id, id_len);
        memcpy(e + extra + id_len, p->name, name_len);
        pos += qcow2_align_up(SN_HEADER + extra + id_len + name_len, 8);
    }
    *buf = b;
    *len = total;
    return 0;
}

static int find_snapshot(struct qcow2_state *s, const char *id_or_name)
{
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        if (!strcmp(s->snapshots[i].id, id_or_name))
            return (int)i;
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        if (!strcmp(s->snapshots[i].name, id_or_name))
            return (int)i;
    return -1;
}

/* A deep copy of the table with room for `extra` more entries. */
static int copy_list(struct qcow2_state *s, uint32_t extra, struct qcow2_snapshot **out)
{
    struct qcow2_snapshot *l = calloc(s->nb_snapshots + extra ? s->nb_snapshots + extra : 1,
                                      sizeof(*l));
    if (!l)
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        l[i] = s->snapshots[i];
        l[i].id = strdup(s->snapshots[i].id);
        l[i].name = strdup(s->snapshots[i].name);
        l[i].extra = malloc(l[i].extra_size ? l[i].extra_size : 1);
        if (!l[i].id || !l[i].name || !l[i].extra) {
            free_list(l, i + 1);
            return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
        }
        memcpy(l[i].extra, s->snapshots[i].extra, l[i].extra_size);
    }
    *out = l;
    return 0;
}

static int writable_check(struct block_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    if (!s->writable)
        return QCOW2_ERR(EROFS, "qcow2: image is read-only");
    if (s->incompat & QCOW2_INCOMPAT_CORRUPT)
        return QCOW2_ERR(EIO, "qcow2: image is marked corrupt; changes are refused");
    return 0;
}

int qcow2_snapshot_create(struct block_node *bs, const struct block_snapshot *in)
{
    struct qcow2_state *s = bs->opaque;
    int r = writable_check(bs);
    if (r < 0)
        return r;
    if (s->nb_snapshots >= QCOW2_MAX_SNAPSHOTS)
        return QCOW2_ERR(EFBIG, "qcow2: too many snapshots");
    pthread_mutex_lock(&s->lock);
    qcow2_wait_inflight(s, 0, UINT64_MAX);
    char idbuf[24];
    const char *id = in->id && *in->id ? in->id : NULL;
    if (!id) {
        unsigned long max = 0;
        for (uint32_t i = 0; i < s->nb_snapshots; i++) {
            unsigned long v = strtoul(s->snapshots[i].id, NULL, 10);
            if (v > max)
                max = v;
        }
        snprintf(idbuf, sizeof(idbuf), "%lu", max + 1);
        id = idbuf;
    }
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        if (!strcmp(s->snapshots[i].id, id)) {
            pthread_mutex_unlock(&s->lock);
            return QCOW2_ERR(EEXIST, "qcow2: a snapshot with id '%s' already exists", id);
        }
    const char *name = in->name && *in->name ? in->name : id;
    if (strlen(id) > 65535 || strlen(name) > 65535) {
        pthread_mutex_unlock(&s->lock);
        return QCOW2_ERR(EINVAL, "qcow2: snapshot name too long");
    }
    struct qcow2_snapshot *list;
    r = copy_list(s, 1, &list);
    if (r < 0) {
        pthread_mutex_unlock(&s->lock);
        return r;
    }
    struct qcow2_snapshot *sn = &list[s->nb_snapshots];
    sn->id = strdup(id);
    sn->name = strdup(name);
    sn->extra = calloc(1, SN_EXTRA_WRITE);
    if (!sn->id || !sn->name || !sn->extra) {
        free_list(list, s->nb_snapshots + 1);
        pthread_mutex_unlock(&s->lock);
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
    }
    sn->extra_size = SN_EXTRA_WRITE;
    /* the snapshot keeps the current L1 table; the active image moves on */
    sn->l1_offset = s->l1_offset;
    sn->l1_size = s->l1_size;
    sn->date_sec = in->date_sec;
    sn->date_nsec = in->date_nsec;
    if (!sn->date_sec && !sn->date_nsec) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        sn->date_sec = (uint32_t)ts.tv_sec;
        sn->date_nsec = (uint32_t)ts.tv_nsec;
    }
    sn->vm_clock_nsec = in->vm_clock_nsec;
    sn->vm_state_size = in->vm_state_size;
    sn->disk_size = bs->size;
    sn->icount = in->icount;
    if (!s->l1_size) {
        /* nothing to share: the snapshot gets an empty L1 of its own */
        sn->l1_offset = 0;
    }
    r = qcow2_flush_if_needed(bs);
    if (r >= 0)
        r = qcow2_switch_state(bs, list, s->nb_snapshots + 1, s->l1, s->l1_size, bs->size);
    if (r < 0)
        free_list(list, s->nb_snapshots + 1);
    pthread_mutex_unlock(&s->lock);
    return r < 0 ? r : 0;
}

int qcow2_snapshot_list(struct block_node *bs, struct block_snapshot **out, int *count)
{
    struct qcow2_state *s = bs->opaque;
    pthread_mutex_lock(&s->lock);
    struct block_snapshot *l = calloc(s->nb_snapshots ? s->nb_snapshots : 1, sizeof(*l));
    int r = l ? 0 : QCOW2_ERR(ENOMEM, "qcow2: out of memory");
    for (uint32_t i = 0; i < s->nb_snapshots && r >= 0; i++) {
        const struct qcow2_snapshot *sn = &s->snapshots[i];
        l[i].id = strdup(sn->id);
        l[i].name = strdup(sn->name);
        if (!l[i].id || !l[i].name)
            r = QCOW2_ERR(ENOMEM, "qcow2: out of memory");
        l[i].vm_state_size = sn->vm_state_size;
        l[i].date_sec = sn->date_sec;
        l[i].date_nsec = sn->date_nsec;
        l[i].vm_clock_nsec = sn->vm_clock_nsec;
        l[i].icount = sn->icount;
    }
    if (r < 0 && l) {
        for (uint32_t i = 0; i < s->nb_snapshots; i++) {
            free(l[i].id);
            free(l[i].name);
        }
        free(l);
        l = NULL;
    }
    if (r >= 0) {
        *out = l;
        *count = (int)s->nb_snapshots;
    }
    pthread_mutex_unlock(&s->lock);
    return r < 0 ? r : 0;
}

/* Lock a writable image with no request in flight and find a snapshot in it. Returns
 * the snapshot's index with s->lock held, or a negative errno with the lock not held. */
static int lock_and_find_snapshot(struct block_node *bs, const char *id_or_name)
{
    struct qcow2_state *s = bs->opaque;
    int r = writable_check(bs);
    if (r < 0)
        return r;
    pthread_mutex_lock(&s->lock);
    qcow2_wait_inflight(s, 0, UINT64_MAX);
    int i = find_snapshot(s, id_or_name);
    if (i < 0) {
        pthread_mutex_unlock(&s->lock);
        return QCOW2_ERR(ENOENT, "qcow2: snapshot '%s' not found", id_or_name);
    }
    return i;
}

int qcow2_snapshot_goto(struct block_node *bs, const char *id_or_name)
{
    struct qcow2_state *s = bs->opaque;
    int i = lock_and_find_snapshot(bs, id_or_name);
    if (i < 0)
        return i;
    struct qcow2_snapshot *sn = &s->snapshots[i];
    uint64_t size = sn->disk_size;
    if (size & 511)
        size = bs->size;
    uint32_t need = qcow2_l1_size_for(s, size);
    uint32_t l1_size = sn->l1_size > need ? sn->l1_size : need;
    uint64_t *l1 = calloc(l1_size ? l1_size : 1, 8);
    if (!l1) {
        pthread_mutex_unlock(&s->lock);
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
    }
    int r = sn->bad_l1 ? QCOW2_ERR(EIO, "qcow2: snapshot '%s': %s", sn->name, sn->bad_l1) : 0;
    if (r >= 0 && sn->l1_size)
        r = block_node_pread(bs->file, sn->l1_offset, l1, (uint64_t)sn->l1_size * 8);
    for (uint32_t k = 0; k < sn->l1_size; k++)
        l1[k] = qcow2_be64(&l1[k]);
    struct qcow2_snapshot *list = NULL;
    if (r >= 0)
        r = qcow2_flush_if_needed(bs);
    if (r >= 0)
        r = copy_list(s, 0, &list);
    if (r >= 0) {
        r = qcow2_switch_state(bs, list, s->nb_snapshots, l1, l1_size, size);
        if (r < 0)
            free_list(list, s->nb_snapshots);
    }
    free(l1);
    pthread_mutex_unlock(&s->lock);
    return r < 0 ? r : 0;
}

int qcow2_snapshot_delete(struct block_node *bs, const char *id_or_name)
{
    struct qcow2_state *s = bs->opaque;
    int i = lock_and_find_snapshot(bs, id_or_name);
    if (i < 0)
        return i;
    struct qcow2_snapshot *list;
    int r = qcow2_flush_if_needed(bs);
    if (r >= 0)
        r = copy_list(s, 0, &list);
    if (r >= 0) {
        uint32_t nb = s->nb_snapshots;
        free_one(&list[i]);
        memmove(&list[i], &list[i + 1], (nb - (uint32_t)i - 1) * sizeof(*list));
        uint64_t *l1 = malloc((s->l1_size ? s->l1_size : 1) * 8ull);
        if (!l1) {
            r = QCOW2_ERR(ENOMEM, "qcow2: out of memory");
        } else {
            memcpy(l1, s->l1, (size_t)s->l1_size * 8);
            r = qcow2_switch_state(bs, list, nb - 1, l1, s->l1_size, bs->size);
            free(l1);
        }
        if (r < 0)
            free_list(list, nb - 1);
    }
    pthread_mutex_unlock(&s->lock);
    return r < 0 ? r : 0;
}
