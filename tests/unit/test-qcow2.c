/* qcow2 through the driver contract (block-int.h): concurrent writers on
 * shared clusters, block status, compressed writes, write-zeroes fallbacks,
 * snapshots and check, on images made by qemu-img and by the driver. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "block/block-core.h"

static char dir[] = "/tmp/test-qcow2-XXXXXX";

static const char *path(const char *name)
{
    static char buf[4][256];
    static int i;
    char *p = buf[i++ % 4];
    snprintf(p, 256, "%s/%s", dir, name);
    return p;
}

static void sh(const char *fmt, ...)
{
    char cmd[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    assert_int_equal(system(cmd), 0);
}

static struct block_node *open_rw(const char *file)
{
    struct block_node *bs = NULL;
    int r = block_open(&bs, file, false, "qcow2", BLOCK_O_RDWR);
    if (r < 0)
        fail_msg("open %s: %s", file, vmm_get_error());
    return bs;
}

static void check_clean(struct block_node *bs)
{
    struct block_check_result res;
    memset(&res, 0, sizeof(res));
    assert_int_equal(bs->drv->check(bs, &res, 0), 0);
    if (res.corruptions || res.leaks)
        fail_msg("check: %s", res.messages ? res.messages : "");
    free(res.messages);
}

/* ---- concurrent writers ---------------------------------------------------- */

struct writer {
    struct block_node *bs;
    int id;
};

#define WRITERS 4
#define CHUNK 1500      /* smaller than a cluster: writers share clusters */
#define ROUNDS 200

static void *write_loop(void *opaque)
{
    struct writer *w = opaque;
    uint8_t buf[CHUNK];
    memset(buf, 'A' + w->id, sizeof(buf));
    for (int i = 0; i < ROUNDS; i++) {
        uint64_t off = ((uint64_t)i * WRITERS + (uint64_t)w->id) * CHUNK;
        if (block_node_pwrite(w->bs, off, buf, CHUNK, 0) < 0)
            return (void *)1;
    }
    return NULL;
}

static void test_concurrent_writers(void **state)
{
    (void)state;
    sh("qemu-img create -q -f qcow2 -o cluster_size=4k %s 4M", path("conc.qcow2"));
    sh("qemu-io -c 'write -P 0x11 0 4M' %s >/dev/null", path("conc.qcow2"));
    sh("qemu-img snapshot -c base %s", path("conc.qcow2"));   /* every write is a COW */
    struct block_node *bs = open_rw(path("conc.qcow2"));
    pthread_t t[WRITERS];
    struct writer w[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        w[i] = (struct writer){ bs, i };
        assert_int_equal(pthread_create(&t[i], NULL, write_loop, &w[i]), 0);
    }
    for (int i = 0; i < WRITERS; i++) {
        void *ret;
        pthread_join(t[i], &ret);
        assert_null(ret);
    }
    uint8_t *all = malloc(4u << 20);
    assert_int_equal(block_node_pread(bs, 0, all, 4u << 20), 0);
    for (uint64_t i = 0; i < (uint64_t)ROUNDS * WRITERS; i++)
        for (int k = 0; k < CHUNK; k++)
            if (all[i * CHUNK + (uint64_t)k] != 'A' + i % WRITERS)
                fail_msg("chunk %" PRIu64 " byte %d", i, k);
    for (uint64_t b = (uint64_t)ROUNDS * WRITERS * CHUNK; b < (4u << 20); b++)
        if (all[b] != 0x11)
            fail_msg("byte %" PRIu64 " lost its old content", b);
    free(all);
    block_node_unref(bs);
    sh("qemu-img check -q %s", path("conc.qcow2"));
    sh("qemu-img snapshot -a base %s && qemu-io -c 'read -P 0x11 0 4M' %s >/dev/null",
       path("conc.qcow2"), path("conc.qcow2"));
}

/* Whole-cluster allocating writes from several threads into the same L2
 * tables (their data I/O runs without the metadata lock). */
struct big_writer {
    struct block_node *bs;
    int id;
};

