/* TAP backend: frames through /dev/net/tun, one fd per queue pair.
 * "tap,id=ID,ifname=NAME[,queues=N][,vnet_hdr=on|off]" opens (creating it
 * when absent) the interface with IFF_TAP|IFF_NO_PI, IFF_VNET_HDR unless
 * vnet_hdr=off, IFF_MULTI_QUEUE when queues > 1;
 * "tap,id=ID,fd=N" or "fds=A:B:..." uses taps the caller opened (the
 * machine keeps duplicates; the caller may close its own).  All fds are
 * non-blocking. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include "net/net.h"

struct net_tap {
    struct net_backend nb;         /* first */
    char *ifname, *fd, *fds;       /* properties */
    uint32_t queues;
    char *vnet_hdr_opt;            /* NULL: as the tap allows/has */
    int fds_open[NET_MAX_QUEUES];
    unsigned nfds;
    unsigned active;               /* queue pairs attached */
};

static struct net_tap *tap_of(struct net_backend *nb)
{
    return (struct net_tap *)nb;
}

static const struct vmm_prop tap_props[] = {
    { "ifname", VMM_PROP_STR, offsetof(struct net_tap, ifname), NULL,
      "host interface name (created when absent)", NULL, 0, 0 },
    { "fd", VMM_PROP_STR, offsetof(struct net_tap, fd), NULL,
      "an open tap file descriptor", NULL, 0, 0 },
    { "fds", VMM_PROP_STR, offsetof(struct net_tap, fds), NULL,
      "open tap file descriptors of a multiqueue tap, A:B:...", NULL, 0, 0 },
    { "queues", VMM_PROP_U32, offsetof(struct net_tap, queues), "1",
      "queue pairs (one tap fd each)", NULL, 1, NET_MAX_QUEUES },
    { "vnet_hdr", VMM_PROP_STR, offsetof(struct net_tap, vnet_hdr_opt), NULL,
      "on|off: frames carry a virtio-net header (offloads); default: on when possible", NULL,
      0, 0 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

/* ---- opening -------------------------------------------------------------- */

static int parse_fd(const char *key, const char *text, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (!*text || *end || errno || v < 0 || v > INT_MAX)
        return vmm_set_error(EINVAL, "tap: %s: '%s' is not a file descriptor number", key, text);
    if (fcntl((int)v, F_GETFD) < 0)
        return vmm_set_error(EBADF, "tap: %s: %ld is not an open file descriptor", key, v);
    *out = (int)v;
    return 0;
}

static int take_fd(struct net_tap *t, const char *key, int fd)
{
    struct ifreq ifr = { 0 };
    if (ioctl(fd, TUNGETIFF, &ifr) < 0)
        return vmm_set_error_errno("tap: %s: fd %d is not a tap (TUNGETIFF)", key, fd);
    if (!(ifr.ifr_flags & IFF_TAP) || !(ifr.ifr_flags & IFF_NO_PI))
        return vmm_set_error(EINVAL, "tap: %s: fd %d (%s) is not a TAP opened with IFF_NO_PI", key,
                             fd, ifr.ifr_name);
    int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0)
        return vmm_set_error_errno("tap: %s: dup fd %d", key, fd);
    t->fds_open[t->nfds++] = dup;
    bool has_hdr = ifr.ifr_flags & IFF_VNET_HDR;
    if (t->nfds == 1)
        t->nb.vnet_hdr = has_hdr;
    else if (t->nb.vnet_hdr != has_hdr)
        return vmm_set_error(EINVAL, "tap: %s: fds disagree about IFF_VNET_HDR", key);
    if (!t->ifname)
        t->ifname = strdup(ifr.ifr_name);
    return 0;
}

static int open_fds(struct net_tap *t)
{
    if (t->fd) {
        int fd;
        if (t->queues > 1)
            return vmm_set_error(EINVAL, "tap: fd= carries one queue; give fds=A:B:... for "
                                 "queues=%u", t->queues);
        return parse_fd("fd", t->fd, &fd) < 0 ? -1 : take_fd(t, "fd", fd);
    }
    char *list = strdup(t->fds), *save = NULL;
    if (!list)
        return vmm_set_error(ENOMEM, "out of memory");
    int ret = 0;
    for (char *tok = strtok_r(list, ":", &save); tok && !ret; tok = strtok_r(NULL, ":", &save)) {
        int fd;
        if (t->nfds == NET_MAX_QUEUES)
            ret = vmm_set_error(EINVAL, "tap: fds: more than %u descriptors", NET_MAX_QUEUES);
        else if (parse_fd("fds", tok, &fd) < 0 || take_fd(t, "fds", fd) < 0)
            ret = -1;
    }
    free(list);
    if (!ret && !t->nfds)
        ret = vmm_set_error(EINVAL, "tap: fds: no file descriptors given");
    if (!ret && t->queues > 1 && t->queues != t->nfds)
        ret = vmm_set_error(EINVAL, "tap: queues=%u but fds= gives %u descriptors", t->queues,
                            t->nfds);
    return ret;
}

static int open_ifname(struct net_tap *t, bool vnet_hdr)
{
    if (strlen(t->ifname) >= IFNAMSIZ)
        return vmm_set_error(EINVAL, "tap: ifname: '%s' is longer than %d characters", t->ifname,
                             IFNAMSIZ - 1);
    for (unsigned i = 0; i < t->queues; i++) {
        int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
        if (fd < 0)
            return vmm_set_error_errno("tap: open /dev/net/tun");
        t->fds_open[t->nfds++] = fd;
        struct ifreq ifr = { 0 };
        strcpy(ifr.ifr_name, t->ifname);
        ifr.ifr_flags = (short)(IFF_TAP | IFF_NO_PI | (vnet_hdr ? IFF_VNET_HDR : 0) |
                                (t->queues > 1 ? IFF_MULTI_QUEUE : 0));
        if (ioctl(fd, TUNSETIFF, &ifr) < 0)
            return vmm_set_error_errno("tap: ifname=%s: TUNSETIFF%s", t->ifname,
                                       t->queues > 1 ? " (multiqueue)" : "");
        if (i == 0 && strcmp(ifr.ifr_name, t->ifname)) {
            /* A template ("tap%d", or empty): the kernel chose the name;
             * the other queues must join that interface, not make more. */
            char *name = strdup(ifr.ifr_name);
            if (!name)
                return vmm_set_error(ENOMEM, "out of memory");
            free(t->ifname);
            t->ifname = name;
        }
    }
    t->nb.vnet_hdr = vnet_hdr;
    return 0;
}

static int set_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return vmm_set_error_errno("tap: O_NONBLOCK");
    return 0;
}

