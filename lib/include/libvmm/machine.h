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

LIBVMM_EXPORT enum vmm_machine_state vmm_machine_get_state(vmm_machine *m);
/* The name of a state ("created", "running", "paused", "ended"). */
LIBVMM_EXPORT const char *vmm_machine_state_name(enum vmm_machine_state state);

LIBVMM_EXPORT enum vmm_exit_reason vmm_machine_exit_reason(vmm_machine *m);
/* The test-exit status ((value << 1) | 1) for VMM_EXIT_TEST, else 0. */
LIBVMM_EXPORT int vmm_machine_exit_code(vmm_machine *m);
/* Why the machine ended, in words (for VMM_EXIT_ERROR: the failure). */
LIBVMM_EXPORT const char *vmm_machine_exit_message(vmm_machine *m);

#ifdef __cplusplus
}
#endif

#endif
