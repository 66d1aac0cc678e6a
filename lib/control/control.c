/* The QMP server: Unix sockets in the machine's I/O thread, one session per
 * client (greeting, negotiation, commands, events), and vmm_control_execute
 * for embedders without a socket. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include "control/control-int.h"

struct qmp_server {
    struct control *ctl;
    char *path;
    int fd;
    GSource *src;
};

struct qmp_client {
    struct control *ctl;
    int fd;
    GSource *in_src;
    GSource *out_src;
    GString *in;           /* bytes not yet split into messages */
    GString *out;          /* under ctl->lock */
    bool negotiated;       /* read by the event listener: under ctl->lock */
    bool dead;
    /* message framing state over `in` */
    size_t scan;
    int depth;
    bool in_string, escape, bare;
    bool skip_line;        /* after an oversized message: discard up to '\n' */
};

static GMutex control_create_lock;

/* ---- output ------------------------------------------------------------ */

static void client_free(struct qmp_client *cl)
{
    if (cl->in_src) {
        g_source_destroy(cl->in_src);
        g_source_unref(cl->in_src);
    }
    if (cl->out_src) {
        g_source_destroy(cl->out_src);
        g_source_unref(cl->out_src);
    }
    if (cl->fd >= 0)
        close(cl->fd);
    g_string_free(cl->in, TRUE);
    g_string_free(cl->out, TRUE);
    g_free(cl);
}

/* Drop a client: its sources go, the others are not disturbed. */
static void client_drop(struct qmp_client *cl, const char *why)
{
    struct control *ctl = cl->ctl;
    vmm_log(VMM_LOG_DEBUG, "qmp", "client fd %d dropped: %s", cl->fd, why);
    g_mutex_lock(&ctl->lock);
    ctl->clients = g_list_remove(ctl->clients, cl);
    g_mutex_unlock(&ctl->lock);
    client_free(cl);
}

static gboolean client_writable(gint fd, GIOCondition cond, gpointer opaque);

/* Write what the socket takes now; watch for room if some is left.
 * Returns false when the client is gone (and was dropped). */
static bool client_flush(struct qmp_client *cl)
{
    struct control *ctl = cl->ctl;
    g_mutex_lock(&ctl->lock);
    while (cl->out->len) {
        ssize_t n = send(cl->fd, cl->out->str, cl->out->len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0) {
            g_mutex_unlock(&ctl->lock);
            client_drop(cl, "write failed");
            return false;
        }
        g_string_erase(cl->out, 0, n);
    }
    bool pending = cl->out->len > 0;
    g_mutex_unlock(&ctl->lock);
    if (pending && !cl->out_src) {
        cl->out_src = g_unix_fd_source_new(cl->fd, G_IO_OUT);
        g_source_set_callback(cl->out_src, (GSourceFunc)(void (*)(void))client_writable, cl, NULL);
        g_source_attach(cl->out_src, ctl->m->io_context);
    }
    return true;
}

static gboolean client_writable(gint fd, GIOCondition cond, gpointer opaque)
{
    (void)fd;
    (void)cond;
    struct qmp_client *cl = opaque;
    g_source_unref(cl->out_src); /* removed on return; dispatch holds a reference */
    cl->out_src = NULL;
    client_flush(cl);            /* may add a new watch, or drop the client */
    return G_SOURCE_REMOVE;
}

/* Append one JSON message (with QMP's CRLF) under the lock. */
static bool client_queue_locked(struct qmp_client *cl, const char *text)
{
    if (cl->out->len + strlen(text) + 2 > QMP_MAX_PENDING_OUTPUT)
        return false;
    g_string_append(cl->out, text);
    g_string_append(cl->out, "\r\n");
    return true;
}

static char *object_to_text(JsonObject *obj)
{
    JsonNode *node = json_node_init_object(json_node_alloc(), obj);
    char *text = json_to_string(node, FALSE);
    json_node_unref(node);
    return text;
}

