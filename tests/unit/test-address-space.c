/* PIO/MMIO dispatch: ranges found by address, overlaps refused naming the
 * owner, unmapped reads see all ones, and guest memory bounds checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "machine/address-space.h"
#include "machine/memory.h"
#include "util/util.h"

struct probe {
    uint64_t last_offset, last_value;
    unsigned last_size, reads, writes;
};

static uint64_t probe_read(void *opaque, uint64_t offset, unsigned size)
{
    struct probe *p = opaque;
    p->reads++;
    p->last_offset = offset;
    p->last_size = size;
    return 0x1000 + offset;
}

static void probe_write(void *opaque, uint64_t offset, uint64_t value, unsigned size)
{
    struct probe *p = opaque;
    p->writes++;
    p->last_offset = offset;
    p->last_value = value;
    p->last_size = size;
}

static const struct io_ops probe_ops = { probe_read, probe_write };

static void test_dispatch_by_range(void **s)
{
    (void)s;
    struct address_space as;
    struct probe a = { 0 }, b = { 0 };
    address_space_init(&as, "pio");
    /* Insert out of order: the table stays sorted. */
    assert_int_equal(address_space_map(&as, 0x3f8, 8, &probe_ops, &b, NULL, "uart"), 0);
    assert_int_equal(address_space_map(&as, 0x70, 2, &probe_ops, &a, NULL, "rtc"), 0);
    for (unsigned i = 0; i < 100; i++)
        assert_int_equal(address_space_map(&as, 0x1000 + 16 * i, 8, &probe_ops, &a, NULL, "many"), 0);
    uint64_t v;
    assert_true(address_space_read(&as, 0x3fd, 1, &v));
    assert_int_equal(v, 0x1005);
    assert_int_equal(b.last_offset, 5);
    assert_true(address_space_write(&as, 0x71, 1, 0x42));
    assert_int_equal(a.last_offset, 1);
    assert_int_equal(a.last_value, 0x42);
    assert_true(address_space_read(&as, 0x1000 + 16 * 57 + 7, 4, &v));
    assert_int_equal(a.last_offset, 7);
    /* Gaps: nothing there, reads see all ones. */
    assert_false(address_space_read(&as, 0x72, 2, &v));
    assert_int_equal(v, 0xffff);
    assert_false(address_space_read(&as, 0x1008, 4, &v));
    assert_int_equal(v, 0xffffffff);
    assert_false(address_space_write(&as, 0x400, 1, 1));
    address_space_unmap(&as, 0x3f8);
    assert_false(address_space_read(&as, 0x3f8, 1, &v));
    address_space_destroy(&as);
}

static void test_overlaps_are_refused(void **s)
{
    (void)s;
    struct address_space as;
    struct probe a = { 0 };
    address_space_init(&as, "mmio");
    assert_int_equal(address_space_map(&as, 0xfec00000, 0x1000, &probe_ops, &a, NULL, "ioapic"), 0);
    assert_int_equal(address_space_map(&as, 0xfebff000, 0x1001, &probe_ops, &a, NULL, "x"), -1);
    assert_non_null(strstr(vmm_get_error(), "x: mmio range 0xfebff000-0xfec00000 overlaps ioapic"));
    assert_int_equal(address_space_map(&as, 0xfec00fff, 1, &probe_ops, &a, NULL, "y"), -1);
    assert_int_equal(address_space_map(&as, 0, 0, &probe_ops, &a, NULL, "z"), -1);
    assert_non_null(strstr(vmm_get_error(), "bad mmio range"));
    assert_int_equal(address_space_map(&as, UINT64_MAX - 1, 4, &probe_ops, &a, NULL, "w"), -1);
    assert_int_equal(address_space_map(&as, 0xfebff000, 0x1000, &probe_ops, &a, NULL, "ok"), 0);
    address_space_destroy(&as);
}

static void test_guest_memory_bounds(void **s)
{
    (void)s;
    struct guest_memory mem;
    assert_int_equal(guest_memory_init(&mem, 1 << 20, 1 << 20), 0);
    assert_non_null(guest_memory_ptr(&mem, 0, 1 << 20));
    assert_null(guest_memory_ptr(&mem, 1, 1 << 20));             /* runs past the region */
    assert_null(guest_memory_ptr(&mem, (1 << 20), 1));           /* the hole */
    assert_non_null(guest_memory_ptr(&mem, 1ull << 32, 1 << 20));
    assert_null(guest_memory_ptr(&mem, (1ull << 32) + 4096, UINT64_MAX)); /* no overflow */
    assert_null(guest_memory_ptr(&mem, UINT64_MAX, 2));
    uint8_t buf[8] = "libvmm!";
    assert_int_equal(guest_memory_write(&mem, (1ull << 32) + 8190, buf, 8), 0);
    assert_true(guest_memory_test_and_clear_dirty(&mem, 256 + 1));
    assert_true(guest_memory_test_and_clear_dirty(&mem, 256 + 2));
    assert_false(guest_memory_test_and_clear_dirty(&mem, 256 + 1));
    assert_false(guest_memory_test_and_clear_dirty(&mem, 256 + 3));
    assert_int_equal(guest_memory_write(&mem, (1 << 20) - 4, buf, 8), -1);
    assert_non_null(strstr(vmm_get_error(), "is not RAM"));
    uint8_t back[8];
    assert_int_equal(guest_memory_read(&mem, (1ull << 32) + 8190, back, 8), 0);
    assert_memory_equal(back, buf, 8);
    guest_memory_destroy(&mem);
    assert_int_equal(guest_memory_init(&mem, 4095, 0), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dispatch_by_range),
        cmocka_unit_test(test_overlaps_are_refused),
        cmocka_unit_test(test_guest_memory_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
