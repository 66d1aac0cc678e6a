/* State descriptions: encoding, version rules, subsections, validation. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <errno.h>
#include "state-check.h"
#include "util/util.h"

/* ---- a flat description with every field type and a version-2 field ----- */

struct flat_state {
    uint8_t a;
    uint16_t b;
    uint32_t c;
    uint64_t d;
    bool e;
    uint8_t bytes[5];
    uint32_t words[3];
    uint64_t quads[2];
    uint32_t added_v2;
    uint32_t derived;      /* not saved: post_load computes c * 2 */
};

static uint32_t flat_loaded_version;

static int flat_post_load(void *opaque, uint32_t version)
{
    struct flat_state *s = opaque;
    flat_loaded_version = version;
    if (s->c > 1000000)
        return vmm_set_error(EINVAL, "field 'c' is %u, above 1000000", s->c);
    s->derived = s->c * 2;
    return 0;
}

static const struct state_field flat_fields[] = {
    STATE_FIELD(struct flat_state, a, STATE_U8),
    STATE_FIELD(struct flat_state, b, STATE_U16),
    STATE_FIELD(struct flat_state, c, STATE_U32),
    STATE_FIELD(struct flat_state, d, STATE_U64),
    STATE_FIELD(struct flat_state, e, STATE_BOOL),
    STATE_BYTES_FIELD(struct flat_state, bytes),
    STATE_ARRAY(struct flat_state, words, STATE_U32_ARRAY),
    STATE_ARRAY(struct flat_state, quads, STATE_U64_ARRAY),
    STATE_FIELD_V(struct flat_state, added_v2, STATE_U32, 2),
    STATE_END,
};

static const struct state_desc flat_desc = {
    .name = "flat", .version = 2, .min_version = 1,
    .size = sizeof(struct flat_state), .fields = flat_fields,
    .post_load = flat_post_load,
};

/* Bytes of the version-1 fields and of added_v2. */
#define FLAT_V1_FIELDS (1 + 2 + 4 + 8 + 1 + 5 + 3 * 4 + 2 * 8)
#define FLAT_V2_FIELDS (FLAT_V1_FIELDS + 4)

static void flat_sample(struct flat_state *s)
{
    memset(s, 0, sizeof(*s));
    s->a = 0x11;
    s->b = 0x2233;
    s->c = 123456;
    s->d = 0x0102030405060708ull;
    s->e = true;
    memcpy(s->bytes, "\x01\x02\x03\xfe\xff", 5);
    s->words[0] = 1; s->words[1] = 0xdeadbeef; s->words[2] = 3;
    s->quads[0] = UINT64_MAX; s->quads[1] = 42;
    s->added_v2 = 0xabcdef;
    s->derived = s->c * 2;
}

/* ---- a nested description: dev { fifo { ext }, timer } ------------------ */

struct ext_state { uint32_t mode; uint32_t extra_v2; };
struct fifo_state { uint8_t len; uint8_t data[16]; bool has_ext; struct ext_state ext; };
struct timer_state { uint64_t deadline; };
struct dev_state { uint32_t regs[4]; struct fifo_state fifo; struct timer_state timer; };

static char post_load_log[128];

static void log_post_load(const char *name)
{
    size_t len = strlen(post_load_log);
    snprintf(post_load_log + len, sizeof(post_load_log) - len, "%s;", name);
}

static int ext_post_load(void *opaque, uint32_t version)
{
    struct ext_state *s = opaque;
    (void)version;
    log_post_load("ext");
    if (s->mode > 3)
        return vmm_set_error(EINVAL, "field 'mode' is %u, must be 0..3", s->mode);
    return 0;
}

static int fifo_post_load(void *opaque, uint32_t version)
{
    struct fifo_state *s = opaque;
    (void)version;
    log_post_load("fifo");
    if (s->len > sizeof(s->data))
        return vmm_set_error(EINVAL, "field 'len' is %u, the fifo holds %zu", s->len,
                             sizeof(s->data));
    return 0;
}

