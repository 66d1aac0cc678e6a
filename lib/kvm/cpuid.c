/* CPU models: the CPUID a guest sees, built from what KVM supports.
 * `host` passes through everything KVM offers; the x86-64 baselines mask it
 * down to fixed feature sets so a guest can migrate between hosts that all
 * offer that baseline (the lowest common denominator the talk recommends). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "introspect.h"
#include "kvm/kvm.h"
#include "util/util.h"

struct cpu_model {
    const char *name;
    const char *help;
    bool passthrough;
    uint32_t max_basic_leaf;
    uint32_t l1_ecx, l1_edx;           /* leaf 1 masks */
    uint32_t l7_ebx, l7_ecx, l7_edx;   /* leaf 7 subleaf 0 masks */
    uint32_t e1_ecx, e1_edx;           /* leaf 0x80000001 masks */
    uint32_t xsave_mask;               /* leaf 0xd subleaf 0 eax */
};

/* Leaf 1 EDX: FPU VME DE PSE TSC MSR PAE MCE CX8 APIC SEP MTRR PGE MCA CMOV
 * PAT PSE36 CLFLUSH MMX FXSR SSE SSE2. */
#define BASE_L1_EDX 0x07cbfbffu
#define BIT(n) (1u << (n))
/* Leaf 1 ECX for x86-64-v2: SSE3 SSSE3 CX16 SSE4.1 SSE4.2 POPCNT. */
#define V2_L1_ECX (BIT(0) | BIT(9) | BIT(13) | BIT(19) | BIT(20) | BIT(23))
/* 0x80000001: EDX SYSCALL NX LM; ECX LAHF (v2). */
#define BASE_E1_EDX (BIT(11) | BIT(20) | BIT(29))
#define HYPERVISOR_BIT BIT(31)
#define X2APIC_BIT BIT(21)

static const struct cpu_model models[] = {
    { "host", "every feature KVM offers on this host (not migration-safe)", true,
      0, 0, 0, 0, 0, 0, 0, 0, 0 },
    { "x86-64", "x86-64 baseline (SSE2): runs on any 64-bit x86 host", false,
      0xd, X2APIC_BIT, BASE_L1_EDX, 0, 0, 0, 0, BASE_E1_EDX, 0x3 },
    { "x86-64-v2", "x86-64-v2 (SSE4.2, POPCNT, CX16): any x86 host since 2009", false,
      0xd, V2_L1_ECX | X2APIC_BIT, BASE_L1_EDX, 0, 0, 0, BIT(0), BASE_E1_EDX, 0x3 },
};

const struct cpu_model *cpu_model_find(const char *name)
{
    for (size_t i = 0; i < VMM_ARRAY_SIZE(models); i++)
        if (!strcmp(models[i].name, name))
            return &models[i];
    return NULL;
}

const char *cpu_model_names(void)
{
    return "host, x86-64, x86-64-v2";
}

int cpu_model_list_types(vmm_type_fn fn, void *user_data)
{
    for (size_t i = 0; i < VMM_ARRAY_SIZE(models); i++)
        if (fn(user_data, models[i].name, models[i].help))
            break;
    return 0;
}

static void mask_entry(const struct cpu_model *m, struct kvm_cpuid_entry2 *e)
{
    switch (e->function) {
    case 1:
        e->ecx &= m->l1_ecx;
        e->edx &= m->l1_edx;
        break;
    case 7:
        if (e->index == 0) {
            e->eax = 0;
            e->ebx &= m->l7_ebx;
            e->ecx &= m->l7_ecx;
            e->edx &= m->l7_edx;
        } else {
            e->eax = e->ebx = e->ecx = e->edx = 0;
        }
        break;
    case 0xd:
        if (e->index == 0) {
            e->eax &= m->xsave_mask;
            e->edx = 0;
        } else if (e->index == 1) {
            e->eax = 0; /* no XSAVEOPT/XSAVEC/XSAVES */
        } else if (e->index >= 2) {
            e->eax = e->ebx = e->ecx = e->edx = 0;
        }
        break;
    case 0x80000001:
        e->ecx &= m->e1_ecx;
        e->edx &= m->e1_edx;
        break;
    default:
        break;
    }
}

static bool keep_leaf(const struct cpu_model *m, uint32_t function)
{
    if (m->passthrough || function >= 0x40000000u)
        return true;
    return function <= m->max_basic_leaf;
}

/* Per-vCPU identity: APIC IDs, the count of logical processors, and the
 * hypervisor bit. */
static void set_identity(struct kvm_cpuid_entry2 *e, unsigned apic_id, unsigned nr_cpus)
{
    switch (e->function) {
    case 0:
        break;
    case 1:
        e->ebx = (e->ebx & 0x0000ffffu) | (apic_id << 24) | ((nr_cpus & 0xff) << 16);
        e->ecx |= HYPERVISOR_BIT;
        if (nr_cpus > 1)
            e->edx |= BIT(28); /* HTT: the logical count field is valid */
        break;
    case 0xb:
    case 0x1f:
        /* One thread per core, all cores in one package. */
        e->edx = apic_id;
        if (e->index == 0) {
            e->eax = 0;
            e->ebx = 1;
            e->ecx = (1u << 8) | 0;
        } else if (e->index == 1) {
            unsigned shift = 0;
            while ((1u << shift) < nr_cpus)
                shift++;
            e->eax = shift;
            e->ebx = nr_cpus;
            e->ecx = (2u << 8) | 1;
        } else {
            e->eax = e->ebx = 0;
            e->ecx = e->index;
        }
        break;
    default:
        break;
    }
}

int cpu_model_build_cpuid(const struct cpu_model *m, const struct kvm_cpuid2 *supported,
                          unsigned apic_id, unsigned nr_cpus, struct kvm_cpuid2 *out,
                          unsigned max)
{
    unsigned n = 0;
    for (unsigned i = 0; i < supported->nent; i++) {
        struct kvm_cpuid_entry2 e = supported->entries[i];
        if (!keep_leaf(m, e.function))
            continue;
        if (n == max)
            return vmm_set_error(E2BIG, "CPUID has more than %u entries", max);
        if (!m->passthrough) {
            if (e.function == 0)
                e.eax = e.eax < m->max_basic_leaf ? e.eax : m->max_basic_leaf;
            mask_entry(m, &e);
        }
        set_identity(&e, apic_id, nr_cpus);
        out->entries[n++] = e;
    }
    out->nent = n;
    return 0;
}
