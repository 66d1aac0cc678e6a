/* Guest RAM and the one accessor through which devices reach it: every
 * guest-physical range is checked against the RAM regions, and every device
 * write marks the dirty bitmap (migration depends on it). */
#ifndef LIBVMM_MEMORY_H
#define LIBVMM_MEMORY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GUEST_PAGE_SIZE 4096u
#define GUEST_MAX_REGIONS 4

struct guest_region {
    uint64_t gpa;
    uint64_t size;
    uint8_t *hva;
};

struct guest_memory {
    int fd;                        /* memfd holding all of RAM */
    uint8_t *base;                 /* one mapping of the whole memfd */
    uint64_t total;
    struct guest_region regions[GUEST_MAX_REGIONS];
    unsigned nr_regions;
    _Atomic unsigned long *dirty;  /* one bit per page, by memfd offset */
};

/* RAM at [0, below_4g) and [4 GiB, 4 GiB + above_4g). */
int guest_memory_init(struct guest_memory *mem, uint64_t below_4g, uint64_t above_4g);
void guest_memory_destroy(struct guest_memory *mem);

/* Host pointer for [gpa, gpa+len) when it lies inside one RAM region, else
 * NULL.  Callers that write through it must call guest_memory_mark_dirty. */
void *guest_memory_ptr(const struct guest_memory *mem, uint64_t gpa, uint64_t len);
bool guest_memory_is_ram(const struct guest_memory *mem, uint64_t gpa, uint64_t len);
int guest_memory_read(const struct guest_memory *mem, uint64_t gpa, void *buf, uint64_t len);
int guest_memory_write(struct guest_memory *mem, uint64_t gpa, const void *buf, uint64_t len);
void guest_memory_mark_dirty(struct guest_memory *mem, uint64_t gpa, uint64_t len);
/* Test and clear a page's dirty bit (by index over all RAM, region order). */
bool guest_memory_test_and_clear_dirty(struct guest_memory *mem, uint64_t page_index);

#endif
