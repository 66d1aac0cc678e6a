/* Port I/O and MMIO dispatch: sorted, non-overlapping ranges per machine,
 * found by binary search.  A range may name a lock that the dispatcher holds
 * around its callbacks (the owning device's lock). */
#ifndef LIBVMM_ADDRESS_SPACE_H
#define LIBVMM_ADDRESS_SPACE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct io_ops {
    /* `offset` is relative to the range's base; size is 1, 2, 4 or 8. */
    uint64_t (*read)(void *opaque, uint64_t offset, unsigned size);
    void (*write)(void *opaque, uint64_t offset, uint64_t value, unsigned size);
};

struct io_range {
    uint64_t base, size;
    const struct io_ops *ops;
    void *opaque;
    pthread_mutex_t *lock;         /* NULL: callbacks do their own locking */
    const char *owner;             /* for error messages */
};

struct address_space {
    const char *name;              /* "pio" or "mmio" */
    struct io_range *ranges;
    size_t count, cap;
    pthread_rwlock_t lock;
};

void address_space_init(struct address_space *as, const char *name);
void address_space_destroy(struct address_space *as);
/* Fails naming both owners when the range overlaps another. */
int address_space_map(struct address_space *as, uint64_t base, uint64_t size,
                      const struct io_ops *ops, void *opaque, pthread_mutex_t *lock,
                      const char *owner);
void address_space_unmap(struct address_space *as, uint64_t base);
/* Returns false when nothing is mapped at addr (reads then see all ones). */
bool address_space_read(struct address_space *as, uint64_t addr, unsigned size, uint64_t *value);
bool address_space_write(struct address_space *as, uint64_t addr, unsigned size, uint64_t value);

#endif
