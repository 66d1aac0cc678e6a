/* Unit tests for the block core (lib/block/block.c, file.c, raw.c): option
 * strings, probing, relative backing names, the synchronous helpers, locks,
 * O_DIRECT bouncing and creation.  Real files in a temporary directory. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#include "block/block-core.h"

static char dir[] = "/var/tmp/vmm-block-core-XXXXXX";

static char *path(const char *name)
{
    static char buf[4][256];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof(buf[i]), "%s/%s", dir, name);
    return buf[i];
}

static void write_file(const char *name, size_t size, int fill)
{
    FILE *f = fopen(path(name), "wb");
    assert_non_null(f);
    char *data = malloc(size);
    memset(data, fill, size);
    assert_int_equal(fwrite(data, 1, size, f), size);
    free(data);
    fclose(f);
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
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd);
}

static void open_by_filename_and_read(void **state)
{
    (void)state;
    write_file("a.raw", 8192, 0x42);
    struct block_node *bs = NULL;
    assert_int_equal(block_open(&bs, path("a.raw"), false, "raw", 0), 0);
    assert_string_equal(bs->drv->name, "raw");
    assert_string_equal(bs->file->drv->name, "file");
    assert_int_equal(bs->size, 8192);
    assert_true(bs->read_only);
    char buf[100];
    assert_int_equal(block_node_pread(bs, 8000, buf, sizeof(buf)), 0);
    assert_int_equal(buf[0], 0x42);
    assert_int_equal(block_node_pwrite(bs, 0, buf, 10, 0), -EPERM);
    assert_non_null(strstr(vmm_get_error(), "the image is opened read-only"));
    block_node_unref(bs);
}

static void probing_picks_raw_and_never_a_backing(void **state)
{
    (void)state;
    write_file("p.raw", 4096, 0);
    struct block_node *bs = NULL;
    assert_int_equal(block_open(&bs, path("p.raw"), false, NULL, BLOCK_O_RDWR), 0);
    assert_string_equal(bs->drv->name, "raw");
    assert_true(bs->open_flags & BLOCK_O_PROBED);
    assert_true(bs->open_flags & BLOCK_O_NO_BACKING);
    assert_null(bs->backing);
    assert_ptr_equal(block_probe(bs->file), &block_driver_raw);
    block_node_unref(bs);
}

static void options_string_window(void **state)
{
    (void)state;
    write_file("w.raw", 3 * 4096, 0);
    struct block_node *bs = NULL;
    char spec[512];
    snprintf(spec, sizeof(spec), "driver=raw,file.filename=%s,offset=4k,size=4k,read-only=off", path("w.raw"));
    assert_true(block_spec_is_options(spec));
    assert_int_equal(block_open(&bs, spec, true, NULL, BLOCK_O_RDWR), 0);
    assert_int_equal(bs->size, 4096);
    char data[4096];
    memset(data, 0x7e, sizeof(data));
    assert_int_equal(block_node_pwrite(bs, 0, data, sizeof(data), BLOCK_REQ_FUA), 0);
    block_node_unref(bs);
    FILE *f = fopen(path("w.raw"), "rb");
    char all[3 * 4096];
    assert_int_equal(fread(all, 1, sizeof(all), f), sizeof(all));
    fclose(f);
    assert_int_equal(all[4095], 0);
    assert_int_equal(all[4096], 0x7e);
    assert_int_equal(all[8191], 0x7e);
    assert_int_equal(all[8192], 0);
}

static void options_string_errors(void **state)
{
    (void)state;
    struct block_node *bs = NULL;
    assert_int_equal(block_open(&bs, "driver=raw", true, NULL, 0), -EINVAL);
    assert_string_equal(vmm_get_error(), "a filename is required (filename= or file.filename=)");
    assert_int_equal(block_open(&bs, "driver=nope,filename=x", true, NULL, 0), -EINVAL);
    assert_string_equal(vmm_get_error(), "Unknown driver 'nope'");
    assert_int_equal(block_open(&bs, "driver=raw,filename=x,backing=other", true, NULL, 0), -EINVAL);
    assert_string_equal(vmm_get_error(), "backing: only 'null' is accepted (use backing.file.filename=...)");
    assert_int_equal(block_open(&bs, "driver=raw,file.driver=raw,file.filename=x", true, NULL, 0), -EINVAL);
    assert_string_equal(vmm_get_error(), "file.driver: 'raw' is not a protocol driver");
    char spec[512];
    write_file("e.raw", 512, 0);
    snprintf(spec, sizeof(spec), "driver=raw,file.filename=%s,force-share=on,read-only=off", path("e.raw"));
    assert_int_equal(block_open(&bs, spec, true, NULL, 0), -EINVAL);
    assert_string_equal(vmm_get_error(), "force-share=on can only be used with read-only images");
    snprintf(spec, sizeof(spec), "driver=raw,file.filename=%s,backing.driver=raw", path("e.raw"));
    assert_int_equal(block_open(&bs, spec, true, NULL, 0), -EINVAL);
    assert_null(bs);
}

static void relative_backing_names(void **state)
{
    (void)state;
    char *s = block_resolve_relative("/a/b/top.qcow2", "base.raw");
    assert_string_equal(s, "/a/b/base.raw");
    free(s);
    s = block_resolve_relative("/a/b/top.qcow2", "/abs/base.raw");
    assert_string_equal(s, "/abs/base.raw");
    free(s);
    s = block_resolve_relative("top.qcow2", "base.raw");
    assert_string_equal(s, "base.raw");
    free(s);
    s = block_resolve_relative("d/top.qcow2", "../x/base.raw");
    assert_string_equal(s, "d/../x/base.raw");
    free(s);
}

static void zeroes_discard_and_status(void **state)
{
    (void)state;
    write_file("z.raw", 1 << 20, 0x33);
    struct block_node *bs = NULL;
    assert_int_equal(block_open(&bs, path("z.raw"), false, "raw", BLOCK_O_RDWR), 0);
    assert_int_equal(block_node_pwrite_zeroes(bs, 256 << 10, 256 << 10, BLOCK_REQ_MAY_UNMAP), 0);
    struct block_status st;
    assert_int_equal(block_node_block_status(bs, 256 << 10, 512 << 10, &st), 0);
    assert_true(st.flags & BLOCK_STATUS_ZERO);
    assert_true(st.flags & BLOCK_STATUS_ALLOCATED);
    assert_int_equal(st.bytes, 256 << 10);
    assert_ptr_equal(st.file, bs->file);
    assert_int_equal(block_node_block_status(bs, 0, 1 << 20, &st), 0);
    assert_true(st.flags & BLOCK_STATUS_DATA);
    assert_int_equal(st.bytes, 256 << 10);
    assert_int_equal(block_node_block_status(bs, 1 << 20, 1, &st), -EINVAL);
    char buf[4096];
    assert_int_equal(block_node_pread(bs, 300 << 10, buf, sizeof(buf)), 0);
    for (size_t i = 0; i < sizeof(buf); i++)
        assert_int_equal(buf[i], 0);
    assert_int_equal(block_node_pdiscard(bs, 0, 64 << 10), 0);
    int64_t before = block_node_allocated(bs);
    assert_int_equal(block_node_truncate(bs, 4 << 20, false, PREALLOC_FULL), 0);
    assert_true(block_node_allocated(bs) >= before + (3 << 20));
    assert_int_equal(block_node_truncate(bs, 1 << 20, false, PREALLOC_OFF), -EINVAL);
    assert_int_equal(block_node_truncate(bs, 1 << 20, true, PREALLOC_OFF), 0);
    assert_int_equal(bs->size, 1 << 20);
    block_node_unref(bs);
}

static void locks_between_opens(void **state)
{
    (void)state;
    write_file("l.raw", 4096, 0);
    struct block_node *w = NULL, *w2 = NULL, *r = NULL, *shared = NULL;
    assert_int_equal(block_open(&w, path("l.raw"), false, "raw", BLOCK_O_RDWR), 0);
    assert_int_equal(block_open(&w2, path("l.raw"), false, "raw", BLOCK_O_RDWR), -EAGAIN);
    assert_non_null(strstr(vmm_get_error(), "Failed to get \"write\" lock"));
    assert_int_equal(block_open(&r, path("l.raw"), false, "raw", 0), -EAGAIN);
    assert_non_null(strstr(vmm_get_error(), "Failed to get shared \"write\" lock"));
    assert_int_equal(block_open(&shared, path("l.raw"), false, "raw", BLOCK_O_FORCE_SHARE), 0);
    block_node_unref(shared);
    block_node_unref(w);
    assert_int_equal(block_open(&r, path("l.raw"), false, "raw", 0), 0);
    assert_int_equal(block_open(&w2, path("l.raw"), false, "raw", BLOCK_O_RDWR), -EAGAIN);
    block_node_unref(r);
}

static void direct_io_bounces_unaligned(void **state)
{
    (void)state;
    write_file("d.raw", 16384, 0x11);
    struct block_node *bs = NULL;
    int ret = block_open(&bs, path("d.raw"), false, "raw", BLOCK_O_RDWR | BLOCK_O_NOCACHE);
    if (ret == -EINVAL) {
        skip(); /* file system without O_DIRECT */
        return;
    }
    assert_int_equal(ret, 0);
    assert_true(bs->file->request_alignment >= 512);
    char data[1000], back[3000];
    memset(data, 0x22, sizeof(data));
    assert_int_equal(block_node_pwrite(bs, 777, data, sizeof(data), 0), 0);
    assert_int_equal(block_node_pread(bs, 0, back, sizeof(back)), 0);
    assert_int_equal(back[776], 0x11);
    assert_int_equal(back[777], 0x22);
    assert_int_equal(back[1776], 0x22);
    assert_int_equal(back[1777], 0x11);
    block_node_unref(bs);
    struct stat st;
    assert_int_equal(stat(path("d.raw"), &st), 0);
    assert_int_equal(st.st_size, 16384);
}

