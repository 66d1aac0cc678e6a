/* virtio-blk's request parser (lib/devices/virtio/virtio-blk-req.c) on
 * chains popped from a fake guest memory: each request type, the answers
 * the device gives without I/O (IOERR, UNSUPP, GET_ID, discard=ignore) and
 * the protocol violations that break the device. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <glib.h>
#include "devices/virtio/virtio-blk.h"
#include "devices/virtio/virtqueue.h"
#include "libvmm/block.h"
#include "machine/memory.h"
#include "vq-fixture.h"
#include "util/util.h"

#define RAM    (4u << 20)
#define QSIZE  8
#define DESC   0x1000ull
#define AVAIL  0x2000ull
#define USED   0x3000ull
#define HDR    0x4000ull
#define DATA   0x10000ull
#define STATUS 0x5000ull
#define W      VIRTQ_DESC_F_WRITE

struct fixture {
    struct guest_memory mem;
    struct virtqueue vq;
    struct virtio_blk_limits lim;
    unsigned ndesc;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    vq_fixture_start(&f->mem, &f->vq, RAM, QSIZE, DESC, AVAIL, USED, false);
    f->lim = (struct virtio_blk_limits){
        .capacity = 2048, .seg_max = 4, .size_max = 64 * 1024, .max_discard_sectors = 256,
        .max_write_zeroes_sectors = 256, .discard = true, .flush = true, .serial = "disk-1",
    };
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    vq_fixture_stop(&f->mem, &f->vq);
    free(f);
    return 0;
}

static void *gp(struct fixture *f, uint64_t gpa) { return guest_memory_ptr(&f->mem, gpa, 1); }

/* Append one descriptor to the chain being built (linked to the previous). */
static void add(struct fixture *f, uint64_t addr, uint32_t len, uint16_t flags)
{
    struct virtq_desc *d = gp(f, DESC);
    if (f->ndesc) {
        d[f->ndesc - 1].flags |= VIRTQ_DESC_F_NEXT;
        d[f->ndesc - 1].next = (uint16_t)f->ndesc;
    }
    d[f->ndesc++] = (struct virtq_desc){ addr, len, flags, 0 };
}

static void header(struct fixture *f, uint32_t type, uint64_t sector, uint32_t len)
{
    struct { uint32_t type, reserved; uint64_t sector; } h = { type, 0, sector };
    memcpy(gp(f, HDR), &h, sizeof(h));
    add(f, HDR, len, 0);
}

static enum virtio_blk_verdict parse(struct fixture *f, struct virtio_blk_request *req)
{
    uint16_t *avail = gp(f, AVAIL);
    avail[2 + avail[1] % QSIZE] = 0;
    avail[1]++;
    struct vq_chain c;
    assert_int_equal(virtqueue_pop(&f->vq, &c), 1);
    return virtio_blk_parse(&c, &f->lim, req);
}

static void expect_answer(struct fixture *f, uint8_t result)
{
    struct virtio_blk_request req;
    assert_int_equal(parse(f, &req), VIRTIO_BLK_DONE);
    assert_int_equal(req.result, result);
    assert_ptr_equal(req.status, gp(f, STATUS));
    virtio_blk_request_clear(&req);
}

static void expect_broken(struct fixture *f, const char *needle)
{
    struct virtio_blk_request req;
    vmm_clear_error();
    assert_int_equal(parse(f, &req), VIRTIO_BLK_BROKEN);
    assert_non_null(strstr(vmm_get_error(), needle));
    assert_null(req.iov);
}

