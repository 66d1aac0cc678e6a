/* Helpers for NICs and backends (net.h): iovec copies and the Internet
 * checksum.  Pure: the fuzzer links this file alone. */
#include <string.h>
#include "net/net.h"

size_t net_iov_size(const struct iovec *iov, int iovcnt)
{
    size_t n = 0;
    for (int i = 0; i < iovcnt; i++)
        n += iov[i].iov_len;
    return n;
}

size_t net_iov_copy_out(const struct iovec *iov, int iovcnt, size_t skip, void *dst, size_t len)
{
    size_t done = 0;
    for (int i = 0; i < iovcnt && done < len; i++) {
        if (skip >= iov[i].iov_len) {
            skip -= iov[i].iov_len;
            continue;
        }
        size_t n = iov[i].iov_len - skip;
        if (n > len - done)
            n = len - done;
        memcpy((uint8_t *)dst + done, (const uint8_t *)iov[i].iov_base + skip, n);
        done += n;
        skip = 0;
    }
    return done;
}

uint32_t net_checksum_add(uint32_t sum, const void *data, size_t len)
{
    const uint8_t *p = data;
    uint64_t s = sum;
    for (size_t i = 0; i + 1 < len; i += 2)
        s += (uint32_t)p[i] << 8 | p[i + 1];
    if (len & 1)
        s += (uint32_t)p[len - 1] << 8;
    while (s >> 32)
        s = (s & 0xffffffffu) + (s >> 32);
    return (uint32_t)s;
}

uint16_t net_checksum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

/* The driver left the pseudo-header sum at start + offset (virtio 1.2
 * §5.1.6.2): summing from start over that field completes the checksum. */
int net_checksum_complete(uint8_t *frame, size_t len, size_t start, size_t offset)
{
    if (start > len || offset > len - start || len - start - offset < 2)
        return -1;
    uint16_t sum = (uint16_t)~net_checksum_fold(net_checksum_add(0, frame + start, len - start));
    frame[start + offset] = (uint8_t)(sum >> 8);
    frame[start + offset + 1] = (uint8_t)sum;
    return 0;
}
