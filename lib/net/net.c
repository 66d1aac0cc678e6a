/* Network backends: the per-machine registry, polling in the I/O thread
 * with flow control towards the NIC, and the helpers NICs share. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "net/net.h"

static const struct net_backend_ops *const backend_types[] = { &net_tap_ops };

static const struct net_backend_ops *find_type(const char *name)
{
    for (size_t i = 0; i < VMM_ARRAY_SIZE(backend_types); i++)
        if (!strcmp(backend_types[i]->type, name))
            return backend_types[i];
    return NULL;
}

/* ---- registry ----------------------------------------------------------- */

struct net_backend *net_backend_find(vmm_machine *m, const char *id)
{
    for (struct net_backend *nb = m->netdevs; nb && id; nb = nb->next)
        if (!strcmp(nb->id, id))
            return nb;
    return NULL;
}

static struct net_backend *backend_new(vmm_machine *m, const struct net_backend_ops *ops)
{
    struct net_backend *nb = calloc(1, ops->instance_size);
    if (!nb) {
        vmm_set_error(ENOMEM, "out of memory");
        return NULL;
    }
    nb->ops = ops;
    nb->m = m;
    nb->link_up = true;
    pthread_mutex_init(&nb->lock, NULL);
    for (unsigned i = 0; i < NET_MAX_QUEUES; i++)
        nb->q[i] = (struct net_queue){ .nb = nb, .index = i };
    return nb;
}

/* id and the type's own properties from opts; every key must be known. */
static int configure(struct net_backend *nb, vmm_opts *opts)
{
    const char *type = nb->ops->type;
    const char *id = vmm_opts_get(opts, "id");
    if (!id || !*id)
        return vmm_set_error(EINVAL, "%s: id=ID is required", type);
    if (net_backend_find(nb->m, id))
        return vmm_set_error(EEXIST, "%s: a netdev with id '%s' exists already", type, id);
    nb->id = strdup(id);
    if (!nb->id)
        return vmm_set_error(ENOMEM, "out of memory");
    if (vmm_props_init(nb->ops->props, nb, type) < 0 ||
        vmm_props_apply(nb->ops->props, nb, type, opts) < 0 ||
        vmm_opts_check_all_used(opts, type) < 0)
        return -1;
    return 0;
}

static struct net_backend *create_from_opts(vmm_machine *m, vmm_opts *opts)
{
    const char *type = vmm_opts_get(opts, "type");
    const struct net_backend_ops *ops = type ? find_type(type) : NULL;
    if (!ops) {
        vmm_set_error(ENOENT, "unknown netdev type '%s' (known: tap)", type ? type : "");
        return NULL;
    }
    struct net_backend *nb = backend_new(m, ops);
    if (!nb)
        return NULL;
    if (configure(nb, opts) < 0 || ops->open(nb) < 0) {
        vmm_error_prefix("netdev '%s'", nb->id ? nb->id : "");
        net_backend_free(nb);
        return NULL;
    }
    return nb;
}

struct net_backend *net_backend_create(vmm_machine *m, const char *spec)
{
    vmm_opts *opts = vmm_opts_parse(spec ? spec : "", "type");
    if (!opts)
        return NULL;
    struct net_backend *nb = create_from_opts(m, opts);
    vmm_opts_free(opts);
    if (!nb)
        return NULL;
    nb->buf = malloc(NET_MAX_FRAME);
    if (!nb->buf) {
        vmm_set_error(ENOMEM, "out of memory");
        net_backend_free(nb);
        return NULL;
    }
    nb->next = m->netdevs;
    m->netdevs = nb;
    return nb;
}

static void destroy_source(GSource **src)
{
    if (*src) {
        g_source_destroy(*src);
        g_source_unref(*src);
        *src = NULL;
    }
}

void net_backend_free(struct net_backend *nb)
{
    if (!nb)
        return;
    for (unsigned i = 0; i < NET_MAX_QUEUES; i++) {
        destroy_source(&nb->q[i].rx_source);
        destroy_source(&nb->q[i].tx_source);
        free(nb->q[i].held);
    }
    if (nb->ops->close)
        nb->ops->close(nb);
    if (nb->ops->props)
        vmm_props_release(nb->ops->props, nb);
    pthread_mutex_destroy(&nb->lock);
    free(nb->buf);
    free(nb->id);
    free(nb);
}

void net_release_all(vmm_machine *m)
{
    while (m->netdevs) {
        struct net_backend *next = m->netdevs->next;
        net_backend_free(m->netdevs);
        m->netdevs = next;
    }
}

/* ---- receive: poll, deliver, hold for a full NIC --------------------------- */

/* Give the peer one frame; keep a copy when it has no room. Called in the
 * I/O thread without nb->lock. Returns false when the queue must stop. */
