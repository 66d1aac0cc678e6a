/* The virtqueue parser (lib/devices/virtio/virtqueue.c) over a fake guest
 * memory: well-formed chains, indirect tables, the used ring and event
 * index, and every rule a driver can break refused with a message; plus
 * the virtio device state round trip. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "devices/virtio/virtio.h"
#include "devices/virtio/virtqueue.h"
#include "machine/memory.h"
#include "vq-fixture.h"
#include "state-check.h"
#include "util/util.h"

#define RAM (16u << 20)
#define QSIZE 8
#define DESC  0x1000ull
#define AVAIL 0x2000ull
#define USED  0x3000ull
#define BUF   0x10000ull
#define TABLE 0x8000ull

struct fixture {
    struct guest_memory mem;
    struct virtqueue vq;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    vq_fixture_start(&f->mem, &f->vq, RAM, QSIZE, DESC, AVAIL, USED, true);
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

static void *gp(struct fixture *f, uint64_t gpa)
{
    return guest_memory_ptr(&f->mem, gpa, 1);
}

static void set_desc(struct fixture *f, uint64_t table, unsigned i, uint64_t addr, uint32_t len,
                     uint16_t flags, uint16_t next)
{
    struct virtq_desc d = { addr, len, flags, next };
    memcpy(gp(f, table + 16ull * i), &d, sizeof(d));
}

static uint16_t *avail(struct fixture *f) { return gp(f, AVAIL); }
static uint16_t *used(struct fixture *f) { return gp(f, USED); }

/* Make `head` available as the next entry. */
static void post(struct fixture *f, uint16_t head)
{
    uint16_t *a = avail(f);
    a[2 + a[1] % QSIZE] = head;
    a[1]++;
}

static void expect_error(struct fixture *f, const char *needle)
{
    struct vq_chain c;
    assert_int_equal(virtqueue_pop(&f->vq, &c), -1);
    if (!strstr(vmm_get_error(), needle))
        fail_msg("error '%s' lacks '%s'", vmm_get_error(), needle);
}

static void test_empty(void **state)
{
    struct fixture *f = *state;
    struct vq_chain c;
    assert_int_equal(virtqueue_pop(&f->vq, &c), 0);
    assert_false(virtqueue_has_work(&f->vq));
}

static void test_single_writable(void **state)
{
    struct fixture *f = *state;
    set_desc(f, DESC, 3, BUF, 100, VIRTQ_DESC_F_WRITE, 0);
    post(f, 3);
    assert_true(virtqueue_has_work(&f->vq));
    struct vq_chain c;
    assert_int_equal(virtqueue_pop(&f->vq, &c), 1);
    assert_int_equal(c.head, 3);
    assert_int_equal(c.out_count, 0);
    assert_int_equal(c.in_count, 1);
    assert_int_equal(c.in_bytes, 100);
    assert_ptr_equal(c.in[0].base, gp(f, BUF));
    guest_memory_test_and_clear_dirty(&f->mem, BUF / GUEST_PAGE_SIZE);
    guest_memory_test_and_clear_dirty(&f->mem, USED / GUEST_PAGE_SIZE);
    static const char msg[] = "entropy!";
    assert_int_equal(vq_chain_write(&f->vq, &c, msg, sizeof(msg)), sizeof(msg));
    virtqueue_push(&f->vq, &c, 500);   /* clamped to the 100 bytes offered */
    assert_memory_equal(gp(f, BUF), msg, sizeof(msg));
    assert_int_equal(used(f)[1], 1);
    uint32_t elem[2];
    memcpy(elem, gp(f, USED + 4), 8);
    assert_int_equal(elem[0], 3);
    assert_int_equal(elem[1], 100);
    assert_true(guest_memory_test_and_clear_dirty(&f->mem, BUF / GUEST_PAGE_SIZE));
    assert_true(guest_memory_test_and_clear_dirty(&f->mem, USED / GUEST_PAGE_SIZE));
    assert_int_equal(virtqueue_pop(&f->vq, &c), 0);
}

