/* Saving and loading device state sections (see state.h for the encoding).
 *
 * The loader treats the stream as hostile: every length is checked against
 * what is left before anything is read, versions are range-checked, the body
 * must be consumed exactly, and the description's post_load has the last
 * word.  On any failure the state is zeroed again so no half-loaded struct
 * escapes. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "state.h"
#include "util/util.h"

#define HEADER_FIXED 10          /* u16 name_len + u32 version + u32 body_len */
#define NAME_SHOWN 48            /* longest stream name quoted in a message */
#define PATH_MAX_LEN 160

/* ---- field layout ------------------------------------------------------- */

static bool type_is_valid(enum state_type type)
{
    return type >= STATE_U8 && type <= STATE_U64_ARRAY;
}

static bool type_is_array(enum state_type type)
{
    return type == STATE_BYTES || type == STATE_U32_ARRAY || type == STATE_U64_ARRAY;
}

/* Width of one element, both in the struct and in the stream. */
static size_t type_width(enum state_type type)
{
    switch (type) {
    case STATE_U8:
    case STATE_BOOL:
    case STATE_BYTES:
        return 1;
    case STATE_U16:
        return 2;
    case STATE_U32:
    case STATE_U32_ARRAY:
        return 4;
    case STATE_U64:
    case STATE_U64_ARRAY:
        return 8;
    }
    return 0;
}

static size_t field_count(const struct state_field *f)
{
    return type_is_array(f->type) ? f->count : 1;
}

/* Caller has checked the description, so this cannot overflow. */
static size_t field_size(const struct state_field *f)
{
    return type_width(f->type) * field_count(f);
}

static bool field_present(const struct state_field *f, uint32_t version)
{
    return f->since_version <= version;
}

size_t state_fields_size(const struct state_desc *desc, uint32_t version)
{
    size_t total = 0;
    for (const struct state_field *f = desc->fields; f && f->name; f++)
        if (field_present(f, version))
            total += field_size(f);
    return total;
}

/* ---- description checks ------------------------------------------------- */

static int check_field(const struct state_desc *d, const struct state_field *f)
{
    if (!type_is_valid(f->type))
        return vmm_set_error(EINVAL, "state description '%s': field '%s' has unknown type %d",
                             d->name, f->name, (int)f->type);
    size_t count = field_count(f);
    size_t width = type_width(f->type);
    if (count == 0)
        return vmm_set_error(EINVAL, "state description '%s': field '%s' has no elements",
                             d->name, f->name);
    if (count > (SIZE_MAX - f->offset) / width || f->offset + count * width > d->size)
        return vmm_set_error(EINVAL, "state description '%s': field '%s' lies outside "
                             "the %zu-byte struct", d->name, f->name, d->size);
    if (f->since_version > d->version)
        return vmm_set_error(EINVAL, "state description '%s': field '%s' appears in "
                             "version %u, after the current version %u",
                             d->name, f->name, f->since_version, d->version);
    return 0;
}

static int check_desc(const struct state_desc *d, int depth);

static int check_subsections(const struct state_desc *d, int depth)
{
    size_t n = 0;
    for (const struct state_subsection *s = d->subsections; s && s->desc; s++, n++) {
        if (n >= STATE_MAX_SUBSECTIONS)
            return vmm_set_error(EINVAL, "state description '%s': more than %d subsections",
                                 d->name, STATE_MAX_SUBSECTIONS);
        if (check_desc(s->desc, depth + 1) < 0)
            return vmm_error_prefix("state description '%s'", d->name);
        if (s->desc->size > d->size || s->offset > d->size - s->desc->size)
            return vmm_set_error(EINVAL, "state description '%s': subsection '%s' lies "
                                 "outside the %zu-byte struct", d->name, s->desc->name, d->size);
        for (const struct state_subsection *t = d->subsections; t != s; t++)
            if (strcmp(t->desc->name, s->desc->name) == 0)
                return vmm_set_error(EINVAL, "state description '%s': two subsections "
                                     "named '%s'", d->name, s->desc->name);
    }
    return 0;
}

