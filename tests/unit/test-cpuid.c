/* CPU models: what a guest's CPUID holds under each model, built from a
 * supported-CPUID table like the one KVM_GET_SUPPORTED_CPUID returns. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "kvm/kvm.h"

#define MAX 32

static struct kvm_cpuid2 *table(unsigned n)
{
    struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(c->entries[0]));
    c->nent = n;
    return c;
}

/* A host with AVX2, AVX-512F, x2APIC, popcnt and KVM's leaves. */
static struct kvm_cpuid2 *host_supported(void)
{
    struct kvm_cpuid2 *c = table(7);
    c->entries[0] = (struct kvm_cpuid_entry2){ .function = 0, .eax = 0x10, .ebx = 0x68747541 };
    c->entries[1] = (struct kvm_cpuid_entry2){ .function = 1, .eax = 0x00a00f11,
        .ebx = 0x00010800, .ecx = 0xfef83203, .edx = 0x178bfbff };
    c->entries[2] = (struct kvm_cpuid_entry2){ .function = 7, .index = 0,
        .flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX, .ebx = 0x219c97a9 | (1u << 16) };
    c->entries[3] = (struct kvm_cpuid_entry2){ .function = 0xb, .index = 1,
        .flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX, .eax = 4, .ebx = 16, .ecx = 0x201 };
    c->entries[4] = (struct kvm_cpuid_entry2){ .function = 0x10, .eax = 0x7 };
    c->entries[5] = (struct kvm_cpuid_entry2){ .function = 0x40000001, .eax = 0x01007afb };
    c->entries[6] = (struct kvm_cpuid_entry2){ .function = 0x80000001, .ecx = 0x75c237ff,
        .edx = 0x2fd3fbff };
    return c;
}

static const struct kvm_cpuid_entry2 *leaf(const struct kvm_cpuid2 *c, uint32_t fn, uint32_t index)
{
    for (unsigned i = 0; i < c->nent; i++)
        if (c->entries[i].function == fn && c->entries[i].index == index)
            return &c->entries[i];
    return NULL;
}

static struct kvm_cpuid2 *build(const char *model, unsigned apic_id, unsigned cpus)
{
    struct kvm_cpuid2 *supported = host_supported(), *out = table(MAX);
    const struct cpu_model *m = cpu_model_find(model);
    assert_non_null(m);
    assert_int_equal(cpu_model_build_cpuid(m, supported, apic_id, cpus, out, MAX), 0);
    free(supported);
    return out;
}

static void test_host_passes_everything_through(void **s)
{
    (void)s;
    struct kvm_cpuid2 *c = build("host", 0, 1);
    assert_int_equal(c->nent, 7);
    assert_int_equal(leaf(c, 1, 0)->ecx, 0xfef83203u | (1u << 31));
    assert_true(leaf(c, 7, 0)->ebx & (1u << 16)); /* AVX-512F kept */
    assert_non_null(leaf(c, 0x10, 0));
    free(c);
}

static void test_baseline_masks_to_its_feature_set(void **s)
{
    (void)s;
    struct kvm_cpuid2 *c = build("x86-64-v2", 0, 1);
    const struct kvm_cpuid_entry2 *l1 = leaf(c, 1, 0);
    assert_true(l1->ecx & (1u << 23));        /* POPCNT is in v2 */
    assert_true(l1->ecx & (1u << 20));        /* SSE4.2 */
    assert_false(l1->ecx & (1u << 28));       /* AVX is not */
    assert_false(l1->ecx & (1u << 26));       /* XSAVE is not */
    assert_true(l1->ecx & (1u << 31));        /* hypervisor present */
    assert_int_equal(leaf(c, 7, 0)->ebx, 0);  /* no AVX2, AVX-512, ... */
    assert_null(leaf(c, 0x10, 0));            /* leaves above 0xd dropped */
    assert_int_equal(leaf(c, 0, 0)->eax, 0xd);
    assert_non_null(leaf(c, 0x40000001, 0));  /* kvmclock stays advertised */
    assert_true(leaf(c, 0x80000001, 0)->edx & (1u << 29)); /* long mode */
    assert_false(leaf(c, 0x80000001, 0)->edx & (1u << 27)); /* no RDTSCP */
    free(c);
    c = build("x86-64", 0, 1);
    assert_false(leaf(c, 1, 0)->ecx & (1u << 23)); /* v1 has no POPCNT */
    free(c);
}

static void test_apic_ids_and_topology_per_vcpu(void **s)
{
    (void)s;
    struct kvm_cpuid2 *c = build("x86-64-v2", 3, 4);
    assert_int_equal(leaf(c, 1, 0)->ebx >> 24, 3);
    assert_int_equal((leaf(c, 1, 0)->ebx >> 16) & 0xff, 4);
    assert_true(leaf(c, 1, 0)->edx & (1u << 28));
    free(c);
    c = build("host", 5, 8);
    const struct kvm_cpuid_entry2 *b1 = leaf(c, 0xb, 1);
    assert_int_equal(b1->edx, 5);
    assert_int_equal(b1->ebx, 8);
    assert_int_equal(b1->eax, 3);
    free(c);
}

static void test_unknown_model_and_overflow(void **s)
{
    (void)s;
    assert_null(cpu_model_find("pentium"));
    struct kvm_cpuid2 *supported = host_supported(), *out = table(2);
    assert_int_equal(cpu_model_build_cpuid(cpu_model_find("host"), supported, 0, 1, out, 2), -1);
    free(supported);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_host_passes_everything_through),
        cmocka_unit_test(test_baseline_masks_to_its_feature_set),
        cmocka_unit_test(test_apic_ids_and_topology_per_vcpu),
        cmocka_unit_test(test_unknown_model_and_overflow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
