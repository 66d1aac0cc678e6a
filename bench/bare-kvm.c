/* bare-kvm: the smallest VMM that boots a PVH test guest, as the peer of the
 * PIO-exit benchmark.  One VM, one vCPU, no irqchip, no threads: it loads the
 * ELF's PT_LOAD segments, builds a PVH start_info (memory map, command line),
 * enters the guest in 32-bit protected mode at the XEN_ELFNOTE_PHYS32_ENTRY
 * address and answers PIO exits in a plain KVM_RUN loop.  COM1 is a minimal
 * 16550A (THR written to stdout when --serial is given, LSR always "empty",
 * IIR "FIFO on"); a write to port 0xf4 ends the run with (value << 1) | 1 as
 * the process exit status, like isa-debug-exit.  Other ports read 0xff.
 *
 * Usage: bare-kvm [--serial] ELF [CMDLINE]
 */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GUEST_RAM_SIZE (256ull << 20)
#define START_INFO_ADDR 0x6000ull
#define MEMMAP_ADDR 0x6040ull
#define CMDLINE_ADDR 0x7000ull
#define CMDLINE_MAX 0x1000
#define COM1 0x3f8
#define TEST_EXIT_PORT 0xf4
#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define HVM_START_MAGIC 0x336ec578

struct hvm_start_info {
    uint32_t magic, version, flags, nr_modules;
    uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
    uint32_t memmap_entries, reserved;
};

struct hvm_memmap_entry {
    uint64_t addr, size;
    uint32_t type, reserved;
};

struct vm {
    int kvm_fd, vm_fd, vcpu_fd;
    uint8_t *ram;
    struct kvm_run *run;
    bool echo_serial;
};