/* Which receive offloads the tap accepts: the NIC offers only those. */
static void probe_offloads(struct net_tap *t)
{
    int fd = t->fds_open[0];
    if (!t->nb.vnet_hdr)
        return;
    t->nb.offloads_ok = ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 |
                                                     TUN_F_TSO_ECN) == 0;
    t->nb.ufo_ok = t->nb.offloads_ok && ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_UFO) == 0;
    for (unsigned i = 0; i < t->nfds; i++)
        ioctl(t->fds_open[i], TUNSETOFFLOAD, 0);
}

static int tap_set_vnet_hdr_len(struct net_backend *nb, unsigned len)
{
    struct net_tap *t = tap_of(nb);
    int sz = (int)len;
    for (unsigned i = 0; i < t->nfds; i++)
        if (ioctl(t->fds_open[i], TUNSETVNETHDRSZ, &sz) < 0)
            return vmm_set_error_errno("tap %s: TUNSETVNETHDRSZ %u", t->ifname, len);
    return 0;
}

/* vnet_hdr=on|off, or NULL: on for ifname= when the kernel has it. */
static int wanted_vnet_hdr(struct net_tap *t, int *out)
{
    *out = -1;
    if (!t->vnet_hdr_opt)
        return 0;
    bool b;
    if (!vmm_parse_bool(t->vnet_hdr_opt, &b))
        return vmm_set_error(EINVAL, "tap: vnet_hdr: '%s' is not on or off", t->vnet_hdr_opt);
    *out = b;
    return 0;
}

static int check_source(struct net_tap *t)
{
    int given = !!t->ifname + !!t->fd + !!t->fds;
    if (given == 0)
        return vmm_set_error(EINVAL, "tap: give ifname=NAME, fd=N or fds=A:B:...");
    if (given > 1)
        return vmm_set_error(EINVAL, "tap: ifname=, fd= and fds= exclude each other");
    return 0;
}

