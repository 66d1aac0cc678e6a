/* Kernel loaders: the Linux x86 boot protocol (bzImage, 64-bit entry), ELF
 * kernels with a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY), and other
 * x86-64 ELF kernels (vmlinux) entered in long mode like a bzImage. */
#include <elf.h>
#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "machine/machine.h"
#include "machine/x86.h"
#include "devices/virtio/virtio.h"

#define MAX_KERNEL_FILE (512ull << 20)
#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define PVH_MAGIC 0x336ec578u

/* Offsets in the Linux boot_params ("zero page") and its setup header. */
#define BP_ACPI_RSDP      0x070
#define BP_EXT_RAMDISK    0x0c0
#define BP_EXT_RAMDISK_SZ 0x0c4
#define BP_E820_ENTRIES   0x1e8
#define BP_SETUP_SECTS    0x1f1
#define BP_BOOT_FLAG      0x1fe
#define BP_JUMP           0x200
#define BP_HEADER         0x202
#define BP_VERSION        0x206
#define BP_TYPE_OF_LOADER 0x210
#define BP_LOADFLAGS      0x211
#define BP_RAMDISK_IMAGE  0x218
#define BP_RAMDISK_SIZE   0x21c
#define BP_HEAP_END_PTR   0x224
#define BP_CMD_LINE_PTR   0x228
#define BP_INITRD_MAX     0x22c
#define BP_KERNEL_ALIGN   0x230
#define BP_CMDLINE_SIZE   0x238
#define BP_XLOADFLAGS     0x236
#define BP_INIT_SIZE      0x260
#define BP_E820_TABLE     0x2d0
#define HDRS_MAGIC        0x53726448u
#define XLF_KERNEL_64     0x1
#define LOADED_HIGH       0x01
#define CAN_USE_HEAP      0x80

struct blob {
    uint8_t *data;
    size_t size;
};

static int read_file(const char *what, const char *path, struct blob *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return vmm_set_error_errno("%s %s", what, path);
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return vmm_set_error(EINVAL, "%s %s: not a regular file", what, path);
    }
    if ((uint64_t)st.st_size > MAX_KERNEL_FILE) {
        close(fd);
        return vmm_set_error(EFBIG, "%s %s: %lld bytes is too large", what, path, (long long)st.st_size);
    }
    out->size = (size_t)st.st_size;
    out->data = malloc(out->size ? out->size : 1);
    if (!out->data) {
        close(fd);
        return vmm_set_error(ENOMEM, "out of memory reading %s", path);
    }
    size_t done = 0;
    while (done < out->size) {
        ssize_t n = read(fd, out->data + done, out->size - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int err = n < 0 ? errno : EIO;
            close(fd);
            free(out->data);
            out->data = NULL;
            errno = err;
            return vmm_set_error_errno("%s %s: read failed", what, path);
        }
        done += (size_t)n;
    }
    close(fd);
    return 0;
}

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get32(const uint8_t *p) { return get16(p) | (uint32_t)get16(p + 2) << 16; }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)v); put16(p + 2, (uint16_t)(v >> 16)); }
static void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)v); put32(p + 4, (uint32_t)(v >> 32)); }

static int copy_to_guest(vmm_machine *m, uint64_t gpa, const void *src, uint64_t len, const char *what)
{
    if (guest_memory_write(&m->mem, gpa, src, len) < 0)
        return vmm_set_error(ENOSPC, "%s (0x%" PRIx64 " bytes at 0x%" PRIx64 ") does not fit in guest RAM "
                             "(memory is %" PRIu64 " MiB)", what, len, gpa, m->cfg.memory >> 20);
    return 0;
}

static int zero_guest(vmm_machine *m, uint64_t gpa, uint64_t len, const char *what)
{
    void *p = guest_memory_ptr(&m->mem, gpa, len);
    if (!p)
        return vmm_set_error(ENOSPC, "%s (0x%" PRIx64 " bytes at 0x%" PRIx64 ") does not fit in guest RAM",
                             what, len, gpa);
    memset(p, 0, len);
    guest_memory_mark_dirty(&m->mem, gpa, len);
    return 0;
}

/* ---- command line and initrd ------------------------------------------ */

