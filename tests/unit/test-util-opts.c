/* Unit tests for lib/util: option strings, typed properties, size parsing. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "util/util.h"

static void opts_parse_basic(void **state)
{
    (void)state;
    vmm_opts *o = vmm_opts_parse("virtio-blk,id=disk0,drive=a,,b", "driver");
    assert_non_null(o);
    assert_int_equal(vmm_opts_count(o), 3);
    assert_string_equal(vmm_opts_get(o, "driver"), "virtio-blk");
    assert_string_equal(vmm_opts_get(o, "drive"), "a,b");
    assert_int_equal(vmm_opts_check_all_used(o, "dev"), -1);
    assert_string_equal(vmm_get_error(), "dev: unknown property 'id'");
    assert_string_equal(vmm_opts_get(o, "id"), "disk0");
    assert_int_equal(vmm_opts_check_all_used(o, "dev"), 0);
    assert_null(vmm_opts_get(o, "missing"));
    vmm_opts_free(o);
}

static void opts_parse_errors(void **state)
{
    (void)state;
    assert_null(vmm_opts_parse("a=1,a=2", NULL));
    assert_string_equal(vmm_get_error(), "'a' is given twice");
    assert_null(vmm_opts_parse("plain", NULL));
    assert_string_equal(vmm_get_error(), "'plain' is not of the form key=value");
    assert_null(vmm_opts_parse("=x", NULL));
    assert_string_equal(vmm_get_error(), "an option has an empty key");
    assert_null(vmm_opts_parse(",a=1", "driver"));
    assert_string_equal(vmm_get_error(), "empty driver");
    vmm_opts *o = vmm_opts_parse("a=1,", NULL); /* one trailing comma is fine */
    assert_non_null(o);
    assert_int_equal(vmm_opts_count(o), 1);
    vmm_opts_free(o);
}

static void opts_build(void **state)
{
    (void)state;
    vmm_opts *o = vmm_opts_new();
    assert_non_null(o);
    assert_int_equal(vmm_opts_count(o), 0);
    assert_int_equal(vmm_opts_add(o, "file.filename", "x,y.img"), 0);
    assert_int_equal(vmm_opts_add(o, "file.filename", "z"), -1);
    assert_false(vmm_opts_used(o, 0));
    assert_string_equal(vmm_opts_get(o, "file.filename"), "x,y.img");
    assert_true(vmm_opts_used(o, 0));
    assert_false(vmm_opts_used(o, 5));
    vmm_opts_free(o);
}

static void size_suffixes(void **state)
{
    (void)state;
    uint64_t v;
    assert_int_equal(vmm_parse_size("4096", &v), 0);
    assert_int_equal(v, 4096);
    assert_int_equal(vmm_parse_size("1k", &v), 0);
    assert_int_equal(v, 1024);
    assert_int_equal(vmm_parse_size("512M", &v), 0);
    assert_int_equal(v, 512ull << 20);
    assert_int_equal(vmm_parse_size("1.5G", &v), 0);
    assert_int_equal(v, 3ull << 29);
    assert_int_equal(vmm_parse_size("2T", &v), 0);
    assert_int_equal(v, 2ull << 40);
    assert_int_equal(vmm_parse_size("1E", &v), 0);
    assert_int_equal(v, 1ull << 60);
    assert_int_equal(vmm_parse_size("10b", &v), 0);
    assert_int_equal(v, 10);
}

static void size_errors(void **state)
{
    (void)state;
    uint64_t v = 7;
    assert_int_equal(vmm_parse_size("", &v), -1);
    assert_string_equal(vmm_get_error(), "empty size");
    assert_int_equal(vmm_parse_size("-1", &v), -1);
    assert_string_equal(vmm_get_error(), "'-1' is not a size: sign not allowed");
    assert_int_equal(vmm_parse_size("1Q", &v), -1);
    assert_string_equal(vmm_get_error(), "'1Q' is not a size: unknown suffix 'Q' (use K, M, G, T, P or E)");
    assert_int_equal(vmm_parse_size("1KB", &v), -1);
    assert_int_equal(vmm_parse_size("abc", &v), -1);
    assert_string_equal(vmm_get_error(), "'abc' is not a size");
    assert_int_equal(vmm_parse_size("16E", &v), -1);
    assert_int_equal(vmm_get_errno(), ERANGE);
    assert_int_equal(vmm_parse_size("0.3", &v), -1);
    assert_string_equal(vmm_get_error(), "'0.3' is not a whole number of bytes");
    assert_int_equal(v, 7); /* untouched on failure */
}