static int check_desc(const struct state_desc *d, int depth)
{
    if (!d || !d->name || !d->fields)
        return vmm_set_error(EINVAL, "state description without a name or field table");
    if (depth >= STATE_MAX_DEPTH)
        return vmm_set_error(EINVAL, "state description '%s': subsections nested deeper "
                             "than %d", d->name, STATE_MAX_DEPTH);
    if (d->name[0] == '\0' || strlen(d->name) > UINT16_MAX)
        return vmm_set_error(EINVAL, "state description: name must be 1..%u bytes", UINT16_MAX);
    if (d->min_version > d->version)
        return vmm_set_error(EINVAL, "state description '%s': min_version %u is above "
                             "version %u", d->name, d->min_version, d->version);
    for (const struct state_field *f = d->fields; f->name; f++)
        if (check_field(d, f) < 0)
            return -1;
    return check_subsections(d, depth);
}

int state_desc_check(const struct state_desc *desc)
{
    return check_desc(desc, 0);
}

/* ---- little-endian helpers ---------------------------------------------- */

static void put_le(uint8_t *p, uint64_t v, size_t width)
{
    for (size_t i = 0; i < width; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, size_t width)
{
    uint64_t v = 0;
    for (size_t i = 0; i < width; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* ---- saving ------------------------------------------------------------- */

static int buf_reserve(struct state_buf *buf, size_t more)
{
    if (more <= buf->cap - buf->len)
        return 0;
    if (more > SIZE_MAX / 2 - buf->len)
        return vmm_set_error(ENOMEM, "state: stream too large");
    size_t cap = buf->cap ? buf->cap : 256;
    while (cap - buf->len < more)
        cap *= 2;
    uint8_t *data = realloc(buf->data, cap);
    if (!data)
        return vmm_set_error(ENOMEM, "state: out of memory for a %zu-byte stream", cap);
    buf->data = data;
    buf->cap = cap;
    return 0;
}

/* Write one element of a field from the struct into the stream. */
static void save_element(const struct state_field *f, const uint8_t *src, uint8_t *dst)
{
    switch (f->type) {
    case STATE_BOOL: {
        bool b;
        memcpy(&b, src, sizeof(b));
        *dst = b ? 1 : 0;
        return;
    }
    case STATE_U16: {
        uint16_t v;
        memcpy(&v, src, sizeof(v));
        put_le(dst, v, 2);
        return;
    }
    case STATE_U32:
    case STATE_U32_ARRAY: {
        uint32_t v;
        memcpy(&v, src, sizeof(v));
        put_le(dst, v, 4);
        return;
    }
    case STATE_U64:
    case STATE_U64_ARRAY: {
        uint64_t v;
        memcpy(&v, src, sizeof(v));
        put_le(dst, v, 8);
        return;
    }
    case STATE_U8:
    case STATE_BYTES:
        *dst = *src;
        return;
    }
}

static void save_fields(const struct state_desc *d, const uint8_t *state, uint32_t version,
                        uint8_t *dst)
{
    for (const struct state_field *f = d->fields; f->name; f++) {
        if (!field_present(f, version))
            continue;
        size_t width = type_width(f->type);
        for (size_t i = 0; i < field_count(f); i++, dst += width)
            save_element(f, state + f->offset + i * width, dst);
    }
}

static bool subsection_needed(const struct state_subsection *s, const void *parent)
{
    return !s->needed || s->needed(parent);
}

static int save_section(const struct state_desc *d, const uint8_t *state, uint32_t version,
                        struct state_buf *out);

static int save_subsections(const struct state_desc *d, const uint8_t *state,
                            struct state_buf *out)
{
    size_t count = 0;
    for (const struct state_subsection *s = d->subsections; s && s->desc; s++)
        count += subsection_needed(s, state);
    if (buf_reserve(out, 1) < 0)
        return -1;
    out->data[out->len++] = (uint8_t)count;  /* at most STATE_MAX_SUBSECTIONS */
    for (const struct state_subsection *s = d->subsections; s && s->desc; s++)
        if (subsection_needed(s, state) &&
            save_section(s->desc, state + s->offset, s->desc->version, out) < 0)
            return -1;
    return 0;
}

static int save_section(const struct state_desc *d, const uint8_t *state, uint32_t version,
                        struct state_buf *out)
{
    size_t name_len = strlen(d->name);
    size_t fields = state_fields_size(d, version);
    if (buf_reserve(out, HEADER_FIXED + name_len + fields) < 0)
        return -1;
    uint8_t *p = out->data + out->len;
    put_le(p, name_len, 2);
    memcpy(p + 2, d->name, name_len);
    put_le(p + 2 + name_len, version, 4);
    size_t body_len_at = out->len + 2 + name_len + 4;
    size_t body_start = body_len_at + 4;
    save_fields(d, state, version, out->data + body_start);
    out->len = body_start + fields;
    if (save_subsections(d, state, out) < 0)
        return -1;
    size_t body_len = out->len - body_start;
    if (body_len > UINT32_MAX)
        return vmm_set_error(EFBIG, "state '%s': body of %zu bytes is too large", d->name,
                             body_len);
    put_le(out->data + body_len_at, body_len, 4);
    return 0;
}

int state_save_version(const struct state_desc *desc, const void *state, uint32_t version,
                       struct state_buf *out)
{
    if (state_desc_check(desc) < 0)
        return -1;
    if (version < desc->min_version || version > desc->version)
        return vmm_set_error(EINVAL, "state '%s': cannot save as version %u (%u..%u)",
                             desc->name, version, desc->min_version, desc->version);
    size_t start = out->len;
    if (save_section(desc, state, version, out) < 0) {
        out->len = start;
        return -1;
    }
    return 0;
}

int state_save(const struct state_desc *desc, const void *state, struct state_buf *out)
{
    if (state_desc_check(desc) < 0)
        return -1;
    return state_save_version(desc, state, desc->version, out);
}

void state_buf_free(struct state_buf *buf)
{
    free(buf->data);
    buf->data = NULL;
    buf->len = buf->cap = 0;
}

/* ---- loading ------------------------------------------------------------ */

/* A name from the stream, made safe to quote: printable, bounded. */
static void quote_name(char *dst, size_t dst_size, const uint8_t *name, size_t len)
{
    size_t shown = len < NAME_SHOWN ? len : NAME_SHOWN;
    if (shown > dst_size - 4)
        shown = dst_size - 4;
    size_t i;
    for (i = 0; i < shown; i++)
        dst[i] = (name[i] >= 0x20 && name[i] < 0x7f && name[i] != '\'') ? (char)name[i] : '?';
    if (shown < len) {
        memcpy(dst + i, "...", 3);
        i += 3;
    }
    dst[i] = '\0';
}

static bool name_is(const char *expected, const uint8_t *name, size_t len)
{
    return strlen(expected) == len && memcmp(expected, name, len) == 0;
}

/* Where in the tree of sections the loader is, for messages: "serial/fifo". */
struct load_ctx {
    char path[PATH_MAX_LEN];
    int depth;
};

static int load_section(const struct state_desc *d, uint8_t *state, const uint8_t *data,
                        size_t len, size_t *consumed, struct load_ctx *ctx);

/* Read and check the header; on success *version, *body and *body_len
 * describe a body that lies wholly inside data[0..len). */
static int load_header(const struct state_desc *d, const uint8_t *data, size_t len,
                       const char *path, uint32_t *version, size_t *header_len,
                       uint32_t *body_len)
{
    if (len < 2)
        return vmm_set_error(EINVAL, "state '%s': stream ends after %zu bytes, inside the "
                             "section header", path, len);
    size_t name_len = get_le(data, 2);
    if (len - 2 < name_len + 8)
        return vmm_set_error(EINVAL, "state '%s': stream ends after %zu bytes, inside the "
                             "section header (name of %zu bytes)", path, len, name_len);
    if (!name_is(d->name, data + 2, name_len)) {
        char shown[NAME_SHOWN + 4];
        quote_name(shown, sizeof(shown), data + 2, name_len);
        return vmm_set_error(EINVAL, "state '%s': stream holds section '%s' instead",
                             path, shown);
    }
    *version = (uint32_t)get_le(data + 2 + name_len, 4);
    *body_len = (uint32_t)get_le(data + 6 + name_len, 4);
    *header_len = HEADER_FIXED + name_len;
    if (*version > d->version)
        return vmm_set_error(EINVAL, "state '%s': version %u is newer than this build "
                             "supports (%u..%u)", path, *version, d->min_version, d->version);
    if (*version < d->min_version)
        return vmm_set_error(EINVAL, "state '%s': version %u is older than this build "
                             "supports (%u..%u)", path, *version, d->min_version, d->version);
    if (*body_len > len - *header_len)
        return vmm_set_error(EINVAL, "state '%s': body is %u bytes but the stream has only "
                             "%zu left", path, *body_len, len - *header_len);
    return 0;
}

/* Read one element of a field from the stream into the struct. */
static int load_element(const struct state_field *f, const uint8_t *src, uint8_t *dst,
                        const char *path)
{
    switch (f->type) {
    case STATE_BOOL: {
        if (*src > 1)
            return vmm_set_error(EINVAL, "state '%s': field '%s' is a bool but holds %u",
                                 path, f->name, *src);
        bool b = *src;
        memcpy(dst, &b, sizeof(b));
        return 0;
    }
    case STATE_U16: {
        uint16_t v = (uint16_t)get_le(src, 2);
        memcpy(dst, &v, sizeof(v));
        return 0;
    }
    case STATE_U32:
    case STATE_U32_ARRAY: {
        uint32_t v = (uint32_t)get_le(src, 4);
        memcpy(dst, &v, sizeof(v));
        return 0;
    }
    case STATE_U64:
    case STATE_U64_ARRAY: {
        uint64_t v = get_le(src, 8);
        memcpy(dst, &v, sizeof(v));
        return 0;
    }
    case STATE_U8:
    case STATE_BYTES:
        *dst = *src;
        return 0;
    }
    return vmm_set_error(EINVAL, "state '%s': field '%s' has unknown type", path, f->name);
}

/* The caller has checked that the body holds every present field. */
static int load_fields(const struct state_desc *d, uint8_t *state, uint32_t version,
                       const uint8_t *src, const char *path)
{
    for (const struct state_field *f = d->fields; f->name; f++) {
        if (!field_present(f, version))
            continue;
        size_t width = type_width(f->type);
        for (size_t i = 0; i < field_count(f); i++, src += width)
            if (load_element(f, src, state + f->offset + i * width, path) < 0)
                return -1;
    }
    return 0;
}

static const struct state_subsection *find_subsection(const struct state_desc *d,
                                                      const uint8_t *name, size_t len,
                                                      size_t *index)
{
    size_t i = 0;
    for (const struct state_subsection *s = d->subsections; s && s->desc; s++, i++)
        if (name_is(s->desc->name, name, len)) {
            *index = i;
            return s;
        }
    return NULL;
}

/* Load one subsection from body[pos..len): find it by name, refuse repeats. */
static int load_one_subsection(const struct state_desc *d, uint8_t *state,
                               const uint8_t *body, size_t len, size_t *pos,
                               uint64_t *seen, struct load_ctx *ctx)
{
    size_t left = len - *pos;
    const uint8_t *p = body + *pos;
    if (left < 2 || left - 2 < get_le(p, 2))
        return vmm_set_error(EINVAL, "state '%s': body ends inside a subsection name",
                             ctx->path);
    size_t name_len = get_le(p, 2);
    size_t index;
    const struct state_subsection *s = find_subsection(d, p + 2, name_len, &index);
    char shown[NAME_SHOWN + 4];
    if (!s) {
        quote_name(shown, sizeof(shown), p + 2, name_len);
        return vmm_set_error(EINVAL, "state '%s': unknown subsection '%s'", ctx->path, shown);
    }
    if (*seen & (UINT64_C(1) << index))
        return vmm_set_error(EINVAL, "state '%s': subsection '%s' appears twice", ctx->path,
                             s->desc->name);
    *seen |= UINT64_C(1) << index;

    size_t used = 0;
    if (load_section(s->desc, state + s->offset, p, left, &used, ctx) < 0)
        return -1;
    *pos += used;
    return 0;
}

static int load_subsections(const struct state_desc *d, uint8_t *state, const uint8_t *body,
                            size_t body_len, size_t *pos, struct load_ctx *ctx)
{
    unsigned count = body[(*pos)++];
    uint64_t seen = 0;
    for (unsigned i = 0; i < count; i++)
        if (load_one_subsection(d, state, body, body_len, pos, &seen, ctx) < 0)
            return -1;
    return 0;
}

static int run_post_load(const struct state_desc *d, uint8_t *state, uint32_t version,
                         const char *path)
{
    if (!d->post_load)
        return 0;
    vmm_clear_error();
    if (d->post_load(state, version) == 0)
        return 0;
    if (vmm_get_error()[0] == '\0')
        return vmm_set_error(EINVAL, "state '%s': version %u state rejected by its validator",
                             path, version);
    return vmm_error_prefix("state '%s'", path);
}

/* Extend ctx->path by `name` for the duration of one section. */
static size_t path_push(struct load_ctx *ctx, const char *name)
{
    size_t old = strlen(ctx->path);
    snprintf(ctx->path + old, sizeof(ctx->path) - old, "%s%s", old ? "/" : "", name);
    ctx->depth++;
    return old;
}

static void path_pop(struct load_ctx *ctx, size_t old)
{
    ctx->path[old] = '\0';
    ctx->depth--;
}

static int load_body(const struct state_desc *d, uint8_t *state, uint32_t version,
                     const uint8_t *body, uint32_t body_len, struct load_ctx *ctx)
{
    size_t fields = state_fields_size(d, version);
    if (body_len < fields)
        return vmm_set_error(EINVAL, "state '%s': body is %u bytes, fields of version %u "
                             "need %zu", ctx->path, body_len, version, fields);
    if (body_len == fields)
        return vmm_set_error(EINVAL, "state '%s': body is %u bytes, fields of version %u "
                             "need %zu and the subsection count 1 more", ctx->path, body_len,
                             version, fields);
    if (load_fields(d, state, version, body, ctx->path) < 0)
        return -1;
    size_t pos = fields;
    if (load_subsections(d, state, body, body_len, &pos, ctx) < 0)
        return -1;
    if (pos != body_len)
        return vmm_set_error(EINVAL, "state '%s': body is %u bytes, but the fields of "
                             "version %u and the subsections use %zu", ctx->path, body_len,
                             version, pos);
    return run_post_load(d, state, version, ctx->path);
}

static int load_section(const struct state_desc *d, uint8_t *state, const uint8_t *data,
                        size_t len, size_t *consumed, struct load_ctx *ctx)
{
    size_t old = path_push(ctx, d->name);
    int ret = -1;
    uint32_t version = 0, body_len = 0;
    size_t header_len = 0;
    if (ctx->depth > STATE_MAX_DEPTH)
        vmm_set_error(EINVAL, "state '%s': subsections nested deeper than %d", ctx->path,
                      STATE_MAX_DEPTH);
    else if (load_header(d, data, len, ctx->path, &version, &header_len, &body_len) == 0 &&
             load_body(d, state, version, data + header_len, body_len, ctx) == 0) {
        *consumed = header_len + body_len;
        ret = 0;
    }
    path_pop(ctx, old);
    return ret;
}

int state_load(const struct state_desc *desc, void *state, const uint8_t *data, size_t len,
               size_t *consumed)
{
    if (state_desc_check(desc) < 0)
        return -1;
    memset(state, 0, desc->size);
    struct load_ctx ctx = { .path = "", .depth = 0 };
    size_t used = 0;
    if (load_section(desc, state, data, len, &used, &ctx) < 0) {
        memset(state, 0, desc->size);
        return -1;
    }
    if (consumed)
        *consumed = used;
    return 0;
}