/* The user's command line, plus the virtio-mmio devices when asked. */
static char *effective_cmdline(vmm_machine *m)
{
    const char *user = m->cfg.cmdline ? m->cfg.cmdline : "";
    if (!m->cfg.virtio_mmio_cmdline)
        return g_strdup(user);
    g_autofree char *devices = virtio_mmio_cmdline(m);
    return g_strjoin(*user && *devices ? " " : "", user, devices, NULL);
}

static int load_cmdline(vmm_machine *m, uint64_t limit)
{
    g_autofree char *cmdline = effective_cmdline(m);
    size_t len = strlen(cmdline) + 1;
    if (len > limit)
        return vmm_set_error(E2BIG, "the command line is %zu bytes; this kernel takes at most %" PRIu64,
                             len - 1, limit - 1);
    return copy_to_guest(m, X86_CMDLINE_ADDR, cmdline, len, "command line");
}

/* Place the initrd as high as allowed below the MMIO hole; returns its address. */
static int load_initrd(vmm_machine *m, uint64_t max_addr, uint64_t *addr, uint64_t *size)
{
    *addr = *size = 0;
    if (!m->cfg.initrd)
        return 0;
    struct blob b;
    if (read_file("initrd", m->cfg.initrd, &b) < 0)
        return -1;
    uint64_t top = m->ram_below_4g < max_addr + 1 ? m->ram_below_4g : max_addr + 1;
    if (b.size > top || ((top - b.size) & ~0xfffull) < X86_HIMEM_START + (16u << 20)) {
        free(b.data);
        return vmm_set_error(ENOSPC, "initrd %s (%zu bytes) does not fit in guest RAM below 0x%" PRIx64
                             "; give the machine more memory", m->cfg.initrd, b.size, top);
    }
    *addr = (top - b.size) & ~0xfffull;
    *size = b.size;
    int ret = copy_to_guest(m, *addr, b.data, b.size, "initrd");
    free(b.data);
    return ret;
}

/* ---- page tables and GDT for the 64-bit entry ---------------------------- */

static int build_identity_map(vmm_machine *m)
{
    uint8_t page[4096];
    memset(page, 0, sizeof(page));
    put64(page, X86_PDPT_ADDR | 0x3);
    if (copy_to_guest(m, X86_PML4_ADDR, page, sizeof(page), "page tables") < 0)
        return -1;
    memset(page, 0, sizeof(page));
    for (unsigned i = 0; i < 4; i++)
        put64(page + 8 * i, (X86_PD_ADDR + 4096ull * i) | 0x3);
    if (copy_to_guest(m, X86_PDPT_ADDR, page, sizeof(page), "page tables") < 0)
        return -1;
    for (unsigned t = 0; t < 4; t++) {
        for (unsigned i = 0; i < 512; i++)
            put64(page + 8 * i, ((uint64_t)(t * 512 + i) << 21) | 0x83); /* 2 MiB, RW, P */
        if (copy_to_guest(m, X86_PD_ADDR + 4096ull * t, page, sizeof(page), "page tables") < 0)
            return -1;
    }
    return 0;
}

static int build_boot_gdt(vmm_machine *m)
{
    /* null, null, __BOOT_CS (64-bit code), __BOOT_DS (data). */
    static const uint64_t gdt[4] = { 0, 0, 0x00af9b000000ffffull, 0x00cf93000000ffffull };
    return copy_to_guest(m, X86_GDT_ADDR, gdt, sizeof(gdt), "GDT");
}

/* ---- Linux zero page ---------------------------------------------------- */

static void fill_e820(vmm_machine *m, uint8_t *zp)
{
    struct e820_entry map[E820_MAX];
    unsigned n = x86_build_e820(m, map);
    zp[BP_E820_ENTRIES] = (uint8_t)n;
    for (unsigned i = 0; i < n; i++) {
        uint8_t *e = zp + BP_E820_TABLE + 20 * i;
        put64(e, map[i].addr);
        put64(e + 8, map[i].size);
        put32(e + 16, map[i].type);
    }
}

