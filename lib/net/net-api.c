/* The public networking calls (libvmm/net.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "libvmm/net.h"
#include "devices/device.h"
#include "net/net.h"

LIBVMM_EXPORT int vmm_machine_add_netdev(vmm_machine *m, const char *spec)
{
    vmm_clear_error();
    if (!m)
        return vmm_set_error(EINVAL, "vmm_machine_add_netdev: no machine given");
    if (vmm_machine_get_state(m) != VMM_STATE_CREATED)
        return vmm_set_error(EBUSY, "vmm_machine_add_netdev: the machine is %s; this needs it "
                             "created", vmm_machine_state_name(vmm_machine_get_state(m)));
    if (!spec || !*spec)
        return vmm_set_error(EINVAL, "vmm_machine_add_netdev: no netdev given "
                             "(e.g. tap,id=net0,ifname=tap0)");
    if (!net_backend_create(m, spec))
        return vmm_error_prefix("vmm_machine_add_netdev");
    return 0;
}

/* The netdev a device's "netdev" property names, for set_link by device id. */
static struct net_backend *netdev_of_device(vmm_machine *m, const char *name)
{
    for (struct device *d = m->devices; d; d = d->next) {
        if (!d->id || strcmp(d->id, name) || !vmm_props_find(d->cls->props, "netdev"))
            continue;
        char *id = vmm_props_format(d->cls->props, d, "netdev");
        struct net_backend *nb = id ? net_backend_find(m, id) : NULL;
        free(id);
        return nb;
    }
    return NULL;
}

LIBVMM_EXPORT int vmm_machine_set_link(vmm_machine *m, const char *name, int up)
{
    vmm_clear_error();
    if (!m || !name)
        return vmm_set_error(EINVAL, "vmm_machine_set_link: machine and name are required");
    if (vmm_machine_get_state(m) == VMM_STATE_ENDED)
        return vmm_set_error(EBUSY, "vmm_machine_set_link: the machine has ended");
    struct net_backend *nb = net_backend_find(m, name);
    if (!nb)
        nb = netdev_of_device(m, name);
    if (!nb)
        return vmm_set_error(ENOENT, "vmm_machine_set_link: no netdev or NIC named '%s'", name);
    net_backend_set_link(nb, up != 0);
    return 0;
}