static void client_send(struct qmp_client *cl, JsonObject *obj)
{
    char *text = object_to_text(obj);
    g_mutex_lock(&cl->ctl->lock);
    if (!client_queue_locked(cl, text))
        cl->dead = true;
    g_mutex_unlock(&cl->ctl->lock);
    g_free(text);
}

static void flush_all(struct control *ctl)
{
    GList *copy = g_list_copy(ctl->clients);
    for (GList *l = copy; l; l = l->next) {
        struct qmp_client *cl = l->data;
        if (cl->dead)
            client_drop(cl, "too much unread output");
        else
            client_flush(cl);
    }
    g_list_free(copy);
}

static gboolean flush_all_cb(gpointer opaque)
{
    flush_all(opaque);
    return G_SOURCE_REMOVE;
}

/* ---- events -------------------------------------------------------------- */

static JsonObject *event_data(const struct vmm_event *ev)
{
    JsonObject *data = json_object_new();
    switch (ev->type) {
    case VMM_EVENT_SHUTDOWN:
    case VMM_EVENT_RESET:
        json_object_set_boolean_member(data, "guest", ev->guest != 0);
        json_object_set_string_member(data, "reason", ev->reason ? ev->reason : "host-error");
        break;
    case VMM_EVENT_DEVICE_DELETED: {
        char *path = g_strdup_printf("/machine/peripheral/%s", ev->device ? ev->device : "");
        if (ev->device)
            json_object_set_string_member(data, "device", ev->device);
        json_object_set_string_member(data, "path", path);
        g_free(path);
        break;
    }
    case VMM_EVENT_BLOCK_IO_ERROR:
        json_object_set_string_member(data, "device", ev->device ? ev->device : "");
        if (ev->node_name)
            json_object_set_string_member(data, "node-name", ev->node_name);
        json_object_set_string_member(data, "operation", ev->operation ? ev->operation : "write");
        json_object_set_string_member(data, "action", ev->action ? ev->action : "report");
        json_object_set_boolean_member(data, "nospace", ev->nospace != 0);
        json_object_set_string_member(data, "reason", ev->message ? ev->message : "");
        break;
    case VMM_EVENT_VSERPORT_CHANGE:
        json_object_set_string_member(data, "id", ev->device ? ev->device : "");
        json_object_set_boolean_member(data, "open", ev->message && !strcmp(ev->message, "open"));
        break;
    default:
        json_object_unref(data);
        return NULL;
    }
    return data;
}

/* Machine listener: any thread, machine's event lock held. */
static void control_on_event(void *opaque, const struct vmm_event *ev)
{
    struct control *ctl = opaque;
    JsonObject *msg = json_object_new();
    JsonObject *ts = json_object_new();
    json_object_set_int_member(ts, "seconds", ev->seconds);
    json_object_set_int_member(ts, "microseconds", ev->microseconds);
    json_object_set_object_member(msg, "timestamp", ts);
    json_object_set_string_member(msg, "event", ev->name);
    JsonObject *data = event_data(ev);
    if (data)
        json_object_set_object_member(msg, "data", data);
    char *text = object_to_text(msg);
    json_object_unref(msg);

    g_mutex_lock(&ctl->lock);
    bool any = false;
    for (GList *l = ctl->clients; l; l = l->next) {
        struct qmp_client *cl = l->data;
        if (!cl->negotiated)
            continue;
        if (!client_queue_locked(cl, text))
            cl->dead = true;
        any = true;
    }
    g_mutex_unlock(&ctl->lock);
    g_free(text);
    /* In the I/O thread a command's flush sends it (before the reply), or,
     * for events a device raised there, an idle flush right after; from
     * other threads, wake the I/O thread. */
    if (any && !g_main_context_is_owner(ctl->m->io_context)) {
        g_main_context_invoke(ctl->m->io_context, flush_all_cb, ctl);
    } else if (any) {
        GSource *idle = g_idle_source_new();
        g_source_set_callback(idle, flush_all_cb, ctl, NULL);
        g_source_attach(idle, ctl->m->io_context);
        g_source_unref(idle);
    }
}