static void read_splits_the_status_byte_off(void **state)
{
    struct fixture *f = *state;
    header(f, VIRTIO_BLK_T_IN, 8, 16);
    add(f, DATA, 1024, W);
    add(f, DATA + 4096, 513, W);            /* data and the status byte share it */
    struct virtio_blk_request req;
    assert_int_equal(parse(f, &req), VIRTIO_BLK_SUBMIT);
    assert_int_equal(req.offset, 8 * 512);
    assert_int_equal(req.length, 1536);
    assert_int_equal(req.iovcnt, 2);
    assert_ptr_equal(req.iov[1].iov_base, gp(f, DATA + 4096));
    assert_int_equal(req.iov[1].iov_len, 512);
    assert_ptr_equal(req.status, gp(f, DATA + 4096 + 512));
    assert_int_equal(req.written, 1537);
    virtio_blk_request_clear(&req);
}

static void write_skips_a_split_header(void **state)
{
    struct fixture *f = *state;
    header(f, VIRTIO_BLK_T_OUT, 0, 8);      /* the header in two pieces */
    add(f, HDR + 8, 8 + 512, 0);            /* ...the second with the data */
    add(f, STATUS, 1, W);
    f->lim.write_flags = VMM_BLOCK_REQ_FUA;
    struct virtio_blk_request req;
    assert_int_equal(parse(f, &req), VIRTIO_BLK_SUBMIT);
    assert_int_equal(req.length, 512);
    assert_int_equal(req.iovcnt, 1);
    assert_ptr_equal(req.iov[0].iov_base, gp(f, HDR + 16));
    assert_int_equal(req.flags, VMM_BLOCK_REQ_FUA);
    virtio_blk_request_clear(&req);
}

