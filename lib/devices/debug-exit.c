/* isa-debug-exit, as QEMU defines it: a write of `value` ends the machine
 * with exit status (value << 1) | 1, so a guest can report a test result. */
#include "devices/device.h"

struct debug_exit {
    struct device dev;
    uint32_t iobase, iosize;
};

static void debug_exit_write(void *opaque, uint64_t offset, uint64_t value, unsigned size)
{
    (void)offset;
    struct debug_exit *d = opaque;
    if (size < 8)
        value &= (1ull << (size * 8)) - 1;
    int code = (int)(((uint32_t)value << 1) | 1);
    machine_end(d->dev.m, VMM_EXIT_TEST, code, "guest wrote 0x%llx to the test-exit port",
                (unsigned long long)value);
}

static const struct io_ops debug_exit_ops = { NULL, debug_exit_write };

static int debug_exit_realize(struct device *dev)
{
    struct debug_exit *d = (struct debug_exit *)dev;
    /* No lock: the device has no state, and ending the machine takes the
     * machine lock. */
    return address_space_map(&dev->m->pio, d->iobase, d->iosize, &debug_exit_ops, d, NULL,
                             "isa-debug-exit");
}

static const struct vmm_prop debug_exit_props[] = {
    { "iobase", VMM_PROP_U32, offsetof(struct debug_exit, iobase), "0x501", "I/O port base",
      NULL, 0, 0xffff },
    { "iosize", VMM_PROP_U32, offsetof(struct debug_exit, iosize), "2",
      "width of the port in bytes", NULL, 1, 4 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

const struct device_class device_debug_exit = {
    .name = "isa-debug-exit",
    .help = "test-exit port: a write of V ends the machine with status (V << 1) | 1",
    .instance_size = sizeof(struct debug_exit),
    .props = debug_exit_props,
    .user_creatable = true,
    .realize = debug_exit_realize,
};
