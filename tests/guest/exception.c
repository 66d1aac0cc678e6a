/* exception: a deliberate #UD must be reported with its RIP, then the
 * runtime exits with GUEST_EXIT_EXCEPTION(6) (status 77). */
#include "guest.h"

extern const char ud2_site[];

static __attribute__((noinline, noclone)) void raise_ud(void)
{
    __asm__ volatile(".global ud2_site\nud2_site: ud2" ::: "memory");
}

int main(const struct hvm_start_info *si)
{
    (void)si;
    printf("exception: executing ud2 at 0x%lx\n", (unsigned long)(uintptr_t)ud2_site);
    raise_ud();
    printf("FAIL: ud2 did not fault\n");
    return 1;
}