struct obj {
    char *name;
    bool on;
    uint32_t count;
    uint64_t size;
    int mode;
};

static const char *const modes[] = { "off", "falloc", "full", NULL };

static const struct vmm_prop props[] = {
    { "name", VMM_PROP_STR, offsetof(struct obj, name), "none", "a name", NULL, 0, 0 },
    { "on", VMM_PROP_BOOL, offsetof(struct obj, on), "off", "a switch", NULL, 0, 0 },
    { "count", VMM_PROP_U32, offsetof(struct obj, count), "4", "a count", NULL, 1, 16 },
    { "size", VMM_PROP_SIZE, offsetof(struct obj, size), "64k", "a size", NULL, 0, 0 },
    { "mode", VMM_PROP_ENUM, offsetof(struct obj, mode), "off", "a mode", modes, 0, 0 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

static void props_defaults_and_apply(void **state)
{
    (void)state;
    struct obj o = { 0 };
    assert_int_equal(vmm_props_init(props, &o, "t"), 0);
    assert_string_equal(o.name, "none");
    assert_false(o.on);
    assert_int_equal(o.count, 4);
    assert_int_equal(o.size, 65536);
    assert_int_equal(o.mode, 0);
    vmm_opts *opts = vmm_opts_parse("name=x,on=yes,count=16,size=2M,mode=full,other=1", NULL);
    assert_int_equal(vmm_props_apply(props, &o, "t", opts), 0);
    assert_string_equal(o.name, "x");
    assert_true(o.on);
    assert_int_equal(o.count, 16);
    assert_int_equal(o.size, 2u << 20);
    assert_int_equal(o.mode, 2);
    assert_int_equal(vmm_opts_check_all_used(opts, "t"), -1);
    assert_string_equal(vmm_get_error(), "t: unknown property 'other'");
    vmm_opts_free(opts);
    char *text = vmm_props_format(props, &o, "size");
    assert_string_equal(text, "2097152");
    free(text);
    text = vmm_props_format(props, &o, "mode");
    assert_string_equal(text, "full");
    free(text);
    vmm_props_release(props, &o);
    assert_null(o.name);
}

static void props_errors(void **state)
{
    (void)state;
    struct obj o = { 0 };
    vmm_props_init(props, &o, "t");
    assert_int_equal(vmm_props_set(props, &o, "t", "count", "17"), -1);
    assert_string_equal(vmm_get_error(), "t: count: 17 is out of range (1 to 16)");
    assert_int_equal(vmm_props_set(props, &o, "t", "count", "x"), -1);
    assert_string_equal(vmm_get_error(), "t: count: 'x' is not a number");
    assert_int_equal(vmm_props_set(props, &o, "t", "on", "maybe"), -1);
    assert_string_equal(vmm_get_error(), "t: on: 'maybe' is not on or off");
    assert_int_equal(vmm_props_set(props, &o, "t", "mode", "half"), -1);
    assert_string_equal(vmm_get_error(), "t: mode: 'half' is not one of: off, falloc, full");
    assert_int_equal(vmm_props_set(props, &o, "t", "size", "1Q"), -1);
    assert_string_equal(vmm_get_error(),
                        "t: size: '1Q' is not a size: unknown suffix 'Q' (use K, M, G, T, P or E)");
    assert_int_equal(vmm_props_set(props, &o, "t", "nope", "1"), -1);
    assert_string_equal(vmm_get_error(), "t: unknown property 'nope'");
    assert_int_equal(o.count, 4); /* failed sets leave the value */
    vmm_props_release(props, &o);
}

static void error_prefix(void **state)
{
    (void)state;
    vmm_set_error(ENOENT, "inner");
    vmm_error_prefix("outer %d", 1);
    assert_string_equal(vmm_get_error(), "outer 1: inner");
    assert_int_equal(vmm_get_errno(), ENOENT);
    vmm_clear_error();
    assert_string_equal(vmm_get_error(), "");
    assert_int_equal(vmm_get_errno(), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(opts_parse_basic),
        cmocka_unit_test(opts_parse_errors),
        cmocka_unit_test(opts_build),
        cmocka_unit_test(size_suffixes),
        cmocka_unit_test(size_errors),
        cmocka_unit_test(props_defaults_and_apply),
        cmocka_unit_test(props_errors),
        cmocka_unit_test(error_prefix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
