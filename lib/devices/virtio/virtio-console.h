/* virtio-console (virtio 1.2 §5.3): control protocol constants and the
 * port device classes (virtconsole, virtserialport). */
#ifndef LIBVMM_VIRTIO_CONSOLE_H
#define LIBVMM_VIRTIO_CONSOLE_H

#include "devices/device.h"

#define VCON_MAX_PORTS 15          /* 2 queues each + 2 control: VIRTIO_MAX_QUEUES */
#define VCON_CTRL_RX 2             /* control receiveq (device -> driver) */
#define VCON_CTRL_TX 3             /* control transmitq (driver -> device) */

/* Control events (struct virtio_console_control.event). */
enum {
    VCON_DEVICE_READY = 0,
    VCON_DEVICE_ADD = 1,
    VCON_DEVICE_REMOVE = 2,
    VCON_PORT_READY = 3,
    VCON_CONSOLE_PORT = 4,
    VCON_RESIZE = 5,
    VCON_PORT_OPEN = 6,
    VCON_PORT_NAME = 7,
};

extern const struct device_class device_virtconsole, device_virtserialport;

#endif