/* ---- input ---------------------------------------------------------------- */

static JsonObject *error_reply(const char *cls, const char *desc)
{
    JsonObject *err = json_object_new();
    json_object_set_string_member(err, "class", cls);
    json_object_set_string_member(err, "desc", desc);
    JsonObject *reply = json_object_new();
    json_object_set_object_member(reply, "error", err);
    return reply;
}

static void handle_message(struct qmp_client *cl, const char *text, size_t len)
{
    JsonParser *parser = json_parser_new();
    GError *err = NULL;
    JsonObject *reply;
    bool quit = false;
    if (!json_parser_load_from_data(parser, text, (gssize)len, &err)) {
        char *desc = g_strdup_printf("JSON parse error, %s", err->message);
        reply = error_reply("GenericError", desc);
        g_free(desc);
        g_error_free(err);
    } else {
        bool negotiated = cl->negotiated;
        reply = qmp_dispatch(cl->ctl, json_parser_get_root(parser), &negotiated, &quit);
        if (negotiated != cl->negotiated) {
            g_mutex_lock(&cl->ctl->lock);
            cl->negotiated = negotiated;
            g_mutex_unlock(&cl->ctl->lock);
        }
    }
    g_object_unref(parser);
    /* QEMU's order for quit: SHUTDOWN, then the reply, then the end. */
    if (quit && vmm_machine_stop(cl->ctl->m) < 0)
        vmm_log(VMM_LOG_WARNING, "qmp", "quit: %s", vmm_get_error());
    client_send(cl, reply);
    json_object_unref(reply);
}

