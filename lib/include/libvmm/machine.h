/* libvmm — virtual machines.
 *
 * A machine is built from a type name, configured with properties and
 * devices, then started.  vmm_machine_start() returns at once: the vCPUs
 * and the machine's I/O thread run in the background while the caller
 * pauses, resumes, resets, queries or stops the machine and waits for it to
 * end.  Several machines may live in one process.
 *
 * Life cycle: CREATED -> (start) -> RUNNING <-> PAUSED -> ENDED.
 * Configuration calls are allowed only in CREATED; each call checks the
 * state and says which states would be right.
 *
 * Signals: vCPU threads are kicked out of KVM_RUN with SIGUSR2 (installed
 * once, with SA_RESTART, by the first vmm_machine_start; the handler does
 * nothing).  Embedders must not use SIGUSR2 for anything else in vCPU
 * threads; other threads keep their signal masks. */
#ifndef LIBVMM_MACHINE_H
#define LIBVMM_MACHINE_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vmm_machine vmm_machine;

enum vmm_machine_state {
    VMM_STATE_CREATED = 0,
    VMM_STATE_RUNNING = 1,
    VMM_STATE_PAUSED = 2,
    VMM_STATE_ENDED = 3,
};

/* Why a machine ended. */
enum vmm_exit_reason {
    VMM_EXIT_NONE = 0,        /* not ended yet */
    VMM_EXIT_POWEROFF = 1,    /* the guest powered off (ACPI S5, or similar) */
    VMM_EXIT_RESET = 2,       /* the guest reset with reboot=off */
    VMM_EXIT_TEST = 3,        /* the guest wrote the test-exit port */
    VMM_EXIT_ERROR = 4,       /* a vCPU or device failed: see the message */
    VMM_EXIT_STOPPED = 5,     /* vmm_machine_stop() */
};

/* Create a machine of `type` ("microvm"); see vmm_list_types("machine"). */
LIBVMM_EXPORT vmm_machine *vmm_machine_new(const char *type);

/* Free the machine, stopping it first if it runs.  NULL is accepted. */
LIBVMM_EXPORT void vmm_machine_free(vmm_machine *m);

/* Set a machine property: "memory" (size), "cpus", "kernel", "initrd",
 * "cmdline", "cpu-model", "reboot" (on: a guest reset restarts the machine;
 * off: it ends the machine), "name".  vmm_list_properties("machine", type)
 * lists them all with defaults. */
LIBVMM_EXPORT int vmm_machine_set(vmm_machine *m, const char *key, const char *value);

/* A property's current value as text; the caller frees it with free(). */
LIBVMM_EXPORT char *vmm_machine_get(vmm_machine *m, const char *key);

/* Add a device from "type,key=value,..." (e.g. "isa-debug-exit,iobase=0xf4").
 * See vmm_list_types("device") and vmm_list_properties("device", type). */
LIBVMM_EXPORT int vmm_machine_add_device(vmm_machine *m, const char *spec);

/* Add a character device (a host end for a device such as a virtio-console
 * port) from QEMU's -chardev syntax "BACKEND,id=ID,...": "null", "stdio",
 * "fd,in=FD,out=FD" (not closed by the machine), "file,path=P[,append=on]",
 * "socket,path=P,server=on,wait=off" (a Unix socket; one client at a time,
 * the next one after a disconnect) or "socket,path=P[,reconnect=SECONDS]"
 * (client).  Devices name it with chardev=ID.  Files and sockets are opened
 * here, so a listening socket accepts connections before the machine starts.
 * Only in CREATED. */
LIBVMM_EXPORT int vmm_machine_add_chardev(vmm_machine *m, const char *spec);

/* Console output: the guest's serial port bytes go to `fn` (called on the
 * vCPU thread that wrote them; keep it short). */
typedef void (*vmm_output_fn)(void *user_data, const void *data, size_t len);
LIBVMM_EXPORT int vmm_machine_set_serial_callback(vmm_machine *m, vmm_output_fn fn,
                                                  void *user_data, vmm_free_fn free_fn);

/* Console through file descriptors: bytes read from `in_fd` (-1: none)
 * reach the guest's serial input; output is written to `out_fd` (-1: none).
 * The machine does not close them. */
LIBVMM_EXPORT int vmm_machine_set_serial_fds(vmm_machine *m, int in_fd, int out_fd);

/* Queue bytes for the guest's serial input. Allowed in any state before ENDED. */
LIBVMM_EXPORT int vmm_machine_serial_input(vmm_machine *m, const void *data, size_t len);

/* Realize devices, load the kernel and start the vCPUs; returns at once. */
LIBVMM_EXPORT int vmm_machine_start(vmm_machine *m);

/* Stop the vCPUs (RUNNING -> PAUSED, emits STOP) and let them run again
 * (PAUSED -> RUNNING, emits RESUME); each is a no-op in its target state. */