static int finish_zero_page(vmm_machine *m, uint8_t *zp, uint64_t initrd_max)
{
    uint64_t initrd, initrd_size;
    if (load_initrd(m, initrd_max, &initrd, &initrd_size) < 0)
        return -1;
    zp[BP_TYPE_OF_LOADER] = 0xff;
    zp[BP_LOADFLAGS] |= LOADED_HIGH | CAN_USE_HEAP;
    put16(zp + BP_HEAP_END_PTR, 0xfe00);
    put32(zp + BP_CMD_LINE_PTR, (uint32_t)X86_CMDLINE_ADDR);
    put32(zp + BP_RAMDISK_IMAGE, (uint32_t)initrd);
    put32(zp + BP_RAMDISK_SIZE, (uint32_t)initrd_size);
    put32(zp + BP_EXT_RAMDISK, (uint32_t)(initrd >> 32));
    put32(zp + BP_EXT_RAMDISK_SZ, (uint32_t)(initrd_size >> 32));
    put64(zp + BP_ACPI_RSDP, m->rsdp_addr);
    fill_e820(m, zp);
    if (copy_to_guest(m, X86_ZERO_PAGE_ADDR, zp, 4096, "boot parameters") < 0 ||
        build_identity_map(m) < 0 || build_boot_gdt(m) < 0)
        return -1;
    return 0;
}

static int enter_linux64(vmm_machine *m, uint64_t entry)
{
    return vcpu_set_linux64_entry(m->vcpus[0], entry, X86_ZERO_PAGE_ADDR, X86_GDT_ADDR,
                                  X86_PML4_ADDR);
}

/* ---- bzImage ------------------------------------------------------------ */

static bool is_bzimage(const struct blob *k)
{
    return k->size >= 0x1000 && get16(k->data + BP_BOOT_FLAG) == 0xaa55 &&
           get32(k->data + BP_HEADER) == HDRS_MAGIC;
}

static int load_bzimage(vmm_machine *m, const struct blob *k)
{
    const uint8_t *h = k->data;
    uint16_t version = get16(h + BP_VERSION);
    if (version < 0x020c || !(get16(h + BP_XLOADFLAGS) & XLF_KERNEL_64))
        return vmm_set_error(ENOEXEC, "%s: boot protocol %u.%02u without a 64-bit entry point; "
                             "libvmm needs protocol 2.12 or later with XLF_KERNEL_64",
                             m->cfg.kernel, version >> 8, version & 0xff);
    unsigned setup_sects = h[BP_SETUP_SECTS] ? h[BP_SETUP_SECTS] : 4;
    size_t setup_size = (setup_sects + 1) * 512u;
    if (setup_size >= k->size)
        return vmm_set_error(ENOEXEC, "%s: setup header claims %zu setup bytes in a %zu-byte file",
                             m->cfg.kernel, setup_size, k->size);
    uint64_t load = X86_HIMEM_START;
    uint64_t init_size = get32(h + BP_INIT_SIZE);
    size_t payload = k->size - setup_size;
    if (init_size < payload)
        init_size = payload;
    if (zero_guest(m, load, init_size, "kernel (init_size)") < 0 ||
        copy_to_guest(m, load, h + setup_size, payload, "kernel") < 0)
        return -1;
    uint32_t cmdline_size = get32(h + BP_CMDLINE_SIZE);
    if (load_cmdline(m, cmdline_size ? (uint64_t)cmdline_size + 1 : 256) < 0)
        return -1;
    uint8_t zp[4096];
    memset(zp, 0, sizeof(zp));
    /* Copy the setup header as the kernel wrote it (0x1f1 up to its end). */
    size_t hdr_end = 0x202 + h[BP_JUMP + 1];
    if (hdr_end > 0x290)
        hdr_end = 0x290;
    memcpy(zp + BP_SETUP_SECTS, h + BP_SETUP_SECTS, hdr_end - BP_SETUP_SECTS);
    uint64_t initrd_max = get32(h + BP_INITRD_MAX);
    if (finish_zero_page(m, zp, initrd_max ? initrd_max : 0x37ffffff) < 0)
        return -1;
    return enter_linux64(m, load + 0x200);
}

/* ---- ELF ---------------------------------------------------------------- */

static bool in_file(const struct blob *k, uint64_t off, uint64_t len)
{
    return off <= k->size && len <= k->size - off;
}

