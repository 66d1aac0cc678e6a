/* Machine type "pc": the microvm platform (RAM, COM1, i8042, RTC, ACPI PM,
 * in-kernel irqchip, direct kernel boot) plus a PCIe host bridge with bus 0,
 * described to the guest in ACPI (MCFG, \_SB.PCI0 in the DSDT). */
#include "devices/pci.h"
#include "machine/machine.h"

static int pc_init(vmm_machine *m)
{
    if (machine_microvm.init(m) < 0)
        return -1;
    return pci_host_create(m);
}

static int pc_load(vmm_machine *m)
{
    return machine_microvm.load(m);   /* x86_build_acpi adds MCFG and PCI0 when m->pci */
}

const struct machine_class machine_pc = {
    .name = "pc",
    .help = "x86 machine with PCIe (ECAM + 0xcf8), MSI-X and virtio-pci, plus the microvm platform",
    .init = pc_init,
    .load = pc_load,
};
