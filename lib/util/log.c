/* The process-wide log callback.  Silent unless an embedder installs one. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include "util.h"

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static vmm_log_fn log_fn;
static void *log_data;
static vmm_free_fn log_free;
static int log_max_level = VMM_LOG_INFO;
static __thread vmm_log_fn thread_sink_fn;
static __thread void *thread_sink_data;

void vmm_log_set_thread_sink(vmm_log_fn fn, void *user_data)
{
    thread_sink_fn = fn;
    thread_sink_data = user_data;
}

LIBVMM_EXPORT int vmm_set_log_callback(vmm_log_fn fn, void *user_data,
                                       vmm_free_fn free_fn, int max_level)
{
    pthread_mutex_lock(&log_lock);
    vmm_free_fn old_free = log_free;
    void *old_data = log_data;
    log_fn = fn;
    log_data = user_data;
    log_free = free_fn;
    log_max_level = max_level;
    pthread_mutex_unlock(&log_lock);
    if (old_free)
        old_free(old_data);
    return 0;
}

bool vmm_log_enabled(int level)
{
    return thread_sink_fn || (log_fn && level <= log_max_level);
}

void vmm_log(int level, const char *domain, const char *fmt, ...)
{
    if (!vmm_log_enabled(level))
        return;
    char message[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    if (thread_sink_fn)
        thread_sink_fn(thread_sink_data, level, domain, message);
    pthread_mutex_lock(&log_lock);
    if (log_fn && level <= log_max_level)
        log_fn(log_data, level, domain, message);
    pthread_mutex_unlock(&log_lock);
}
