/* libvmm — observing and controlling a machine: queries, the per-machine log
 * and the QMP-compatible control server.
 *
 * Queries may be called from any thread in any state; they read a snapshot
 * and never wait for the vCPUs.  Structs follow common.h: the caller sets
 * `size` to sizeof the struct it was compiled with and the library fills no
 * more than that. */
#ifndef LIBVMM_CONTROL_H
#define LIBVMM_CONTROL_H

#include "common.h"
#include "machine.h"
#include "block.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- queries ------------------------------------------------------------ */

/* A machine's status.  Strings stay valid while the machine lives. */
struct vmm_status {
    size_t size;                   /* sizeof(struct vmm_status) */
    enum vmm_machine_state state;
    int running;                   /* 1 while the vCPUs run guest code */
    /* QMP's RunState name: "prelaunch" (created), "running", "paused",
     * "shutdown" (ended), "internal-error" (ended with VMM_EXIT_ERROR). */
    const char *status;
    enum vmm_exit_reason exit_reason;
    int exit_code;                 /* as vmm_machine_exit_code() */
    const char *exit_message;      /* "" until the machine ends */
    const char *name;              /* the "name" property ("" when unset) */
    const char *type;              /* the machine type ("microvm") */
};

/* Fill `out` with the machine's status. */
LIBVMM_EXPORT int vmm_machine_query_status(vmm_machine *m, struct vmm_status *out);

/* The machine's memory layout in bytes. */
struct vmm_memory_info {
    size_t size;                   /* sizeof(struct vmm_memory_info) */
    uint64_t ram_size;             /* the "memory" property */
    uint64_t ram_below_4g;         /* RAM mapped below 4 GiB (0 before start) */
    uint64_t ram_above_4g;         /* RAM mapped from 4 GiB up (0 before start) */
};

/* Fill `out` with the machine's memory sizes. */
LIBVMM_EXPORT int vmm_machine_query_memory(vmm_machine *m, struct vmm_memory_info *out);

/* One vCPU. */
struct vmm_vcpu_info {
    size_t size;                   /* sizeof(struct vmm_vcpu_info) */
    unsigned index;                /* 0 .. cpus-1 (also the APIC id) */
    int64_t thread_id;             /* host thread id (gettid), 0 until its thread runs */
};

/* Called once per vCPU; return non-zero to stop the walk. */
typedef int (*vmm_vcpu_fn)(void *user_data, const struct vmm_vcpu_info *info);

/* Walk the vCPUs, in index order (none before the machine starts). */
LIBVMM_EXPORT int vmm_machine_list_vcpus(vmm_machine *m, vmm_vcpu_fn fn, void *user_data);

/* One device.  Strings are valid during the callback only. */
struct vmm_device_info {
    size_t size;                   /* sizeof(struct vmm_device_info) */
    const char *id;                /* NULL when the device has none */
    const char *type;              /* "isa-serial", "isa-debug-exit", ... */
    /* Every property as "key=value,key2=value2" (the add_device syntax,
     * commas inside values doubled); "" when the type has none. */
    const char *properties;
    int platform;                  /* 1: created by the machine type */
    int realized;                  /* 1 once the machine started it */
};

/* Called once per device; return non-zero to stop the walk. */
typedef int (*vmm_device_fn)(void *user_data, const struct vmm_device_info *info);

/* Walk the devices in creation order: the machine type's, then the
 * embedder's. */
LIBVMM_EXPORT int vmm_machine_list_devices(vmm_machine *m, vmm_device_fn fn, void *user_data);

/* I/O statistics of a drive, counted by the device using it per guest
 * request, as QEMU's query-blockstats: requests merged into another count
 * in *_operations and *_merged; write-zeroes count as writes; failures
 * reported to the guest in failed_*.  Requests answered without I/O (bad
 * ranges, discards with discard=ignore) are not counted. */
struct vmm_block_stats {
    uint64_t rd_bytes, wr_bytes, unmap_bytes;
    uint64_t rd_operations, wr_operations, flush_operations, unmap_operations;
    uint64_t rd_merged, wr_merged;
    uint64_t failed_rd_operations, failed_wr_operations, failed_flush_operations,
             failed_unmap_operations;
};

/* One block node of the machine (a drive, or a QMP blockdev-add node). */
struct vmm_block_node_info {
    size_t size;                   /* sizeof(struct vmm_block_node_info) */
    const char *name;              /* node-name */
    const char *driver;            /* format: "raw", "qcow2" */
    const char *filename;
    int read_only;
    vmm_block *block;              /* the open image; owned by the machine */
    const char *device;            /* the device using it (drive=): its id, or its type
                                      when it has none; NULL when no device does */
    const struct vmm_block_stats *stats;   /* a snapshot, valid during the callback */
};