static void fail(const char *what)
{
    fprintf(stderr, "bare-kvm: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void fail_msg(const char *what)
{
    fprintf(stderr, "bare-kvm: %s\n", what);
    exit(1);
}

static void *guest_ptr(struct vm *vm, uint64_t addr, uint64_t len)
{
    if (addr > GUEST_RAM_SIZE || len > GUEST_RAM_SIZE - addr)
        fail_msg("ELF segment or boot data outside guest RAM");
    return vm->ram + addr;
}

static uint8_t *read_file(const char *path, size_t *size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        fail(path);
    uint8_t *buf = malloc((size_t)st.st_size);
    if (!buf || read(fd, buf, (size_t)st.st_size) != st.st_size)
        fail(path);
    close(fd);
    *size = (size_t)st.st_size;
    return buf;
}

/* The 32-bit entry from the Xen PVH note in a PT_NOTE segment. */
static uint64_t find_pvh_entry(const uint8_t *elf, size_t size, const Elf64_Phdr *ph)
{
    if (ph->p_offset > size || ph->p_filesz > size - ph->p_offset)
        fail_msg("PT_NOTE outside the file");
    size_t off = ph->p_offset, end = ph->p_offset + ph->p_filesz;
    while (off + sizeof(Elf64_Nhdr) <= end) {
        const Elf64_Nhdr *n = (const void *)(elf + off);
        size_t name_off = off + sizeof(*n);
        size_t desc_off = name_off + ((n->n_namesz + 3u) & ~3u);
        if (desc_off + n->n_descsz > end)
            break;
        if (n->n_type == XEN_ELFNOTE_PHYS32_ENTRY && n->n_namesz == 4 &&
            !memcmp(elf + name_off, "Xen", 4)) {
            uint64_t entry = 0;
            memcpy(&entry, elf + desc_off, n->n_descsz < 8 ? n->n_descsz : 8);
            return entry;
        }
        off = desc_off + ((n->n_descsz + 3u) & ~3u);
    }
    return 0;
}

/* Copy the PT_LOAD segments into RAM; returns the PVH entry point. */
static uint64_t load_elf(struct vm *vm, const char *path)
{
    size_t size;
    uint8_t *elf = read_file(path, &size);
    const Elf64_Ehdr *eh = (const void *)elf;
    if (size < sizeof(*eh) || memcmp(eh->e_ident, ELFMAG, SELFMAG) ||
        eh->e_ident[EI_CLASS] != ELFCLASS64 || eh->e_phentsize != sizeof(Elf64_Phdr) ||
        eh->e_phoff > size || (size_t)eh->e_phnum * sizeof(Elf64_Phdr) > size - eh->e_phoff)
        fail_msg("not a 64-bit ELF file");
    uint64_t entry = 0;
    for (unsigned i = 0; i < eh->e_phnum; i++) {
        const Elf64_Phdr *ph = (const void *)(elf + eh->e_phoff + i * sizeof(*ph));
        if (ph->p_type == PT_NOTE && !entry)
            entry = find_pvh_entry(elf, size, ph);
        if (ph->p_type != PT_LOAD)
            continue;
        if (ph->p_offset > size || ph->p_filesz > size - ph->p_offset || ph->p_filesz > ph->p_memsz)
            fail_msg("PT_LOAD outside the file");
        memcpy(guest_ptr(vm, ph->p_paddr, ph->p_memsz), elf + ph->p_offset, ph->p_filesz);
    }
    free(elf);
    if (!entry)
        fail_msg("no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)");
    return entry;
}

static void write_start_info(struct vm *vm, const char *cmdline)
{
    static const struct hvm_memmap_entry map[] = {
        { .addr = 0, .size = 0x9fc00, .type = 1 },
        { .addr = 0x100000, .size = GUEST_RAM_SIZE - 0x100000, .type = 1 },
    };
    struct hvm_start_info si = {
        .magic = HVM_START_MAGIC,
        .version = 1,
        .cmdline_paddr = CMDLINE_ADDR,
        .memmap_paddr = MEMMAP_ADDR,
        .memmap_entries = sizeof(map) / sizeof(map[0]),
    };
    if (strlen(cmdline) >= CMDLINE_MAX)
        fail_msg("command line too long");
    memcpy(guest_ptr(vm, START_INFO_ADDR, sizeof(si)), &si, sizeof(si));
    memcpy(guest_ptr(vm, MEMMAP_ADDR, sizeof(map)), map, sizeof(map));
    strcpy((char *)guest_ptr(vm, CMDLINE_ADDR, CMDLINE_MAX), cmdline);
}

static struct kvm_segment flat_segment(uint16_t selector, uint8_t type)
{
    return (struct kvm_segment){
        .base = 0, .limit = 0xffffffff, .selector = selector, .type = type,
        .present = 1, .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1,
    };
}

/* PVH entry state: 32-bit protected mode, paging off, flat segments,
 * EBX = start_info. */
static void set_boot_registers(struct vm *vm, uint64_t entry)
{
    struct kvm_sregs sregs;
    if (ioctl(vm->vcpu_fd, KVM_GET_SREGS, &sregs) < 0)
        fail("KVM_GET_SREGS");
    sregs.cs = flat_segment(0x10, 0xb);
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = flat_segment(0x18, 0x3);
    sregs.cr0 = 0x11; /* PE | ET */
    sregs.cr4 = 0;
    sregs.efer = 0;
    if (ioctl(vm->vcpu_fd, KVM_SET_SREGS, &sregs) < 0)
        fail("KVM_SET_SREGS");
    struct kvm_regs regs = { .rip = entry, .rbx = START_INFO_ADDR, .rflags = 2 };
    if (ioctl(vm->vcpu_fd, KVM_SET_REGS, &regs) < 0)
        fail("KVM_SET_REGS");
}

/* Give the vCPU what KVM supports, so the guest may enter long mode. */
static void set_cpuid(struct vm *vm)
{
    int n = 128;
    struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + (size_t)n * sizeof(cpuid->entries[0]));
    if (!cpuid)
        fail("calloc");
    cpuid->nent = (uint32_t)n;
    if (ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, cpuid) < 0)
        fail("KVM_GET_SUPPORTED_CPUID");
    if (ioctl(vm->vcpu_fd, KVM_SET_CPUID2, cpuid) < 0)
        fail("KVM_SET_CPUID2");
    free(cpuid);
}

