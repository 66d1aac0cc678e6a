/* libFuzzer harness: the NBD server's handshake and request parser
 * (lib/block/nbd-server.c).  The input is what a client sends, down a
 * socketpair; the session runs with its worker threads against a 1 MiB
 * in-memory export (this file supplies the vmm_block_* calls the server
 * makes), and a thread drains the replies.  The export is writable when
 * the first byte's bit 0 is set. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "block/nbd-server.h"
#include "util/util.h"

#define DISK (1u << 20)
static uint8_t disk[DISK];
static pthread_mutex_t disk_lock = PTHREAD_MUTEX_INITIALIZER;

static int in_range(uint64_t off, uint64_t len)
{
    if (off > DISK || len > DISK - off)
        return vmm_set_error(EINVAL, "out of range");
    return 0;
}

int64_t vmm_block_size(vmm_block *blk)
{
    (void)blk;
    return DISK;
}

int vmm_block_read(vmm_block *blk, uint64_t off, void *buf, size_t len)
{
    (void)blk;
    if (in_range(off, len) < 0)
        return -1;
    pthread_mutex_lock(&disk_lock);
    memcpy(buf, disk + off, len);
    pthread_mutex_unlock(&disk_lock);
    return 0;
}

int vmm_block_write(vmm_block *blk, uint64_t off, const void *buf, size_t len, unsigned flags)
{
    (void)blk;
    (void)flags;
    if (in_range(off, len) < 0)
        return -1;
    pthread_mutex_lock(&disk_lock);
    memcpy(disk + off, buf, len);
    pthread_mutex_unlock(&disk_lock);
    return 0;
}

int vmm_block_flush(vmm_block *blk)
{
    (void)blk;
    return 0;
}

int vmm_block_discard(vmm_block *blk, uint64_t off, uint64_t len)
{
    return vmm_block_write_zeroes(blk, off, len, 0);
}

int vmm_block_write_zeroes(vmm_block *blk, uint64_t off, uint64_t len, unsigned flags)
{
    (void)blk;
    if (flags & VMM_BLOCK_REQ_NO_FALLBACK)
        return vmm_set_error(ENOTSUP, "no fast zero");
    if (in_range(off, len) < 0)
        return -1;
    pthread_mutex_lock(&disk_lock);
    memset(disk + off, 0, len);
    pthread_mutex_unlock(&disk_lock);
    return 0;
}

/* 64 KiB stripes alternate data and zero. */
int vmm_block_block_status(vmm_block *blk, uint64_t off, uint64_t len, struct vmm_block_extent *out)
{
    (void)blk;
    if (off >= DISK)
        return vmm_set_error(EINVAL, "past the end");
    uint64_t end = (off | 0xffff) + 1;
    out->start = off;
    out->length = end - off < len ? end - off : len;
    out->flags = (off >> 16) & 1 ? VMM_BLOCK_STATUS_ZERO | VMM_BLOCK_STATUS_ALLOCATED
                                  : VMM_BLOCK_STATUS_DATA | VMM_BLOCK_STATUS_ALLOCATED;
    return 0;
}

static void *drain(void *arg)
{
    int fd = *(int *)arg;
    char junk[65536];
    while (read(fd, junk, sizeof(junk)) > 0)
        ;
    return NULL;
}

struct feeder {
    int fd;
    const uint8_t *data;
    size_t size;
};

static void *feed(void *arg)
{
    struct feeder *f = arg;
    while (f->size) {
        ssize_t n = write(f->fd, f->data, f->size);
        if (n <= 0)
            break;
        f->data += n;
        f->size -= (size_t)n;
    }
    shutdown(f->fd, SHUT_WR);
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
        return 0;
    vmm_nbd_server *srv = nbd_server_new_for_fd((vmm_block *)disk, data[0] & 1 ? VMM_NBD_EXPORT_WRITABLE : 0);
    struct srv_client *cl = srv ? nbd_server_client_new(srv, sv[0]) : NULL;
    if (cl) {
        pthread_t d, f;
        struct feeder fd = { sv[1], data + 1, size - 1 };
        pthread_create(&d, NULL, drain, &sv[1]);
        pthread_create(&f, NULL, feed, &fd);
        nbd_server_client_serve(cl);
        shutdown(sv[0], SHUT_RDWR);
        pthread_join(f, NULL);
        pthread_join(d, NULL);
        nbd_server_client_free(cl);
    }
    vmm_nbd_server_free(srv);
    close(sv[0]);
    close(sv[1]);
    return 0;
}
