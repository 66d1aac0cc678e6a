/* Machine type "microvm": RAM, the legacy platform devices (COM1, i8042,
 * CMOS RTC, ACPI PM block), the in-kernel irqchip and PIT, ACPI tables and a
 * directly booted kernel.  No PCI (virtio-pci arrives with the `pc` type). */
#include <errno.h>
#include <inttypes.h>
#include "devices/device.h"
#include "machine/machine.h"
#include "machine/x86.h"

#define MIN_MEMORY (2ull << 20)

static const char *const platform_devices[] = {
    "isa-serial,id=com1", "i8042", "mc146818rtc", "acpi-pm",
};

static int setup_memory(vmm_machine *m)
{
    uint64_t mem = m->cfg.memory;
    if (mem < MIN_MEMORY || mem % 4096)
        return vmm_set_error(EINVAL, "memory must be a multiple of 4 KiB and at least 2 MiB (got %" PRIu64 ")", mem);
    m->ram_below_4g = mem < X86_MMIO_HOLE_START ? mem : X86_MMIO_HOLE_START;
    m->ram_above_4g = mem - m->ram_below_4g;
    if (guest_memory_init(&m->mem, m->ram_below_4g, m->ram_above_4g) < 0)
        return -1;
    for (unsigned i = 0; i < m->mem.nr_regions; i++) {
        const struct guest_region *r = &m->mem.regions[i];
        if (kvm_vm_set_memory(&m->vm, i, r->gpa, r->size, r->hva) < 0)
            return -1;
    }
    return 0;
}

/* Platform devices go first so user devices see them realized. */
static int add_platform_devices(vmm_machine *m)
{
    struct device *user = m->devices, *user_tail = m->devices_tail;
    m->devices = m->devices_tail = NULL;
    int ret = 0;
    for (size_t i = 0; i < VMM_ARRAY_SIZE(platform_devices) && ret == 0; i++)
        ret = machine_add_device_opts(m, platform_devices[i], true);
    if (m->devices_tail)
        m->devices_tail->next = user;
    else
        m->devices = user;
    if (user)
        m->devices_tail = user_tail;
    return ret;
}

static int microvm_init(vmm_machine *m)
{
    if (setup_memory(m) < 0)
        return -1;
    return add_platform_devices(m);
}

static int microvm_load(vmm_machine *m)
{
    if (x86_build_acpi(m) < 0)
        return -1;
    return x86_load_kernel(m);
}

const struct machine_class machine_microvm = {
    .name = "microvm",
    .help = "minimal x86 machine: COM1, i8042, RTC, ACPI, direct kernel boot",
    .init = microvm_init,
    .load = microvm_load,
};