static void bad_ranges_and_sizes_get_ioerr(void **state)
{
    struct fixture *f = *state;
    struct { uint64_t sector; uint32_t len; } cases[] = {
        { 2048, 512 }, { 2047, 1024 }, { UINT64_MAX / 256, 512 }, { 0, 100 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        f->ndesc = 0;
        header(f, VIRTIO_BLK_T_IN, cases[i].sector, 16);
        add(f, DATA, cases[i].len, W);
        add(f, STATUS, 1, W);
        expect_answer(f, VIRTIO_BLK_S_IOERR);
    }
    f->ndesc = 0;                           /* more segments than seg_max */
    header(f, VIRTIO_BLK_T_IN, 0, 16);
    for (int i = 0; i < 5; i++)
        add(f, DATA + 512u * i, 512, W);
    add(f, STATUS, 1, W);
    expect_answer(f, VIRTIO_BLK_S_IOERR);
}

static void read_only_refuses_writes(void **state)
{
    struct fixture *f = *state;
    f->lim.read_only = true;
    header(f, VIRTIO_BLK_T_OUT, 0, 16);
    add(f, DATA, 512, 0);
    add(f, STATUS, 1, W);
    expect_answer(f, VIRTIO_BLK_S_IOERR);
    f->ndesc = 0;
    header(f, VIRTIO_BLK_T_FLUSH, 0, 16);   /* a flush of a read-only disk is OK */
    add(f, STATUS, 1, W);
    expect_answer(f, VIRTIO_BLK_S_OK);
}

static void get_id_and_unknown_types(void **state)
{
    struct fixture *f = *state;
    memset(gp(f, DATA), 0xee, 32);
    header(f, VIRTIO_BLK_T_GET_ID, 0, 16);
    add(f, DATA, 20, W);
    add(f, STATUS, 1, W);
    expect_answer(f, VIRTIO_BLK_S_OK);
    assert_memory_equal(gp(f, DATA), "disk-1\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 20);
    assert_int_equal(((uint8_t *)gp(f, DATA))[20], 0xee);
    f->ndesc = 0;
    header(f, 99, 0, 16);
    add(f, STATUS, 1, W);
    expect_answer(f, VIRTIO_BLK_S_UNSUPP);
}

static void discard_and_write_zeroes(void **state)
{
    struct fixture *f = *state;
    struct { uint64_t sector; uint32_t num, flags; } seg = { 16, 32, 0 };
    memcpy(gp(f, DATA), &seg, sizeof(seg));
    header(f, VIRTIO_BLK_T_DISCARD, 0, 16);
    add(f, DATA, 16, 0);
    add(f, STATUS, 1, W);
    struct virtio_blk_request req;
    assert_int_equal(parse(f, &req), VIRTIO_BLK_SUBMIT);
    assert_int_equal(req.offset, 16 * 512);
    assert_int_equal(req.length, 32 * 512);
    seg.flags = VIRTIO_BLK_WZ_F_UNMAP;      /* unmap: write-zeroes may deallocate */
    memcpy(gp(f, DATA), &seg, sizeof(seg));
    memcpy(gp(f, HDR), &(uint32_t){ VIRTIO_BLK_T_WRITE_ZEROES }, 4);
    assert_int_equal(parse(f, &req), VIRTIO_BLK_SUBMIT);
    assert_int_equal(req.flags, VMM_BLOCK_REQ_MAY_UNMAP);
    memcpy(gp(f, HDR), &(uint32_t){ VIRTIO_BLK_T_DISCARD }, 4);
    expect_answer(f, VIRTIO_BLK_S_UNSUPP);  /* discard with the unmap flag */
    seg.num = 300;
    seg.flags = 0;
    memcpy(gp(f, DATA), &seg, sizeof(seg));
    expect_answer(f, VIRTIO_BLK_S_IOERR);   /* beyond max_discard_sectors */
    seg.num = 32;
    memcpy(gp(f, DATA), &seg, sizeof(seg));
    f->lim.discard = false;                 /* discard=ignore: answered at once */
    expect_answer(f, VIRTIO_BLK_S_OK);
}

static void protocol_violations_break_the_device(void **state)
{
    struct fixture *f = *state;
    header(f, VIRTIO_BLK_T_IN, 0, 12);
    add(f, STATUS, 1, W);
    expect_broken(f, "header is 12 bytes, not 16");
    f->ndesc = 0;
    header(f, VIRTIO_BLK_T_FLUSH, 0, 16);
    add(f, STATUS, 1, 0);
    expect_broken(f, "no writable status byte");
    f->ndesc = 0;
    header(f, VIRTIO_BLK_T_IN, 0, 16);
    add(f, DATA, 512, 0);
    add(f, STATUS, 1, W);
    expect_broken(f, "read request (head 0) has device-readable data buffers");
    f->ndesc = 0;
    header(f, VIRTIO_BLK_T_OUT, 0, 16);
    add(f, DATA, 512, W);
    add(f, STATUS, 1, W);
    expect_broken(f, "write request (head 0) has device-writable data buffers");
    f->ndesc = 0;
    header(f, VIRTIO_BLK_T_DISCARD, 0, 16);
    add(f, DATA, 20, 0);
    add(f, STATUS, 1, W);
    expect_broken(f, "discard request (head 0): 20 payload bytes");
}

static void completion_marks_written_pages_dirty(void **state)
{
    struct fixture *f = *state;
    header(f, VIRTIO_BLK_T_IN, 0, 16);
    add(f, DATA + 3 * 4096, 8192, W);       /* two pages of read data */
    add(f, STATUS, 1, W);
    struct virtio_blk_request req;
    uint16_t *avail = gp(f, AVAIL);
    avail[2 + avail[1] % QSIZE] = 0;
    avail[1]++;
    struct vq_chain c;
    assert_int_equal(virtqueue_pop(&f->vq, &c), 1);
    assert_int_equal(virtio_blk_parse(&c, &f->lim, &req), VIRTIO_BLK_SUBMIT);
    for (uint64_t p = 0; p < RAM / 4096; p++)
        guest_memory_test_and_clear_dirty(&f->mem, p);
    virtio_blk_mark_dirty(&f->mem, &c);
    uint64_t data = (DATA + 3 * 4096) / 4096;
    assert_true(guest_memory_test_and_clear_dirty(&f->mem, data));
    assert_true(guest_memory_test_and_clear_dirty(&f->mem, data + 1));
    assert_true(guest_memory_test_and_clear_dirty(&f->mem, STATUS / 4096));
    assert_false(guest_memory_test_and_clear_dirty(&f->mem, HDR / 4096));   /* only read */
    assert_false(guest_memory_test_and_clear_dirty(&f->mem, data + 2));
    virtio_blk_request_clear(&req);
}

static void writes_are_fua_without_flush(void **state)
{
    struct fixture *f = *state;
    virtio_blk_limits_negotiated(&f->lim, false, true);
    assert_int_equal(f->lim.write_flags, 0);
    virtio_blk_limits_negotiated(&f->lim, true, true);        /* cache=writethrough */
    assert_int_equal(f->lim.write_flags, VMM_BLOCK_REQ_FUA);
    virtio_blk_limits_negotiated(&f->lim, false, false);      /* driver without FLUSH */
    assert_int_equal(f->lim.write_flags, VMM_BLOCK_REQ_FUA);
    header(f, VIRTIO_BLK_T_OUT, 0, 16);
    add(f, DATA, 512, 0);
    add(f, STATUS, 1, W);
    struct virtio_blk_request req;
    assert_int_equal(parse(f, &req), VIRTIO_BLK_SUBMIT);
    assert_int_equal(req.flags, VMM_BLOCK_REQ_FUA);
    virtio_blk_request_clear(&req);
    f->ndesc = 0;
    header(f, VIRTIO_BLK_T_FLUSH, 0, 16);   /* not negotiated, served all the same */
    add(f, STATUS, 1, W);
    assert_int_equal(parse(f, &req), VIRTIO_BLK_SUBMIT);
}

/* ---- merge decision: requests as the parser describes them ---- */

static uint8_t merge_buf[8][512];

/* A request to submit: `iovcnt` segments of `seg` bytes at `sector`. */
static struct virtio_blk_request rw_req(uint32_t type, uint64_t sector, int iovcnt, uint64_t seg)
{
    struct virtio_blk_request r = { .type = type, .offset = sector * 512, .length = seg * iovcnt };
    r.iov = g_new0(struct iovec, iovcnt);
    for (int i = 0; i < iovcnt; i++)
        r.iov[i] = (struct iovec){ merge_buf[i % 8], seg };
    r.iovcnt = iovcnt;
    return r;
}

static void release(struct virtio_blk_request *r) { g_free(r->iov); r->iov = NULL; }

/* Whether a one-segment request of `type` at `sector` may join `merged`. */
static bool joins(const struct virtio_blk_request *merged, uint32_t type, uint64_t sector,
                  uint64_t bytes)
{
    struct virtio_blk_request next = rw_req(type, sector, 1, bytes);
    bool yes = virtio_blk_can_merge(merged, &next);
    release(&next);
    return yes;
}

static void adjacent_reads_and_writes_merge(void **state)
{
    (void)state;
    for (uint32_t type = VIRTIO_BLK_T_IN; type <= VIRTIO_BLK_T_OUT; type++) {
        struct virtio_blk_request a = rw_req(type, 8, 2, 512), b = rw_req(type, 10, 1, 512);
        b.iov[0].iov_base = merge_buf[7];
        assert_true(virtio_blk_can_merge(&a, &b));
        virtio_blk_merge(&a, &b);
        assert_int_equal(a.offset, 8 * 512);
        assert_int_equal(a.length, 1536);
        assert_int_equal(a.iovcnt, 3);
        assert_ptr_equal(a.iov[2].iov_base, merge_buf[7]);   /* appended, in disk order */
        assert_ptr_equal(a.iov[0].iov_base, merge_buf[0]);
        assert_true(joins(&a, type, 11, 512));                /* a merged one grows on */
        assert_false(joins(&a, type, 10, 512));               /* overlaps the end */
        assert_false(joins(&a, type, 12, 512));               /* a gap */
        assert_false(joins(&a, type, 7, 512));                /* just before: not merged */
        release(&a);
        release(&b);
    }
}

static void other_kinds_never_merge(void **state)
{
    (void)state;
    struct virtio_blk_request w = rw_req(VIRTIO_BLK_T_OUT, 0, 1, 512);
    struct virtio_blk_request r = rw_req(VIRTIO_BLK_T_IN, 1, 1, 512);
    assert_false(virtio_blk_can_merge(&w, &r));               /* read after write */
    assert_false(virtio_blk_can_merge(&r, &w));
    struct virtio_blk_request fua = rw_req(VIRTIO_BLK_T_OUT, 1, 1, 512);
    fua.flags = VMM_BLOCK_REQ_FUA;
    assert_false(virtio_blk_can_merge(&w, &fua));             /* writethrough differs */
    w.flags = VMM_BLOCK_REQ_FUA;
    assert_true(virtio_blk_can_merge(&w, &fua));              /* both FUA */
    const uint32_t others[] = { VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_DISCARD,
                                VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_T_GET_ID };
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++) {
        struct virtio_blk_request a = { .type = others[i], .offset = 0, .length = 512 };
        struct virtio_blk_request b = { .type = others[i], .offset = 512, .length = 512 };
        assert_false(virtio_blk_can_merge(&a, &b));
        struct virtio_blk_request wz = { .type = others[i], .offset = 512, .length = 512,
                                         .flags = VMM_BLOCK_REQ_FUA };
        assert_false(virtio_blk_can_merge(&w, &wz));          /* a write, then one of these */
        assert_false(virtio_blk_can_merge(&a, &fua));
    }
    release(&w);
    release(&r);
    release(&fua);
}

static void merges_are_bounded(void **state)
{
    (void)state;
    /* Bytes: up to VIRTIO_BLK_MERGE_MAX_BYTES in all. */
    uint64_t half = VIRTIO_BLK_MERGE_MAX_BYTES / 2;
    struct virtio_blk_request a = rw_req(VIRTIO_BLK_T_OUT, 0, 1, half);
    assert_true(joins(&a, VIRTIO_BLK_T_OUT, half / 512, half));
    assert_false(joins(&a, VIRTIO_BLK_T_OUT, half / 512, half + 512));
    release(&a);
    /* Segments: up to VIRTIO_BLK_MERGE_MAX_IOV in all. */
    a = rw_req(VIRTIO_BLK_T_IN, 0, VIRTIO_BLK_MERGE_MAX_IOV - 1, 512);
    struct virtio_blk_request b = rw_req(VIRTIO_BLK_T_IN, VIRTIO_BLK_MERGE_MAX_IOV - 1, 1, 512);
    assert_true(virtio_blk_can_merge(&a, &b));
    release(&b);
    b = rw_req(VIRTIO_BLK_T_IN, VIRTIO_BLK_MERGE_MAX_IOV - 1, 2, 512);
    assert_false(virtio_blk_can_merge(&a, &b));
    release(&a);
    release(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(read_splits_the_status_byte_off, setup, teardown),
        cmocka_unit_test_setup_teardown(write_skips_a_split_header, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_ranges_and_sizes_get_ioerr, setup, teardown),
        cmocka_unit_test_setup_teardown(read_only_refuses_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(get_id_and_unknown_types, setup, teardown),
        cmocka_unit_test_setup_teardown(discard_and_write_zeroes, setup, teardown),
        cmocka_unit_test_setup_teardown(protocol_violations_break_the_device, setup, teardown),
        cmocka_unit_test_setup_teardown(completion_marks_written_pages_dirty, setup, teardown),
        cmocka_unit_test_setup_teardown(writes_are_fua_without_flush, setup, teardown),
        cmocka_unit_test(adjacent_reads_and_writes_merge),
        cmocka_unit_test(other_kinds_never_merge),
        cmocka_unit_test(merges_are_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
