/* hello-exit: the smallest guest, for start-up benchmarks. */
#include "guest.h"

int main(const struct hvm_start_info *si)
{
    (void)si;
    printf("hello-exit: hello\n");
    return 0;
}