static void report_garbage(struct qmp_client *cl, const char *start, size_t len)
{
    char *token = g_strndup(start, len > 64 ? 64 : len);
    char *desc = g_strdup_printf("JSON parse error, invalid keyword '%s'", token);
    JsonObject *reply = error_reply("GenericError", desc);
    client_send(cl, reply);
    json_object_unref(reply);
    g_free(desc);
    g_free(token);
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Answer an oversized message with an error, forget it and skip the rest of
 * its line: the client stays connected, like QEMU's parser recovering. */
static void resync(struct qmp_client *cl, const char *desc)
{
    JsonObject *reply = error_reply("GenericError", desc);
    client_send(cl, reply);
    json_object_unref(reply);
    cl->depth = 0;
    cl->in_string = cl->escape = cl->bare = false;
    cl->skip_line = true;
}

/* Split cl->in into top-level JSON values and handle each.  Returns false
 * when the client must be dropped (a message over the limits). */
static bool split_messages(struct qmp_client *cl)
{
    GString *in = cl->in;
    size_t start = 0;
    size_t i = cl->scan;
    bool started = cl->depth > 0 || cl->in_string || cl->bare;
    while (i < in->len) {
        char c = in->str[i];
        if (cl->skip_line) {
            cl->skip_line = c != '\n';
            start = ++i;
            continue;
        }
        if (!started) {
            if (is_space(c)) {
                start = ++i;
                continue;
            }
            start = i;
            started = true;
            cl->bare = !(c == '{' || c == '[' || c == '"');
            if (c == '"')
                cl->in_string = true;
            else if (!cl->bare)
                cl->depth = 1;
            i++;
            continue;
        }
        bool done = false;
        if (cl->bare) {
            if (is_space(c) || c == '{' || c == '[' || c == '"') {
                report_garbage(cl, in->str + start, i - start);
                cl->bare = false;
                started = false;
                start = i;
                continue; /* the delimiter may start the next value */
            }
        } else if (cl->in_string) {
            if (cl->escape)
                cl->escape = false;
            else if (c == '\\')
                cl->escape = true;
            else if (c == '"') {
                cl->in_string = false;
                done = cl->depth == 0;
            }
        } else if (c == '"') {
            cl->in_string = true;
        } else if (c == '{' || c == '[') {
            if (++cl->depth > QMP_MAX_NESTING) {
                resync(cl, "JSON parse error, too many nested data structures");
                start = ++i;
                started = false;
                continue;
            }
        } else if (c == '}' || c == ']') {
            done = --cl->depth == 0;
        }
        i++;
        if (done) {
            handle_message(cl, in->str + start, i - start);
            started = false;
            start = i;
        }
        if (started && i - start > QMP_MAX_MESSAGE) {
            resync(cl, "JSON parse error, message too large");
            start = i;
            started = false;
        }
    }
    g_string_erase(in, 0, start);
    cl->scan = i - start;
    return true;
}

static gboolean client_readable(gint fd, GIOCondition cond, gpointer opaque)
{
    (void)cond;
    struct qmp_client *cl = opaque;
    char buf[65536];
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
        return G_SOURCE_CONTINUE;
    if (n <= 0) {
        client_drop(cl, n == 0 ? "disconnected" : "read failed");
        return G_SOURCE_REMOVE; /* the source is already destroyed */
    }
    g_string_append_len(cl->in, buf, n);
    bool keep = split_messages(cl);
    struct control *ctl = cl->ctl;
    if (!keep) {
        client_flush(cl); /* best effort: the error reply */
        if (g_list_find(ctl->clients, cl))
            client_drop(cl, "message over the limits");
        flush_all(ctl);
        return G_SOURCE_REMOVE;
    }
    flush_all(ctl); /* this client's replies and any events they caused */
    return G_SOURCE_CONTINUE;
}

/* ---- greeting and accepting ------------------------------------------------ */

static JsonObject *greeting(void)
{
    JsonObject *version = qmp_version_object();
    JsonObject *qmp = json_object_new();
    json_object_set_object_member(qmp, "version", version);
    json_object_set_array_member(qmp, "capabilities", json_array_new());
    JsonObject *msg = json_object_new();
    json_object_set_object_member(msg, "QMP", qmp);
    return msg;
}

static gboolean server_accept(gint fd, GIOCondition cond, gpointer opaque)
{
    (void)cond;
    struct qmp_server *srv = opaque;
    int cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (cfd < 0)
        return G_SOURCE_CONTINUE;
    struct control *ctl = srv->ctl;
    struct qmp_client *cl = g_new0(struct qmp_client, 1);
    cl->ctl = ctl;
    cl->fd = cfd;
    cl->in = g_string_new(NULL);
    cl->out = g_string_new(NULL);
    cl->in_src = g_unix_fd_source_new(cfd, G_IO_IN | G_IO_HUP | G_IO_ERR);
    g_source_set_callback(cl->in_src, (GSourceFunc)(void (*)(void))client_readable, cl, NULL);
    g_source_attach(cl->in_src, ctl->m->io_context);
    g_mutex_lock(&ctl->lock);
    ctl->clients = g_list_append(ctl->clients, cl);
    g_mutex_unlock(&ctl->lock);
    JsonObject *hello = greeting();
    client_send(cl, hello);
    json_object_unref(hello);
    client_flush(cl);
    return G_SOURCE_CONTINUE;
}

static void server_free(struct qmp_server *srv)
{
    if (srv->src) {
        g_source_destroy(srv->src);
        g_source_unref(srv->src);
    }
    if (srv->fd >= 0) {
        close(srv->fd);
        unlink(srv->path);
    }
    g_free(srv->path);
    g_free(srv);
}

/* ---- the per-machine control state ------------------------------------------ */

static void control_free(void *opaque)
{
    struct control *ctl = opaque;
    machine_remove_listener(ctl->m, control_on_event, ctl);
    /* The I/O thread has stopped: a last non-blocking try to deliver what
     * is queued (quit's SHUTDOWN event), then close. */
    while (ctl->clients) {
        struct qmp_client *cl = ctl->clients->data;
        ctl->clients = g_list_delete_link(ctl->clients, ctl->clients);
        if (cl->out->len)
            (void)!send(cl->fd, cl->out->str, cl->out->len, MSG_NOSIGNAL | MSG_DONTWAIT);
        client_free(cl);
    }
    g_list_free_full(ctl->servers, (GDestroyNotify)server_free);
    g_mutex_clear(&ctl->lock);
    g_free(ctl);
}

static struct control *control_get(vmm_machine *m)
{
    g_mutex_lock(&control_create_lock);
    struct control *ctl = m->control;
    if (!ctl && machine_ensure_io_thread(m) == 0) {
        ctl = g_new0(struct control, 1);
        ctl->m = m;
        g_mutex_init(&ctl->lock);
        if (machine_add_listener(m, control_on_event, ctl) < 0) {
            g_mutex_clear(&ctl->lock);
            g_free(ctl);
            ctl = NULL;
        } else {
            m->control = ctl;
            m->control_free = control_free;
        }
    }
    g_mutex_unlock(&control_create_lock);
    return ctl;
}

/* "unix:PATH[,server][,nowait][,server=on][,wait=off]" or a plain path. */
static char *parse_address(const char *address)
{
    if (strncmp(address, "unix:", 5))
        return strchr(address, ':') || strchr(address, ',') ? NULL : g_strdup(address);
    char **parts = g_strsplit(address + 5, ",", -1);
    char *path = NULL;
    bool ok = parts[0] && *parts[0];
    for (int i = 1; ok && parts[i]; i++) {
        static const char *const known[] = { "server", "nowait", "server=on", "wait=off",
                                             "server=true", "wait=false" };
        bool found = false;
        for (size_t k = 0; k < G_N_ELEMENTS(known); k++)
            found |= !strcmp(parts[i], known[k]);
        ok = found;
    }
    if (ok)
        path = g_strdup(parts[0]);
    g_strfreev(parts);
    return path;
}

static int listen_unix(const char *path)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(addr.sun_path))
        return vmm_set_error(ENAMETOOLONG, "%s: socket path too long (at most %zu bytes)", path,
                             sizeof(addr.sun_path) - 1);
    strcpy(addr.sun_path, path);
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path); /* a stale socket from an earlier run */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return vmm_set_error_errno("socket");
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, 16) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        return vmm_set_error_errno("%s", path);
    }
    return fd;
}

