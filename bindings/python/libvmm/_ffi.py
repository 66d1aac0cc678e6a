"""The C declarations of libvmm's public headers, for cffi's ABI mode.

Kept by hand in the headers' order; tests/python/test_coverage.py checks that
every function libvmm.so exports is declared here (or listed in
NOT_BOUND with a reason) and resolves in the loaded library.
"""
import os

import cffi

CDEF = r"""
/* common.h */
typedef void (*vmm_log_fn)(void *user_data, int level, const char *domain, const char *message);
typedef void (*vmm_free_fn)(void *user_data);
struct vmm_property_info {
    size_t size;
    const char *name;
    const char *type;
    const char *default_value;
    const char *help;
    const char *choices;
};
typedef int (*vmm_type_fn)(void *user_data, const char *name, const char *help);
typedef int (*vmm_property_fn)(void *user_data, const struct vmm_property_info *info);
const char *vmm_version(void);
const char *vmm_get_error(void);
int vmm_get_errno(void);
int vmm_set_log_callback(vmm_log_fn fn, void *user_data, vmm_free_fn free_fn, int max_level);
int vmm_list_types(const char *kind, vmm_type_fn fn, void *user_data);
int vmm_list_properties(const char *kind, const char *name, vmm_property_fn fn, void *user_data);
int vmm_parse_size(const char *text, uint64_t *out);

/* machine.h */
typedef struct vmm_machine vmm_machine;
enum vmm_machine_state { VMM_STATE_CREATED = 0, VMM_STATE_RUNNING = 1, VMM_STATE_PAUSED = 2,
                         VMM_STATE_ENDED = 3 };
enum vmm_exit_reason { VMM_EXIT_NONE = 0, VMM_EXIT_POWEROFF = 1, VMM_EXIT_RESET = 2,
                       VMM_EXIT_TEST = 3, VMM_EXIT_ERROR = 4, VMM_EXIT_STOPPED = 5 };
vmm_machine *vmm_machine_new(const char *type);
void vmm_machine_free(vmm_machine *m);
int vmm_machine_set(vmm_machine *m, const char *key, const char *value);
char *vmm_machine_get(vmm_machine *m, const char *key);
int vmm_machine_add_device(vmm_machine *m, const char *spec);
int vmm_machine_add_chardev(vmm_machine *m, const char *spec);
typedef void (*vmm_output_fn)(void *user_data, const void *data, size_t len);
int vmm_machine_set_serial_callback(vmm_machine *m, vmm_output_fn fn, void *user_data,
                                    vmm_free_fn free_fn);
int vmm_machine_set_serial_fds(vmm_machine *m, int in_fd, int out_fd);
int vmm_machine_serial_input(vmm_machine *m, const void *data, size_t len);
int vmm_machine_start(vmm_machine *m);
int vmm_machine_pause(vmm_machine *m);
int vmm_machine_resume(vmm_machine *m);
int vmm_machine_reset(vmm_machine *m);
int vmm_machine_request_poweroff(vmm_machine *m);
int vmm_machine_stop(vmm_machine *m);
int vmm_machine_wait(vmm_machine *m, int timeout_ms);
enum vmm_machine_state vmm_machine_get_state(vmm_machine *m);
const char *vmm_machine_state_name(enum vmm_machine_state state);
enum vmm_exit_reason vmm_machine_exit_reason(vmm_machine *m);
int vmm_machine_exit_code(vmm_machine *m);
const char *vmm_machine_exit_message(vmm_machine *m);
enum vmm_event_type { VMM_EVENT_STOP = 1, VMM_EVENT_RESUME = 2, VMM_EVENT_SHUTDOWN = 3,
                      VMM_EVENT_RESET = 4, VMM_EVENT_POWERDOWN = 5, VMM_EVENT_DEVICE_DELETED = 6,
                      VMM_EVENT_BLOCK_IO_ERROR = 7 };
struct vmm_event {
    size_t size;
    enum vmm_event_type type;
    const char *name;
    int64_t seconds;
    int64_t microseconds;
    int guest;
    const char *reason;
    const char *device;
    const char *message;
    const char *node_name;
    const char *operation;
    const char *action;
    int nospace;
};
typedef void (*vmm_event_fn)(void *user_data, const struct vmm_event *event);
int vmm_machine_set_event_callback(vmm_machine *m, vmm_event_fn fn, void *user_data,
                                   vmm_free_fn free_fn);

/* block.h */
typedef struct vmm_block vmm_block;
struct iovec { void *iov_base; size_t iov_len; };
vmm_block *vmm_block_open(const char *filename_or_options, const char *format, unsigned flags);
int vmm_block_close(vmm_block *blk);
int64_t vmm_block_size(vmm_block *blk);
const char *vmm_block_format(vmm_block *blk);
int vmm_block_read(vmm_block *blk, uint64_t offset, void *buf, size_t len);
int vmm_block_write(vmm_block *blk, uint64_t offset, const void *buf, size_t len, unsigned flags);
int vmm_block_flush(vmm_block *blk);
int vmm_block_cache(vmm_block *blk, uint64_t offset, uint64_t len);
int vmm_block_discard(vmm_block *blk, uint64_t offset, uint64_t len);
int vmm_block_write_zeroes(vmm_block *blk, uint64_t offset, uint64_t len, unsigned flags);
struct vmm_block_extent {
    size_t size;
    uint64_t start, length;
    unsigned flags;
    int depth;
    uint64_t offset;
    const char *filename;
};
int vmm_block_block_status(vmm_block *blk, uint64_t offset, uint64_t len,
                           struct vmm_block_extent *out);
enum vmm_block_op { VMM_BLOCK_OP_READ, VMM_BLOCK_OP_WRITE, VMM_BLOCK_OP_FLUSH,
                    VMM_BLOCK_OP_DISCARD, VMM_BLOCK_OP_WRITE_ZEROES };
typedef void (*vmm_block_done_fn)(void *user_data, int ret);
struct vmm_block_request {
    size_t size;
    enum vmm_block_op op;
    uint64_t offset, length;
    const struct iovec *iov;
    int iovcnt;
    unsigned flags;
    vmm_block_done_fn done;
    void *user_data;
};
int vmm_block_submit(vmm_block *blk, const struct vmm_block_request *req);
int vmm_block_completion_fd(vmm_block *blk);
int vmm_block_dispatch(vmm_block *blk);
int vmm_block_drain(vmm_block *blk);
int vmm_block_set_workers(vmm_block *blk, unsigned count);
typedef int (*vmm_block_progress_fn)(void *user_data, uint64_t done, uint64_t total);
int vmm_block_create(const char *filename, const char *format, int64_t size, const char *options);
enum vmm_block_info_type { VMM_BLOCK_INFO_STR, VMM_BLOCK_INFO_INT, VMM_BLOCK_INFO_BOOL };
typedef int (*vmm_block_info_fn)(void *user_data, const char *key, enum vmm_block_info_type type,
                                 const char *str, int64_t num);
int vmm_block_info(vmm_block *blk, vmm_block_info_fn fn, void *user_data);
vmm_block *vmm_block_backing(vmm_block *blk);
struct vmm_block_check_result {
    size_t size;
    int64_t corruptions, leaks, check_errors;
    int64_t corruptions_fixed, leaks_fixed;
    int64_t allocated_clusters, total_clusters, fragmented_clusters, compressed_clusters;
    int64_t image_end_offset;
    const char *messages;
};
int vmm_block_check(vmm_block *blk, unsigned fix, struct vmm_block_check_result *res);
struct vmm_block_snapshot {
    size_t size;
    const char *id, *name;
    uint64_t vm_state_size;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t icount;
};
typedef int (*vmm_block_snapshot_fn)(void *user_data, const struct vmm_block_snapshot *sn);
int vmm_block_snapshot_list(vmm_block *blk, vmm_block_snapshot_fn fn, void *user_data);
int vmm_block_snapshot_create(vmm_block *blk, const char *name);
int vmm_block_snapshot_apply(vmm_block *blk, const char *id_or_name);
int vmm_block_snapshot_delete(vmm_block *blk, const char *id_or_name);
int vmm_block_resize(vmm_block *blk, uint64_t size, unsigned flags, const char *prealloc);
int vmm_block_commit(vmm_block *blk, unsigned flags, vmm_block_progress_fn progress,
                     void *user_data);
int vmm_block_rebase(vmm_block *blk, const char *backing, const char *backing_format,
                     unsigned flags, vmm_block_progress_fn progress, void *user_data);
int vmm_block_amend(vmm_block *blk, const char *options);
int vmm_block_measure(const char *format, const char *options, vmm_block *src, uint64_t size,
                      uint64_t *required, uint64_t *fully_allocated);
int vmm_block_list_create_options(const char *format, vmm_property_fn fn, void *user_data);
int64_t vmm_block_cluster_size(vmm_block *blk);
int64_t vmm_block_allocated_size(vmm_block *blk);

/* control.h */
struct vmm_status {
    size_t size;
    enum vmm_machine_state state;
    int running;
    const char *status;
    enum vmm_exit_reason exit_reason;
    int exit_code;
    const char *exit_message;
    const char *name;
    const char *type;
};
int vmm_machine_query_status(vmm_machine *m, struct vmm_status *out);
struct vmm_memory_info {
    size_t size;
    uint64_t ram_size;
    uint64_t ram_below_4g;
    uint64_t ram_above_4g;
};
int vmm_machine_query_memory(vmm_machine *m, struct vmm_memory_info *out);
struct vmm_vcpu_info {
    size_t size;
    unsigned index;
    int64_t thread_id;
};
typedef int (*vmm_vcpu_fn)(void *user_data, const struct vmm_vcpu_info *info);
int vmm_machine_list_vcpus(vmm_machine *m, vmm_vcpu_fn fn, void *user_data);
struct vmm_device_info {
    size_t size;
    const char *id;
    const char *type;
    const char *properties;
    int platform;
    int realized;
};
typedef int (*vmm_device_fn)(void *user_data, const struct vmm_device_info *info);
int vmm_machine_list_devices(vmm_machine *m, vmm_device_fn fn, void *user_data);
struct vmm_block_stats {
    uint64_t rd_bytes, wr_bytes, unmap_bytes;
    uint64_t rd_operations, wr_operations, flush_operations, unmap_operations;
    uint64_t rd_merged, wr_merged;
    uint64_t failed_rd_operations, failed_wr_operations, failed_flush_operations,
             failed_unmap_operations;
};
struct vmm_block_node_info {
    size_t size;
    const char *name;
    const char *driver;
    const char *filename;
    int read_only;
    vmm_block *block;
    const char *device;
    const struct vmm_block_stats *stats;
};
typedef int (*vmm_block_node_fn)(void *user_data, const struct vmm_block_node_info *info);
int vmm_machine_list_block_nodes(vmm_machine *m, vmm_block_node_fn fn, void *user_data);
int vmm_machine_add_drive(vmm_machine *m, const char *spec);
int vmm_machine_add_block(vmm_machine *m, const char *id, vmm_block *blk, int read_only);
int vmm_machine_remove_drive(vmm_machine *m, const char *id);
int vmm_machine_remove_device(vmm_machine *m, const char *id);
int vmm_machine_add_netdev(vmm_machine *m, const char *spec);
int vmm_machine_set_link(vmm_machine *m, const char *name, int up);
int vmm_machine_set_log_callback(vmm_machine *m, vmm_log_fn fn, void *user_data,
                                 vmm_free_fn free_fn, int max_level);
int vmm_machine_set_log_file(vmm_machine *m, const char *path, int max_level);
int vmm_control_serve(vmm_machine *m, const char *address);
char *vmm_control_execute(vmm_machine *m, const char *json);

/* libc, for strings the library hands over */
void free(void *ptr);

/* nbd.h */
typedef struct vmm_nbd_server vmm_nbd_server;
vmm_nbd_server *vmm_nbd_server_new(unsigned flags);
int vmm_nbd_server_set_max_clients(vmm_nbd_server *srv, unsigned max_clients);
int vmm_nbd_server_add_export(vmm_nbd_server *srv, vmm_block *blk, const char *name,
                              const char *description, unsigned flags);
int vmm_nbd_server_listen_unix(vmm_nbd_server *srv, const char *path);
int vmm_nbd_server_listen_tcp(vmm_nbd_server *srv, const char *host, const char *port);
int vmm_nbd_server_start(vmm_nbd_server *srv);
int vmm_nbd_server_wait(vmm_nbd_server *srv);
int vmm_nbd_server_stop(vmm_nbd_server *srv);
void vmm_nbd_server_free(vmm_nbd_server *srv);
"""

# Exported functions deliberately not wrapped by the high-level classes,
# with the reason.  They are still declared above and reachable as
# libvmm.lib.<name>.
NOT_WRAPPED = {
    "vmm_block_submit": "asynchronous requests complete on worker threads; Python callers use "
                        "the synchronous calls (a thread pool of their own gives parallelism)",
    "vmm_block_completion_fd": "part of the asynchronous request API (see vmm_block_submit)",
    "vmm_block_dispatch": "part of the asynchronous request API (see vmm_block_submit)",
    "vmm_block_drain": "part of the asynchronous request API (see vmm_block_submit)",
    "vmm_machine_set_serial_fds": "Machine(serial=...) captures output through the serial "
                                  "callback; raw fds are reachable as lib.vmm_machine_set_serial_fds",
}

ffi = cffi.FFI()
ffi.cdef(CDEF)


def _library_path():
    env = os.environ.get("LIBVMM_LIBRARY")
    if env:
        return env
    try:
        from . import _config
        if _config.LIBRARY and os.path.exists(_config.LIBRARY):
            return _config.LIBRARY
    except ImportError:
        pass
    return "libvmm.so.0"


lib = ffi.dlopen(_library_path())
