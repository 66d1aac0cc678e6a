/* x86 platform layout shared by the loaders, firmware tables and machine
 * types.  Everything below 1 MiB that the loaders write sits in ranges the
 * e820 map marks as RAM the guest may reuse or as reserved. */
#ifndef LIBVMM_X86_H
#define LIBVMM_X86_H

#include <stdint.h>

typedef struct vmm_machine vmm_machine;

#define X86_GDT_ADDR          0x500ull
#define X86_PVH_INFO_ADDR     0x6000ull
#define X86_PVH_MEMMAP_ADDR   0x6040ull
#define X86_PVH_MODLIST_ADDR  0x6e00ull
#define X86_ZERO_PAGE_ADDR    0x7000ull
#define X86_PML4_ADDR         0x9000ull
#define X86_PDPT_ADDR         0xa000ull
#define X86_PD_ADDR           0xb000ull   /* four pages: the first 4 GiB */
#define X86_CMDLINE_ADDR      0x20000ull
#define X86_CMDLINE_MAX       0x10000ull
#define X86_EBDA_START        0x9fc00ull
#define X86_ACPI_ADDR         0xe0000ull
#define X86_ACPI_MAX          0x20000ull
#define X86_HIMEM_START       0x100000ull
#define X86_MMIO_HOLE_START   0xc0000000ull   /* RAM below 4 GiB ends here at most */
#define X86_IOAPIC_ADDR       0xfec00000ull
#define X86_LAPIC_ADDR        0xfee00000ull

#define E820_RAM      1
#define E820_RESERVED 2
#define E820_ACPI     3
#define E820_MAX      16

struct e820_entry {
    uint64_t addr, size;
    uint32_t type;
};

/* The machine's memory map (RAM and the reserved low ranges). */
unsigned x86_build_e820(const vmm_machine *m, struct e820_entry *out);
/* Build the ACPI tables at X86_ACPI_ADDR; sets m->rsdp_addr. */
int x86_build_acpi(vmm_machine *m);
/* Load m->cfg.kernel (and initrd, cmdline) and set the boot vCPU's entry. */
int x86_load_kernel(vmm_machine *m);

#endif
