/* "key=value,key2=value2" option strings, the syntax shared by the command
 * line, the control protocol and the API (",," stands for a literal comma). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "util.h"

struct opt_entry {
    char *key;
    char *value;
    bool used;
};

struct vmm_opts {
    struct opt_entry *entries;
    size_t count;
};

/* Copy one element up to an unescaped ',' and advance *pos past it. */
static char *take_element(const char **pos)
{
    const char *p = *pos;
    size_t cap = strlen(p) + 1, n = 0;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    while (*p) {
        if (*p == ',') {
            if (p[1] == ',') {
                out[n++] = ',';
                p += 2;
                continue;
            }
            p++;
            break;
        }
        out[n++] = *p++;
    }
    out[n] = '\0';
    *pos = p;
    return out;
}

static int add_entry(vmm_opts *o, char *key, char *value)
{
    for (size_t i = 0; i < o->count; i++) {
        if (!strcmp(o->entries[i].key, key)) {
            vmm_set_error(EINVAL, "'%s' is given twice", key);
            free(key);
            free(value);
            return -1;
        }
    }
    struct opt_entry *grown = realloc(o->entries, (o->count + 1) * sizeof(*grown));
    if (!grown) {
        free(key);
        free(value);
        return vmm_set_error(ENOMEM, "out of memory");
    }
    o->entries = grown;
    o->entries[o->count++] = (struct opt_entry){ key, value, false };
    return 0;
}

static int parse_element(vmm_opts *o, char *element, bool first, const char *implied_key)
{
    char *eq = strchr(element, '=');
    if (!eq) {
        if (first && implied_key) {
            if (!*element) {
                free(element);
                return vmm_set_error(EINVAL, "empty %s", implied_key);
            }
            char *key = strdup(implied_key);
            return key ? add_entry(o, key, element) : vmm_set_error(ENOMEM, "out of memory");
        }
        vmm_set_error(EINVAL, "'%s' is not of the form key=value", element);
        free(element);
        return -1;
    }
    if (eq == element) {
        free(element);
        return vmm_set_error(EINVAL, "an option has an empty key");
    }
    *eq = '\0';
    char *value = strdup(eq + 1);
    if (!value) {
        free(element);
        return vmm_set_error(ENOMEM, "out of memory");
    }
    return add_entry(o, element, value);
}

vmm_opts *vmm_opts_parse(const char *text, const char *implied_key)
{
    vmm_opts *o = calloc(1, sizeof(*o));
    if (!o || !text) {
        free(o);
        vmm_set_error(o ? EINVAL : ENOMEM, o ? "no options given" : "out of memory");
        return NULL;
    }
    const char *pos = text;
    bool first = true;
    while (*pos || first) {
        char *element = take_element(&pos);
        if (!element) {
            vmm_set_error(ENOMEM, "out of memory");
            goto fail;
        }
        if (!*element && !first && !*pos) {
            free(element); /* tolerate one trailing comma */
            break;
        }
        if (parse_element(o, element, first, implied_key) < 0)
            goto fail;
        first = false;
    }
    return o;
fail:
    vmm_opts_free(o);
    return NULL;
}

void vmm_opts_free(vmm_opts *o)
{
    if (!o)
        return;
    for (size_t i = 0; i < o->count; i++) {
        free(o->entries[i].key);
        free(o->entries[i].value);
    }
    free(o->entries);
    free(o);
}

size_t vmm_opts_count(const vmm_opts *o)
{
    return o->count;
}

const char *vmm_opts_key(const vmm_opts *o, size_t i)
{
    return i < o->count ? o->entries[i].key : NULL;
}

const char *vmm_opts_value(const vmm_opts *o, size_t i)
{
    return i < o->count ? o->entries[i].value : NULL;
}

const char *vmm_opts_get(vmm_opts *o, const char *key)
{
    for (size_t i = 0; i < o->count; i++) {
        if (!strcmp(o->entries[i].key, key)) {
            o->entries[i].used = true;
            return o->entries[i].value;
        }
    }
    return NULL;
}

int vmm_opts_check_all_used(const vmm_opts *o, const char *owner)
{
    for (size_t i = 0; i < o->count; i++) {
        if (!o->entries[i].used)
            return vmm_set_error(EINVAL, "%s: unknown property '%s'", owner, o->entries[i].key);
    }
    return 0;
}

vmm_opts *vmm_opts_new(void)
{
    vmm_opts *o = calloc(1, sizeof(*o));
    if (!o)
        vmm_set_error(ENOMEM, "out of memory");
    return o;
}

int vmm_opts_add(vmm_opts *o, const char *key, const char *value)
{
    char *k = strdup(key), *v = strdup(value ? value : "");
    if (!k || !v) {
        free(k);
        free(v);
        return vmm_set_error(ENOMEM, "out of memory");
    }
    return add_entry(o, k, v);
}

bool vmm_opts_used(const vmm_opts *o, size_t i)
{
    return i < o->count && o->entries[i].used;
}
