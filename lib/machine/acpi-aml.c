/* AML encoding (ACPI 6.x §20.2). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "machine/acpi-aml.h"
#include "util/util.h"

#define AML_NAME_OP      0x08
#define AML_BYTE_PREFIX  0x0a
#define AML_WORD_PREFIX  0x0b
#define AML_DWORD_PREFIX 0x0c
#define AML_STRING_PREFIX 0x0d
#define AML_QWORD_PREFIX 0x0e
#define AML_SCOPE_OP     0x10
#define AML_BUFFER_OP    0x11
#define AML_PACKAGE_OP   0x12
#define AML_EXT_PREFIX   0x5b
#define AML_DEVICE_OP    0x82
#define AML_DUAL_NAME    0x2e
#define AML_MULTI_NAME   0x2f
#define AML_ROOT_CHAR    '\\'

void aml_init(struct aml *a)
{
    memset(a, 0, sizeof(*a));
}

void aml_free(struct aml *a)
{
    free(a->data);
    memset(a, 0, sizeof(*a));
}

int aml_finish(struct aml *a)
{
    if (a->depth && !a->error)
        a->error = EINVAL;
    if (a->error)
        return vmm_set_error(a->error, "AML: %s", a->error == ENOMEM ? "out of memory" :
                             "unbalanced or malformed objects");
    return 0;
}

static int reserve(struct aml *a, size_t n)
{
    if (a->error)
        return -1;
    if (a->len + n <= a->cap)
        return 0;
    size_t cap = a->cap ? a->cap : 256;
    while (cap < a->len + n)
        cap *= 2;
    uint8_t *d = realloc(a->data, cap);
    if (!d) {
        a->error = ENOMEM;
        return -1;
    }
    a->data = d;
    a->cap = cap;
    return 0;
}

void aml_bytes(struct aml *a, const void *p, size_t n)
{
    if (reserve(a, n) < 0)
        return;
    memcpy(a->data + a->len, p, n);
    a->len += n;
}

static void byte(struct aml *a, uint8_t b)
{
    aml_bytes(a, &b, 1);
}

static void le(struct aml *a, uint64_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        byte(a, (uint8_t)(v >> (8 * i)));
}

void aml_integer(struct aml *a, uint64_t v)
{
    if (v == 0 || v == 1) {
        byte(a, (uint8_t)v);          /* ZeroOp, OneOp */
    } else if (v <= 0xff) {
        byte(a, AML_BYTE_PREFIX);
        le(a, v, 1);
    } else if (v <= 0xffff) {
        byte(a, AML_WORD_PREFIX);
        le(a, v, 2);
    } else if (v <= 0xffffffffu) {
        byte(a, AML_DWORD_PREFIX);
        le(a, v, 4);
    } else {
        byte(a, AML_QWORD_PREFIX);
        le(a, v, 8);
    }
}

void aml_string(struct aml *a, const char *s)
{
    byte(a, AML_STRING_PREFIX);
    aml_bytes(a, s, strlen(s) + 1);
}

void aml_eisaid(struct aml *a, const char *id)
{
    if (strlen(id) != 7) {
        a->error = EINVAL;
        return;
    }
    uint16_t letters = (uint16_t)(((id[0] - 0x40) & 0x1f) << 10 | ((id[1] - 0x40) & 0x1f) << 5 |
                                  ((id[2] - 0x40) & 0x1f));
    uint16_t product = (uint16_t)strtoul(id + 3, NULL, 16);
    /* Both halves are stored big endian inside the little-endian dword. */
    uint32_t v = (uint32_t)(letters >> 8) | (uint32_t)(letters & 0xff) << 8 |
                 (uint32_t)(product >> 8) << 16 | (uint32_t)(product & 0xff) << 24;
    byte(a, AML_DWORD_PREFIX);
    le(a, v, 4);
}

/* One NameSeg: up to four characters, padded with '_'. */
static void nameseg(struct aml *a, const char *s, size_t n)
{
    if (n == 0 || n > 4) {
        a->error = EINVAL;
        return;
    }
    char seg[4] = { '_', '_', '_', '_' };
    memcpy(seg, s, n);
    aml_bytes(a, seg, 4);
}

void aml_namestring(struct aml *a, const char *path)
{
    if (*path == AML_ROOT_CHAR) {
        byte(a, AML_ROOT_CHAR);
        path++;
    }
    unsigned segs = 1;
    for (const char *p = path; *p; p++)
        segs += *p == '.';
    if (segs == 2)
        byte(a, AML_DUAL_NAME);
    else if (segs > 2) {
        byte(a, AML_MULTI_NAME);
        byte(a, (uint8_t)segs);
    }
    while (*path) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);
        nameseg(a, path, n);
        path += n + (dot ? 1 : 0);
    }
}

void aml_name(struct aml *a, const char *name)
{
    byte(a, AML_NAME_OP);
    aml_namestring(a, name);
}

void aml_name_integer(struct aml *a, const char *name, uint64_t v)
{
    aml_name(a, name);
    aml_integer(a, v);
}

void aml_name_string(struct aml *a, const char *name, const char *s)
{
    aml_name(a, name);
    aml_string(a, s);
}

void aml_name_eisaid(struct aml *a, const char *name, const char *id)
{
    aml_name(a, name);
    aml_eisaid(a, id);
}

static void open_pkg(struct aml *a)
{
    if (a->depth >= AML_MAX_DEPTH) {
        a->error = EINVAL;
        return;
    }
    a->open[a->depth++] = a->len;
}