/* Called once per node; return non-zero to stop the walk.  It runs with the
 * node list locked: it must not add or remove nodes. */
typedef int (*vmm_block_node_fn)(void *user_data, const struct vmm_block_node_info *info);

/* Walk the machine's block nodes (drives and blockdev-add nodes) in the
 * order they were added. */
LIBVMM_EXPORT int vmm_machine_list_block_nodes(vmm_machine *m, vmm_block_node_fn fn,
                                               void *user_data);

/* Open an image as a drive of the machine, for devices' drive=ID (e.g.
 * virtio-blk-pci,drive=hd0).  `spec`: "file=F,id=ID[,format=raw|qcow2]
 * [,cache=writeback|none|writethrough|directsync|unsafe][,aio=threads|native]
 * [,readonly=on|off][,discard=ignore|unmap]".  cache=none/directsync open
 * with O_DIRECT, writethrough/directsync make every guest write stable
 * before it completes, unsafe ignores flushes; discard=unmap passes guests'
 * discards to the image (ignore, the default, drops them as QEMU does).
 * The drive shows up in vmm_machine_list_block_nodes and QMP as a node
 * named ID.  Unknown keys fail naming the key; EEXIST when the id is taken.
 * Allowed in any state (devices pick drives when the machine starts). */
LIBVMM_EXPORT int vmm_machine_add_drive(vmm_machine *m, const char *spec);

/* Make an image the embedder opened a drive named `id` (read_only: refuse
 * guests' writes).  On success the machine owns blk: it closes it when the
 * drive is removed or the machine is freed; on failure the caller keeps it. */
LIBVMM_EXPORT int vmm_machine_add_block(vmm_machine *m, const char *id, vmm_block *blk,
                                        int read_only);

/* Remove and close a drive or block node; EBUSY while a device names it
 * (drive=ID), ENOENT for an unknown id. */
LIBVMM_EXPORT int vmm_machine_remove_drive(vmm_machine *m, const char *id);

/* Remove the device with `id` (added with vmm_machine_add_device) and emit
 * DEVICE_DELETED.  Only before start: on a started machine it fails with
 * ENOTSUP (hot-unplug is not supported yet); ENOENT for an unknown id. */
LIBVMM_EXPORT int vmm_machine_remove_device(vmm_machine *m, const char *id);

/* ---- the machine's own log ---------------------------------------------- */

/* Messages about this machine (its vCPU and I/O threads, its events, why it
 * ended, control commands) go to `fn` too, besides the process-wide log.
 * Up to `max_level`.  NULL removes it; `free_fn` runs on user_data when it is
 * replaced or the machine is freed.  Allowed in any state. */
LIBVMM_EXPORT int vmm_machine_set_log_callback(vmm_machine *m, vmm_log_fn fn, void *user_data,
                                               vmm_free_fn free_fn, int max_level);

/* Like vmm_machine_set_log_callback, appending timestamped lines
 * ("2024-01-02 03:04:05.678901 info machine: ...") to the file at `path`
 * (created with mode 0644).  NULL closes the current log file. */
LIBVMM_EXPORT int vmm_machine_set_log_file(vmm_machine *m, const char *path, int max_level);

/* ---- the control server (QMP) -------------------------------------------- */

/* Serve QMP, the QEMU Machine Protocol, on `address`: "unix:PATH" with
 * QEMU's optional ",server", ",nowait", ",server=on", ",wait=off" (always a
 * listening server that does not wait), or a plain socket path.  An
 * existing socket file at PATH is replaced.  Several clients may connect
 * at once; each gets the greeting, negotiates with qmp_capabilities and then
 * runs commands and receives events.  The server runs in the machine's I/O
 * thread (started now if the machine has not started yet), belongs to the
 * machine, and closes when the machine is freed.  May be called several
 * times for several sockets.  Commands: see the "query-commands" command
 * and lib/control/README.md. */
LIBVMM_EXPORT int vmm_control_serve(vmm_machine *m, const char *address);

/* Run one QMP command without a socket: `json` is a command object
 * ({"execute": "query-status", "arguments": {...}, "id": ...}); the reply
 * ({"return": ...} or {"error": {"class": ..., "desc": ...}}) comes back as
 * JSON text the caller frees with free().  Runs in the machine's I/O thread
 * as the socket clients' commands do (the caller waits).  NULL only when
 * the call itself fails (no machine, no memory); a bad command gives an
 * error reply.  Not from inside an event, serial or log callback running on
 * another libvmm thread (the I/O thread may be waiting for that thread). */
LIBVMM_EXPORT char *vmm_control_execute(vmm_machine *m, const char *json);

#ifdef __cplusplus
}
#endif

#endif
