/* libvmm — networking: host network backends ("netdevs") that NICs such as
 * virtio-net-pci attach to with netdev=ID.
 *
 * A netdev is added while the machine is CREATED, before the devices that
 * use it; it is opened at once, so a bad interface name or file descriptor
 * fails here with the reason.  Backend types: "tap" (see lib/net/README.md):
 *
 *   tap,id=ID,ifname=NAME[,queues=N][,vnet_hdr=on|off]
 *   tap,id=ID,fd=N[,vnet_hdr=on|off]
 *   tap,id=ID,fds=A:B:...[,queues=N]
 *
 * ifname= opens the TAP interface NAME (creating it when absent; it goes
 * away with the machine unless it is persistent); fd=/fds= use taps the
 * caller opened (IFF_TAP|IFF_NO_PI, IFF_MULTI_QUEUE for several): the
 * machine keeps duplicates, the caller may close its own descriptors. */
#ifndef LIBVMM_NET_H
#define LIBVMM_NET_H

#include "common.h"
#include "machine.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Add and open a network backend from "TYPE,id=ID,key=value,..."; errors
 * name the key or value at fault.  Only in CREATED. */
LIBVMM_EXPORT int vmm_machine_add_netdev(vmm_machine *m, const char *spec);

/* Set the link of a netdev or NIC (`name`: netdev id or device id) up
 * (`up` != 0) or down, like QMP's set_link: the guest sees the link
 * status change (virtio-net: VIRTIO_NET_F_STATUS and a config interrupt)
 * and frames stop flowing while it is down.  Any state before ENDED. */
LIBVMM_EXPORT int vmm_machine_set_link(vmm_machine *m, const char *name, int up);

#ifdef __cplusplus
}
#endif

#endif