static void test_readable_then_writable(void **state)
{
    struct fixture *f = *state;
    memcpy(gp(f, BUF), "request", 8);
    set_desc(f, DESC, 0, BUF, 8, VIRTQ_DESC_F_NEXT, 5);
    set_desc(f, DESC, 5, BUF + 0x100, 16, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 6);
    set_desc(f, DESC, 6, BUF + 0x200, 1, VIRTQ_DESC_F_WRITE, 0);
    post(f, 0);
    struct vq_chain c;
    assert_int_equal(virtqueue_pop(&f->vq, &c), 1);
    assert_int_equal(c.out_count, 1);
    assert_int_equal(c.in_count, 2);
    assert_int_equal(c.out_bytes, 8);
    assert_int_equal(c.in_bytes, 17);
    char req[8];
    assert_int_equal(vq_chain_read(&c, req, sizeof(req)), 8);
    assert_string_equal(req, "request");
    uint8_t reply[17];
    memset(reply, 0xab, sizeof(reply));
    assert_int_equal(vq_chain_write(&f->vq, &c, reply, sizeof(reply)), 17);
    assert_int_equal(*(uint8_t *)gp(f, BUF + 0x200), 0xab);
}

static void test_chain_clone(void **state)
{
    struct fixture *f = *state;
    set_desc(f, DESC, 0, BUF, 8, VIRTQ_DESC_F_NEXT, 1);
    set_desc(f, DESC, 1, BUF + 0x100, 16, VIRTQ_DESC_F_WRITE, 0);
    set_desc(f, DESC, 2, BUF + 0x200, 4, VIRTQ_DESC_F_WRITE, 0);
    post(f, 0);
    post(f, 2);
    struct vq_chain c;
    assert_int_equal(virtqueue_pop(&f->vq, &c), 1);
    struct vq_chain *kept = vq_chain_clone(&c);
    assert_non_null(kept);
    assert_int_equal(virtqueue_pop(&f->vq, &c), 1);   /* reuses the scratch arrays */
    assert_int_equal(kept->head, 0);
    assert_int_equal(kept->out_count, 1);
    assert_int_equal(kept->in_count, 1);
    assert_ptr_equal(kept->in[0].base, gp(f, BUF + 0x100));
    assert_int_equal(kept->in[0].len, 16);
    virtqueue_push(&f->vq, &c, 4);       /* completions in any order */
    virtqueue_push(&f->vq, kept, 16);
    uint32_t elem[4];
    memcpy(elem, gp(f, USED + 4), 16);
    assert_int_equal(elem[0], 2);
    assert_int_equal(elem[2], 0);
    assert_int_equal(elem[3], 16);
    vq_chain_free(kept);
}

