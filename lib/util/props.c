/* Typed property tables: one description drives defaults, parsing, printing
 * and introspection for machines, devices and block drivers alike. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "util.h"

LIBVMM_EXPORT int vmm_parse_size(const char *text, uint64_t *out)
{
    if (!text || !*text)
        return vmm_set_error(EINVAL, "empty size");
    errno = 0;
    char *end;
    if (text[0] == '-' || text[0] == '+')
        return vmm_set_error(EINVAL, "'%s' is not a size: sign not allowed", text);
    double value = strtod(text, &end);
    if (end == text || errno || !isfinite(value))
        return vmm_set_error(EINVAL, "'%s' is not a size", text);
    static const char suffixes[] = "bkmgtpe";
    int shift = 0;
    if (*end) {
        const char *s = strchr(suffixes, (char)(*end | 0x20));
        if (!s || end[1] != '\0')
            return vmm_set_error(EINVAL, "'%s' is not a size: unknown suffix '%s' "
                                 "(use K, M, G, T, P or E)", text, end);
        shift = (int)(s - suffixes) * 10;
    }
    double scaled = ldexp(value, shift);
    if (scaled >= 18446744073709551616.0)
        return vmm_set_error(ERANGE, "'%s' is too large a size", text);
    if (scaled != floor(scaled))
        return vmm_set_error(EINVAL, "'%s' is not a whole number of bytes", text);
    *out = (uint64_t)scaled;
    return 0;
}

bool vmm_parse_bool(const char *text, bool *out)
{
    static const char *const yes[] = { "on", "true", "yes", "1" };
    static const char *const no[] = { "off", "false", "no", "0" };
    for (size_t i = 0; i < VMM_ARRAY_SIZE(yes); i++) {
        if (!strcasecmp(text, yes[i])) {
            *out = true;
            return true;
        }
        if (!strcasecmp(text, no[i])) {
            *out = false;
            return true;
        }
    }
    return false;
}

const struct vmm_prop *vmm_props_find(const struct vmm_prop *t, const char *name)
{
    for (; t && t->name; t++)
        if (!strcmp(t->name, name))
            return t;
    return NULL;
}

static void *field(void *obj, const struct vmm_prop *p)
{
    return (char *)obj + p->offset;
}

static int parse_number(const struct vmm_prop *p, const char *owner, const char *value,
                        uint64_t *out)
{
    if (p->type == VMM_PROP_SIZE) {
        if (vmm_parse_size(value, out) < 0)
            return vmm_error_prefix("%s: %s", owner, p->name);
    } else {
        char *end;
        errno = 0;
        if (value[0] == '-' || !*value)
            return vmm_set_error(EINVAL, "%s: %s: '%s' is not a non-negative number", owner, p->name, value);
        *out = strtoull(value, &end, 0);
        if (errno || *end)
            return vmm_set_error(EINVAL, "%s: %s: '%s' is not a number", owner, p->name, value);
    }
    uint64_t max = p->max ? p->max : (p->type == VMM_PROP_U32 ? UINT32_MAX : UINT64_MAX);
    if (*out < p->min || *out > max)
        return vmm_set_error(ERANGE, "%s: %s: %s is out of range (%" PRIu64 " to %" PRIu64 ")",
                             owner, p->name, value, p->min, max);
    return 0;
}

static int parse_enum(const struct vmm_prop *p, const char *owner, const char *value, int *out)
{
    for (int i = 0; p->choices[i]; i++) {
        if (!strcmp(p->choices[i], value)) {
            *out = i;
            return 0;
        }
    }
    char list[256] = "";
    for (int i = 0; p->choices[i]; i++) {
        size_t len = strlen(list);
        snprintf(list + len, sizeof(list) - len, "%s%s", i ? ", " : "", p->choices[i]);
    }
    return vmm_set_error(EINVAL, "%s: %s: '%s' is not one of: %s", owner, p->name, value, list);
}

static int set_value(const struct vmm_prop *p, void *obj, const char *owner, const char *value)
{
    uint64_t number;
    switch (p->type) {
    case VMM_PROP_STR: {
        char *copy = value ? strdup(value) : NULL;
        if (value && !copy)
            return vmm_set_error(ENOMEM, "out of memory");
        char **slot = field(obj, p);
        free(*slot);
        *slot = copy;
        return 0;
    }
    case VMM_PROP_BOOL:
        if (!vmm_parse_bool(value, field(obj, p)))
            return vmm_set_error(EINVAL, "%s: %s: '%s' is not on or off", owner, p->name, value);
        return 0;
    case VMM_PROP_U32:
        if (parse_number(p, owner, value, &number) < 0)
            return -1;
        *(uint32_t *)field(obj, p) = (uint32_t)number;
        return 0;
    case VMM_PROP_U64:
    case VMM_PROP_SIZE:
        if (parse_number(p, owner, value, &number) < 0)
            return -1;
        *(uint64_t *)field(obj, p) = number;
        return 0;
    case VMM_PROP_ENUM:
        return parse_enum(p, owner, value, field(obj, p));
    }
    return vmm_set_error(EINVAL, "%s: %s: bad property type", owner, p->name);
}

int vmm_props_init(const struct vmm_prop *t, void *obj, const char *owner)
{
    for (; t && t->name; t++) {
        if (t->def && set_value(t, obj, owner, t->def) < 0)
            return -1;
    }
    return 0;
}

int vmm_props_set(const struct vmm_prop *t, void *obj, const char *owner,
                  const char *key, const char *value)
{
    const struct vmm_prop *p = vmm_props_find(t, key);
    if (!p)
        return vmm_set_error(ENOENT, "%s: unknown property '%s'", owner, key);
    if (!value)
        return vmm_set_error(EINVAL, "%s: %s: no value given", owner, key);
    return set_value(p, obj, owner, value);
}

int vmm_props_apply(const struct vmm_prop *t, void *obj, const char *owner, vmm_opts *opts)
{
    for (; t && t->name; t++) {
        const char *value = vmm_opts_get(opts, t->name);
        if (value && set_value(t, obj, owner, value) < 0)
            return -1;
    }
    return 0;
}

char *vmm_props_format(const struct vmm_prop *t, const void *obj, const char *key)
{
    const struct vmm_prop *p = vmm_props_find(t, key);
    if (!p) {
        vmm_set_error(ENOENT, "unknown property '%s'", key);
        return NULL;
    }
    const void *f = (const char *)obj + p->offset;
    char buf[64];
    switch (p->type) {
    case VMM_PROP_STR:
        return strdup(*(char *const *)f ? *(char *const *)f : "");
    case VMM_PROP_BOOL:
        return strdup(*(const bool *)f ? "on" : "off");
    case VMM_PROP_U32:
        snprintf(buf, sizeof(buf), "%" PRIu32, *(const uint32_t *)f);
        return strdup(buf);
    case VMM_PROP_U64:
    case VMM_PROP_SIZE:
        snprintf(buf, sizeof(buf), "%" PRIu64, *(const uint64_t *)f);
        return strdup(buf);
    case VMM_PROP_ENUM:
        return strdup(p->choices[*(const int *)f]);
    }
    return NULL;
}

void vmm_props_release(const struct vmm_prop *t, void *obj)
{
    for (; t && t->name; t++) {
        if (t->type == VMM_PROP_STR) {
            char **slot = field(obj, t);
            free(*slot);
            *slot = NULL;
        }
    }
}

static const char *type_name(enum vmm_prop_type type)
{
    static const char *const names[] = { "str", "bool", "u32", "u64", "size", "enum" };
    return names[type];
}

int vmm_props_list(const struct vmm_prop *t, vmm_property_fn fn, void *user_data)
{
    for (; t && t->name; t++) {
        char choices[256] = "";
        for (int i = 0; t->type == VMM_PROP_ENUM && t->choices[i]; i++) {
            size_t len = strlen(choices);
            snprintf(choices + len, sizeof(choices) - len, "%s%s", i ? "|" : "", t->choices[i]);
        }
        struct vmm_property_info info = {
            .size = sizeof(info),
            .name = t->name,
            .type = type_name(t->type),
            .default_value = t->def,
            .help = t->help,
            .choices = t->type == VMM_PROP_ENUM ? choices : NULL,
        };
        if (fn(user_data, &info))
            break;
    }
    return 0;
}
