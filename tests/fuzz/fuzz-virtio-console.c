/* libFuzzer harness for virtio-console's guest-facing side
 * (lib/devices/virtio/virtio-console.c): control messages in both
 * directions, port data, and the chardev spec parser.
 *
 * The device runs on the virtio core over a 64 KiB fake guest RAM taken
 * from the input, without KVM or a transport: the harness supplies the
 * transport callbacks and the few machine functions the code calls, and
 * iterates the I/O context itself.  Port 0 (console) writes to /dev/null;
 * port 1 ("org.libvmm.fuzz") reads from a pipe the harness fills with
 * bytes from the input.  Queues 0-5 (ports 0 and 1, control) sit at fixed
 * places: queue q's descriptors at q*0x400, avail at +0x100, used at
 * +0x200, 8 entries; everything else in RAM (ring indices, descriptors,
 * buffers, messages) is the input's.
 *
 * Input: byte 0 = flags (bit 0: the driver takes MULTIPORT, bit 1:
 * EVENT_IDX, bit 2: INDIRECT_DESC), byte 1 = how many bytes the host
 * sends on port 1, bytes 2.. = a chardev spec up to a NUL (parsed, never
 * opened), then the RAM image. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "chardev/chardev.h"
#include "devices/virtio/virtio-console.h"
#include "devices/virtio/virtio.h"
#include "machine/machine.h"

#define FUZZ_RAM (64u * 1024)
#define FUZZ_QUEUES 6

/* ---- what the rest of libvmm would provide ------------------------------ */
int machine_ensure_io_thread(vmm_machine *m) { (void)m; return 0; }
enum vmm_machine_state vmm_machine_get_state(vmm_machine *m) { (void)m; return VMM_STATE_CREATED; }
const char *vmm_machine_state_name(enum vmm_machine_state s) { (void)s; return "created"; }
void machine_emit(vmm_machine *m, enum vmm_event_type type, int guest, const char *reason,
                  const char *device, const char *message)
{
    (void)m, (void)type, (void)guest, (void)reason, (void)device, (void)message;
}
int virtio_pci_realize(struct device *dev) { (void)dev; return -1; }
void virtio_pci_unrealize(struct device *dev) { (void)dev; }
void virtio_pci_reset(struct device *dev) { (void)dev; }
int virtio_mmio_realize(struct device *dev) { (void)dev; return -1; }
void virtio_mmio_unrealize(struct device *dev) { (void)dev; }
void virtio_mmio_reset(struct device *dev) { (void)dev; }
void virtio_proxy_save(struct device *dev, void *state) { (void)dev; (void)state; }
int virtio_proxy_load(struct device *dev, const void *state) { (void)dev; (void)state; return -1; }
const struct state_desc virtio_state_desc;

static void notify_queue(struct virtio_device *vdev, struct virtqueue *vq) { (void)vdev; (void)vq; }
static void notify_config(struct virtio_device *vdev) { (void)vdev; }
static const struct virtio_transport_ops transport = { notify_queue, notify_config };

/* ---- set-up ------------------------------------------------------------- */
static vmm_machine machine;
static int host_in[2];                 /* the harness writes [1]; port 1 reads [0] */

static void setup_once(void)
{
    if (guest_memory_init(&machine.mem, FUZZ_RAM, 0) < 0 || pipe2(host_in, O_NONBLOCK) < 0)
        __builtin_trap();
    machine.io_context = g_main_context_new();
    int devnull = open("/dev/null", O_WRONLY);
    char con[64], port[96];
    snprintf(con, sizeof(con), "fd,id=c0,out=%d", devnull);
    snprintf(port, sizeof(port), "fd,id=c1,in=%d,out=%d", host_in[0], devnull);
    if (vmm_machine_add_chardev(&machine, con) < 0 || vmm_machine_add_chardev(&machine, port) < 0)
        __builtin_trap();
}

static struct device *new_device(const struct device_class *cls, const char *const *props)
{
    struct device *dev = calloc(1, cls->instance_size);
    dev->cls = cls;
    dev->m = &machine;
    pthread_mutex_init(&dev->lock, NULL);
    if (vmm_props_init(cls->props, dev, cls->name) < 0)
        __builtin_trap();
    for (; props[0]; props += 2)
        if (vmm_props_set(cls->props, dev, cls->name, props[0], props[1]) < 0)
            __builtin_trap();
    return dev;
}