static bool deliver(struct net_queue *q, const uint8_t *frame, size_t len)
{
    struct net_backend *nb = q->nb;
    struct iovec iov = { (void *)frame, len };
    pthread_mutex_lock(&nb->lock);
    unsigned stops = q->stops;
    pthread_mutex_unlock(&nb->lock);
    ssize_t r = nb->peer.receive(nb->peer.opaque, q->index, &iov, 1);
    if (r != 0)
        return true;                   /* taken, or dropped as bad */
    pthread_mutex_lock(&nb->lock);
    if (q->stops != stops) {
        /* The NIC reset meanwhile (rx_stop): the frame is from before it,
         * and polling is the next rx_ready's business. */
        pthread_mutex_unlock(&nb->lock);
        return false;
    }
    if (frame != q->held) {
        if (!q->held)
            q->held = malloc(NET_MAX_FRAME);
        if (q->held) {
            memcpy(q->held, frame, len);
            q->held_len = len;
        } else {
            vmm_log(VMM_LOG_WARNING, "net", "%s: out of memory: a received frame is lost", nb->id);
        }
    }
    q->rx_wanted = false;
    destroy_source(&q->rx_source);
    pthread_mutex_unlock(&nb->lock);
    return false;
}

#define RX_BATCH 64   /* frames per wakeup: TX and other devices get a turn */

/* The queue is readable: deliver up to RX_BATCH frames. */
static gboolean rx_frames(struct net_queue *q)
{
    struct net_backend *nb = q->nb;
    for (unsigned i = 0; i < RX_BATCH && q->rx_wanted; i++) {
        ssize_t n = nb->ops->recv(nb, q->index, nb->buf, NET_MAX_FRAME);
        if (n < 0) {
            /* E.g. EBADFD: the interface was deleted or the queue detached.
             * The fd stays readable (POLLERR): stop until the NIC asks
             * again, or the I/O thread would spin on it. */
            vmm_log(VMM_LOG_WARNING, "net", "%s: queue %u: %s; receiving stopped", nb->id,
                    q->index, vmm_get_error());
            pthread_mutex_lock(&nb->lock);
            q->rx_wanted = false;
            destroy_source(&q->rx_source);
            pthread_mutex_unlock(&nb->lock);
            return G_SOURCE_REMOVE;
        }
        if (n == 0)
            break;
        if (!deliver(q, nb->buf, (size_t)n))
            return G_SOURCE_REMOVE;     /* deliver() dropped our source */
    }
    return G_SOURCE_CONTINUE;
}

static gboolean tx_room(struct net_queue *q);

/* The queue's fd is readable (or in error: the read says which). */
static gboolean rx_fd_ready(gint fd, GIOCondition cond, gpointer opaque)
{
    (void)fd;
    (void)cond;
    if (g_source_is_destroyed(g_main_current_source()))
        return G_SOURCE_REMOVE;
    return rx_frames(opaque);
}

/* Writable again, or in error: either way the NIC retries (an error then
 * drops the frame instead of waiting for room). */
static gboolean tx_fd_ready(gint fd, GIOCondition cond, gpointer opaque)
{
    (void)fd;
    (void)cond;
    if (g_source_is_destroyed(g_main_current_source()))
        return G_SOURCE_REMOVE;
    return tx_room(opaque);
}

/* Watch the queue's fd for `cond` in the I/O thread (nb->lock held). */
static void watch(struct net_queue *q, GSource **src, GIOCondition cond)
{
    struct net_backend *nb = q->nb;
    int fd = nb->ops->queue_fd(nb, q->index);
    if (*src || fd < 0 || !nb->m->io_context)
        return;
    *src = g_unix_fd_source_new(fd, cond);
    GUnixFDSourceFunc fn = cond & G_IO_OUT ? tx_fd_ready : rx_fd_ready;
    g_source_set_callback(*src, (GSourceFunc)(void (*)(void))fn, q, NULL);
    g_source_attach(*src, nb->m->io_context);
}

/* In the I/O thread: hand over a held frame, then poll the queue again. */
static gboolean rx_resume(gpointer opaque)
{
    struct net_queue *q = opaque;
    struct net_backend *nb = q->nb;
    pthread_mutex_lock(&nb->lock);
    bool go = q->rx_wanted && nb->peer_attached;
    size_t held_len = go ? q->held_len : 0;
    pthread_mutex_unlock(&nb->lock);
    /* held_len stays set while the NIC looks at the frame: a reset
     * meanwhile (rx_stop) clears it, and no stale frame comes back. */
    if (go && held_len && !deliver(q, q->held, held_len))
        return G_SOURCE_REMOVE;        /* still no room (or reset): deliver() decided */
    pthread_mutex_lock(&nb->lock);
    if (go && held_len)
        q->held_len = 0;               /* taken */
    if (q->rx_wanted && nb->peer_attached)
        watch(q, &q->rx_source, G_IO_IN);
    pthread_mutex_unlock(&nb->lock);
    return G_SOURCE_REMOVE;
}