static void *big_write_loop(void *opaque)
{
    struct big_writer *w = opaque;
    static const uint64_t len = 3 * 4096;
    uint8_t *buf = malloc(len);
    memset(buf, 'a' + w->id, len);
    void *ret = NULL;
    for (uint64_t i = 0; i < 300 && !ret; i++) {
        uint64_t off = (i * WRITERS + (uint64_t)w->id) * len;
        if (block_node_pwrite(w->bs, off, buf, len, 0) < 0)
            ret = (void *)1;
        /* and a partial rewrite of a neighbour's range (COW or in place) */
        if (i % 7 == 0 && block_node_pwrite(w->bs, off + len + 100, buf, 300, 0) < 0)
            ret = (void *)1;
    }
    free(buf);
    return ret;
}

static void test_concurrent_allocations(void **state)
{
    (void)state;
    assert_int_equal(block_create(path("big.qcow2"), "qcow2", 16u << 20, "cluster_size=4096"), 0);
    struct block_node *bs = open_rw(path("big.qcow2"));
    pthread_t t[WRITERS];
    struct big_writer w[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        w[i] = (struct big_writer){ bs, i };
        assert_int_equal(pthread_create(&t[i], NULL, big_write_loop, &w[i]), 0);
    }
    for (int i = 0; i < WRITERS; i++) {
        void *ret;
        pthread_join(t[i], &ret);
        assert_null(ret);
    }
    /* every byte is one of the writers' letters, never stale zeroes inside
     * a chunk that was written whole after the last partial rewrite */
    uint8_t *all = malloc(16u << 20);
    assert_int_equal(block_node_pread(bs, 0, all, 16u << 20), 0);
    for (uint64_t b = 0; b < 300ull * WRITERS * 3 * 4096; b++)
        if (all[b] < 'a' || all[b] >= 'a' + WRITERS)
            fail_msg("byte %" PRIu64 " is %#x", b, all[b]);
    free(all);
    check_clean(bs);
    block_node_unref(bs);
    sh("qemu-img check -q %s", path("big.qcow2"));
}

/* ---- block status, zeroes, compressed -------------------------------------------- */

static void test_block_status_and_zeroes(void **state)
{
    (void)state;
    assert_int_equal(block_create(path("bs.qcow2"), "qcow2", 1u << 20, "cluster_size=4096"), 0);
    struct block_node *bs = open_rw(path("bs.qcow2"));
    uint8_t buf[8192];
    memset(buf, 7, sizeof(buf));
    assert_int_equal(block_node_pwrite(bs, 0, buf, 8192, 0), 0);
    assert_int_equal(bs->drv->pwrite_zeroes(bs, 8192, 8192, BLOCK_REQ_MAY_UNMAP), 0);
    struct block_status st;
    assert_int_equal(bs->drv->block_status(bs, 0, 1u << 20, &st), 0);
    assert_int_equal(st.bytes, 8192);
    assert_int_equal(st.flags, BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED |
                               BLOCK_STATUS_OFFSET_VALID);
    assert_true(st.file == bs->file && st.map_offset % 4096 == 0);
    assert_int_equal(bs->drv->block_status(bs, 8192, 1u << 20, &st), 0);
    assert_int_equal(st.flags, BLOCK_STATUS_ZERO | BLOCK_STATUS_ALLOCATED);
    assert_int_equal(st.bytes, 8192);
    assert_int_equal(bs->drv->block_status(bs, 16384, 1u << 20, &st), 0);
    assert_int_equal(st.flags, 0);
    /* unaligned zeroes without fallback: refused, nothing changed */
    assert_int_equal(bs->drv->pwrite_zeroes(bs, 100, 5000, BLOCK_REQ_NO_FALLBACK), -ENOTSUP);
    assert_int_equal(block_node_pread(bs, 0, buf, 8192), 0);
    assert_int_equal(buf[100], 7);
    /* one compressed cluster */
    memset(buf, 'z', 4096);
    assert_int_equal(block_node_pwrite(bs, 65536, buf, 4096, BLOCK_REQ_COMPRESSED), 0);
    assert_int_equal(bs->drv->block_status(bs, 65536, 4096, &st), 0);
    assert_int_equal(st.flags, BLOCK_STATUS_DATA | BLOCK_STATUS_ALLOCATED);
    memset(buf, 0, 4096);
    assert_int_equal(block_node_pread(bs, 65536, buf, 4096), 0);
    for (int i = 0; i < 4096; i++)
        assert_int_equal(buf[i], 'z');
    /* a compressed write must be one whole cluster */
    assert_true(block_node_pwrite(bs, 65536 + 512, buf, 512, BLOCK_REQ_COMPRESSED) < 0);
    assert_true(strstr(vmm_get_error(), "whole cluster") != NULL);
    check_clean(bs);
    block_node_unref(bs);
    sh("qemu-img check -q %s", path("bs.qcow2"));
    sh("qemu-io -c 'read -P 7 0 8k' -c 'read -P 0 8k 8k' -c 'read -P 0x7a 64k 4k' %s >/dev/null",
       path("bs.qcow2"));
}

