/* The device registry and the life cycle every device shares. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "devices/device.h"
#include "devices/pci.h"
#include "devices/virtio/virtio.h"
#include "devices/virtio/virtio-console.h"
#include "introspect.h"

static const struct device_class *const classes[] = {
    &device_serial, &device_i8042, &device_rtc, &device_debug_exit, &device_acpi_pm,
    &device_pci_host, &device_virtio_rng_pci.dc, &device_virtio_rng_mmio.dc,
    &device_virtio_net_pci.dc, &device_virtio_net_mmio.dc,
    &device_virtio_blk_pci.dc, &device_virtio_blk_mmio.dc,
    &device_virtio_console_pci.dc, &device_virtio_console_mmio.dc, &device_virtio_serial_pci.dc,
    &device_virtio_serial_mmio.dc, &device_virtconsole, &device_virtserialport,
};

const struct device_class *device_class_find(const char *name)
{
    for (size_t i = 0; i < VMM_ARRAY_SIZE(classes); i++)
        if (!strcmp(classes[i]->name, name))
            return classes[i];
    return NULL;
}

int device_list_types(vmm_type_fn fn, void *user_data)
{
    for (size_t i = 0; i < VMM_ARRAY_SIZE(classes); i++)
        if (fn(user_data, classes[i]->name, classes[i]->help))
            break;
    return 0;
}

static const struct vmm_prop common_props[] = {
    { "id", VMM_PROP_STR, offsetof(struct device, id), NULL, "device id (unique in the machine)",
      NULL, 0, 0 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

static int unknown_device(const char *name)
{
    char list[512] = "";
    for (size_t i = 0; i < VMM_ARRAY_SIZE(classes); i++) {
        size_t len = strlen(list);
        snprintf(list + len, sizeof(list) - len, "%s%s", i ? ", " : "", classes[i]->name);
    }
    return vmm_set_error(ENOENT, "unknown device type '%s' (known: %s)", name, list);
}

int device_list_properties(const char *name, vmm_property_fn fn, void *user_data)
{
    const struct device_class *cls = device_class_find(name);
    if (!cls)
        return unknown_device(name);
    vmm_props_list(common_props, fn, user_data);
    return vmm_props_list(cls->props, fn, user_data);
}

struct device *device_create(vmm_machine *m, vmm_opts *opts, bool platform)
{
    const char *type = vmm_opts_get(opts, "driver");
    const struct device_class *cls = type ? device_class_find(type) : NULL;
    if (!cls) {
        if (type)
            unknown_device(type);
        else
            vmm_set_error(EINVAL, "no device type given");
        return NULL;
    }
    if (!platform && !cls->user_creatable) {
        vmm_set_error(EPERM, "%s: the machine creates this device itself", cls->name);
        return NULL;
    }
    struct device *dev = calloc(1, cls->instance_size);
    if (!dev) {
        vmm_set_error(ENOMEM, "out of memory");
        return NULL;
    }
    dev->cls = cls;
    dev->m = m;
    pthread_mutex_init(&dev->lock, NULL);
    if (vmm_props_init(cls->props, dev, cls->name) < 0 ||
        vmm_props_apply(common_props, dev, cls->name, opts) < 0 ||
        vmm_props_apply(cls->props, dev, cls->name, opts) < 0 ||
        vmm_opts_check_all_used(opts, cls->name) < 0) {
        device_free(dev);
        return NULL;
    }
    return dev;
}

int device_realize(struct device *dev)
{
    if (dev->cls->realize && dev->cls->realize(dev) < 0)
        return vmm_error_prefix("%s%s%s", dev->cls->name, dev->id ? " " : "", dev->id ? dev->id : "");
    dev->realized = true;
    device_reset(dev);
    return 0;
}

void device_reset(struct device *dev)
{
    if (!dev->cls->reset)
        return;
    pthread_mutex_lock(&dev->lock);
    dev->cls->reset(dev);
    pthread_mutex_unlock(&dev->lock);
}

void device_free(struct device *dev)
{
    if (!dev)
        return;
    if (dev->realized && dev->cls->unrealize)
        dev->cls->unrealize(dev);
    if (dev->cls->finalize)
        dev->cls->finalize(dev);
    vmm_props_release(dev->cls->props, dev);
    vmm_props_release(common_props, dev);
    pthread_mutex_destroy(&dev->lock);
    free(dev);
}

int device_map_pio(struct device *dev, uint64_t base, uint64_t size, const struct io_ops *ops)
{
    return address_space_map(&dev->m->pio, base, size, ops, dev, &dev->lock, dev->cls->name);
}

int device_map_mmio(struct device *dev, uint64_t base, uint64_t size, const struct io_ops *ops)
{
    return address_space_map(&dev->m->mmio, base, size, ops, dev, &dev->lock, dev->cls->name);
}
