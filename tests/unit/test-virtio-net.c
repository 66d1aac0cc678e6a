/* virtio-net's parsers of guest input (virtio-net-parse.c) and the
 * checksum helpers (lib/net/net-util.c): accepted commands and headers,
 * and every malformed one refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>
#include "devices/virtio/virtio-net.h"

#define F(bit) (1ull << VIRTIO_NET_F_##bit)

static uint8_t decode(const uint8_t *req, size_t len, uint64_t features, struct virtio_net_ctrl *c)
{
    return virtio_net_ctrl_decode(req, len, features, 4, c);
}

static void test_ctrl_mq(void **state)
{
    (void)state;
    struct virtio_net_ctrl c;
    uint8_t req[4] = { VIRTIO_NET_CTRL_MQ, 0, 3, 0 };
    assert_int_equal(decode(req, 4, F(CTRL_VQ) | F(MQ), &c), VIRTIO_NET_OK);
    assert_int_equal(c.pairs, 3);
    assert_int_equal(decode(req, 4, F(CTRL_VQ), &c), VIRTIO_NET_ERR);       /* MQ not negotiated */
    req[2] = 5;                                                             /* > max pairs */
    assert_int_equal(decode(req, 4, F(CTRL_VQ) | F(MQ), &c), VIRTIO_NET_ERR);
    req[2] = 0;
    assert_int_equal(decode(req, 4, F(CTRL_VQ) | F(MQ), &c), VIRTIO_NET_ERR);
    assert_int_equal(decode(req, 3, F(CTRL_VQ) | F(MQ), &c), VIRTIO_NET_ERR); /* short */
    assert_int_equal(decode(req, 1, F(CTRL_VQ) | F(MQ), &c), VIRTIO_NET_ERR);
}

static void test_ctrl_rx_and_mac(void **state)
{
    (void)state;
    struct virtio_net_ctrl c;
    uint8_t promisc[3] = { VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, 1 };
    assert_int_equal(decode(promisc, 3, F(CTRL_RX), &c), VIRTIO_NET_OK);
    assert_true(c.on);
    assert_int_equal(decode(promisc, 3, 0, &c), VIRTIO_NET_ERR);
    promisc[1] = 6;                                                          /* unknown command */
    assert_int_equal(decode(promisc, 3, F(CTRL_RX), &c), VIRTIO_NET_ERR);
    uint8_t addr[8] = { VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, 0x52, 0x54, 0, 1, 2, 3 };
    assert_int_equal(decode(addr, 8, F(CTRL_MAC_ADDR), &c), VIRTIO_NET_OK);
    assert_memory_equal(c.mac, addr + 2, 6);
    addr[2] = 0x01;                                                           /* multicast */
    assert_int_equal(decode(addr, 8, F(CTRL_MAC_ADDR), &c), VIRTIO_NET_ERR);
    /* MAC tables: 1 unicast + 2 multicast entries, exactly filling the data. */
    uint8_t table[2 + 4 + 6 + 4 + 12] = { VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, 1 };
    table[12] = 2;
    assert_int_equal(decode(table, sizeof(table), F(CTRL_RX), &c), VIRTIO_NET_OK);
    assert_int_equal(decode(table, sizeof(table) - 1, F(CTRL_RX), &c), VIRTIO_NET_ERR);
    table[12] = 0xff;                                                          /* entries overflow */
    assert_int_equal(decode(table, sizeof(table), F(CTRL_RX), &c), VIRTIO_NET_ERR);
}

static void test_ctrl_offloads(void **state)
{
    (void)state;
    struct virtio_net_ctrl c;
    uint8_t req[10] = { VIRTIO_NET_CTRL_GUEST_OFFLOADS, 0 };
    uint64_t want = F(GUEST_CSUM) | F(GUEST_TSO4);
    memcpy(req + 2, &want, 8);
    uint64_t negotiated = F(CTRL_GUEST_OFFLOADS) | F(GUEST_CSUM) | F(GUEST_TSO4);
    assert_int_equal(decode(req, 10, negotiated, &c), VIRTIO_NET_OK);
    assert_int_equal(c.offloads, want);
    assert_int_equal(decode(req, 10, negotiated & ~F(GUEST_TSO4), &c), VIRTIO_NET_ERR);
    assert_int_equal(decode(req, 10, negotiated & ~F(CTRL_GUEST_OFFLOADS), &c), VIRTIO_NET_ERR);
    uint8_t odd[3] = { 9, 0, 0 };
    assert_int_equal(decode(odd, 3, ~0ull, &c), VIRTIO_NET_ERR);              /* unknown class */
}