static int elf_header(vmm_machine *m, const struct blob *k, Elf64_Ehdr *eh)
{
    memcpy(eh, k->data, sizeof(*eh));
    if (k->data[EI_CLASS] != ELFCLASS64)
        return vmm_set_error(ENOEXEC, "%s: a 32-bit ELF file; libvmm boots 64-bit ELF kernels",
                             m->cfg.kernel);
    if (eh->e_machine != EM_X86_64 || (eh->e_type != ET_EXEC && eh->e_type != ET_DYN))
        return vmm_set_error(ENOEXEC, "%s: not an x86-64 executable ELF file", m->cfg.kernel);
    if (eh->e_phentsize != sizeof(Elf64_Phdr) || !eh->e_phnum ||
        !in_file(k, eh->e_phoff, (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr)))
        return vmm_set_error(ENOEXEC, "%s: ELF program headers lie outside the file", m->cfg.kernel);
    return 0;
}

static const Elf64_Phdr *phdr(const struct blob *k, const Elf64_Ehdr *eh, unsigned i)
{
    return (const Elf64_Phdr *)(k->data + eh->e_phoff) + i;
}

/* Find XEN_ELFNOTE_PHYS32_ENTRY in the PT_NOTE segments; 0 if absent. */
static uint64_t find_pvh_entry(const struct blob *k, const Elf64_Ehdr *eh)
{
    for (unsigned i = 0; i < eh->e_phnum; i++) {
        Elf64_Phdr ph;
        memcpy(&ph, phdr(k, eh, i), sizeof(ph));
        if (ph.p_type != PT_NOTE || !in_file(k, ph.p_offset, ph.p_filesz))
            continue;
        uint64_t pos = ph.p_offset, end = ph.p_offset + ph.p_filesz;
        while (end - pos >= 12) {
            uint32_t namesz = get32(k->data + pos), descsz = get32(k->data + pos + 4);
            uint32_t type = get32(k->data + pos + 8);
            uint64_t name = pos + 12, desc = name + ((namesz + 3ull) & ~3ull);
            uint64_t next = desc + ((descsz + 3ull) & ~3ull);
            if (next > end)
                break;
            if (type == XEN_ELFNOTE_PHYS32_ENTRY && namesz == 4 &&
                !memcmp(k->data + name, "Xen", 4) && descsz >= 4)
                return descsz >= 8 ? get32(k->data + desc) | (uint64_t)get32(k->data + desc + 4) << 32
                                   : get32(k->data + desc);
            pos = next;
        }
    }
    return 0;
}

static int load_elf_segments(vmm_machine *m, const struct blob *k, const Elf64_Ehdr *eh)
{
    unsigned loaded = 0;
    for (unsigned i = 0; i < eh->e_phnum; i++) {
        Elf64_Phdr ph;
        memcpy(&ph, phdr(k, eh, i), sizeof(ph));
        if (ph.p_type != PT_LOAD)
            continue;
        if (ph.p_filesz > ph.p_memsz || !in_file(k, ph.p_offset, ph.p_filesz))
            return vmm_set_error(ENOEXEC, "%s: ELF segment %u lies outside the file", m->cfg.kernel, i);
        if (zero_guest(m, ph.p_paddr, ph.p_memsz, "ELF segment") < 0 ||
            copy_to_guest(m, ph.p_paddr, k->data + ph.p_offset, ph.p_filesz, "ELF segment") < 0)
            return -1;
        loaded++;
    }
    if (!loaded)
        return vmm_set_error(ENOEXEC, "%s: the ELF file has no loadable segment", m->cfg.kernel);
    return 0;
}

static int write_pvh_start_info(vmm_machine *m)
{
    uint64_t initrd, initrd_size;
    if (load_initrd(m, X86_MMIO_HOLE_START - 1, &initrd, &initrd_size) < 0)
        return -1;
    struct e820_entry map[E820_MAX];
    unsigned n = x86_build_e820(m, map);
    uint8_t memmap[E820_MAX * 24];
    memset(memmap, 0, sizeof(memmap));
    for (unsigned i = 0; i < n; i++) {
        put64(memmap + 24 * i, map[i].addr);
        put64(memmap + 24 * i + 8, map[i].size);
        put32(memmap + 24 * i + 16, map[i].type);
    }
    uint8_t info[56];
    memset(info, 0, sizeof(info));
    put32(info + 0, PVH_MAGIC);
    put32(info + 4, 1);                          /* version */
    put64(info + 24, X86_CMDLINE_ADDR);          /* cmdline_paddr */
    put64(info + 32, m->rsdp_addr);              /* rsdp_paddr */
    put64(info + 40, X86_PVH_MEMMAP_ADDR);       /* memmap_paddr */
    put32(info + 48, n);                         /* memmap_entries */
    if (initrd_size) {
        uint8_t mod[32];
        memset(mod, 0, sizeof(mod));
        put64(mod, initrd);
        put64(mod + 8, initrd_size);
        put32(info + 12, 1);                     /* nr_modules */
        put64(info + 16, X86_PVH_MODLIST_ADDR);  /* modlist_paddr */
        if (copy_to_guest(m, X86_PVH_MODLIST_ADDR, mod, sizeof(mod), "PVH module list") < 0)
            return -1;
    }
    if (copy_to_guest(m, X86_PVH_MEMMAP_ADDR, memmap, 24u * n, "PVH memory map") < 0)
        return -1;
    return copy_to_guest(m, X86_PVH_INFO_ADDR, info, sizeof(info), "PVH start info");
}