void net_backend_rx_ready(struct net_backend *nb, unsigned q)
{
    if (q >= nb->queues || !nb->m->io_context)
        return;
    pthread_mutex_lock(&nb->lock);
    bool was = nb->q[q].rx_wanted;
    nb->q[q].rx_wanted = true;
    pthread_mutex_unlock(&nb->lock);
    if (was)
        return;
    /* Never deliver from here: the caller may hold the NIC's lock. */
    GSource *idle = g_idle_source_new();
    g_source_set_callback(idle, rx_resume, &nb->q[q], NULL);
    g_source_attach(idle, nb->m->io_context);
    g_source_unref(idle);
}

void net_backend_rx_stop(struct net_backend *nb, unsigned q)
{
    if (q >= nb->queues)
        return;
    pthread_mutex_lock(&nb->lock);
    nb->q[q].rx_wanted = false;
    nb->q[q].held_len = 0;
    nb->q[q].stops++;
    destroy_source(&nb->q[q].rx_source);
    pthread_mutex_unlock(&nb->lock);
}

/* ---- transmit ---------------------------------------------------------------- */

/* The host side has room again: the peer retries. */
static gboolean tx_room(struct net_queue *q)
{
    struct net_backend *nb = q->nb;
    pthread_mutex_lock(&nb->lock);
    destroy_source(&q->tx_source);
    bool attached = nb->peer_attached;
    pthread_mutex_unlock(&nb->lock);
    if (attached && nb->peer.tx_ready)
        nb->peer.tx_ready(nb->peer.opaque, q->index);
    return G_SOURCE_REMOVE;
}

static void wait_writable(struct net_queue *q)
{
    pthread_mutex_lock(&q->nb->lock);
    watch(q, &q->tx_source, G_IO_OUT);
    pthread_mutex_unlock(&q->nb->lock);
}

ssize_t net_backend_send(struct net_backend *nb, unsigned q, const struct iovec *iov, int iovcnt)
{
    if (q >= nb->queues)
        return vmm_set_error(EINVAL, "%s: no queue pair %u", nb->id, q);
    ssize_t r = nb->ops->send(nb, q, iov, iovcnt);
    if (r == 0)
        wait_writable(&nb->q[q]);
    return r;
}

/* ---- NIC attachment, settings, link --------------------------------------------- */

int net_backend_attach(struct net_backend *nb, const struct net_peer *peer)
{
    if (nb->peer_attached)
        return vmm_set_error(EBUSY, "netdev '%s' is used by another NIC already", nb->id);
    pthread_mutex_lock(&nb->lock);
    nb->peer = *peer;
    nb->peer_attached = true;
    pthread_mutex_unlock(&nb->lock);
    return 0;
}

void net_backend_detach(struct net_backend *nb)
{
    for (unsigned i = 0; i < nb->queues; i++)
        net_backend_rx_stop(nb, i);
    pthread_mutex_lock(&nb->lock);
    for (unsigned i = 0; i < nb->queues; i++)
        destroy_source(&nb->q[i].tx_source);
    nb->peer_attached = false;
    pthread_mutex_unlock(&nb->lock);
}

int net_backend_set_vnet_hdr_len(struct net_backend *nb, unsigned len)
{
    if (!nb->vnet_hdr || !nb->ops->set_vnet_hdr_len)
        return 0;
    return nb->ops->set_vnet_hdr_len(nb, len);
}

int net_backend_set_offloads(struct net_backend *nb, const struct net_offloads *o)
{
    if (!nb->offloads_ok || !nb->ops->set_offloads)
        return 0;
    return nb->ops->set_offloads(nb, o);
}

int net_backend_set_queues(struct net_backend *nb, unsigned active)
{
    if (active < 1 || active > nb->queues)
        return vmm_set_error(EINVAL, "%s: %u queue pairs (it has %u)", nb->id, active, nb->queues);
    return nb->ops->set_queues ? nb->ops->set_queues(nb, active) : 0;
}

char *net_backend_describe(struct net_backend *nb)
{
    GString *s = g_string_new(NULL);
    g_string_append_printf(s, "%s: type=%s", nb->id, nb->ops->type);
    for (const struct vmm_prop *p = nb->ops->props; p && p->name; p++) {
        if (!strcmp(p->name, "vnet_hdr"))
            continue;                  /* what the backend has, below */
        char *v = vmm_props_format(nb->ops->props, nb, p->name);
        if (v && *v)
            g_string_append_printf(s, ",%s=%s", p->name, v);
        free(v);
    }
    g_string_append_printf(s, ",vnet_hdr=%s,link=%s", nb->vnet_hdr ? "on" : "off",
                           nb->link_up ? "up" : "down");
    if (nb->peer_attached)
        g_string_append_printf(s, ", peer %s", nb->peer.name ? nb->peer.name : "?");
    return g_string_free(s, FALSE);
}

void net_backend_set_link(struct net_backend *nb, bool up)
{
    nb->link_up = up;
    if (nb->peer_attached && nb->peer.link_changed)
        nb->peer.link_changed(nb->peer.opaque, up);
}