static void test_v2_zeroes_over_backing(void **state)
{
    (void)state;
    sh("qemu-img create -q -f raw %s 1M && qemu-io -f raw -c 'write -P 9 0 1M' %s >/dev/null",
       path("base.raw"), path("base.raw"));
    sh("qemu-img create -q -f qcow2 -o compat=0.10 -b %s -F raw %s", path("base.raw"),
       path("v2.qcow2"));
    struct block_node *bs = open_rw(path("v2.qcow2"));
    /* v2 has no zero flag: over a backing file this needs data writes */
    assert_int_equal(bs->drv->pwrite_zeroes(bs, 0, 65536, BLOCK_REQ_NO_FALLBACK), -ENOTSUP);
    assert_int_equal(bs->drv->pwrite_zeroes(bs, 0, 65536, 0), 0);
    uint8_t buf[512];
    assert_int_equal(block_node_pread(bs, 65536, buf, 512), 0);
    assert_int_equal(buf[0], 9);
    assert_int_equal(block_node_pread(bs, 1000, buf, 512), 0);
    assert_int_equal(buf[0], 0);
    block_node_unref(bs);
    sh("qemu-img check -q %s && qemu-io -c 'read -P 0 0 64k' -c 'read -P 9 64k 960k' %s >/dev/null",
       path("v2.qcow2"), path("v2.qcow2"));
}

/* ---- snapshots through the contract ------------------------------------------------- */

static void test_snapshots(void **state)
{
    (void)state;
    assert_int_equal(block_create(path("sn.qcow2"), "qcow2", 2u << 20, "cluster_size=512"), 0);
    struct block_node *bs = open_rw(path("sn.qcow2"));
    uint8_t a[4096], b[4096];
    memset(a, 'a', sizeof(a));
    memset(b, 'b', sizeof(b));
    assert_int_equal(block_node_pwrite(bs, 1000, a, sizeof(a), 0), 0);
    struct block_snapshot sn = { .name = (char *)"first", .icount = UINT64_MAX };
    assert_int_equal(bs->drv->snapshot_create(bs, &sn), 0);
    assert_int_equal(block_node_pwrite(bs, 3000, b, sizeof(b), 0), 0);
    struct block_snapshot *list;
    int n;
    assert_int_equal(bs->drv->snapshot_list(bs, &list, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(list[0].name, "first");
    assert_string_equal(list[0].id, "1");
    free(list[0].id);
    free(list[0].name);
    free(list);
    assert_true(bs->drv->snapshot_goto(bs, "nosuch") < 0);
    assert_int_equal(bs->drv->snapshot_goto(bs, "first"), 0);
    uint8_t got[8192];
    assert_int_equal(block_node_pread(bs, 0, got, sizeof(got)), 0);
    for (int i = 0; i < 8192; i++)
        assert_int_equal(got[i], i >= 1000 && i < 5096 ? 'a' : 0);
    check_clean(bs);
    assert_int_equal(bs->drv->snapshot_delete(bs, "1"), 0);
    check_clean(bs);
    block_node_unref(bs);
    sh("qemu-img check -q %s", path("sn.qcow2"));
}

static int setup(void **state)
{
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_writers),
        cmocka_unit_test(test_concurrent_allocations),
        cmocka_unit_test(test_block_status_and_zeroes),
        cmocka_unit_test(test_v2_zeroes_over_backing),
        cmocka_unit_test(test_snapshots),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
