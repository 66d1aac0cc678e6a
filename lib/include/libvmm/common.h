/* libvmm — common definitions: errors, logging, introspection.
 *
 * Conventions for the whole API:
 *  - Every call returns 0 on success and -1 on failure, or a pointer that is
 *    NULL on failure.  The reason is kept per thread: vmm_get_error() gives a
 *    message naming the context, vmm_get_errno() the errno value.
 *  - The library never prints and never exits; it reports through the log
 *    callback (silent by default).
 *  - Handles are opaque.  Public structs start with a `size` field so they can
 *    grow; callers set it to sizeof the struct they were compiled with.
 */
#ifndef LIBVMM_COMMON_H
#define LIBVMM_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(LIBVMM_BUILDING)
#define LIBVMM_EXPORT __attribute__((visibility("default")))
#else
#define LIBVMM_EXPORT
#endif

/* The library's version as "MAJOR.MINOR.PATCH". */
LIBVMM_EXPORT const char *vmm_version(void);

/* The message of the last failed call on this thread ("" when none). The
 * string stays valid until the next libvmm call on this thread. */
LIBVMM_EXPORT const char *vmm_get_error(void);

/* The errno value of the last failed call on this thread (0 when none). */
LIBVMM_EXPORT int vmm_get_errno(void);

/* Log levels, as syslog orders them. */
enum vmm_log_level {
    VMM_LOG_ERROR = 3,
    VMM_LOG_WARNING = 4,
    VMM_LOG_INFO = 6,
    VMM_LOG_DEBUG = 7,
};

/* Log callback: `domain` names the subsystem ("kvm", "serial", "qcow2", ...).
 * It may be called from any libvmm thread, so it must be thread-safe. */
typedef void (*vmm_log_fn)(void *user_data, int level, const char *domain,
                           const char *message);

/* Free function paired with user_data in every callback registration. */
typedef void (*vmm_free_fn)(void *user_data);

/* Install the process-wide log callback (NULL restores silence) and the
 * most verbose level passed to it.  `free_fn`, when not NULL, is called on
 * user_data when the callback is replaced. */
LIBVMM_EXPORT int vmm_set_log_callback(vmm_log_fn fn, void *user_data,
                                       vmm_free_fn free_fn, int max_level);

/* ---- Introspection ---------------------------------------------------- */

/* What one property is: its name, type ("str", "bool", "u32", "u64",
 * "size", "enum"), default as text (NULL when it has none) and help. */
struct vmm_property_info {
    size_t size;               /* sizeof(struct vmm_property_info) */
    const char *name;
    const char *type;
    const char *default_value;
    const char *help;
    const char *choices;       /* for "enum": values separated by '|' */
};

/* Called once per item; return non-zero to stop the walk. */
typedef int (*vmm_type_fn)(void *user_data, const char *name, const char *help);
typedef int (*vmm_property_fn)(void *user_data, const struct vmm_property_info *info);

/* Kinds of types: "machine", "device", "cpu-model", "block-driver", "chardev"
 * (vmm_machine_add_chardev's backends). */
LIBVMM_EXPORT int vmm_list_types(const char *kind, vmm_type_fn fn, void *user_data);

/* The properties of type `name` of `kind`. Fails with ENOENT for an unknown
 * type (the message lists the known ones). */
LIBVMM_EXPORT int vmm_list_properties(const char *kind, const char *name,
                                      vmm_property_fn fn, void *user_data);

/* Parse a size with an optional binary suffix (K, M, G, T, P, E; "512M",
 * "1.5G", "4096").  Fails with EINVAL naming the problem. */
LIBVMM_EXPORT int vmm_parse_size(const char *text, uint64_t *out);

#ifdef __cplusplus
}
#endif

#endif
