#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include "machine/address-space.h"
#include "util/util.h"

void address_space_init(struct address_space *as, const char *name)
{
    memset(as, 0, sizeof(*as));
    as->name = name;
    pthread_rwlock_init(&as->lock, NULL);
}

void address_space_destroy(struct address_space *as)
{
    free(as->ranges);
    pthread_rwlock_destroy(&as->lock);
    memset(as, 0, sizeof(*as));
}

/* Index of the first range whose end lies above addr. */
static size_t lower_bound(const struct address_space *as, uint64_t addr)
{
    size_t lo = 0, hi = as->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct io_range *r = &as->ranges[mid];
        if (r->base + r->size <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int address_space_map(struct address_space *as, uint64_t base, uint64_t size,
                      const struct io_ops *ops, void *opaque, pthread_mutex_t *lock,
                      const char *owner)
{
    if (!size || base + size < base)
        return vmm_set_error(EINVAL, "%s: bad %s range 0x%" PRIx64 "+0x%" PRIx64,
                             owner, as->name, base, size);
    int ret = 0;
    pthread_rwlock_wrlock(&as->lock);
    size_t i = lower_bound(as, base);
    if (i < as->count && as->ranges[i].base < base + size) {
        ret = vmm_set_error(EBUSY, "%s: %s range 0x%" PRIx64 "-0x%" PRIx64 " overlaps %s",
                            owner, as->name, base, base + size - 1, as->ranges[i].owner);
        goto out;
    }
    if (as->count == as->cap) {
        size_t cap = as->cap ? as->cap * 2 : 16;
        struct io_range *grown = realloc(as->ranges, cap * sizeof(*grown));
        if (!grown) {
            ret = vmm_set_error(ENOMEM, "out of memory");
            goto out;
        }
        as->ranges = grown;
        as->cap = cap;
    }
    memmove(&as->ranges[i + 1], &as->ranges[i], (as->count - i) * sizeof(*as->ranges));
    as->ranges[i] = (struct io_range){ base, size, ops, opaque, lock, owner };
    as->count++;
out:
    pthread_rwlock_unlock(&as->lock);
    return ret;
}

void address_space_unmap(struct address_space *as, uint64_t base)
{
    pthread_rwlock_wrlock(&as->lock);
    size_t i = lower_bound(as, base);
    if (i < as->count && as->ranges[i].base == base) {
        memmove(&as->ranges[i], &as->ranges[i + 1], (as->count - i - 1) * sizeof(*as->ranges));
        as->count--;
    }
    pthread_rwlock_unlock(&as->lock);
}

/* Copy the range covering addr so the callback runs without the table lock. */
static bool lookup(struct address_space *as, uint64_t addr, struct io_range *out)
{
    bool found = false;
    pthread_rwlock_rdlock(&as->lock);
    size_t i = lower_bound(as, addr);
    if (i < as->count && as->ranges[i].base <= addr) {
        *out = as->ranges[i];
        found = true;
    }
    pthread_rwlock_unlock(&as->lock);
    return found;
}

bool address_space_read(struct address_space *as, uint64_t addr, unsigned size, uint64_t *value)
{
    struct io_range r;
    *value = size >= 8 ? UINT64_MAX : (1ull << (size * 8)) - 1;
    if (!lookup(as, addr, &r) || !r.ops->read)
        return false;
    if (r.lock)
        pthread_mutex_lock(r.lock);
    *value = r.ops->read(r.opaque, addr - r.base, size);
    if (r.lock)
        pthread_mutex_unlock(r.lock);
    return true;
}

bool address_space_write(struct address_space *as, uint64_t addr, unsigned size, uint64_t value)
{
    struct io_range r;
    if (!lookup(as, addr, &r))
        return false;
    if (!r.ops->write)
        return true;
    if (r.lock)
        pthread_mutex_lock(r.lock);
    r.ops->write(r.opaque, addr - r.base, value, size);
    if (r.lock)
        pthread_mutex_unlock(r.lock);
    return true;
}