static void test_indirect(void **state)
{
    struct fixture *f = *state;
    set_desc(f, TABLE, 0, BUF, 4, VIRTQ_DESC_F_NEXT, 1);
    set_desc(f, TABLE, 1, BUF + 4, 4, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
    set_desc(f, TABLE, 2, BUF + 8, 4, VIRTQ_DESC_F_WRITE, 0);
    set_desc(f, DESC, 1, TABLE, 48, VIRTQ_DESC_F_INDIRECT, 0);
    post(f, 1);
    struct vq_chain c;
    assert_int_equal(virtqueue_pop(&f->vq, &c), 1);
    assert_int_equal(c.out_count, 1);
    assert_int_equal(c.in_count, 2);
}

static void test_zero_length_segments_skipped(void **state)
{
    struct fixture *f = *state;
    set_desc(f, DESC, 0, BUF, 0, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
    set_desc(f, DESC, 1, BUF, 8, VIRTQ_DESC_F_WRITE, 0);
    post(f, 0);
    struct vq_chain c;
    assert_int_equal(virtqueue_pop(&f->vq, &c), 1);
    assert_int_equal(c.in_count, 1);
    assert_int_equal(c.in_bytes, 8);
}

static void test_loop(void **state)
{
    struct fixture *f = *state;
    set_desc(f, DESC, 0, BUF, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
    set_desc(f, DESC, 1, BUF, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 0);
    post(f, 0);
    expect_error(f, "loops");
}

static void test_self_loop_in_indirect(void **state)
{
    struct fixture *f = *state;
    set_desc(f, TABLE, 0, BUF, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 0);
    set_desc(f, DESC, 0, TABLE, 16, VIRTQ_DESC_F_INDIRECT, 0);
    post(f, 0);
    expect_error(f, "loops");
}

static void test_outside_ram(void **state)
{
    struct fixture *f = *state;
    set_desc(f, DESC, 0, RAM - 4, 8, VIRTQ_DESC_F_WRITE, 0);   /* straddles the end */
    post(f, 0);
    expect_error(f, "not in guest RAM");
}

static void test_address_wraps(void **state)
{
    struct fixture *f = *state;
    set_desc(f, DESC, 0, UINT64_MAX - 3, 8, VIRTQ_DESC_F_WRITE, 0);
    post(f, 0);
    expect_error(f, "not in guest RAM");
}

static void test_total_length_bounded(void **state)
{
    struct fixture *f = *state;
    /* 1024 indirect entries of 15 MiB each name the same RAM: > 4 GiB. */
    for (unsigned i = 0; i < VIRTQ_INDIRECT_MAX; i++)
        set_desc(f, 0x400000, i, 0, 15u << 20, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
                 (uint16_t)(i + 1));
    set_desc(f, DESC, 0, 0x400000, VIRTQ_INDIRECT_MAX * 16, VIRTQ_DESC_F_INDIRECT, 0);
    post(f, 0);
    expect_error(f, "longer than 4 GiB");
}

static void test_readable_after_writable(void **state)
{
    struct fixture *f = *state;
    set_desc(f, DESC, 0, BUF, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
    set_desc(f, DESC, 1, BUF, 8, 0, 0);
    post(f, 0);
    expect_error(f, "device-readable descriptor after a device-writable");
}

static void test_bad_indices(void **state)
{
    struct fixture *f = *state;
    post(f, QSIZE);
    expect_error(f, "beyond queue size");
}

static void test_next_out_of_range(void **state)
{
    struct fixture *f = *state;
    set_desc(f, DESC, 0, BUF, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, QSIZE);
    post(f, 0);
    expect_error(f, "beyond the queue");
}

static void test_avail_jump(void **state)
{
    struct fixture *f = *state;
    avail(f)[1] = QSIZE + 1;
    expect_error(f, "available index moved");
}

static void test_indirect_rules(void **state)
{
    struct fixture *f = *state;
    set_desc(f, DESC, 0, TABLE, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1);
    post(f, 0);
    expect_error(f, "both INDIRECT and NEXT");
    f->vq.last_avail_idx++;
    set_desc(f, DESC, 0, TABLE, 20, VIRTQ_DESC_F_INDIRECT, 0);
    post(f, 0);
    expect_error(f, "steps of 16");
    f->vq.last_avail_idx++;
    set_desc(f, TABLE, 0, TABLE + 64, 16, VIRTQ_DESC_F_INDIRECT, 0);
    set_desc(f, DESC, 0, TABLE, 16, VIRTQ_DESC_F_INDIRECT, 0);
    post(f, 0);
    expect_error(f, "nested indirect");
    f->vq.last_avail_idx++;
    set_desc(f, DESC, 0, RAM - 16, 32, VIRTQ_DESC_F_INDIRECT, 0);
    post(f, 0);
    expect_error(f, "indirect table");
    f->vq.last_avail_idx++;
    f->vq.indirect = false;
    set_desc(f, DESC, 0, TABLE, 16, VIRTQ_DESC_F_INDIRECT, 0);
    post(f, 0);
    expect_error(f, "without VIRTIO_F_INDIRECT_DESC");
}

static void test_enable_rules(void **state)
{
    struct fixture *f = *state;
    struct virtqueue *vq = &f->vq;
    vq->size = 3;
    assert_int_equal(virtqueue_enable(vq), -1);
    assert_non_null(strstr(vmm_get_error(), "power of two"));
    vq->size = 512;   /* above max_size 256 */
    assert_int_equal(virtqueue_enable(vq), -1);
    vq->size = 0;
    assert_int_equal(virtqueue_enable(vq), -1);
    vq->size = QSIZE;
    vq->desc_gpa = DESC + 8;
    assert_int_equal(virtqueue_enable(vq), -1);
    assert_non_null(strstr(vmm_get_error(), "aligned"));
    vq->desc_gpa = DESC;
    vq->used_gpa = RAM - 8;
    assert_int_equal(virtqueue_enable(vq), -1);
    assert_non_null(strstr(vmm_get_error(), "used ring"));
    vq->used_gpa = USED + 2;
    assert_int_equal(virtqueue_enable(vq), -1);
    vq->used_gpa = USED;
    assert_int_equal(virtqueue_enable(vq), 0);
}

static void complete_one(struct fixture *f)
{
    set_desc(f, DESC, 0, BUF, 8, VIRTQ_DESC_F_WRITE, 0);
    post(f, 0);
    struct vq_chain c;
    assert_int_equal(virtqueue_pop(&f->vq, &c), 1);
    virtqueue_push(&f->vq, &c, 8);
}

static void test_notify_flags(void **state)
{
    struct fixture *f = *state;
    complete_one(f);
    assert_true(virtqueue_should_notify(&f->vq));
    avail(f)[0] = VIRTQ_AVAIL_F_NO_INTERRUPT;
    complete_one(f);
    assert_false(virtqueue_should_notify(&f->vq));
    virtqueue_set_notify(&f->vq, false);
    assert_int_equal(used(f)[0] & VIRTQ_USED_F_NO_NOTIFY, VIRTQ_USED_F_NO_NOTIFY);
    virtqueue_set_notify(&f->vq, true);
    assert_int_equal(used(f)[0] & VIRTQ_USED_F_NO_NOTIFY, 0);
}

static void test_event_idx(void **state)
{
    struct fixture *f = *state;
    f->vq.event_idx = true;
    uint16_t *used_event = &avail(f)[2 + QSIZE];
    *used_event = 0;
    complete_one(f);                       /* used 0 -> 1, event 0: notify */
    assert_true(virtqueue_should_notify(&f->vq));
    *used_event = 5;                       /* "interrupt me after entry 5" */
    complete_one(f);
    assert_false(virtqueue_should_notify(&f->vq));
    *used_event = 1;                       /* entry 1 was used before this signal */
    complete_one(f);                       /* used 2 -> 3 */
    assert_false(virtqueue_should_notify(&f->vq));
    *used_event = 3;                       /* "after entry 3": used 3 -> 4 crosses it */
    complete_one(f);
    assert_true(virtqueue_should_notify(&f->vq));
    /* avail_event follows what the device consumed. */
    virtqueue_set_notify(&f->vq, true);
    uint16_t avail_event;
    memcpy(&avail_event, gp(f, USED + 4 + 8 * QSIZE), 2);
    assert_int_equal(avail_event, f->vq.last_avail_idx);
}

/* A merged receive frame: elements first, one used index update for all
 * (virtio-net); avail_event past chains handed back unpopped. */
static void test_fill_flush_and_notify_on_more(void **state)
{
    struct fixture *f = *state;
    struct vq_chain c[3];
    for (uint16_t i = 0; i < 3; i++) {
        set_desc(f, DESC, i, BUF + 64 * i, 64, VIRTQ_DESC_F_WRITE, 0);
        post(f, i);
        assert_int_equal(virtqueue_pop(&f->vq, &c[i]), 1);
    }
    for (unsigned i = 0; i < 3; i++) {
        virtqueue_fill(&f->vq, &c[i], 1000, i);     /* clamped to 64 */
        assert_int_equal(used(f)[1], 0);            /* nothing visible yet */
    }
    virtqueue_flush(&f->vq, 3);
    assert_int_equal(used(f)[1], 3);
    for (unsigned i = 0; i < 3; i++) {
        uint32_t e[2];
        memcpy(e, gp(f, USED + 4 + 8 * i), 8);
        assert_int_equal(e[0], i);
        assert_int_equal(e[1], 64);
    }
    f->vq.event_idx = true;
    post(f, 0);
    post(f, 1);
    f->vq.last_avail_idx = 3;                       /* both seen, handed back */
    virtqueue_notify_on_more(&f->vq);
    uint16_t avail_event;
    memcpy(&avail_event, gp(f, USED + 4 + 8 * QSIZE), 2);
    assert_int_equal(avail_event, 5);
}

static void test_index_wraps(void **state)
{
    struct fixture *f = *state;
    f->vq.last_avail_idx = f->vq.used_idx = 0xfffe;
    avail(f)[1] = 0xfffe;
    used(f)[1] = 0xfffe;
    for (unsigned i = 0; i < 4; i++)
        complete_one(f);
    assert_int_equal(f->vq.last_avail_idx, 2);
    assert_int_equal(used(f)[1], 2);
}

static void test_not_ready(void **state)
{
    struct fixture *f = *state;
    virtqueue_reset(&f->vq);
    post(f, 0);
    struct vq_chain c;
    assert_int_equal(virtqueue_pop(&f->vq, &c), 0);
    assert_false(virtqueue_should_notify(&f->vq));
}

/* ---- device state ---------------------------------------------------------- */

static void sample_state(struct virtio_state *s)
{
    memset(s, 0, sizeof(*s));
    s->status = 0x0f;
    s->config_generation = 3;
    s->isr = 1;
    s->guest_features = (1ull << 32) | (1ull << 28);
    s->device_feature_sel = 1;
    s->queue_sel = 0;
    s->config_vector = 0;
    s->num_queues = 2;
    for (unsigned i = 0; i < 2; i++) {
        s->q_size[i] = 128;
        s->q_ready[i] = 1;
        s->q_vector[i] = (uint16_t)(i + 1);
        s->q_last_avail[i] = 1000;
        s->q_used_idx[i] = 998;
        s->q_desc[i] = 0x100000 + i * 0x10000;
        s->q_avail[i] = 0x101000 + i * 0x10000;
        s->q_used[i] = 0x102000 + i * 0x10000;
    }
    s->pci_config[0] = 0xf4;
    s->pci_config[1] = 0x1a;
    for (unsigned v = 0; v < 3; v++) {
        s->msix_table[v * 16 + 0] = 0xee;         /* address 0xfee00000 + ... */
        s->msix_table[v * 16 + 8] = (uint8_t)(0x30 + v);
        s->msix_table[v * 16 + 12] = v == 2;      /* vector 2 masked */
    }
    s->msix_pba = 1u << 2;
    s->has_msix = 1;                              /* what post_load derives at version 2 */
}

static void test_state_roundtrip(void **state)
{
    (void)state;
    struct virtio_state s;
    sample_state(&s);
    state_check_roundtrip(&virtio_state_desc, &s);
}

/* A version 1 stream (no MSI-X table) loads and says so. */
static void test_state_version1_has_no_msix(void **state)
{
    (void)state;
    struct virtio_state s, loaded;
    sample_state(&s);
    struct state_buf buf = { 0 };
    assert_int_equal(state_save_version(&virtio_state_desc, &s, 1, &buf), 0);
    size_t used = 0;
    assert_int_equal(state_load(&virtio_state_desc, &loaded, buf.data, buf.len, &used), 0);
    assert_int_equal(loaded.has_msix, 0);
    assert_int_equal(loaded.q_size[1], 128);
    state_buf_free(&buf);
}

static void expect_rejected(struct virtio_state *s, const char *needle)
{
    struct state_buf buf = { 0 };
    assert_int_equal(state_save(&virtio_state_desc, s, &buf), 0);
    state_check_load_fails(&virtio_state_desc, buf.data, buf.len, needle);
    state_buf_free(&buf);
}

static void test_state_validation(void **state)
{
    (void)state;
    struct virtio_state s;
    sample_state(&s);
    s.q_size[1] = 100;
    expect_rejected(&s, "size 100");
    sample_state(&s);
    s.num_queues = VIRTIO_MAX_QUEUES + 1;
    expect_rejected(&s, "33 queues");
    sample_state(&s);
    s.q_size[5] = 8;
    expect_rejected(&s, "beyond");
    sample_state(&s);
    s.q_last_avail[0] = 2000;
    expect_rejected(&s, "in flight");
    sample_state(&s);
    s.status = 0x30;
    expect_rejected(&s, "status");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_empty, setup, teardown),
        cmocka_unit_test(test_state_version1_has_no_msix),
        cmocka_unit_test_setup_teardown(test_single_writable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readable_then_writable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_indirect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chain_clone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_zero_length_segments_skipped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_self_loop_in_indirect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outside_ram, setup, teardown),
        cmocka_unit_test_setup_teardown(test_address_wraps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_total_length_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readable_after_writable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_indices, setup, teardown),
        cmocka_unit_test_setup_teardown(test_next_out_of_range, setup, teardown),
        cmocka_unit_test_setup_teardown(test_avail_jump, setup, teardown),
        cmocka_unit_test_setup_teardown(test_indirect_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_enable_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_notify_flags, setup, teardown),
        cmocka_unit_test_setup_teardown(test_event_idx, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fill_flush_and_notify_on_more, setup, teardown),
        cmocka_unit_test_setup_teardown(test_index_wraps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_ready, setup, teardown),
        cmocka_unit_test(test_state_roundtrip),
        cmocka_unit_test(test_state_validation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