LIBVMM_EXPORT int vmm_control_serve(vmm_machine *m, const char *address)
{
    vmm_clear_error();
    if (!m || !address)
        return vmm_set_error(EINVAL, "vmm_control_serve: machine and address are required");
    if (vmm_machine_get_state(m) == VMM_STATE_ENDED)
        return vmm_set_error(EBUSY, "vmm_control_serve: the machine has ended");
    char *path = parse_address(address);
    if (!path)
        return vmm_set_error(EINVAL, "vmm_control_serve: '%s': expected unix:PATH[,server][,nowait] "
                             "or a socket path", address);
    int fd = listen_unix(path);
    if (fd < 0) {
        g_free(path);
        return vmm_error_prefix("vmm_control_serve");
    }
    struct control *ctl = control_get(m);
    if (!ctl) {
        close(fd);
        unlink(path);
        g_free(path);
        return vmm_error_prefix("vmm_control_serve");
    }
    struct qmp_server *srv = g_new0(struct qmp_server, 1);
    srv->ctl = ctl;
    srv->path = path;
    srv->fd = fd;
    srv->src = g_unix_fd_source_new(fd, G_IO_IN);
    g_source_set_callback(srv->src, (GSourceFunc)(void (*)(void))server_accept, srv, NULL);
    g_mutex_lock(&ctl->lock);
    ctl->servers = g_list_append(ctl->servers, srv);
    g_mutex_unlock(&ctl->lock);
    g_source_attach(srv->src, m->io_context);
    machine_log(m, VMM_LOG_INFO, "qmp", "serving QMP on %s", path);
    return 0;
}

