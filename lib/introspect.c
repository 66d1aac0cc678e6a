/* Introspection entry points: dispatch by kind to each subsystem. */
#include <errno.h>
#include <string.h>
#include "introspect.h"
#include "util/util.h"

#ifndef LIBVMM_VERSION
#define LIBVMM_VERSION "0.0.0"
#endif

LIBVMM_EXPORT const char *vmm_version(void)
{
    return LIBVMM_VERSION;
}

static const char *const kinds = "machine, device, cpu-model, block-driver, chardev";

LIBVMM_EXPORT int vmm_list_types(const char *kind, vmm_type_fn fn, void *user_data)
{
    vmm_clear_error();
    if (!kind || !fn)
        return vmm_set_error(EINVAL, "vmm_list_types: kind and callback are required");
    if (!strcmp(kind, "machine"))
        return machine_list_types(fn, user_data);
    if (!strcmp(kind, "device"))
        return device_list_types(fn, user_data);
    if (!strcmp(kind, "cpu-model"))
        return cpu_model_list_types(fn, user_data);
    if (!strcmp(kind, "block-driver"))
        return block_list_drivers(fn, user_data);
    if (!strcmp(kind, "chardev"))
        return chardev_list_types(fn, user_data);
    return vmm_set_error(ENOENT, "vmm_list_types: unknown kind '%s' (known: %s)", kind, kinds);
}

LIBVMM_EXPORT int vmm_list_properties(const char *kind, const char *name,
                                      vmm_property_fn fn, void *user_data)
{
    vmm_clear_error();
    if (!kind || !name || !fn)
        return vmm_set_error(EINVAL, "vmm_list_properties: kind, name and callback are required");
    if (!strcmp(kind, "machine"))
        return machine_list_properties(name, fn, user_data);
    if (!strcmp(kind, "device"))
        return device_list_properties(name, fn, user_data);
    if (!strcmp(kind, "block-driver"))
        return block_list_driver_properties(name, fn, user_data);
    if (!strcmp(kind, "chardev"))
        return chardev_list_properties(name, fn, user_data);
    if (!strcmp(kind, "cpu-model"))
        return 0; /* CPU models have no properties of their own */
    return vmm_set_error(ENOENT, "vmm_list_properties: unknown kind '%s' (known: %s)", kind, kinds);
}