static int dev_post_load(void *opaque, uint32_t version)
{
    (void)opaque;
    (void)version;
    log_post_load("dev");
    return 0;
}

static const struct state_field ext_fields[] = {
    STATE_FIELD(struct ext_state, mode, STATE_U32),
    STATE_FIELD_V(struct ext_state, extra_v2, STATE_U32, 2),
    STATE_END,
};
static const struct state_desc ext_desc = {
    .name = "ext", .version = 2, .min_version = 1, .size = sizeof(struct ext_state),
    .fields = ext_fields, .post_load = ext_post_load,
};

static bool ext_needed(const void *parent)
{
    return ((const struct fifo_state *)parent)->has_ext;
}

static const struct state_subsection fifo_subs[] = {
    { &ext_desc, offsetof(struct fifo_state, ext), ext_needed },
    { NULL, 0, NULL },
};
static const struct state_field fifo_fields[] = {
    STATE_FIELD(struct fifo_state, len, STATE_U8),
    STATE_BYTES_FIELD(struct fifo_state, data),
    STATE_FIELD(struct fifo_state, has_ext, STATE_BOOL),
    STATE_END,
};
static const struct state_desc fifo_desc = {
    .name = "fifo", .version = 1, .min_version = 1, .size = sizeof(struct fifo_state),
    .fields = fifo_fields, .subsections = fifo_subs, .post_load = fifo_post_load,
};

static const struct state_field timer_fields[] = {
    STATE_FIELD(struct timer_state, deadline, STATE_U64),
    STATE_END,
};
static const struct state_desc timer_desc = {
    .name = "timer", .version = 1, .min_version = 0, .size = sizeof(struct timer_state),
    .fields = timer_fields, .post_load = NULL,
};

static bool fifo_needed(const void *parent)
{
    return ((const struct dev_state *)parent)->fifo.len > 0;
}

static const struct state_subsection dev_subs[] = {
    { &fifo_desc, offsetof(struct dev_state, fifo), fifo_needed },
    { &timer_desc, offsetof(struct dev_state, timer), NULL },
    { NULL, 0, NULL },
};
static const struct state_field dev_fields[] = {
    STATE_ARRAY(struct dev_state, regs, STATE_U32_ARRAY),
    STATE_END,
};
static const struct state_desc dev_desc = {
    .name = "dev", .version = 1, .min_version = 1, .size = sizeof(struct dev_state),
    .fields = dev_fields, .subsections = dev_subs, .post_load = dev_post_load,
};

/* The same device as an older build knew it: no subsections at all. */
static const struct state_desc dev_desc_no_subs = {
    .name = "dev", .version = 1, .min_version = 1, .size = sizeof(struct dev_state),
    .fields = dev_fields, .post_load = dev_post_load,
};

static void dev_sample(struct dev_state *s, bool with_fifo, bool with_ext)
{
    memset(s, 0, sizeof(*s));
    s->regs[0] = 0x10; s->regs[1] = 0x20; s->regs[3] = 0xffffffff;
    if (with_fifo) {
        s->fifo.len = 3;
        memcpy(s->fifo.data, "abc", 3);
        s->fifo.has_ext = with_ext;
        if (with_ext) {
            s->fifo.ext.mode = 2;
            s->fifo.ext.extra_v2 = 77;
        }
    }
    s->timer.deadline = 1000000007;
}

static void save_ok(const struct state_desc *d, const void *s, struct state_buf *b)
{
    assert_int_equal(state_save(d, s, b), 0);
}

