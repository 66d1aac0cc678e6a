/* Device and vCPU state descriptions (ARCHITECTURE.md §8).
 *
 * Each device keeps its saved state as a plain struct, separate from the
 * live object, and describes it with a versioned field table.  A stream is
 * untrusted input: state_load() checks the section name, version range and
 * lengths, and then runs the description's post_load validator, which must
 * reject any value the device could not safely run with.
 *
 * Encoding (little endian), one section:
 *   u16 name_len, name bytes, u32 version, u32 body_len, body
 *   body = the fields present at `version`, in table order, each at its
 *          natural width (bool = 1 byte, arrays element by element),
 *          then u8 subsection_count, then each subsection as a section.
 * Subsections carry optional state: saved only when needed(), and a loader
 * that does not know a subsection's name refuses the stream by name. */
#ifndef LIBVMM_STATE_H
#define LIBVMM_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum state_type {
    STATE_U8, STATE_U16, STATE_U32, STATE_U64, STATE_BOOL,
    STATE_BYTES,      /* `count` raw bytes */
    STATE_U32_ARRAY,  /* `count` u32 */
    STATE_U64_ARRAY,  /* `count` u64 */
};

struct state_field {
    const char *name;
    enum state_type type;
    size_t offset;
    size_t count;            /* arrays and bytes: element count; else 1 */
    uint32_t since_version;  /* first version that has the field (0 = always) */
};

struct state_desc;

struct state_subsection {
    const struct state_desc *desc;
    size_t offset;                             /* of the sub-struct in the parent */
    bool (*needed)(const void *parent_state);  /* NULL: always saved */
};

struct state_desc {
    const char *name;
    uint32_t version;        /* what state_save writes */
    uint32_t min_version;    /* oldest version state_load accepts */
    size_t size;             /* sizeof the state struct */
    const struct state_field *fields;            /* ends with {NULL} */
    const struct state_subsection *subsections;  /* ends with {NULL}; may be NULL */
    /* Validate (and fix up, e.g. derive fields) after loading; return -1
     * with vmm_set_error() naming the bad field.  May be NULL only for
     * states where every value is safe. */
    int (*post_load)(void *state, uint32_t loaded_version);
};

#define STATE_FIELD(st, member, kind) \
    { #member, kind, offsetof(st, member), 1, 0 }
#define STATE_FIELD_V(st, member, kind, ver) \
    { #member, kind, offsetof(st, member), 1, ver }
#define STATE_ARRAY(st, member, kind) \
    { #member, kind, offsetof(st, member), \
      sizeof(((st *)0)->member) / sizeof(((st *)0)->member[0]), 0 }
#define STATE_BYTES_FIELD(st, member) \
    { #member, STATE_BYTES, offsetof(st, member), sizeof(((st *)0)->member), 0 }
#define STATE_END { NULL, 0, 0, 0, 0 }

struct state_buf {
    uint8_t *data;
    size_t len, cap;
};

/* Append the section for `state` to `out`. */
int state_save(const struct state_desc *desc, const void *state, struct state_buf *out);
/* Load one section from data[0..len) into `state` (zeroed first), setting
 * *consumed to its length. Fails with a message naming the problem. */
int state_load(const struct state_desc *desc, void *state, const uint8_t *data,
               size_t len, size_t *consumed);
void state_buf_free(struct state_buf *buf);

/* ---- additions (the declarations above are the contract) ---------------- */

/* Deepest nesting of subsections a description or a stream may have. */
#define STATE_MAX_DEPTH 8
/* Most subsections one description may list. */
#define STATE_MAX_SUBSECTIONS 64

/* Append the section for `state` as `version` (within [min_version,
 * version]) writes it: fields newer than `version` are left out.
 * Subsections are written at their own current version.  For tests and for
 * streams meant for an older destination. */
int state_save_version(const struct state_desc *desc, const void *state,
                       uint32_t version, struct state_buf *out);
/* Bytes the fields present at `version` take in a body (the subsection
 * count and subsections not included). */
size_t state_fields_size(const struct state_desc *desc, uint32_t version);
/* Find mistakes in a description (fields outside the struct, versions out
 * of order, duplicate subsection names, nesting too deep...).  state_save
 * and state_load run it too; tests call it to fail early. */
int state_desc_check(const struct state_desc *desc);

#endif
