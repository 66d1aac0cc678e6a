/* libFuzzer harness for state_load (lib/migration/state.c).
 *
 * The input is one section for a nested test description:
 *   dev (v1..2) { fifo (v1) { ext (v1..3) }, timer (v0..1) }
 * with arrays, bytes, bools, fields added in later versions and post_load
 * validators.  Beyond "no crash, no sanitizer report", every input that
 * loads must be a fixed point: saving what loaded and loading that again
 * gives the same bytes.
 *
 * Built with -DFUZZ_STATE_WRITE_SEEDS (any C compiler, no libFuzzer) it
 * instead writes the seed corpus into the directory given as argument. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "migration/state.h"
#include "util/util.h"

struct ext_state {
    uint16_t mode;
    uint64_t added_v2[2];
    bool added_v3;
};

struct fifo_state {
    uint8_t len;
    uint8_t data[32];
    bool has_ext;
    struct ext_state ext;
};

struct timer_state {
    uint64_t deadline;
    bool armed;
};

struct dev_state {
    uint32_t regs[6];
    uint8_t irq;
    uint64_t since_v2;
    uint32_t derived;          /* not saved: post_load computes it */
    struct fifo_state fifo;
    struct timer_state timer;
};

static int ext_post_load(void *opaque, uint32_t version)
{
    struct ext_state *s = opaque;
    (void)version;
    if (s->mode > 3)
        return vmm_set_error(22, "field 'mode' is %u, must be 0..3", s->mode);
    return 0;
}

static int fifo_post_load(void *opaque, uint32_t version)
{
    struct fifo_state *s = opaque;
    (void)version;
    if (s->len > sizeof(s->data))
        return vmm_set_error(22, "field 'len' is %u, above %zu", s->len, sizeof(s->data));
    return 0;
}

static int dev_post_load(void *opaque, uint32_t version)
{
    struct dev_state *s = opaque;
    if (s->irq >= 24)
        return vmm_set_error(22, "field 'irq' is %u, above 23", s->irq);
    if (version < 2)
        s->since_v2 = 1000;       /* the default older builds implied */
    s->derived = s->regs[0] ^ s->regs[5];
    return 0;
}

static const struct state_field ext_fields[] = {
    STATE_FIELD(struct ext_state, mode, STATE_U16),
    { "added_v2", STATE_U64_ARRAY, offsetof(struct ext_state, added_v2), 2, 2 },
    STATE_FIELD_V(struct ext_state, added_v3, STATE_BOOL, 3),
    STATE_END,
};
static const struct state_desc ext_desc = {
    .name = "ext", .version = 3, .min_version = 1, .size = sizeof(struct ext_state),
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
    STATE_FIELD_V(struct timer_state, armed, STATE_BOOL, 1),
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
    STATE_FIELD(struct dev_state, irq, STATE_U8),
    STATE_FIELD_V(struct dev_state, since_v2, STATE_U64, 2),
    STATE_END,
};
static const struct state_desc dev_desc = {
    .name = "dev", .version = 2, .min_version = 1, .size = sizeof(struct dev_state),
    .fields = dev_fields, .subsections = dev_subs, .post_load = dev_post_load,
};

#ifndef FUZZ_STATE_WRITE_SEEDS

static void must(bool ok)
{
    if (!ok)
        __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct dev_state s, again;
    size_t used = 0;
    vmm_clear_error();
    if (state_load(&dev_desc, &s, data, size, &used) < 0) {
        must(vmm_get_error()[0] != '\0');
        return 0;
    }
    must(used <= size);

    struct state_buf a = { 0 }, b = { 0 };
    must(state_save(&dev_desc, &s, &a) == 0);
    must(state_load(&dev_desc, &again, a.data, a.len, &used) == 0 && used == a.len);
    must(state_save(&dev_desc, &again, &b) == 0);
    must(a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
    state_buf_free(&a);
    state_buf_free(&b);
    return 0;
}

#else

static void write_seed(const char *dir, const char *name, const struct dev_state *s,
                       uint32_t version)
{
    struct state_buf b = { 0 };
    if (state_save_version(&dev_desc, s, version, &b) < 0) {
        fprintf(stderr, "%s: %s\n", name, vmm_get_error());
        exit(1);
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b.data, 1, b.len, f) != b.len || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
    state_buf_free(&b);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s SEED_DIR\n", argv[0]);
        return 2;
    }
    struct dev_state s;
    memset(&s, 0, sizeof(s));
    s.regs[0] = 0x80000001;
    s.regs[5] = 7;
    s.irq = 4;
    s.since_v2 = 1000;
    s.timer.deadline = 123456789;
    s.timer.armed = true;
    write_seed(argv[1], "no-fifo", &s, 2);
    write_seed(argv[1], "no-fifo-v1", &s, 1);

    s.fifo.len = 5;
    memcpy(s.fifo.data, "hello", 5);
    write_seed(argv[1], "fifo", &s, 2);

    s.fifo.has_ext = true;
    s.fifo.ext.mode = 2;
    s.fifo.ext.added_v2[0] = 0xfeedface;
    s.fifo.ext.added_v3 = true;
    write_seed(argv[1], "fifo-ext", &s, 2);
    return 0;
}

#endif