static void create_raw_with_options(void **state)
{
    (void)state;
    assert_int_equal(block_create(path("c.raw"), "raw", 1 << 20, "preallocation=full"), 0);
    struct stat st;
    assert_int_equal(stat(path("c.raw"), &st), 0);
    assert_int_equal(st.st_size, 1 << 20);
    assert_true(st.st_blocks * 512 >= (1 << 20));
    assert_int_equal(block_create(path("c2.raw"), "raw", 4096, "cluster_size=64k"), -EINVAL);
    assert_string_equal(vmm_get_error(), "Invalid parameter 'cluster_size'");
    assert_int_equal(block_create(path("c2.raw"), "raw", 4096, "size=1M"), -EINVAL);
    assert_string_equal(vmm_get_error(), "size: give the size as an argument, not as an option");
    assert_int_equal(block_create(path("c2.raw"), "vhdx", 4096, NULL), -EINVAL);
    assert_string_equal(vmm_get_error(), "Unknown file format 'vhdx'");
    /* an existing file in use is not emptied */
    write_file("busy.raw", 8192, 1);
    struct block_node *holder = NULL;
    assert_int_equal(block_open(&holder, path("busy.raw"), false, "raw", BLOCK_O_RDWR), 0);
    assert_int_equal(block_create(path("busy.raw"), "raw", 4096, NULL), -EAGAIN);
    block_node_unref(holder);
    assert_int_equal(stat(path("busy.raw"), &st), 0);
    assert_int_equal(st.st_size, 8192);
}

static void info_items(void **state)
{
    (void)state;
    struct block_info info = { 0 };
    assert_int_equal(block_info_add_str(&info, "compat", "1.1"), 0);
    assert_int_equal(block_info_add_int(&info, "refcount-bits", 16), 0);
    assert_int_equal(block_info_add_bool(&info, "corrupt", false), 0);
    assert_int_equal(info.count, 3);
    assert_string_equal(info.items[0].str, "1.1");
    assert_int_equal(info.items[1].kind, INFO_INT);
    assert_int_equal(info.items[1].num, 16);
    assert_int_equal(info.items[2].kind, INFO_BOOL);
    block_info_clear(&info);
    assert_int_equal(info.count, 0);
    assert_null(info.items);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(open_by_filename_and_read),
        cmocka_unit_test(probing_picks_raw_and_never_a_backing),
        cmocka_unit_test(options_string_window),
        cmocka_unit_test(options_string_errors),
        cmocka_unit_test(relative_backing_names),
        cmocka_unit_test(zeroes_discard_and_status),
        cmocka_unit_test(locks_between_opens),
        cmocka_unit_test(direct_io_bounces_unaligned),
        cmocka_unit_test(create_raw_with_options),
        cmocka_unit_test(info_items),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
