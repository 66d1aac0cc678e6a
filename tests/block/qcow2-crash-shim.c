/* LD_PRELOAD shim for the qcow2 crash tests: kills the process with SIGKILL
 * just before its Nth write to a file whose path contains
 * $CRASH_SHIM_MATCH (N = $CRASH_SHIM_AT), so the image is left exactly as
 * a crash at that point would leave it.  With $CRASH_SHIM_COUNT set to a
 * file name, it instead counts those writes and stores the total there at
 * exit. */
/* define both the plain and the 64 names ourselves */
#undef _FILE_OFFSET_BITS
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

static atomic_long writes;

static int watched(int fd)
{
    const char *match = getenv("CRASH_SHIM_MATCH");
    if (!match)
        return 0;
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof(path) - 1);
    if (n < 0)
        return 0;
    path[n] = 0;
    return strstr(path, match) != NULL;
}

static void before_write(int fd)
{
    if (!watched(fd))
        return;
    long n = atomic_fetch_add(&writes, 1) + 1;
    const char *at = getenv("CRASH_SHIM_AT");
    if (at && n >= atol(at))
        kill(getpid(), SIGKILL);
}

__attribute__((destructor)) static void report(void)
{
    const char *out = getenv("CRASH_SHIM_COUNT");
    if (!out)
        return;
    FILE *f = fopen(out, "w");
    if (f) {
        fprintf(f, "%ld\n", atomic_load(&writes));
        fclose(f);
    }
}

typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*pwritev_fn)(int, const struct iovec *, int, off_t);
typedef int (*ftruncate_fn)(int, off_t);

#define REAL(name, type) static type real_##name; \
    if (!real_##name) real_##name = (type)dlsym(RTLD_NEXT, #name)

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
    REAL(pwrite, pwrite_fn);
    before_write(fd);
    return real_pwrite(fd, buf, len, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off)
{
    REAL(pwrite64, pwrite_fn);
    before_write(fd);
    return real_pwrite64(fd, buf, len, off);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    REAL(pwritev, pwritev_fn);
    before_write(fd);
    return real_pwritev(fd, iov, cnt, off);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t off)
{
    REAL(pwritev64, pwritev_fn);
    before_write(fd);
    return real_pwritev64(fd, iov, cnt, off);
}

int ftruncate(int fd, off_t len)
{
    REAL(ftruncate, ftruncate_fn);
    before_write(fd);
    return real_ftruncate(fd, len);
}
