/* libFuzzer harness: the NBD client's handshake and reply parser
 * (lib/block/nbd-proto.c).  The input is what a server sends: the first
 * byte picks the mode (bit 0: handshake, else replies to three requests in
 * flight; bit 1: structured replies negotiated), the rest goes down a
 * socketpair that the parser reads.  Beyond sanitizer reports it traps when
 * a request completes with data past its buffer or a violation leaves no
 * message. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "block/nbd-proto.h"

static void feed(int fd, const uint8_t *data, size_t size)
{
    int big = 1 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    while (size) {
        ssize_t n = write(fd, data, size);
        if (n <= 0)
            break;
        data += n;
        size -= (size_t)n;
    }
    shutdown(fd, SHUT_WR);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 200000)
        return 0;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
        return 0;
    int big = 1 << 20;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    feed(sv[1], data + 1, size - 1);
    if (data[0] & 1) {
        struct nbd_export_info info;
        nbd_client_handshake(sv[0], "export", data[0] & 2, &info);
    } else {
        struct nbd_conn c = { .fd = sv[0] };
        pthread_mutex_init(&c.lock, NULL);
        pthread_mutex_init(&c.send_lock, NULL);
        c.info.structured = data[0] & 2;
        c.info.base_allocation = true;
        c.info.base_allocation_id = 1;
        static uint8_t buf[8192 + 64];
        struct iovec iov[2] = { { buf, 4096 }, { buf + 4096, 4096 } };
        struct nbd_req reqs[3] = {
            { .cookie = 1, .type = NBD_CMD_READ, .offset = 4096, .length = 8192, .iov = iov, .iovcnt = 2 },
            { .cookie = 2, .type = NBD_CMD_BLOCK_STATUS, .offset = 0, .length = 65536 },
            { .cookie = 3, .type = NBD_CMD_WRITE, .offset = 0, .length = 512 },
        };
        for (int i = 0; i < 3; i++) {
            pthread_cond_init(&reqs[i].cond, NULL);
            reqs[i].next = c.inflight;
            c.inflight = &reqs[i];
        }
        memset(buf + 8192, 0xa5, 64);
        while (c.inflight && nbd_conn_process_reply(&c) == 0)
            ;
        if (c.inflight && !c.dead_msg[0])
            __builtin_trap();
        for (int i = 0; i < 64; i++)
            if (buf[8192 + i] != 0xa5)
                __builtin_trap();
        for (int i = 0; i < 3; i++)
            if (reqs[i].type == NBD_CMD_BLOCK_STATUS && reqs[i].done && !reqs[i].err &&
                (!reqs[i].got_status || reqs[i].status_len > reqs[i].length))
                __builtin_trap();
        nbd_conn_fail_all(&c, NULL);
        for (int i = 0; i < 3; i++)
            pthread_cond_destroy(&reqs[i].cond);
        pthread_mutex_destroy(&c.lock);
        pthread_mutex_destroy(&c.send_lock);
    }
    close(sv[0]);
    close(sv[1]);
    return 0;
}