void aml_scope_open(struct aml *a, const char *path)
{
    byte(a, AML_SCOPE_OP);
    open_pkg(a);
    aml_namestring(a, path);
}

void aml_device_open(struct aml *a, const char *name)
{
    byte(a, AML_EXT_PREFIX);
    byte(a, AML_DEVICE_OP);
    open_pkg(a);
    aml_namestring(a, name);
}

void aml_package_open(struct aml *a, unsigned elements)
{
    if (elements > 255)
        a->error = EINVAL;
    byte(a, AML_PACKAGE_OP);
    open_pkg(a);
    byte(a, (uint8_t)elements);
}

/* PkgLength counts itself: 1 byte up to 63, else 2-4 bytes with the low
 * nibble in the lead byte. */
static size_t encode_pkglength(size_t body, uint8_t out[4])
{
    if (body + 1 <= 0x3f) {
        out[0] = (uint8_t)(body + 1);
        return 1;
    }
    for (size_t n = 2; n <= 4; n++) {
        size_t total = body + n;
        if (total < (1ull << (4 + 8 * (n - 1)))) {
            out[0] = (uint8_t)(((n - 1) << 6) | (total & 0xf));
            for (size_t i = 1; i < n; i++)
                out[i] = (uint8_t)(total >> (4 + 8 * (i - 1)));
            return n;
        }
    }
    return 0;
}

void aml_close(struct aml *a)
{
    if (a->error)
        return;
    if (!a->depth) {
        a->error = EINVAL;
        return;
    }
    size_t at = a->open[--a->depth];
    uint8_t pk[4];
    size_t n = encode_pkglength(a->len - at, pk);
    if (!n) {
        a->error = E2BIG;
        return;
    }
    if (reserve(a, n) < 0)
        return;
    memmove(a->data + at + n, a->data + at, a->len - at);
    memcpy(a->data + at, pk, n);
    a->len += n;
}

/* ---- resource templates ------------------------------------------------- */

void aml_res_init(struct aml_res *r)
{
    memset(r, 0, sizeof(*r));
}

static void res_bytes(struct aml_res *r, const uint8_t *p, size_t n)
{
    if (r->len + n > sizeof(r->buf)) {
        r->overflow = 1;
        return;
    }
    memcpy(r->buf + r->len, p, n);
    r->len += n;
}

static void put_le(uint8_t *p, uint64_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

void aml_res_io(struct aml_res *r, uint16_t base, uint8_t len)
{
    uint8_t d[8] = { 0x47, 0x01 };
    put_le(d + 2, base, 2);
    put_le(d + 4, base, 2);
    d[6] = 1;
    d[7] = len;
    res_bytes(r, d, sizeof(d));
}

/* Word address space descriptor: type 0 memory, 1 I/O, 2 bus numbers. */
static void word_space(struct aml_res *r, uint8_t type, uint8_t type_flags, uint16_t min,
                       uint16_t max)
{
    uint8_t d[16] = { 0x88, 13, 0, type, 0x0c /* min/max fixed, producer */, type_flags };
    put_le(d + 6, 0, 2);          /* granularity */
    put_le(d + 8, min, 2);
    put_le(d + 10, max, 2);
    put_le(d + 12, 0, 2);         /* translation */
    put_le(d + 14, (uint32_t)max - min + 1, 2);
    res_bytes(r, d, sizeof(d));
}

void aml_res_word_bus(struct aml_res *r, uint16_t min, uint16_t max)
{
    word_space(r, 2, 0, min, max);
}

void aml_res_word_io(struct aml_res *r, uint16_t min, uint16_t max)
{
    word_space(r, 1, 0x03 /* entire range */, min, max);
}

void aml_res_dword_memory(struct aml_res *r, uint32_t min, uint32_t max)
{
    uint8_t d[26] = { 0x87, 23, 0, 0, 0x0c, 0x01 /* read-write, non-cacheable */ };
    put_le(d + 6, 0, 4);
    put_le(d + 10, min, 4);
    put_le(d + 14, max, 4);
    put_le(d + 18, 0, 4);
    put_le(d + 22, (uint64_t)max - min + 1, 4);
    res_bytes(r, d, sizeof(d));
}

void aml_res_memory32_fixed(struct aml_res *r, uint32_t base, uint32_t len)
{
    uint8_t d[12] = { 0x86, 9, 0, 0x01 };
    put_le(d + 4, base, 4);
    put_le(d + 8, len, 4);
    res_bytes(r, d, sizeof(d));
}

void aml_res_interrupt(struct aml_res *r, uint32_t gsi, int level, int active_low)
{
    uint8_t d[9] = { 0x89, 6, 0 };
    d[3] = (uint8_t)(0x01 | (level ? 0 : 0x02) | (active_low ? 0x04 : 0));
    d[4] = 1;
    put_le(d + 5, gsi, 4);
    res_bytes(r, d, sizeof(d));
}

void aml_name_resources(struct aml *a, const char *name, struct aml_res *r)
{
    if (r->overflow) {
        a->error = E2BIG;
        return;
    }
    static const uint8_t end[2] = { 0x79, 0x00 };  /* end tag, checksum 0 = none */
    uint8_t body[sizeof(r->buf) + 2];
    memcpy(body, r->buf, r->len);
    memcpy(body + r->len, end, 2);
    aml_name(a, name);
    byte(a, AML_BUFFER_OP);
    open_pkg(a);
    aml_integer(a, r->len + 2);
    aml_bytes(a, body, r->len + 2);
    aml_close(a);
}
