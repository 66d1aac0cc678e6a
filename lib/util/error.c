/* Per-thread error state: the message and errno of the last failed call. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "util.h"

#define ERROR_MAX 1024

static _Thread_local char error_message[ERROR_MAX];
static _Thread_local int error_errno;

LIBVMM_EXPORT const char *vmm_get_error(void)
{
    return error_message;
}

LIBVMM_EXPORT int vmm_get_errno(void)
{
    return error_errno;
}

void vmm_clear_error(void)
{
    error_message[0] = '\0';
    error_errno = 0;
}

static void set_message(int errnum, const char *fmt, va_list ap)
{
    vsnprintf(error_message, sizeof(error_message), fmt, ap);
    error_errno = errnum ? errnum : EINVAL;
}

int vmm_set_error(int errnum, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_message(errnum, fmt, ap);
    va_end(ap);
    return -1;
}

int vmm_set_error_errno(const char *fmt, ...)
{
    int saved = errno;
    va_list ap;
    va_start(ap, fmt);
    set_message(saved, fmt, ap);
    va_end(ap);
    size_t len = strlen(error_message);
    snprintf(error_message + len, sizeof(error_message) - len, ": %s", strerror(saved));
    errno = saved;
    return -1;
}

int vmm_error_prefix(const char *fmt, ...)
{
    char prefix[ERROR_MAX], old[ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, error_message, sizeof(old));
    /* Truncation is acceptable: the context comes first. */
    size_t len = strnlen(prefix, ERROR_MAX - 3);
    memcpy(error_message, prefix, len);
    memcpy(error_message + len, ": ", 2);
    size_t rest = ERROR_MAX - len - 3;
    size_t old_len = strnlen(old, rest);
    memcpy(error_message + len + 2, old, old_len);
    error_message[len + 2 + old_len] = '\0';
    if (!error_errno)
        error_errno = EINVAL;
    return -1;
}
