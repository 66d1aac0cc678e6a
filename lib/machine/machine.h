/* The machine object (internal): guest memory, address spaces, vCPUs,
 * devices and the I/O thread of one virtual machine.  Nothing here is global:
 * several machines live side by side in one process. */
#ifndef LIBVMM_MACHINE_INT_H
#define LIBVMM_MACHINE_INT_H

#include <glib.h>
#include <glib-unix.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include "libvmm/machine.h"
#include "util/util.h"
#include "kvm/kvm.h"
#include "machine/memory.h"
#include "machine/address-space.h"

struct device;
struct vcpu;
struct machine_listener;
struct machine_log;
struct pci_bus;
struct net_backend;

/* The machine's configuration: every field is a machine property. */
struct machine_config {
    uint64_t memory;
    uint32_t cpus;
    char *kernel;
    char *initrd;
    char *cmdline;
    char *cpu_model;
    bool reboot;
    char *name;
    bool virtio_mmio_cmdline;
};

struct machine_class {
    const char *name;
    const char *help;
    /* Lay out memory and create the platform devices (before user devices). */
    int (*init)(vmm_machine *m);
    /* Load the kernel, build firmware tables, set the boot vCPU state. */
    int (*load)(vmm_machine *m);
};

extern const struct machine_class machine_microvm;
extern const struct machine_class machine_pc;

struct vmm_machine {
    const struct machine_class *cls;
    struct machine_config cfg;

    pthread_mutex_t lock;          /* state, exit reason, pause handshake */
    pthread_mutex_t transition_lock; /* one pause/resume/reset at a time */
    pthread_cond_t cond;
    enum vmm_machine_state state;
    enum vmm_exit_reason exit_reason;
    int exit_code;
    char exit_message[512];
    bool end_reported;
    bool start_failed;             /* resources half built: no second try */             /* the SHUTDOWN event was delivered */
    bool pause_wanted;             /* vCPUs park while set */
    unsigned parked;               /* vCPUs parked right now */

    struct kvm_vm vm;
    struct guest_memory mem;
    struct address_space pio, mmio;
    struct vcpu **vcpus;
    unsigned nr_vcpus;
    struct device *devices;        /* in creation order */
    struct device *devices_tail;

    vmm_event_fn event_fn;
    void *event_data;
    vmm_free_fn event_free;
    pthread_mutex_t event_lock;    /* one event at a time, in order */

    vmm_output_fn serial_fn;
    void *serial_data;
    vmm_free_fn serial_free;
    int serial_in_fd, serial_out_fd;
    struct device *console;        /* the UART the console is wired to */
    struct chardev *chardevs;      /* lib/chardev, in creation order */

    GMainContext *io_context;
    GMainLoop *io_loop;
    GThread *io_thread;
    atomic_bool reset_pending;

    /* Queries, the per-machine log and the control server (query.c, lib/control). */
    struct machine_listener *listeners; /* internal event listeners, under event_lock */
    struct machine_log *log;            /* per-machine log sink, or NULL */
    _Atomic int *vcpu_tids;             /* host thread id of each vCPU (0: not started) */
    void *control;                      /* lib/control's state, freed with the machine */
    void (*control_free)(void *control);

    /* Platform facts the loaders and tables need. */
    uint64_t ram_below_4g, ram_above_4g;
    uint64_t rsdp_addr;
    struct pci_bus *pci;           /* bus 0 (machine type pc), owned by the pci-host device */
    struct net_backend *netdevs;   /* network backends by id (lib/net) */
    /* Drives (lib/machine/drives.c): struct machine_drive, in the order added. */
    GMutex drives_lock;
    GList *drives;
};

/* ---- for devices and the vCPU loop ------------------------------------- */
/* End the machine (first reason wins) and kick every vCPU out. Never call
 * with a device lock held by a path the machine lock orders before. */
void machine_end(vmm_machine *m, enum vmm_exit_reason reason, int code, const char *fmt, ...)
    VMM_PRINTF(4, 5);
/* Guest asked for a reset: restart (reboot=on) or end (reboot=off). */
void machine_guest_reset(vmm_machine *m, const char *why);
/* Deliver an event to the embedder (never with m->lock held). */
void machine_emit(vmm_machine *m, enum vmm_event_type type, int guest, const char *reason,
                  const char *device, const char *message);
/* BLOCK_IO_ERROR with QMP's fields (operation "read"/"write", action
 * "report"/"ignore"/"stop"); never with a device lock held. */
void machine_emit_block_io_error(vmm_machine *m, const char *device, const char *node,
                                 const char *operation, const char *action, bool nospace,
                                 const char *reason);
/* Raise or lower an interrupt line (GSI) of the in-kernel irqchip. */
int machine_set_irq(vmm_machine *m, unsigned gsi, bool level);
/* Run `fn` in the machine's I/O thread. */
void machine_run_in_io_thread(vmm_machine *m, GSourceFunc fn, void *data);
/* Console output from the UART the console is wired to. */
void machine_console_output(vmm_machine *m, const void *data, size_t len);
/* Park the calling vCPU while a pause is wanted; returns false when the
 * machine ended and the vCPU should leave its loop. */
bool machine_vcpu_checkpoint(vmm_machine *m);

/* ---- queries, logs, listeners (lib/machine/query.c) -------------------- */
/* Internal event listeners run after the embedder's callback, in order. */
int machine_add_listener(vmm_machine *m, vmm_event_fn fn, void *data);
void machine_remove_listener(vmm_machine *m, vmm_event_fn fn, void *data);
void machine_call_listeners(vmm_machine *m, const struct vmm_event *ev);
/* Called on a vCPU thread when it first reaches its checkpoint. */
void machine_vcpu_thread_started(vmm_machine *m);
/* Route this thread's vmm_log messages to the machine's log too. */
void machine_log_attach_thread(vmm_machine *m);
/* Log on the machine's log (and the process-wide one). */
void machine_log(vmm_machine *m, int level, const char *domain, const char *fmt, ...)
    VMM_PRINTF(4, 5);
void machine_release_extras(vmm_machine *m);
/* Create the I/O context and start its thread once (start, or the control
 * server before start). */
int machine_ensure_io_thread(vmm_machine *m);

int machine_add_device_opts(vmm_machine *m, const char *spec, bool platform);
struct device *machine_find_device(vmm_machine *m, const char *type);

#endif