static int tx(uint8_t flags, uint8_t gso, uint16_t start, uint16_t off, size_t len, uint64_t f)
{
    struct virtio_net_hdr h = { flags, gso, 0, gso ? 1448 : 0, start, off, 0 };
    char why[128] = "";
    int r = virtio_net_tx_check(&h, len, f, why, sizeof(why));
    if (r < 0)
        assert_true(why[0] != 0);
    return r;
}

static void test_tx_header(void **state)
{
    (void)state;
    assert_int_equal(tx(0, 0, 0, 0, 60, 0), 0);
    assert_int_equal(tx(1, 0, 34, 6, 60, F(CSUM)), 0);
    assert_int_equal(tx(1, 0, 34, 6, 60, 0), -1);                  /* CSUM not negotiated */
    assert_int_equal(tx(1, 0, 34, 25, 60, F(CSUM)), -1);           /* field beyond the frame */
    assert_int_equal(tx(1, 0, 59, 0, 60, F(CSUM)), -1);
    assert_int_equal(tx(1, 0, 0xffff, 0xffff, 60, F(CSUM)), -1);
    assert_int_equal(tx(1, VIRTIO_NET_HDR_GSO_TCPV4, 34, 16, 9000, F(CSUM) | F(HOST_TSO4)), 0);
    assert_int_equal(tx(1, VIRTIO_NET_HDR_GSO_TCPV4, 34, 16, 9000, F(CSUM)), -1);
    assert_int_equal(tx(1, VIRTIO_NET_HDR_GSO_TCPV6, 54, 16, 9000, F(CSUM) | F(HOST_TSO4)), -1);
    assert_int_equal(tx(1, VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN, 34, 16, 9000,
                        F(CSUM) | F(HOST_TSO4)), -1);            /* ECN not negotiated */
    assert_int_equal(tx(0, VIRTIO_NET_HDR_GSO_TCPV4, 0, 0, 9000, F(CSUM) | F(HOST_TSO4)), -1);
    assert_int_equal(tx(1, 2, 34, 16, 9000, ~0ull), -1);           /* gso type 2 does not exist */
}

/* RFC 1071's example words, and a UDP checksum completed from the
 * pseudo-header sum as a driver leaves it. */
static void test_checksums(void **state)
{
    (void)state;
    const uint8_t words[] = { 0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7 };
    assert_int_equal(net_checksum_fold(net_checksum_add(0, words, sizeof(words))), 0xddf2);
    uint8_t udp[8 + 3] = { 0x9c, 0x40, 0x27, 0x0f, 0, 11, 0, 0, 'a', 'b', 'c' };
    const uint8_t src[4] = { 10, 0, 2, 15 }, dst[4] = { 10, 0, 2, 1 };
    uint32_t pseudo = net_checksum_add(net_checksum_add(0, src, 4), dst, 4) + 17 + 11;
    uint16_t p = net_checksum_fold(pseudo);
    udp[6] = (uint8_t)(p >> 8);
    udp[7] = (uint8_t)p;
    assert_int_equal(net_checksum_complete(udp, sizeof(udp), 0, 6), 0);
    /* Verify as a receiver does: pseudo-header + segment sums to 0xffff. */
    uint32_t all = net_checksum_add(net_checksum_add(net_checksum_add(0, src, 4), dst, 4), udp,
                                    sizeof(udp)) + 17 + 11;
    assert_int_equal(net_checksum_fold(all), 0xffff);
    assert_int_equal(net_checksum_complete(udp, sizeof(udp), 0, 10), -1);
    assert_int_equal(net_checksum_complete(udp, sizeof(udp), 12, 0), -1);
}

static void test_iov_copy(void **state)
{
    (void)state;
    char a[] = "hello ", b[] = "world";
    struct iovec iov[2] = { { a, 6 }, { b, 5 } };
    char out[16] = "";
    assert_int_equal(net_iov_size(iov, 2), 11);
    assert_int_equal(net_iov_copy_out(iov, 2, 4, out, 5), 5);
    assert_memory_equal(out, "o wor", 5);
    assert_int_equal(net_iov_copy_out(iov, 2, 9, out, 16), 2);
    assert_int_equal(net_iov_copy_out(iov, 2, 20, out, 16), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ctrl_mq),
        cmocka_unit_test(test_ctrl_rx_and_mac),
        cmocka_unit_test(test_ctrl_offloads),
        cmocka_unit_test(test_tx_header),
        cmocka_unit_test(test_checksums),
        cmocka_unit_test(test_iov_copy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