static int tap_open(struct net_backend *nb)
{
    struct net_tap *t = tap_of(nb);
    int want_hdr;
    if (check_source(t) < 0 || wanted_vnet_hdr(t, &want_hdr) < 0)
        return -1;
    if (t->ifname) {
        if (open_ifname(t, want_hdr != 0) < 0)
            return -1;
    } else {
        if (open_fds(t) < 0)
            return -1;
        if (want_hdr == 1 && !nb->vnet_hdr)
            return vmm_set_error(EINVAL, "tap: vnet_hdr=on, but the tap was opened without "
                                 "IFF_VNET_HDR");
        if (want_hdr == 0 && nb->vnet_hdr)
            return vmm_set_error(EINVAL, "tap: vnet_hdr=off, but the tap was opened with "
                                 "IFF_VNET_HDR");
    }
    for (unsigned i = 0; i < t->nfds; i++)
        if (set_nonblocking(t->fds_open[i]) < 0)
            return -1;
    nb->queues = t->nfds;
    t->active = t->nfds;
    if (nb->vnet_hdr && tap_set_vnet_hdr_len(nb, sizeof(struct virtio_net_hdr)) < 0)
        return -1;
    probe_offloads(t);
    vmm_log(VMM_LOG_INFO, "net", "%s: tap %s, %u queue(s), vnet header %s, offloads %s", nb->id,
            t->ifname, nb->queues, nb->vnet_hdr ? "on" : "off", nb->offloads_ok ? "yes" : "no");
    return 0;
}

static void tap_close(struct net_backend *nb)
{
    struct net_tap *t = tap_of(nb);
    for (unsigned i = 0; i < t->nfds; i++)
        close(t->fds_open[i]);
    t->nfds = 0;
}

/* ---- frames ------------------------------------------------------------------------ */

static ssize_t tap_send(struct net_backend *nb, unsigned q, const struct iovec *iov, int iovcnt)
{
    struct net_tap *t = tap_of(nb);
    for (;;) {
        ssize_t n = writev(t->fds_open[q], iov, iovcnt);
        if (n >= 0)
            return n ? n : 1;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN)
            return 0;
        return vmm_set_error_errno("tap %s: write", t->ifname);
    }
}

static ssize_t tap_recv(struct net_backend *nb, unsigned q, void *buf, size_t size)
{
    struct net_tap *t = tap_of(nb);
    for (;;) {
        ssize_t n = read(t->fds_open[q], buf, size);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN)
            return 0;
        return vmm_set_error_errno("tap %s: read", t->ifname);
    }
}

static int tap_queue_fd(struct net_backend *nb, unsigned q)
{
    struct net_tap *t = tap_of(nb);
    return q < t->nfds ? t->fds_open[q] : -1;
}

static int tap_set_offloads(struct net_backend *nb, const struct net_offloads *o)
{
    struct net_tap *t = tap_of(nb);
    unsigned flags = (o->csum ? TUN_F_CSUM : 0) | (o->tso4 ? TUN_F_TSO4 : 0) |
                     (o->tso6 ? TUN_F_TSO6 : 0) | (o->ecn ? TUN_F_TSO_ECN : 0) |
                     (o->ufo ? TUN_F_UFO : 0);
    for (unsigned i = 0; i < t->nfds; i++)
        if (ioctl(t->fds_open[i], TUNSETOFFLOAD, flags) < 0)
            return vmm_set_error_errno("tap %s: TUNSETOFFLOAD 0x%x", t->ifname, flags);
    return 0;
}

/* Multiqueue: attach the first `active` queues, detach the rest, so the
 * kernel steers no frames to queues the guest does not use. */
static int tap_set_queues(struct net_backend *nb, unsigned active)
{
    struct net_tap *t = tap_of(nb);
    if (t->nfds < 2 || active == t->active)
        return 0;
    for (unsigned i = 0; i < t->nfds; i++) {
        struct ifreq ifr = { 0 };
        ifr.ifr_flags = (short)(i < active ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE);
        if (ioctl(t->fds_open[i], TUNSETQUEUE, &ifr) < 0 && errno != EINVAL)
            return vmm_set_error_errno("tap %s: TUNSETQUEUE queue %u", t->ifname, i);
    }
    t->active = active;
    return 0;
}

const struct net_backend_ops net_tap_ops = {
    .type = "tap",
    .instance_size = sizeof(struct net_tap),
    .props = tap_props,
    .open = tap_open,
    .close = tap_close,
    .send = tap_send,
    .recv = tap_recv,
    .queue_fd = tap_queue_fd,
    .set_vnet_hdr_len = tap_set_vnet_hdr_len,
    .set_offloads = tap_set_offloads,
    .set_queues = tap_set_queues,
};