static void free_device(struct device *dev)
{
    vmm_props_release(dev->cls->props, dev);
    pthread_mutex_destroy(&dev->lock);
    free(dev);
}

static void start_queues(struct virtio_device *vdev, uint8_t flags)
{
    vdev->guest_features = (1ull << VIRTIO_F_VERSION_1) | ((flags & 1ull) << 1) |
                           ((flags & 2ull) << (VIRTIO_F_EVENT_IDX - 1)) |
                           ((flags & 4ull) << (VIRTIO_F_INDIRECT_DESC - 2));
    virtio_set_status(vdev, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                      VIRTIO_STATUS_FEATURES_OK);
    for (unsigned q = 0; q < FUZZ_QUEUES; q++) {
        struct virtqueue *vq = &vdev->vqs[q];
        vq->size = 8;
        vq->desc_gpa = q * 0x400u;
        vq->avail_gpa = q * 0x400u + 0x100;
        vq->used_gpa = q * 0x400u + 0x200;
        virtio_enable_queue(vdev, q);
    }
    virtio_set_status(vdev, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                      VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
}

/* What the I/O thread would do: queue handlers, then the chardev sources. */
static void run(struct virtio_device *vdev, unsigned rounds)
{
    static const unsigned order[] = { VCON_CTRL_TX, VCON_CTRL_RX, 1, 0, 5, 4 };
    for (unsigned r = 0; r < rounds; r++) {
        for (size_t i = 0; i < VMM_ARRAY_SIZE(order); i++) {
            pthread_mutex_lock(&vdev->dev->lock);
            if (!vdev->broken && vdev->vqs[order[i]].ready)
                vdev->ops->queue_notify(vdev, order[i]);
            pthread_mutex_unlock(&vdev->dev->lock);
        }
        while (g_main_context_iteration(machine.io_context, FALSE))
            ;
    }
}

static void drain_pipe(void)
{
    uint8_t buf[512];
    while (read(host_in[0], buf, sizeof(buf)) > 0)
        ;
}

static void fuzz_spec(const uint8_t **data, size_t *size)
{
    const uint8_t *nul = memchr(*data, 0, *size);
    size_t len = nul ? (size_t)(nul - *data) : *size;
    char *spec = strndup((const char *)*data, len);
    struct chardev_config cfg;
    vmm_clear_error();
    if (chardev_parse(spec, &cfg) == 0)
        chardev_config_release(&cfg);
    else if (!*vmm_get_error())
        __builtin_trap();   /* every refusal says why */
    free(spec);
    *data += nul ? len + 1 : len;
    *size -= nul ? len + 1 : len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        setup_once();
        ready = 1;
    }
    if (size < 2)
        return 0;
    uint8_t flags = data[0], host_bytes = data[1];
    data += 2;
    size -= 2;
    fuzz_spec(&data, &size);
    uint8_t *ram = guest_memory_ptr(&machine.mem, 0, FUZZ_RAM);
    memset(ram, 0, FUZZ_RAM);
    memcpy(ram, data, size < FUZZ_RAM ? size : FUZZ_RAM);

    static const char *const console_props[] = { "chardev", "c0", "max_ports", "2", NULL };
    static const char *const port_props[] = { "chardev", "c1", "name", "org.libvmm.fuzz", NULL };
    struct device *con = new_device(&device_virtio_console_pci.dc, console_props);
    struct virtio_device *vdev = &((struct virtio_proxy *)con)->vdev;
    if (virtio_core_init(vdev, con, device_virtio_console_pci.ops, &transport) < 0)
        __builtin_trap();
    con->realized = true;
    machine.devices = con;
    struct device *port = new_device(&device_virtserialport, port_props);
    if (device_virtserialport.realize(port) < 0)
        __builtin_trap();

    start_queues(vdev, flags);
    uint8_t host[255];
    memset(host, 'h', sizeof(host));
    if (host_bytes && write(host_in[1], host, host_bytes) < 0)
        __builtin_trap();
    run(vdev, 4);
    pthread_mutex_lock(&con->lock);
    virtio_reset(vdev);
    pthread_mutex_unlock(&con->lock);
    run(vdev, 1);

    device_virtserialport.unrealize(port);
    free_device(port);
    virtio_core_release(vdev);
    machine.devices = NULL;
    free_device(con);
    drain_pipe();
    return 0;
}
