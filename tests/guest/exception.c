/* exception: a deliberate fault must be reported with its vector, error code
 * and RIP, then the runtime exits with GUEST_EXIT_EXCEPTION(vector).
 * "fault=ud" (default) -> #UD, status 77; "fault=gp" -> #GP(0) from a
 * non-canonical load, status 91; "fault=pf" -> #PF on an unmapped address
 * (cr2=0x100000000, error 0: read, not present), status 93; "fault=de" ->
 * #DE, status 65. */
#include "guest.h"

extern const char fault_site[];
static volatile uint64_t zero;

static __attribute__((noinline, noclone)) void raise_ud(void)
{
    __asm__ volatile(".global fault_site\nfault_site: ud2" ::: "memory");
}

static __attribute__((noinline, noclone)) void raise_gp(void)
{
    uint64_t v;
    __asm__ volatile("mov (%1), %0" : "=r"(v) : "r"(0x8000000000000000ull) : "memory");
}

static __attribute__((noinline, noclone)) void raise_pf(void)
{
    uint64_t v;
    /* Only the first 4 GiB are mapped. */
    __asm__ volatile("mov (%1), %0" : "=r"(v) : "r"(0x100000000ull) : "memory");
}

static __attribute__((noinline, noclone)) void raise_de(void)
{
    uint64_t q;
    __asm__ volatile("xor %%edx, %%edx; mov $1, %%eax; divq %1"
                     : "=&a"(q) : "c"(zero) : "rdx", "memory");
}

int main(const struct hvm_start_info *si)
{
    (void)si;
    if (cmdline_is("fault", "gp")) {
        printf("exception: loading from a non-canonical address\n");
        raise_gp();
    } else if (cmdline_is("fault", "pf")) {
        printf("exception: loading from unmapped 0x100000000\n");
        raise_pf();
    } else if (cmdline_is("fault", "de")) {
        printf("exception: dividing by zero\n");
        raise_de();
    } else {
        printf("exception: executing ud2 at 0x%lx\n", (unsigned long)(uintptr_t)fault_site);
        raise_ud();
    }
    printf("FAIL: the fault did not happen\n");
    return 1;
}
