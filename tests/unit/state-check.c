/* Round-trip and corruption checks for any state description. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "state-check.h"
#include "util/util.h"

#define FLIP_ALL_LIMIT 4096      /* flip/truncate every byte of streams this small */
#define SAMPLE_STRIDE 61         /* otherwise every 61st field byte */
#define UNKNOWN_NAME "state-check-unknown"

#define CHECK(d, cond, ...) do { \
        if (!(cond)) { \
            char what_[512]; \
            snprintf(what_, sizeof(what_), __VA_ARGS__); \
            fail_msg("state '%s': %s (last error: \"%s\")", (d)->name, what_, vmm_get_error()); \
        } \
    } while (0)

/* ---- a map of our own stream: what each byte is ------------------------- */

enum byte_kind { BYTE_STRUCT, BYTE_VERSION, BYTE_SUBNAME, BYTE_FIELD };

struct section_info {
    const struct state_desc *desc, *parent;
    size_t start, version_at, body_len_at, body_at, end;
};

struct stream_map {
    enum byte_kind *kind;     /* per byte */
    size_t *section;          /* per byte: index into sections */
    struct section_info *sections;
    size_t n_sections;
};

static uint64_t le(const uint8_t *p, size_t width)
{
    uint64_t v = 0;
    for (size_t i = 0; i < width; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void put_le(uint8_t *p, uint64_t v, size_t width)
{
    for (size_t i = 0; i < width; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void mark(struct stream_map *m, size_t from, size_t n, enum byte_kind kind, size_t sec)
{
    for (size_t i = from; i < from + n; i++) {
        m->kind[i] = kind;
        m->section[i] = sec;
    }
}

static const struct state_desc *sub_by_name(const struct state_desc *d, const uint8_t *name,
                                            size_t len)
{
    for (const struct state_subsection *s = d->subsections; s && s->desc; s++)
        if (strlen(s->desc->name) == len && memcmp(s->desc->name, name, len) == 0)
            return s->desc;
    return NULL;
}

/* Walk a stream state_save wrote (trusted), recording each section. */
static size_t walk(const struct state_desc *d, const struct state_desc *parent,
                   const uint8_t *s, size_t pos, struct stream_map *m)
{
    size_t sec = m->n_sections++;
    m->sections = realloc(m->sections, m->n_sections * sizeof(*m->sections));
    assert_non_null(m->sections);
    size_t name_len = le(s + pos, 2);
    struct section_info *info = &m->sections[sec];
    info->desc = d;
    info->parent = parent;
    info->start = pos;
    info->version_at = pos + 2 + name_len;
    info->body_len_at = info->version_at + 4;
    info->body_at = info->body_len_at + 4;
    uint32_t version = (uint32_t)le(s + info->version_at, 4);
    size_t body_len = le(s + info->body_len_at, 4);
    info->end = info->body_at + body_len;

    mark(m, pos, 2, BYTE_STRUCT, sec);
    mark(m, pos + 2, name_len, parent ? BYTE_SUBNAME : BYTE_STRUCT, sec);
    mark(m, info->version_at, 4, BYTE_VERSION, sec);
    mark(m, info->body_len_at, 4, BYTE_STRUCT, sec);
    size_t fields = state_fields_size(d, version);
    mark(m, info->body_at, fields, BYTE_FIELD, sec);
    size_t count_at = info->body_at + fields;
    mark(m, count_at, 1, BYTE_STRUCT, sec);
    size_t end = info->end;
    pos = count_at + 1;
    for (unsigned i = 0; i < s[count_at]; i++) {
        const struct state_desc *sub = sub_by_name(d, s + pos + 2, le(s + pos, 2));
        assert_non_null(sub);
        pos = walk(sub, d, s, pos, m);
    }
    assert_int_equal(pos, end);
    return end;
}

static void map_stream(const struct state_desc *d, const struct state_buf *b,
                       struct stream_map *m)
{
    memset(m, 0, sizeof(*m));
    m->kind = calloc(b->len, sizeof(*m->kind));
    m->section = calloc(b->len, sizeof(*m->section));
    assert_true(m->kind && m->section);
    assert_int_equal(walk(d, NULL, b->data, 0, m), b->len);
}

static void map_free(struct stream_map *m)
{
    free(m->kind);
    free(m->section);
    free(m->sections);
}

/* ---- loading helpers ---------------------------------------------------- */

static bool all_zero(const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i])
            return false;
    return true;
}

/* Load from an exact-size heap copy so ASan sees any overread.  The target
 * starts dirty to prove state_load zeroes it. */
static int load_copy(const struct state_desc *d, void *state, const uint8_t *data, size_t len,
                     size_t *consumed)
{
    uint8_t *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    if (len)
        memcpy(copy, data, len);
    memset(state, 0xa5, d->size);
    vmm_clear_error();
    int ret = state_load(d, state, copy, len, consumed);
    free(copy);
    return ret;
}

static void expect_clean_failure(const struct state_desc *d, void *state, const char *what)
{
    CHECK(d, vmm_get_error()[0] != '\0', "%s: load failed without a message", what);
    CHECK(d, all_zero(state, d->size), "%s: failed load left the state non-zero", what);
}

void state_check_load_fails(const struct state_desc *d, const uint8_t *data, size_t len,
                            const char *expect)
{
    void *state = malloc(d->size);
    assert_non_null(state);
    size_t consumed = 0;
    CHECK(d, load_copy(d, state, data, len, &consumed) < 0, "load of bad stream succeeded");
    expect_clean_failure(d, state, "bad stream");
    if (expect)
        CHECK(d, strstr(vmm_get_error(), expect) != NULL, "message lacks \"%s\"", expect);
    free(state);
}

/* A corrupted stream that loaded must describe a state that saves and loads
 * back to itself (post_load accepted it; its fix-ups are stable). */
static void check_stable(const struct state_desc *d, const void *loaded, const char *what)
{
    struct state_buf a = { 0 }, b = { 0 };
    void *again = malloc(d->size);
    assert_non_null(again);
    CHECK(d, state_save(d, loaded, &a) == 0, "%s: loaded state does not save", what);
    size_t used = 0;
    CHECK(d, load_copy(d, again, a.data, a.len, &used) == 0,
          "%s: loaded state, saved again, does not load", what);
    CHECK(d, state_save(d, again, &b) == 0, "%s: reloaded state does not save", what);
    CHECK(d, a.len == b.len && memcmp(a.data, b.data, a.len) == 0,
          "%s: save/load of the loaded state is not stable", what);
    state_buf_free(&a);
    state_buf_free(&b);
    free(again);
}

/* ---- (a) round trips ---------------------------------------------------- */

static void check_identity(const struct state_desc *d, const void *sample,
                           const struct state_buf *first)
{
    void *loaded = malloc(d->size);
    assert_non_null(loaded);
    size_t used = 0;
    CHECK(d, load_copy(d, loaded, first->data, first->len, &used) == 0, "sample does not load");
    CHECK(d, used == first->len, "load consumed %zu of %zu bytes", used, first->len);
    if (memcmp(loaded, sample, d->size) != 0) {
        size_t i = 0;
        while (((const uint8_t *)loaded)[i] == ((const uint8_t *)sample)[i])
            i++;
        CHECK(d, false, "loaded state differs from the sample at byte offset %zu "
              "(padding not zeroed, derived field, or unsaved subsection?)", i);
    }
    struct state_buf second = { 0 };
    CHECK(d, state_save(d, loaded, &second) == 0, "loaded state does not save");
    CHECK(d, second.len == first->len && memcmp(second.data, first->data, first->len) == 0,
          "second save differs from the first");
    state_buf_free(&second);

    /* Bytes after the section belong to whoever comes next. */
    uint8_t *longer = malloc(first->len + 7);
    assert_non_null(longer);
    memcpy(longer, first->data, first->len);
    memset(longer + first->len, 0xee, 7);
    CHECK(d, load_copy(d, loaded, longer, first->len + 7, &used) == 0,
          "sample followed by other bytes does not load");
    CHECK(d, used == first->len, "load with trailing bytes consumed %zu, not %zu", used,
          first->len);
    free(longer);
    free(loaded);
}

static void check_older_versions(const struct state_desc *d, const void *sample)
{
    void *loaded = malloc(d->size);
    assert_non_null(loaded);
    for (uint32_t v = d->min_version; v < d->version; v++) {
        struct state_buf old = { 0 }, again = { 0 };
        CHECK(d, state_save_version(d, sample, v, &old) == 0, "cannot save as version %u", v);
        size_t used = 0;
        CHECK(d, load_copy(d, loaded, old.data, old.len, &used) == 0,
              "a version %u stream of the sample does not load", v);
        CHECK(d, used == old.len, "version %u: consumed %zu of %zu", v, used, old.len);
        CHECK(d, state_save_version(d, loaded, v, &again) == 0, "cannot re-save version %u", v);
        CHECK(d, again.len == old.len && memcmp(again.data, old.data, old.len) == 0,
              "version %u: loaded state saves differently", v);
        state_buf_free(&old);
        state_buf_free(&again);
    }
    free(loaded);
}

/* ---- (b) corruptions ---------------------------------------------------- */

static bool worth_trying(const struct stream_map *m, size_t len, size_t i)
{
    return len <= FLIP_ALL_LIMIT || m->kind[i] != BYTE_FIELD || i % SAMPLE_STRIDE == 0;
}

static void check_truncations(const struct state_desc *d, const struct state_buf *b,
                              const struct stream_map *m, void *state)
{
    char what[128];
    for (size_t n = 0; n < b->len; n++) {
        if (n > 0 && !worth_trying(m, b->len, n - 1) && !worth_trying(m, b->len, n))
            continue;
        snprintf(what, sizeof(what), "stream cut to %zu of %zu bytes", n, b->len);
        size_t used = 0;
        CHECK(d, load_copy(d, state, b->data, n, &used) < 0, "%s loaded", what);
        expect_clean_failure(d, state, what);
    }
}

/* May a flip of byte i, giving `data`, still be a valid stream? */
static bool flip_may_load(const struct stream_map *m, const uint8_t *data, size_t i)
{
    const struct section_info *sec = &m->sections[m->section[i]];
    switch (m->kind[i]) {
    case BYTE_FIELD:
        return true;
    case BYTE_VERSION: {
        uint32_t v = (uint32_t)le(data + sec->version_at, 4);
        return v >= sec->desc->min_version && v <= sec->desc->version;
    }
    case BYTE_SUBNAME:
        return sub_by_name(sec->parent, data + sec->start + 2, le(data + sec->start, 2)) != NULL;
    case BYTE_STRUCT:
        return false;
    }
    return false;
}

static void check_flips(const struct state_desc *d, const struct state_buf *b,
                        const struct stream_map *m, void *state)
{
    static const uint8_t masks[] = { 0x01, 0x80, 0xff };
    uint8_t *data = malloc(b->len);
    assert_non_null(data);
    char what[128];
    for (size_t i = 0; i < b->len; i++) {
        if (!worth_trying(m, b->len, i))
            continue;
        for (size_t k = 0; k < VMM_ARRAY_SIZE(masks); k++) {
            memcpy(data, b->data, b->len);
            data[i] ^= masks[k];
            snprintf(what, sizeof(what), "byte %zu of %zu xor 0x%02x", i, b->len, masks[k]);
            size_t used = 0;
            if (load_copy(d, state, data, b->len, &used) < 0) {
                expect_clean_failure(d, state, what);
                continue;
            }
            CHECK(d, flip_may_load(m, data, i), "%s (a header byte) loaded", what);
            CHECK(d, used == b->len, "%s: consumed %zu", what, used);
            check_stable(d, state, what);
        }
    }
    free(data);
}

/* Copy the stream with a u32 at `at` set to `value`, and expect failure. */
static void expect_u32_refused(const struct state_desc *d, const struct state_buf *b,
                               size_t at, uint64_t value, size_t extra, const char *what)
{
    uint8_t *data = calloc(b->len + extra, 1);
    assert_non_null(data);
    memcpy(data, b->data, b->len);
    put_le(data + at, value, 4);
    void *state = malloc(d->size);
    assert_non_null(state);
    size_t used = 0;
    CHECK(d, load_copy(d, state, data, b->len + extra, &used) < 0, "%s loaded", what);
    expect_clean_failure(d, state, what);
    free(state);
    free(data);
}

static void check_versions_and_lengths(const struct state_desc *d, const struct state_buf *b,
                                       const struct stream_map *m)
{
    char what[160];
    for (size_t s = 0; s < m->n_sections; s++) {
        const struct section_info *sec = &m->sections[s];
        const struct state_desc *sd = sec->desc;
        snprintf(what, sizeof(what), "section '%s' version above max", sd->name);
        expect_u32_refused(d, b, sec->version_at, (uint64_t)sd->version + 1, 0, what);
        snprintf(what, sizeof(what), "section '%s' version 0xffffffff", sd->name);
        expect_u32_refused(d, b, sec->version_at, UINT32_MAX, 0, what);
        if (sd->min_version > 0) {
            snprintf(what, sizeof(what), "section '%s' version below min", sd->name);
            expect_u32_refused(d, b, sec->version_at, sd->min_version - 1, 0, what);
        }
        uint64_t body_len = le(b->data + sec->body_len_at, 4);
        snprintf(what, sizeof(what), "section '%s' body_len + 1", sd->name);
        expect_u32_refused(d, b, sec->body_len_at, body_len + 1, 0, what);
        snprintf(what, sizeof(what), "section '%s' body_len + 1 with a byte to spare", sd->name);
        expect_u32_refused(d, b, sec->body_len_at, body_len + 1, 1, what);
        snprintf(what, sizeof(what), "section '%s' body_len - 1", sd->name);
        expect_u32_refused(d, b, sec->body_len_at, body_len - 1, 0, what);
    }
}

static void check_wrong_names(const struct state_desc *d, const struct state_buf *b)
{
    size_t name_len = strlen(d->name);
    uint8_t *data = malloc(b->len + 1);
    assert_non_null(data);

    memcpy(data, b->data, b->len);
    data[2] ^= 0x20;
    state_check_load_fails(d, data, b->len, "instead");

    /* Same body under a name one byte longer. */
    put_le(data, name_len + 1, 2);
    memcpy(data + 2, d->name, name_len);
    data[2 + name_len] = 'x';
    memcpy(data + 3 + name_len, b->data + 2 + name_len, b->len - 2 - name_len);
    state_check_load_fails(d, data, b->len + 1, "instead");
    free(data);
}

/* The top-level stream with `extra` appended as one more subsection. */
static void expect_extra_subsection_refused(const struct state_desc *d,
                                            const struct state_buf *b,
                                            const struct stream_map *m,
                                            const uint8_t *extra, size_t extra_len,
                                            const char *expect)
{
    const struct section_info *top = &m->sections[0];
    uint32_t version = (uint32_t)le(b->data + top->version_at, 4);
    size_t count_at = top->body_at + state_fields_size(d, version);
    if (b->data[count_at] == 255)
        return;
    uint8_t *data = malloc(b->len + extra_len);
    assert_non_null(data);
    memcpy(data, b->data, b->len);
    memcpy(data + b->len, extra, extra_len);
    data[count_at]++;
    put_le(data + top->body_len_at, le(b->data + top->body_len_at, 4) + extra_len, 4);
    state_check_load_fails(d, data, b->len + extra_len, expect);
    free(data);
}

static void check_extra_subsections(const struct state_desc *d, const struct state_buf *b,
                                    const struct stream_map *m)
{
    /* An empty section of version 0 under a name nobody knows. */
    size_t name_len = strlen(UNKNOWN_NAME);
    uint8_t unknown[64];
    put_le(unknown, name_len, 2);
    memcpy(unknown + 2, UNKNOWN_NAME, name_len);
    put_le(unknown + 2 + name_len, 0, 4);
    put_le(unknown + 6 + name_len, 1, 4);
    unknown[10 + name_len] = 0;
    expect_extra_subsection_refused(d, b, m, unknown, 11 + name_len, UNKNOWN_NAME);

    /* A second copy of the first direct subsection. */
    for (size_t s = 1; s < m->n_sections; s++) {
        if (m->sections[s].parent != d)
            continue;
        const struct section_info *sec = &m->sections[s];
        expect_extra_subsection_refused(d, b, m, b->data + sec->start, sec->end - sec->start,
                                        "twice");
        break;
    }
}

void state_check_roundtrip(const struct state_desc *d, const void *sample_state)
{
    CHECK(d, state_desc_check(d) == 0, "description is invalid");
    CHECK(d, !all_zero(sample_state, d->size),
          "sample state is all zero; give it realistic non-zero values");
    struct state_buf first = { 0 };
    CHECK(d, state_save(d, sample_state, &first) == 0, "sample does not save");
    check_identity(d, sample_state, &first);
    check_older_versions(d, sample_state);

    struct stream_map map;
    map_stream(d, &first, &map);
    void *state = malloc(d->size);
    assert_non_null(state);
    check_truncations(d, &first, &map, state);
    check_flips(d, &first, &map, state);
    check_versions_and_lengths(d, &first, &map);
    check_wrong_names(d, &first);
    check_extra_subsections(d, &first, &map);
    free(state);
    map_free(&map);
    state_buf_free(&first);
}
