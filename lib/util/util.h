/* Internal helpers shared by every part of libvmm: per-thread errors, the
 * log, size parsing, "key=value,..." option strings and typed property
 * tables.  Not installed. */
#ifndef LIBVMM_UTIL_H
#define LIBVMM_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "libvmm/common.h"

#define VMM_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define VMM_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define VMM_UNUSED __attribute__((unused))

/* ---- errors: all return -1 so callers can `return vmm_set_error(...)` ---- */
int vmm_set_error(int errnum, const char *fmt, ...) VMM_PRINTF(2, 3);
/* Like vmm_set_error with the current errno, appending ": strerror". */
int vmm_set_error_errno(const char *fmt, ...) VMM_PRINTF(1, 2);
/* Put "context: " in front of the current message, keeping its errno. */
int vmm_error_prefix(const char *fmt, ...) VMM_PRINTF(1, 2);
void vmm_clear_error(void);

/* ---- log ---------------------------------------------------------------- */
void vmm_log(int level, const char *domain, const char *fmt, ...) VMM_PRINTF(3, 4);
bool vmm_log_enabled(int level);
/* A second sink for messages logged on this thread (a machine's own log,
 * attached to its vCPU and I/O threads); NULL detaches.  The sink filters
 * levels itself. */
void vmm_log_set_thread_sink(vmm_log_fn fn, void *user_data);

/* ---- option strings: "type,key=value,key2=value2" (",," is a literal comma) */
typedef struct vmm_opts vmm_opts;
/* `implied_key` names the value of a leading element without '=' (e.g.
 * "driver" for "virtio-blk,..."); NULL makes such an element an error. */
vmm_opts *vmm_opts_parse(const char *text, const char *implied_key);
void vmm_opts_free(vmm_opts *opts);
size_t vmm_opts_count(const vmm_opts *opts);
const char *vmm_opts_key(const vmm_opts *opts, size_t i);
const char *vmm_opts_value(const vmm_opts *opts, size_t i);
/* The value of `key` (NULL when absent); marks it used. */
const char *vmm_opts_get(vmm_opts *opts, const char *key);
/* Fails naming the first key no vmm_opts_get asked for. */
int vmm_opts_check_all_used(const vmm_opts *opts, const char *owner);
/* An empty option set, and adding one key (fails if the key is present). */
vmm_opts *vmm_opts_new(void);
int vmm_opts_add(vmm_opts *opts, const char *key, const char *value);
/* Whether `key` was asked for by vmm_opts_get. */
bool vmm_opts_used(const vmm_opts *opts, size_t i);

/* ---- typed property tables --------------------------------------------- */
enum vmm_prop_type {
    VMM_PROP_STR,   /* char * (owned, freed by vmm_props_release) */
    VMM_PROP_BOOL,  /* bool */
    VMM_PROP_U32,   /* uint32_t */
    VMM_PROP_U64,   /* uint64_t */
    VMM_PROP_SIZE,  /* uint64_t, accepts size suffixes */
    VMM_PROP_ENUM,  /* int, index into choices */
};

struct vmm_prop {
    const char *name;
    enum vmm_prop_type type;
    size_t offset;                 /* into the object */
    const char *def;               /* default as text; NULL: none */
    const char *help;
    const char *const *choices;    /* VMM_PROP_ENUM: NULL-terminated */
    uint64_t min, max;             /* numeric bounds when max != 0 */
};

const struct vmm_prop *vmm_props_find(const struct vmm_prop *table, const char *name);
/* Set every property to its default (strings duplicated). */
int vmm_props_init(const struct vmm_prop *table, void *obj, const char *owner);
int vmm_props_set(const struct vmm_prop *table, void *obj, const char *owner,
                  const char *key, const char *value);
/* Apply every key of `opts` the table knows; others stay unused. */
int vmm_props_apply(const struct vmm_prop *table, void *obj, const char *owner,
                    vmm_opts *opts);
/* The property's value as text (caller frees). */
char *vmm_props_format(const struct vmm_prop *table, const void *obj, const char *key);
void vmm_props_release(const struct vmm_prop *table, void *obj);
int vmm_props_list(const struct vmm_prop *table, vmm_property_fn fn, void *user_data);
bool vmm_parse_bool(const char *text, bool *out);

#endif