LIBVMM_EXPORT int vmm_machine_pause(vmm_machine *m);
LIBVMM_EXPORT int vmm_machine_resume(vmm_machine *m);

/* Hard reset: the machine restarts from its boot state (memory reloaded). */
LIBVMM_EXPORT int vmm_machine_reset(vmm_machine *m);

/* Ask the guest to power off (ACPI power button); it may ignore the request. */
LIBVMM_EXPORT int vmm_machine_request_poweroff(vmm_machine *m);

/* End the machine now (reason VMM_EXIT_STOPPED). */
LIBVMM_EXPORT int vmm_machine_stop(vmm_machine *m);

/* Wait until the machine ends, at most `timeout_ms` (-1: forever).
 * Returns 0 when it ended, -1 with ETIMEDOUT when it did not. */
LIBVMM_EXPORT int vmm_machine_wait(vmm_machine *m, int timeout_ms);

/* The machine's state (VMM_STATE_ENDED for NULL). */
LIBVMM_EXPORT enum vmm_machine_state vmm_machine_get_state(vmm_machine *m);
/* The name of a state ("created", "running", "paused", "ended"). */
LIBVMM_EXPORT const char *vmm_machine_state_name(enum vmm_machine_state state);

/* Why the machine ended (VMM_EXIT_NONE while it has not). */
LIBVMM_EXPORT enum vmm_exit_reason vmm_machine_exit_reason(vmm_machine *m);
/* The test-exit status ((value << 1) | 1) for VMM_EXIT_TEST, else 0. */
LIBVMM_EXPORT int vmm_machine_exit_code(vmm_machine *m);
/* Why the machine ended, in words (for VMM_EXIT_ERROR: the failure). */
LIBVMM_EXPORT const char *vmm_machine_exit_message(vmm_machine *m);

/* ---- events ------------------------------------------------------------ */

/* What happened; `name` carries QMP's event name for each. */
enum vmm_event_type {
    VMM_EVENT_STOP = 1,        /* "STOP": the machine paused */
    VMM_EVENT_RESUME = 2,      /* "RESUME": it runs again */
    VMM_EVENT_SHUTDOWN = 3,    /* "SHUTDOWN": it ended (see reason) */
    VMM_EVENT_RESET = 4,       /* "RESET": it restarted from boot state */
    VMM_EVENT_POWERDOWN = 5,   /* "POWERDOWN": a power-off request reached the guest */
    VMM_EVENT_DEVICE_DELETED = 6, /* "DEVICE_DELETED": device (id) is gone */
    VMM_EVENT_BLOCK_IO_ERROR = 7, /* "BLOCK_IO_ERROR": device's backend failed */
    VMM_EVENT_VSERPORT_CHANGE = 8, /* "VSERPORT_CHANGE": the guest opened or closed the
                                      virtio-serial port `device` (message "open"/"closed") */
};

struct vmm_event {
    size_t size;               /* sizeof(struct vmm_event) of the library */
    enum vmm_event_type type;
    const char *name;          /* "STOP", "SHUTDOWN", ... */
    int64_t seconds;           /* wall-clock time of the event */
    int64_t microseconds;
    int guest;                 /* SHUTDOWN/RESET: 1 if the guest caused it */
    /* SHUTDOWN/RESET: QMP's reason names: "guest-shutdown" (power off or
     * test-exit), "guest-reset" (reset with reboot=off, or a restart),
     * "host-error" (a vCPU or device failed), "host-qmp-quit" (stopped or
     * freed), "host-qmp-system-reset" (vmm_machine_reset); else NULL. */
    const char *reason;
    const char *device;        /* DEVICE_DELETED, BLOCK_IO_ERROR, VSERPORT_CHANGE: device id */
    const char *message;       /* human-readable detail, or NULL */
    /* BLOCK_IO_ERROR (QMP's fields): the drive's node-name, "read" or
     * "write", what the device did ("report", "ignore", "stop") and whether
     * the backend ran out of space; `message` is the reason. */
    const char *node_name;
    const char *operation;
    const char *action;
    int nospace;
};

/* Called for each event, from whichever libvmm thread caused it (a vCPU,
 * the I/O thread, or the caller of the API call); it may call the API but
 * must not free the machine.  Events of one machine arrive one at a time,
 * in order. */
typedef void (*vmm_event_fn)(void *user_data, const struct vmm_event *event);

/* Install the event callback (only in CREATED); `free_fn` runs on user_data
 * when it is replaced or the machine is freed. */
LIBVMM_EXPORT int vmm_machine_set_event_callback(vmm_machine *m, vmm_event_fn fn,
                                                 void *user_data, vmm_free_fn free_fn);

#ifdef __cplusplus
}
#endif

#endif