/* The 64-bit entry of a vmlinux: e_entry translated to a physical address. */
static int elf_entry_physical(vmm_machine *m, const struct blob *k, const Elf64_Ehdr *eh, uint64_t *out)
{
    for (unsigned i = 0; i < eh->e_phnum; i++) {
        Elf64_Phdr ph;
        memcpy(&ph, phdr(k, eh, i), sizeof(ph));
        if (ph.p_type != PT_LOAD)
            continue;
        /* Linux's vmlinux records the physical entry (phys_startup_64);
         * other kernels may give a virtual one. */
        if (eh->e_entry >= ph.p_paddr && eh->e_entry - ph.p_paddr < ph.p_memsz) {
            *out = eh->e_entry;
            return 0;
        }
        if (eh->e_entry >= ph.p_vaddr && eh->e_entry - ph.p_vaddr < ph.p_memsz) {
            *out = ph.p_paddr + (eh->e_entry - ph.p_vaddr);
            return 0;
        }
    }
    return vmm_set_error(ENOEXEC, "%s: the ELF entry point 0x%" PRIx64 " is in no loadable segment",
                         m->cfg.kernel, (uint64_t)eh->e_entry);
}

static int load_elf(vmm_machine *m, const struct blob *k)
{
    Elf64_Ehdr eh;
    if (elf_header(m, k, &eh) < 0 || load_elf_segments(m, k, &eh) < 0)
        return -1;
    if (load_cmdline(m, X86_CMDLINE_MAX) < 0)
        return -1;
    uint64_t pvh_entry = find_pvh_entry(k, &eh);
    if (pvh_entry) {
        if (pvh_entry > UINT32_MAX)
            return vmm_set_error(ENOEXEC, "%s: PVH entry 0x%" PRIx64 " is above 4 GiB", m->cfg.kernel,
                                 pvh_entry);
        if (write_pvh_start_info(m) < 0)
            return -1;
        return vcpu_set_pvh_entry(m->vcpus[0], (uint32_t)pvh_entry, (uint32_t)X86_PVH_INFO_ADDR);
    }
    uint64_t entry = 0;
    if (elf_entry_physical(m, k, &eh, &entry) < 0)
        return -1;
    uint8_t zp[4096];
    memset(zp, 0, sizeof(zp));
    put16(zp + BP_BOOT_FLAG, 0xaa55);
    put32(zp + BP_HEADER, HDRS_MAGIC);
    put16(zp + BP_VERSION, 0x020f);
    put32(zp + BP_KERNEL_ALIGN, 0x01000000);
    put32(zp + BP_CMDLINE_SIZE, (uint32_t)X86_CMDLINE_MAX - 1);
    if (finish_zero_page(m, zp, 0x37ffffff) < 0)
        return -1;
    return enter_linux64(m, entry);
}

int x86_load_kernel(vmm_machine *m)
{
    struct blob k;
    if (read_file("kernel", m->cfg.kernel, &k) < 0)
        return -1;
    int ret;
    if (is_bzimage(&k))
        ret = load_bzimage(m, &k);
    else if (k.size >= sizeof(Elf64_Ehdr) && !memcmp(k.data, ELFMAG, SELFMAG))
        ret = load_elf(m, &k);
    else
        ret = vmm_set_error(ENOEXEC, "%s: not a bootable image: libvmm boots a Linux bzImage "
                            "(boot protocol 2.12+) or an x86-64 ELF kernel (PVH note or 64-bit entry)",
                            m->cfg.kernel);
    free(k.data);
    return ret;
}
