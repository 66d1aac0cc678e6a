/* qcow2 persistent dirty bitmaps: not supported, but handled the way the
 * spec asks of programs that do not support them.  Their clusters count as
 * references in check (while the autoclear bit says they are valid), and a
 * read-write open drops them: the extension leaves the header, the autoclear
 * bit is cleared, then their clusters are freed (a crash in between leaks,
 * never corrupts). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include "qcow2.h"

#define BM_MAX_DIR (64u << 20)
#define BM_DIR_ENTRY 24

static struct qcow2_ext *bitmaps_ext(struct qcow2_state *s, uint32_t *index)
{
    for (uint32_t i = 0; i < s->nb_exts; i++)
        if (s->exts[i].type == QCOW2_EXT_BITMAPS) {
            if (index)
                *index = i;
            return &s->exts[i];
        }
    return NULL;
}

/* Call fn for every cluster range the bitmaps use (directory, tables,
 * data).  Damaged parts are skipped, never followed out of the file. */
int qcow2_bitmaps_foreach(struct block_node *bs, qcow2_range_fn fn, void *opaque)
{
    struct qcow2_state *s = bs->opaque;
    struct qcow2_ext *e = bitmaps_ext(s, NULL);
    if (!e || e->len < 24)
        return 0;
    uint64_t dir_size = qcow2_be64(e->data + 8), dir_off = qcow2_be64(e->data + 16);
    int64_t flen = block_node_getlength(bs->file);
    if (flen < 0)
        return (int)flen;
    if (!dir_size || dir_size > BM_MAX_DIR || (dir_off & (s->cluster_size - 1)) ||
        dir_off > (uint64_t)flen || dir_size > (uint64_t)flen - dir_off)
        return 0;
    uint8_t *dir = malloc(dir_size);
    if (!dir)
        return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
    int r = block_node_pread(bs->file, dir_off, dir, dir_size);
    if (r >= 0)
        r = fn(opaque, dir_off, dir_size);
    for (uint64_t pos = 0; r >= 0 && pos + BM_DIR_ENTRY <= dir_size;) {
        uint64_t table = qcow2_be64(dir + pos);
        uint32_t table_size = qcow2_be32(dir + pos + 8);
        uint16_t name_size = qcow2_be16(dir + pos + 18);
        uint32_t extra = qcow2_be32(dir + pos + 20);
        pos = qcow2_align_up(pos + BM_DIR_ENTRY + (uint64_t)extra + name_size, 8);
        uint64_t tbytes = (uint64_t)table_size * 8;
        if (!table || (table & (s->cluster_size - 1)) || tbytes > BM_MAX_DIR ||
            table > (uint64_t)flen || tbytes > (uint64_t)flen - table)
            continue;
        uint8_t *t = malloc(tbytes ? tbytes : 1);
        if (!t) {
            r = QCOW2_ERR(ENOMEM, "qcow2: out of memory");
            break;
        }
        r = tbytes ? block_node_pread(bs->file, table, t, tbytes) : 0;
        if (r >= 0)
            r = fn(opaque, table, tbytes);
        for (uint32_t i = 0; r >= 0 && i < table_size; i++) {
            uint64_t off = qcow2_be64(t + (size_t)i * 8) & QCOW2_OFFSET_MASK;
            if (off && !(off & (s->cluster_size - 1)) && off < (uint64_t)flen)
                r = fn(opaque, off, s->cluster_size);
        }
        free(t);
    }
    free(dir);
    return r;
}

struct range_list {
    uint64_t (*r)[2];
    size_t n, cap;
};

static int collect(void *opaque, uint64_t off, uint64_t len)
{
    struct range_list *l = opaque;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        void *p = realloc(l->r, cap * sizeof(*l->r));
        if (!p)
            return QCOW2_ERR(ENOMEM, "qcow2: out of memory");
        l->r = p;
        l->cap = cap;
    }
    l->r[l->n][0] = off;
    l->r[l->n][1] = len;
    l->n++;
    return 0;
}

int qcow2_drop_bitmaps(struct block_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    uint32_t index;
    if (!bitmaps_ext(s, &index))
        return 0;
    struct range_list l = { NULL, 0, 0 };
    int r = 0;
    bool valid = (s->autoclear & QCOW2_AUTOCLEAR_BITMAPS) != 0;
    if (valid)
        r = qcow2_bitmaps_foreach(bs, collect, &l);
    if (r >= 0) {
        vmm_log(VMM_LOG_WARNING, "qcow2", "%s: dropping persistent dirty bitmaps "
                "(not supported)", bs->filename ? bs->filename : "?");
        free(s->exts[index].data);
        memmove(&s->exts[index], &s->exts[index + 1],
                (s->nb_exts - index - 1) * sizeof(*s->exts));
        s->nb_exts--;
        s->autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
        r = qcow2_write_header(bs);
    }
    for (size_t i = 0; r >= 0 && i < l.n; i++)
        r = qcow2_free_clusters(bs, l.r[i][0], l.r[i][1]);
    free(l.r);
    return r;
}
