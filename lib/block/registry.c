/* The table of block drivers and its introspection. */
#include <errno.h>
#include <string.h>
#include "block-core.h"
#include "introspect.h"

static const struct block_driver *const drivers[] = {
    &block_driver_file,
    &block_driver_host_device,
    &block_driver_raw,
    &block_driver_qcow2,
    &block_driver_nbd,
};

const struct block_driver *block_driver_at(size_t i)
{
    return i < VMM_ARRAY_SIZE(drivers) ? drivers[i] : NULL;
}

const struct block_driver *block_driver_find(const char *name)
{
    for (size_t i = 0; i < VMM_ARRAY_SIZE(drivers); i++)
        if (drivers[i] && !strcmp(drivers[i]->name, name))
            return drivers[i];
    return NULL;
}

int block_list_drivers(vmm_type_fn fn, void *user_data)
{
    for (size_t i = 0; i < VMM_ARRAY_SIZE(drivers); i++)
        if (drivers[i] && fn(user_data, drivers[i]->name, drivers[i]->help))
            break;
    return 0;
}

int block_list_driver_properties(const char *name, vmm_property_fn fn, void *user_data)
{
    const struct block_driver *drv = block_driver_find(name);
    if (!drv)
        return vmm_set_error(ENOENT, "unknown block driver '%s'", name);
    return vmm_props_list(drv->open_props, fn, user_data);
}