/* ---- commands without a socket ------------------------------------------------ */

struct execute_call {
    struct control *ctl;
    const char *json;
    char *reply;
    bool done;
    GMutex lock;
    GCond cond;
};

static char *execute_now(struct control *ctl, const char *json)
{
    JsonParser *parser = json_parser_new();
    GError *err = NULL;
    JsonObject *reply;
    bool quit = false;
    if (!json_parser_load_from_data(parser, json, -1, &err)) {
        char *desc = g_strdup_printf("JSON parse error, %s", err->message);
        reply = error_reply("GenericError", desc);
        g_free(desc);
        g_error_free(err);
    } else {
        bool negotiated = true;
        reply = qmp_dispatch(ctl, json_parser_get_root(parser), &negotiated, &quit);
    }
    g_object_unref(parser);
    if (quit)
        vmm_machine_stop(ctl->m);
    char *text = object_to_text(reply);
    json_object_unref(reply);
    flush_all(ctl);
    char *out = strdup(text);
    g_free(text);
    return out;
}

static gboolean execute_in_io_thread(gpointer opaque)
{
    struct execute_call *call = opaque;
    char *reply = execute_now(call->ctl, call->json);
    g_mutex_lock(&call->lock);
    call->reply = reply;
    call->done = true;
    g_cond_signal(&call->cond);
    g_mutex_unlock(&call->lock);
    return G_SOURCE_REMOVE;
}

LIBVMM_EXPORT char *vmm_control_execute(vmm_machine *m, const char *json)
{
    vmm_clear_error();
    if (!m || !json) {
        vmm_set_error(EINVAL, "vmm_control_execute: machine and command are required");
        return NULL;
    }
    struct control *ctl = control_get(m);
    if (!ctl) {
        vmm_error_prefix("vmm_control_execute");
        return NULL;
    }
    if (g_main_context_is_owner(m->io_context))
        return execute_now(ctl, json);
    struct execute_call call = { .ctl = ctl, .json = json };
    g_mutex_init(&call.lock);
    g_cond_init(&call.cond);
    g_main_context_invoke(m->io_context, execute_in_io_thread, &call);
    g_mutex_lock(&call.lock);
    while (!call.done)
        g_cond_wait(&call.cond, &call.lock);
    g_mutex_unlock(&call.lock);
    g_mutex_clear(&call.lock);
    g_cond_clear(&call.cond);
    if (!call.reply)
        vmm_set_error(ENOMEM, "vmm_control_execute: out of memory");
    return call.reply;
}

/* ---- for the fuzz harness (tests/control/fuzz-qmp.c) --------------------------- */

/* Feed `data` to a new session as if a client had sent it, on the caller's
 * thread and without a socket: framing, parsing, dispatch and the commands
 * run here; replies are counted and dropped. */
size_t control_fuzz_feed(vmm_machine *m, const char *data, size_t len)
{
    struct control ctl = { .m = m };
    g_mutex_init(&ctl.lock);
    struct qmp_client cl = { .ctl = &ctl, .fd = -1 };
    cl.in = g_string_new(NULL);
    cl.out = g_string_new(NULL);
    for (size_t off = 0; off < len; off += 4096) { /* arrives in pieces, as from a socket */
        size_t n = len - off < 4096 ? len - off : 4096;
        g_string_append_len(cl.in, data + off, (gssize)n);
        split_messages(&cl);
    }
    size_t replies = 0;
    for (const char *p = cl.out->str; (p = strstr(p, "\r\n")); p += 2)
        replies++;
    g_string_free(cl.in, TRUE);
    g_string_free(cl.out, TRUE);
    machine_drives_free(m); /* what blockdev-add opened (the fuzz machine has no devices) */
    g_mutex_clear(&ctl.lock);
    return replies;
}