static uint32_t get32(const uint8_t *p)
{
    return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

static void set32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* ---- encoding ----------------------------------------------------------- */

static void test_encoding_is_little_endian_in_table_order(void **unused)
{
    (void)unused;
    struct flat_state s;
    flat_sample(&s);
    struct state_buf b = { 0 };
    save_ok(&flat_desc, &s, &b);
    static const uint8_t expect[] = {
        4, 0, 'f', 'l', 'a', 't',            /* name */
        2, 0, 0, 0,                          /* version */
        FLAT_V2_FIELDS + 1, 0, 0, 0,         /* body_len */
        0x11,                                /* a */
        0x33, 0x22,                          /* b */
        0x40, 0xe2, 0x01, 0x00,              /* c = 123456 */
        8, 7, 6, 5, 4, 3, 2, 1,              /* d */
        1,                                   /* e */
        1, 2, 3, 0xfe, 0xff,                 /* bytes */
        1, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde, 3, 0, 0, 0,        /* words */
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 42, 0, 0, 0, 0, 0, 0, 0,
        0xef, 0xcd, 0xab, 0,                 /* added_v2 */
        0,                                   /* subsection count */
    };
    assert_int_equal(b.len, sizeof(expect));
    assert_memory_equal(b.data, expect, sizeof(expect));
    assert_int_equal(state_fields_size(&flat_desc, 1), FLAT_V1_FIELDS);
    assert_int_equal(state_fields_size(&flat_desc, 2), FLAT_V2_FIELDS);
    state_buf_free(&b);
}

static void test_subsections_are_nested_sections(void **unused)
{
    (void)unused;
    struct dev_state s;
    dev_sample(&s, true, true);
    struct state_buf b = { 0 };
    save_ok(&dev_desc, &s, &b);
    /* dev header (3+10), regs 16, count 2, then "fifo" at offset 32. */
    size_t body = 2 + 3 + 8;
    assert_int_equal(get32(b.data + body - 4), b.len - body);
    assert_int_equal(b.data[body + 16], 2);
    assert_int_equal(b.data[body + 17], 4);
    assert_memory_equal(b.data + body + 19, "fifo", 4);
    state_buf_free(&b);
}

static void test_save_appends(void **unused)
{
    (void)unused;
    struct flat_state s;
    struct dev_state ds, dl;
    struct flat_state fl;
    flat_sample(&s);
    dev_sample(&ds, true, false);
    struct state_buf b = { 0 };
    save_ok(&flat_desc, &s, &b);
    size_t first = b.len;
    save_ok(&dev_desc, &ds, &b);
    size_t used = 0;
    assert_int_equal(state_load(&flat_desc, &fl, b.data, b.len, &used), 0);
    assert_int_equal(used, first);
    assert_int_equal(state_load(&dev_desc, &dl, b.data + used, b.len - used, &used), 0);
    assert_int_equal(used, b.len - first);
    assert_memory_equal(&dl, &ds, sizeof(ds));
    /* consumed may be NULL */
    assert_int_equal(state_load(&flat_desc, &fl, b.data, b.len, NULL), 0);
    state_buf_free(&b);
}

/* ---- the shared helper over both descriptions --------------------------- */

static void test_roundtrip_flat(void **unused)
{
    (void)unused;
    struct flat_state s;
    flat_sample(&s);
    state_check_roundtrip(&flat_desc, &s);
}

static void test_roundtrip_nested(void **unused)
{
    (void)unused;
    struct dev_state s;
    dev_sample(&s, true, true);
    state_check_roundtrip(&dev_desc, &s);
    dev_sample(&s, true, false);
    state_check_roundtrip(&dev_desc, &s);
    dev_sample(&s, false, false);
    state_check_roundtrip(&dev_desc, &s);
}

/* ---- versions ----------------------------------------------------------- */

static void test_older_version_leaves_new_fields_zero(void **unused)
{
    (void)unused;
    struct flat_state s, l;
    flat_sample(&s);
    struct state_buf b = { 0 };
    assert_int_equal(state_save_version(&flat_desc, &s, 1, &b), 0);
    assert_int_equal(b.len, 2 + 4 + 8 + FLAT_V1_FIELDS + 1);
    flat_loaded_version = 0;
    size_t used;
    assert_int_equal(state_load(&flat_desc, &l, b.data, b.len, &used), 0);
    assert_int_equal(flat_loaded_version, 1);
    assert_int_equal(l.added_v2, 0);
    assert_int_equal(l.d, s.d);
    assert_int_equal(l.derived, s.c * 2);
    state_buf_free(&b);
}

static void test_version_out_of_range(void **unused)
{
    (void)unused;
    struct flat_state s;
    flat_sample(&s);
    struct state_buf b = { 0 };
    save_ok(&flat_desc, &s, &b);
    set32(b.data + 6, 7);
    state_check_load_fails(&flat_desc, b.data, b.len,
                           "state 'flat': version 7 is newer than this build supports (1..2)");
    set32(b.data + 6, 0);
    state_check_load_fails(&flat_desc, b.data, b.len,
                           "state 'flat': version 0 is older than this build supports (1..2)");
    assert_int_equal(state_save_version(&flat_desc, &s, 3, &b), -1);
    assert_int_equal(state_save_version(&flat_desc, &s, 0, &b), -1);
    state_buf_free(&b);
}

static void test_body_len_must_match_version(void **unused)
{
    (void)unused;
    struct flat_state s;
    flat_sample(&s);
    struct state_buf b = { 0 };
    save_ok(&flat_desc, &s, &b);
    /* A version 2 body claimed to be version 1 does not parse. */
    set32(b.data + 6, 1);
    state_check_load_fails(&flat_desc, b.data, b.len, "state 'flat'");
    state_buf_free(&b);

    /* A version 1 body claimed to be version 2: too short for its fields. */
    assert_int_equal(state_save_version(&flat_desc, &s, 1, &b), 0);
    set32(b.data + 6, 2);
    state_check_load_fails(&flat_desc, b.data, b.len,
                           "state 'flat': body is 50 bytes, fields of version 2 need 53");
    set32(b.data + 6, 1);

    /* One byte more than fields and subsections use. */
    uint8_t *longer = calloc(b.len + 1, 1);
    memcpy(longer, b.data, b.len);
    set32(longer + 10, FLAT_V1_FIELDS + 2);
    state_check_load_fails(&flat_desc, longer, b.len + 1,
                           "state 'flat': body is 51 bytes, but the fields of version 1 "
                           "and the subsections use 50");
    free(longer);

    /* Only the fields, no subsection count. */
    set32(b.data + 10, FLAT_V1_FIELDS);
    state_check_load_fails(&flat_desc, b.data, b.len - 1,
                           "fields of version 1 need 49 and the subsection count 1 more");
    /* body_len larger than the stream. */
    set32(b.data + 10, 4000);
    state_check_load_fails(&flat_desc, b.data, b.len, "body is 4000 bytes but the stream");
    state_buf_free(&b);
}

static void test_name_must_match(void **unused)
{
    (void)unused;
    struct flat_state s;
    flat_sample(&s);
    struct state_buf b = { 0 };
    save_ok(&flat_desc, &s, &b);
    memcpy(b.data + 2, "flap", 4);
    state_check_load_fails(&flat_desc, b.data, b.len, "state 'flat': stream holds section 'flap'");
    b.data[2] = '\n';
    state_check_load_fails(&flat_desc, b.data, b.len, "'?lap'");
    state_buf_free(&b);
}

static void test_truncated_and_empty_input(void **unused)
{
    (void)unused;
    struct flat_state l;
    assert_int_equal(state_load(&flat_desc, &l, NULL, 0, NULL), -1);
    assert_non_null(strstr(vmm_get_error(), "ends after 0 bytes"));
    static const uint8_t huge_name[] = { 0xff, 0xff, 'f' };
    state_check_load_fails(&flat_desc, huge_name, sizeof(huge_name), "name of 65535 bytes");
}

/* ---- field values ------------------------------------------------------- */

static void test_bool_must_be_0_or_1(void **unused)
{
    (void)unused;
    struct flat_state s;
    flat_sample(&s);
    struct state_buf b = { 0 };
    save_ok(&flat_desc, &s, &b);
    size_t e_at = 14 + 1 + 2 + 4 + 8;
    assert_int_equal(b.data[e_at], 1);
    b.data[e_at] = 2;
    state_check_load_fails(&flat_desc, b.data, b.len, "field 'e' is a bool but holds 2");
    state_buf_free(&b);
}

static void test_post_load_rejects_and_state_is_zeroed(void **unused)
{
    (void)unused;
    struct flat_state s;
    flat_sample(&s);
    s.c = 2000000;
    struct state_buf b = { 0 };
    save_ok(&flat_desc, &s, &b);
    state_check_load_fails(&flat_desc, b.data, b.len,
                           "state 'flat': field 'c' is 2000000, above 1000000");
    state_buf_free(&b);
}

static int silent_reject(void *state, uint32_t version)
{
    (void)state;
    (void)version;
    return -1;
}

static void test_post_load_without_message_gets_one(void **unused)
{
    (void)unused;
    struct state_desc d = flat_desc;
    d.post_load = silent_reject;
    struct flat_state s;
    flat_sample(&s);
    struct state_buf b = { 0 };
    save_ok(&d, &s, &b);
    state_check_load_fails(&d, b.data, b.len, "state 'flat': version 2 state rejected");
    state_buf_free(&b);
}

/* ---- subsections -------------------------------------------------------- */

static void test_unneeded_subsection_not_written(void **unused)
{
    (void)unused;
    struct dev_state with, without;
    dev_sample(&with, true, true);
    dev_sample(&without, false, false);
    struct state_buf a = { 0 }, b = { 0 };
    save_ok(&dev_desc, &with, &a);
    save_ok(&dev_desc, &without, &b);
    size_t count_at = 13 + 16;
    assert_int_equal(a.data[count_at], 2);
    assert_int_equal(b.data[count_at], 1);
    assert_memory_equal(b.data + count_at + 3, "timer", 5);
    assert_null(memmem(b.data, b.len, "fifo", 4));
    assert_null(memmem(b.data, b.len, "ext", 3));
    state_buf_free(&a);
    state_buf_free(&b);
}

static void test_missing_subsection_stays_zero(void **unused)
{
    (void)unused;
    struct dev_state s, l;
    dev_sample(&s, true, true);
    /* A stream from a build that had no subsections. */
    struct state_buf b = { 0 };
    save_ok(&dev_desc_no_subs, &s, &b);
    assert_int_equal(state_load(&dev_desc, &l, b.data, b.len, NULL), 0);
    assert_memory_equal(l.regs, s.regs, sizeof(s.regs));
    struct fifo_state zero_fifo;
    memset(&zero_fifo, 0, sizeof(zero_fifo));
    assert_memory_equal(&l.fifo, &zero_fifo, sizeof(zero_fifo));
    assert_int_equal(l.timer.deadline, 0);
    state_buf_free(&b);
}

static void test_unknown_subsection_refused_by_name(void **unused)
{
    (void)unused;
    struct dev_state s;
    dev_sample(&s, true, true);
    struct state_buf b = { 0 };
    save_ok(&dev_desc, &s, &b);
    state_check_load_fails(&dev_desc_no_subs, b.data, b.len,
                           "state 'dev': unknown subsection 'fifo'");
    state_buf_free(&b);
}

static void test_nested_subsection_errors_name_the_path(void **unused)
{
    (void)unused;
    struct dev_state s;
    dev_sample(&s, true, true);
    s.fifo.ext.mode = 9;
    struct state_buf b = { 0 };
    save_ok(&dev_desc, &s, &b);
    state_check_load_fails(&dev_desc, b.data, b.len,
                           "state 'dev/fifo/ext': field 'mode' is 9, must be 0..3");
    state_buf_free(&b);

    dev_sample(&s, true, true);
    s.fifo.len = 200;
    save_ok(&dev_desc, &s, &b);
    state_check_load_fails(&dev_desc, b.data, b.len, "state 'dev/fifo': field 'len' is 200");
    /* A subsection's version is checked against its own range. */
    uint8_t *ver = memmem(b.data, b.len, "ext", 3);
    assert_non_null(ver);
    set32(ver + 3, 3);
    state_check_load_fails(&dev_desc, b.data, b.len,
                           "state 'dev/fifo/ext': version 3 is newer than this build "
                           "supports (1..2)");
    state_buf_free(&b);
}

static void test_duplicate_subsection_refused(void **unused)
{
    (void)unused;
    struct dev_state s;
    dev_sample(&s, false, false);
    struct state_buf b = { 0 };
    save_ok(&dev_desc, &s, &b);
    /* dev body: regs, count 1, timer section (5 + 10 + 9 bytes) */
    size_t timer_at = 13 + 16 + 1, timer_len = b.len - timer_at;
    uint8_t *data = malloc(b.len + timer_len);
    memcpy(data, b.data, b.len);
    memcpy(data + b.len, b.data + timer_at, timer_len);
    data[timer_at - 1] = 2;
    set32(data + 9, get32(b.data + 9) + timer_len);
    state_check_load_fails(&dev_desc, data, b.len + timer_len,
                           "state 'dev': subsection 'timer' appears twice");
    free(data);
    state_buf_free(&b);
}

static void test_post_load_runs_after_subsections(void **unused)
{
    (void)unused;
    struct dev_state s, l;
    dev_sample(&s, true, true);
    struct state_buf b = { 0 };
    save_ok(&dev_desc, &s, &b);
    post_load_log[0] = '\0';
    assert_int_equal(state_load(&dev_desc, &l, b.data, b.len, NULL), 0);
    assert_string_equal(post_load_log, "ext;fifo;dev;");
    assert_memory_equal(&l, &s, sizeof(s));
    state_buf_free(&b);
}

static void test_subsection_count_beyond_body(void **unused)
{
    (void)unused;
    struct dev_state s;
    dev_sample(&s, false, false);
    struct state_buf b = { 0 };
    save_ok(&dev_desc, &s, &b);
    b.data[13 + 16] = 255;
    state_check_load_fails(&dev_desc, b.data, b.len, "body ends inside a subsection name");
    state_buf_free(&b);
}

/* ---- descriptions ------------------------------------------------------- */

#define CHAIN 10
/* Each link is a u32 at offset 0 of an 8-byte slot, followed by the next. */
static const struct state_field link_fields[] = {
    { "v", STATE_U32, 0, 1, 0 }, STATE_END,
};
static struct state_desc links[CHAIN];
static struct state_subsection link_subs[CHAIN][2];
static uint8_t chain_state[1024];

/* links[i] has links[i + 1] as its only subsection, at offset 8. */
static const struct state_desc *make_chain(int depth)
{
    static const char *names[CHAIN] = { "l0", "l1", "l2", "l3", "l4", "l5", "l6", "l7",
                                        "l8", "l9" };
    for (int i = depth - 1; i >= 0; i--) {
        links[i] = (struct state_desc){ .name = names[i], .version = 1, .min_version = 1,
                                        .size = 8 * (size_t)(depth - i), .fields = link_fields };
        memset(link_subs[i], 0, sizeof(link_subs[i]));
        if (i + 1 < depth) {
            link_subs[i][0] = (struct state_subsection){ &links[i + 1], 8, NULL };
            links[i].subsections = link_subs[i];
        } else {
            links[i].subsections = NULL;
        }
    }
    return &links[0];
}

static void test_nesting_depth_is_bounded(void **unused)
{
    (void)unused;
    const struct state_desc *ok = make_chain(STATE_MAX_DEPTH);
    memset(chain_state, 0, sizeof(chain_state));
    for (int i = 0; i < STATE_MAX_DEPTH; i++)
        chain_state[8 * i] = (uint8_t)(i + 1);
    assert_int_equal(state_desc_check(ok), 0);
    state_check_roundtrip(ok, chain_state);

    const struct state_desc *deep = make_chain(STATE_MAX_DEPTH + 1);
    assert_int_equal(state_desc_check(deep), -1);
    assert_non_null(strstr(vmm_get_error(), "nested deeper than"));
    struct state_buf b = { 0 };
    assert_int_equal(state_save(deep, chain_state, &b), -1);
    assert_int_equal(b.len, 0);
    state_buf_free(&b);
}

static void expect_bad_desc(const struct state_desc *d, const char *expect)
{
    assert_int_equal(state_desc_check(d), -1);
    if (!strstr(vmm_get_error(), expect))
        fail_msg("expected \"%s\" in \"%s\"", expect, vmm_get_error());
    uint8_t state[256] = { 0 };
    struct state_buf b = { 0 };
    assert_int_equal(state_save(d, state, &b), -1);
    assert_int_equal(state_load(d, state, (const uint8_t *)"", 0, NULL), -1);
    state_buf_free(&b);
}

static void test_bad_descriptions_refused(void **unused)
{
    (void)unused;
    struct state_desc d = flat_desc;
    d.size = offsetof(struct flat_state, added_v2);
    expect_bad_desc(&d, "field 'added_v2' lies outside");

    d = flat_desc;
    d.version = 1;
    expect_bad_desc(&d, "field 'added_v2' appears in version 2");

    d = flat_desc;
    d.min_version = 3;
    expect_bad_desc(&d, "min_version 3 is above version 2");

    static const struct state_subsection twice[] = {
        { &timer_desc, 0, NULL }, { &timer_desc, 8, NULL }, { NULL, 0, NULL },
    };
    d = dev_desc;
    d.subsections = twice;
    expect_bad_desc(&d, "two subsections named 'timer'");

    static const struct state_subsection outside[] = {
        { &timer_desc, sizeof(struct dev_state) - 4, NULL }, { NULL, 0, NULL },
    };
    d = dev_desc;
    d.subsections = outside;
    expect_bad_desc(&d, "subsection 'timer' lies outside");
}

static void test_failed_save_leaves_buffer(void **unused)
{
    (void)unused;
    struct flat_state s;
    flat_sample(&s);
    struct state_buf b = { 0 };
    save_ok(&flat_desc, &s, &b);
    size_t len = b.len;
    struct state_desc bad = flat_desc;
    bad.min_version = 5;
    assert_int_equal(state_save(&bad, &s, &b), -1);
    assert_int_equal(b.len, len);
    state_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encoding_is_little_endian_in_table_order),
        cmocka_unit_test(test_subsections_are_nested_sections),
        cmocka_unit_test(test_save_appends),
        cmocka_unit_test(test_roundtrip_flat),
        cmocka_unit_test(test_roundtrip_nested),
        cmocka_unit_test(test_older_version_leaves_new_fields_zero),
        cmocka_unit_test(test_version_out_of_range),
        cmocka_unit_test(test_body_len_must_match_version),
        cmocka_unit_test(test_name_must_match),
        cmocka_unit_test(test_truncated_and_empty_input),
        cmocka_unit_test(test_bool_must_be_0_or_1),
        cmocka_unit_test(test_post_load_rejects_and_state_is_zeroed),
        cmocka_unit_test(test_post_load_without_message_gets_one),
        cmocka_unit_test(test_unneeded_subsection_not_written),
        cmocka_unit_test(test_missing_subsection_stays_zero),
        cmocka_unit_test(test_unknown_subsection_refused_by_name),
        cmocka_unit_test(test_nested_subsection_errors_name_the_path),
        cmocka_unit_test(test_duplicate_subsection_refused),
        cmocka_unit_test(test_post_load_runs_after_subsections),
        cmocka_unit_test(test_subsection_count_beyond_body),
        cmocka_unit_test(test_nesting_depth_is_bounded),
        cmocka_unit_test(test_bad_descriptions_refused),
        cmocka_unit_test(test_failed_save_leaves_buffer),
    };
    return cmocka_run_group_tests_name("state", tests, NULL, NULL);
}
