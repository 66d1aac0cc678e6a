/* pio-loop: "count=N" `out`s to "port=P" (default 0x80), for the PIO-exit
 * benchmark. */
#include "guest.h"

int main(const struct hvm_start_info *si)
{
    (void)si;
    uint64_t count = cmdline_u64("count", 100000);
    uint16_t port = (uint16_t)cmdline_u64("port", 0x80);
    printf("pio-loop: %lu outs to port 0x%x\n", (unsigned long)count, port);
    for (uint64_t i = 0; i < count; i++)
        outb(port, (uint8_t)i);
    printf("pio-loop: done\n");
    return 0;
}
