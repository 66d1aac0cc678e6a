/* Device model: a device type is a const class (name, property table, state
 * description, realize/unrealize/reset); an instance embeds `struct device`
 * as its first member. */
#ifndef LIBVMM_DEVICE_H
#define LIBVMM_DEVICE_H

#include <pthread.h>
#include <stdbool.h>
#include "machine/machine.h"
#include "migration/state.h"

struct device;

struct device_class {
    const char *name;
    const char *help;
    size_t instance_size;
    const struct vmm_prop *props;   /* offsets into the instance */
    bool user_creatable;            /* may be added with vmm_machine_add_device */
    bool platform;                  /* created by the machine type */
    /* Claim resources (address ranges, IRQs); fail with a clear error. */
    int (*realize)(struct device *dev);
    void (*unrealize)(struct device *dev);
    /* Optional: free what the device set up when it was created (runs
     * last, whether or not it was realized). */
    void (*finalize)(struct device *dev);
    /* Back to power-on state (called with the device lock held). */
    void (*reset)(struct device *dev);
    /* Saved state: a plain struct described by `state`. */
    const struct state_desc *state;
    void (*save)(struct device *dev, void *state);
    int (*load)(struct device *dev, const void *state);
};

struct device {
    const struct device_class *cls;
    vmm_machine *m;
    char *id;
    pthread_mutex_t lock;           /* held around every callback into it */
    bool realized;
    struct device *next;
};

const struct device_class *device_class_find(const char *name);
/* Create (not realize) a device from parsed options ("driver" key = type). */
struct device *device_create(vmm_machine *m, vmm_opts *opts, bool platform);
int device_realize(struct device *dev);
void device_reset(struct device *dev);
void device_free(struct device *dev);

/* Map a port range owned by the device, dispatched under its lock. */
int device_map_pio(struct device *dev, uint64_t base, uint64_t size, const struct io_ops *ops);
int device_map_mmio(struct device *dev, uint64_t base, uint64_t size, const struct io_ops *ops);

extern const struct device_class device_serial;
extern const struct device_class device_i8042;
extern const struct device_class device_rtc;
extern const struct device_class device_debug_exit;
extern const struct device_class device_acpi_pm;

/* Console plumbing for the UART. */
void serial_receive(struct device *dev, const uint8_t *data, size_t len);

#endif