static void create_vm(struct vm *vm)
{
    vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (vm->kvm_fd < 0)
        fail("/dev/kvm");
    vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
    if (vm->vm_fd < 0)
        fail("KVM_CREATE_VM");
    vm->ram = mmap(NULL, GUEST_RAM_SIZE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (vm->ram == MAP_FAILED)
        fail("mmap guest RAM");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = GUEST_RAM_SIZE,
        .userspace_addr = (uint64_t)(uintptr_t)vm->ram,
    };
    if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        fail("KVM_SET_USER_MEMORY_REGION");
    vm->vcpu_fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, 0);
    if (vm->vcpu_fd < 0)
        fail("KVM_CREATE_VCPU");
    int run_size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size < 0)
        fail("KVM_GET_VCPU_MMAP_SIZE");
    vm->run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vm->vcpu_fd, 0);
    if (vm->run == MAP_FAILED)
        fail("mmap kvm_run");
    set_cpuid(vm);
}

static uint32_t pio_value(const uint8_t *data, unsigned size)
{
    uint32_t v = 0;
    memcpy(&v, data, size > 4 ? 4 : size);
    return v;
}

static uint8_t port_read(uint16_t port)
{
    if (port == COM1 + 5)
        return 0x60; /* LSR: THR and transmitter empty */
    if (port == COM1 + 2)
        return 0xc1; /* IIR: FIFOs enabled, no interrupt pending */
    return 0xff;
}

/* Handles one KVM_EXIT_IO; returns the exit status once the guest ends. */
static int handle_io(struct vm *vm)
{
    struct kvm_run *run = vm->run;
    uint8_t *data = (uint8_t *)run + run->io.data_offset;
    for (uint32_t i = 0; i < run->io.count; i++, data += run->io.size) {
        if (run->io.direction == KVM_EXIT_IO_IN) {
            memset(data, port_read(run->io.port), run->io.size);
            continue;
        }
        if (run->io.port == TEST_EXIT_PORT)
            return (int)((pio_value(data, run->io.size) << 1) | 1);
        if (run->io.port == COM1 && vm->echo_serial)
            fputc(*data, stdout);
    }
    return -1;
}

static int run_vcpu(struct vm *vm)
{
    for (;;) {
        if (ioctl(vm->vcpu_fd, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            fail("KVM_RUN");
        }
        switch (vm->run->exit_reason) {
        case KVM_EXIT_IO: {
            int status = handle_io(vm);
            if (status >= 0)
                return status;
            break;
        }
        case KVM_EXIT_HLT:
            fail_msg("guest halted");
            break;
        case KVM_EXIT_MMIO:
            if (!vm->run->mmio.is_write)
                memset(vm->run->mmio.data, 0xff, sizeof(vm->run->mmio.data));
            break;
        default:
            fprintf(stderr, "bare-kvm: unexpected exit reason %u\n", vm->run->exit_reason);
            exit(1);
        }
    }
}

int main(int argc, char **argv)
{
    struct vm vm = { 0 };
    int arg = 1;
    if (arg < argc && !strcmp(argv[arg], "--serial")) {
        vm.echo_serial = true;
        arg++;
    }
    if (arg >= argc || argc - arg > 2) {
        fprintf(stderr, "usage: bare-kvm [--serial] ELF [CMDLINE]\n");
        return 2;
    }
    create_vm(&vm);
    uint64_t entry = load_elf(&vm, argv[arg]);
    write_start_info(&vm, arg + 1 < argc ? argv[arg + 1] : "");
    set_boot_registers(&vm, entry);
    int status = run_vcpu(&vm);
    fflush(stdout);
    return status & 0xff;
}
