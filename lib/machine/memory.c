/* Guest RAM: one memfd (so vhost and migration can share it), mapped once. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "machine/memory.h"
#include "util/util.h"

#define BITS_PER_LONG (8 * sizeof(unsigned long))

static void add_region(struct guest_memory *mem, uint64_t gpa, uint64_t size, uint64_t offset)
{
    mem->regions[mem->nr_regions++] = (struct guest_region){
        .gpa = gpa, .size = size, .hva = mem->base + offset,
    };
}

int guest_memory_init(struct guest_memory *mem, uint64_t below_4g, uint64_t above_4g)
{
    memset(mem, 0, sizeof(*mem));
    mem->fd = -1;
    mem->total = below_4g + above_4g;
    if (!mem->total || mem->total % GUEST_PAGE_SIZE)
        return vmm_set_error(EINVAL, "memory size must be a non-zero multiple of 4 KiB");
    mem->fd = memfd_create("libvmm-ram", MFD_CLOEXEC);
    if (mem->fd < 0)
        return vmm_set_error_errno("memfd_create");
    if (ftruncate(mem->fd, (off_t)mem->total) < 0) {
        vmm_set_error_errno("cannot size guest RAM to %" PRIu64 " bytes", mem->total);
        goto fail;
    }
    void *p = mmap(NULL, mem->total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, mem->fd, 0);
    if (p == MAP_FAILED) {
        vmm_set_error_errno("cannot map %" PRIu64 " bytes of guest RAM", mem->total);
        goto fail;
    }
    mem->base = p;
    madvise(mem->base, mem->total, MADV_HUGEPAGE); /* a hint; failure is fine */
    uint64_t pages = mem->total / GUEST_PAGE_SIZE;
    mem->dirty = calloc((pages + BITS_PER_LONG - 1) / BITS_PER_LONG, sizeof(unsigned long));
    if (!mem->dirty) {
        vmm_set_error(ENOMEM, "out of memory for the dirty bitmap");
        goto fail;
    }
    if (below_4g)
        add_region(mem, 0, below_4g, 0);
    if (above_4g)
        add_region(mem, 1ull << 32, above_4g, below_4g);
    return 0;
fail:
    guest_memory_destroy(mem);
    return -1;
}

void guest_memory_destroy(struct guest_memory *mem)
{
    if (mem->base)
        munmap(mem->base, mem->total);
    if (mem->fd >= 0)
        close(mem->fd);
    free((void *)mem->dirty);
    memset(mem, 0, sizeof(*mem));
    mem->fd = -1;
}

static const struct guest_region *find_region(const struct guest_memory *mem, uint64_t gpa,
                                              uint64_t len)
{
    for (unsigned i = 0; i < mem->nr_regions; i++) {
        const struct guest_region *r = &mem->regions[i];
        /* Written to avoid overflow of gpa + len. */
        if (gpa >= r->gpa && gpa - r->gpa < r->size && len <= r->size - (gpa - r->gpa))
            return r;
    }
    return NULL;
}

void *guest_memory_ptr(const struct guest_memory *mem, uint64_t gpa, uint64_t len)
{
    const struct guest_region *r = find_region(mem, gpa, len);
    return r ? r->hva + (gpa - r->gpa) : NULL;
}

bool guest_memory_is_ram(const struct guest_memory *mem, uint64_t gpa, uint64_t len)
{
    return find_region(mem, gpa, len) != NULL;
}

int guest_memory_read(const struct guest_memory *mem, uint64_t gpa, void *buf, uint64_t len)
{
    const void *src = guest_memory_ptr(mem, gpa, len);
    if (!src)
        return vmm_set_error(EFAULT, "guest range 0x%" PRIx64 "+0x%" PRIx64 " is not RAM", gpa, len);
    memcpy(buf, src, len);
    return 0;
}

int guest_memory_write(struct guest_memory *mem, uint64_t gpa, const void *buf, uint64_t len)
{
    void *dst = guest_memory_ptr(mem, gpa, len);
    if (!dst)
        return vmm_set_error(EFAULT, "guest range 0x%" PRIx64 "+0x%" PRIx64 " is not RAM", gpa, len);
    memcpy(dst, buf, len);
    guest_memory_mark_dirty(mem, gpa, len);
    return 0;
}

void guest_memory_mark_dirty(struct guest_memory *mem, uint64_t gpa, uint64_t len)
{
    const struct guest_region *r = find_region(mem, gpa, len ? len : 1);
    if (!r || !len)
        return;
    uint64_t offset = (uint64_t)(r->hva - mem->base) + (gpa - r->gpa);
    uint64_t first = offset / GUEST_PAGE_SIZE, last = (offset + len - 1) / GUEST_PAGE_SIZE;
    for (uint64_t p = first; p <= last; p++)
        atomic_fetch_or(&mem->dirty[p / BITS_PER_LONG], 1ul << (p % BITS_PER_LONG));
}

bool guest_memory_test_and_clear_dirty(struct guest_memory *mem, uint64_t page)
{
    if (page >= mem->total / GUEST_PAGE_SIZE)
        return false;
    unsigned long bit = 1ul << (page % BITS_PER_LONG);
    return atomic_fetch_and(&mem->dirty[page / BITS_PER_LONG], ~bit) & bit;
}
