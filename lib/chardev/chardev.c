/* Character device backends in the machine's I/O thread: nonblocking
 * reads paced by the frontend (can_receive / accept_input), writes through
 * a small bounded buffer (write_ready when it drains), Unix sockets that
 * accept one client at a time or reconnect as clients. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include "chardev/chardev.h"
#include "machine/machine.h"

#define CHARDEV_OUT_BUF 4096
#define CHARDEV_READ_MAX 4096

struct chardev {
    struct chardev_config cfg;
    vmm_machine *m;
    struct chardev *next;
    pthread_mutex_t lock;          /* everything below */
    int in_fd, out_fd;             /* the stream (socket: the connection) */
    bool own_stream;               /* close in_fd/out_fd when the peer goes */
    bool own_out;                  /* out_fd is our nonblocking reopening of a terminal */
    int listen_fd;
    bool bound;                    /* listen_fd made the socket file (sock_dev/ino) */
    dev_t sock_dev;
    ino_t sock_ino;
    bool connected;
    bool started;                  /* sources run (a frontend is attached) */
    bool input_paused;             /* no input watch until accept_input */
    bool resume_queued;
    unsigned accept_seq;           /* bumped by every accept_input */
    bool want_write_ready;
    GSource *in_src, *out_src, *listen_src;
    GSource *retry_src;            /* client: reconnect; server: listen again after EMFILE */
    size_t out_len;
    uint8_t out_buf[CHARDEV_OUT_BUF];
    const struct chardev_frontend *fe;
    void *opaque;
    char *owner;
};

const char *chardev_id(const struct chardev *chr)
{
    return chr->cfg.id;
}

static void drop_source(GSource **src)
{
    if (*src) {
        g_source_destroy(*src);
        g_source_unref(*src);
        *src = NULL;
    }
}

static bool is_socket(const struct chardev *chr)
{
    return chr->cfg.backend == CHARDEV_SOCKET;
}

/* ---- frontend calls, never with chr->lock held -------------------------- */

static void frontend(struct chardev *chr, const struct chardev_frontend **fe, void **opaque)
{
    pthread_mutex_lock(&chr->lock);
    *fe = chr->fe;
    *opaque = chr->opaque;
    pthread_mutex_unlock(&chr->lock);
}

static void send_event(struct chardev *chr, enum chardev_event ev)
{
    const struct chardev_frontend *fe;
    void *opaque;
    frontend(chr, &fe, &opaque);
    if (fe && fe->event)
        fe->event(opaque, ev);
}

/* ---- sources (created in the I/O thread, or at attach before it matters) */

static gboolean input_ready(gint fd, GIOCondition cond, gpointer opaque);
static gboolean output_ready(gint fd, GIOCondition cond, gpointer opaque);
static gboolean client_arrived(gint fd, GIOCondition cond, gpointer opaque);
static gboolean retry_connect(gpointer opaque);

static GSource *watch(struct chardev *chr, int fd, GIOCondition cond, GUnixFDSourceFunc fn)
{
    GSource *src = g_unix_fd_source_new(fd, cond);
    g_source_set_callback(src, (GSourceFunc)(void (*)(void))fn, chr, NULL);
    g_source_attach(src, chr->m->io_context);
    return src;
}

static void watch_input(struct chardev *chr)
{
    if (chr->started && chr->connected && chr->in_fd >= 0 && !chr->in_src && !chr->input_paused)
        chr->in_src = watch(chr, chr->in_fd, G_IO_IN | G_IO_HUP | G_IO_ERR, input_ready);
}

static void watch_output(struct chardev *chr)
{
    if (chr->started && chr->out_len && !chr->out_src)
        chr->out_src = watch(chr, chr->out_fd, G_IO_OUT | G_IO_HUP | G_IO_ERR, output_ready);
}

static void watch_listen(struct chardev *chr)
{
    if (chr->started && chr->listen_fd >= 0 && !chr->connected && !chr->listen_src)
        chr->listen_src = watch(chr, chr->listen_fd, G_IO_IN, client_arrived);
}

static void arm_retry(struct chardev *chr)
{
    if (!chr->started || chr->connected || chr->retry_src || !chr->cfg.reconnect_s ||
        chr->cfg.server || !is_socket(chr))
        return;
    chr->retry_src = g_timeout_source_new_seconds(chr->cfg.reconnect_s);
    g_source_set_callback(chr->retry_src, retry_connect, chr, NULL);
    g_source_attach(chr->retry_src, chr->m->io_context);
}

static void start_sources(struct chardev *chr)
{
    watch_input(chr);
    watch_output(chr);
    watch_listen(chr);
    arm_retry(chr);
}

/* ---- connections ------------------------------------------------------- */

static void set_stream(struct chardev *chr, int fd)
{
    chr->in_fd = chr->out_fd = fd;
    chr->own_stream = true;
    chr->connected = true;
    chr->input_paused = false;
    chr->out_len = 0;
}

/* The socket peer went away (locked): back to listening or reconnecting. */
static void disconnect_locked(struct chardev *chr)
{
    drop_source(&chr->in_src);
    drop_source(&chr->out_src);
    if (chr->own_stream && chr->in_fd >= 0)
        close(chr->in_fd);
    chr->in_fd = chr->out_fd = -1;
    chr->connected = false;
    chr->out_len = 0;
    chr->want_write_ready = false;
    watch_listen(chr);
    arm_retry(chr);
}

static void peer_gone(struct chardev *chr)
{
    pthread_mutex_lock(&chr->lock);
    bool was_socket = is_socket(chr) && chr->connected;
    if (was_socket) {
        disconnect_locked(chr);
    } else {
        drop_source(&chr->in_src);   /* end of input: keep the output side */
        if (!chr->own_stream)
            chr->in_fd = -1;         /* not ours to close; never watched again */
    }
    pthread_mutex_unlock(&chr->lock);
    if (was_socket) {
        vmm_log(VMM_LOG_INFO, "chardev", "%s: client disconnected", chr->cfg.id);
        send_event(chr, CHARDEV_CLOSED);
    }
}

static gboolean listen_again(gpointer opaque)
{
    struct chardev *chr = opaque;
    pthread_mutex_lock(&chr->lock);
    g_source_unref(chr->retry_src);
    chr->retry_src = NULL;
    watch_listen(chr);
    pthread_mutex_unlock(&chr->lock);
    return G_SOURCE_REMOVE;
}

/* accept() failed for want of resources (EMFILE, ENFILE, ENOBUFS...): the
 * client stays in the backlog and the socket readable, so retrying at once
 * would spin the I/O thread.  Stop watching and look again in a second. */
static void accept_failed(struct chardev *chr, int err)
{
    vmm_log(VMM_LOG_WARNING, "chardev", "%s: cannot accept a client: %s (retrying in 1 s)",
            chr->cfg.id, strerror(err));
    pthread_mutex_lock(&chr->lock);
    g_source_unref(chr->listen_src);   /* the caller returns G_SOURCE_REMOVE */
    chr->listen_src = NULL;
    if (!chr->retry_src) {             /* a server's retry_src: only this timer */
        chr->retry_src = g_timeout_source_new_seconds(1);
        g_source_set_callback(chr->retry_src, listen_again, chr, NULL);
        g_source_attach(chr->retry_src, chr->m->io_context);
    }
    pthread_mutex_unlock(&chr->lock);
}

static gboolean client_arrived(gint fd, GIOCondition cond, gpointer opaque)
{
    (void)cond;
    struct chardev *chr = opaque;
    int conn = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (conn < 0 && (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED))
        return G_SOURCE_CONTINUE;
    if (conn < 0) {
        accept_failed(chr, errno);
        return G_SOURCE_REMOVE;
    }
    pthread_mutex_lock(&chr->lock);
    drop_source(&chr->listen_src);   /* one client at a time */
    set_stream(chr, conn);
    watch_input(chr);
    pthread_mutex_unlock(&chr->lock);
    vmm_log(VMM_LOG_INFO, "chardev", "%s: client connected", chr->cfg.id);
    send_event(chr, CHARDEV_OPENED);
    return G_SOURCE_REMOVE;
}

static int unix_address(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa->sun_path))
        return vmm_set_error(ENAMETOOLONG, "socket path '%s' is longer than %zu bytes", path,
                             sizeof(sa->sun_path) - 1);
    strcpy(sa->sun_path, path);
    return 0;
}

/* A connected client socket, or -1 (errno kept).  Nonblocking from the
 * start: a Unix socket whose server's backlog is full fails with EAGAIN
 * instead of stalling the I/O thread (or the caller adding the chardev). */
static int connect_unix(const char *path)
{
    struct sockaddr_un sa;
    if (unix_address(path, &sa) < 0)
        return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

static gboolean retry_connect(gpointer opaque)
{
    struct chardev *chr = opaque;
    int fd = connect_unix(chr->cfg.path);
    if (fd < 0)
        return G_SOURCE_CONTINUE;
    pthread_mutex_lock(&chr->lock);
    g_source_unref(chr->retry_src);
    chr->retry_src = NULL;
    set_stream(chr, fd);
    watch_input(chr);
    pthread_mutex_unlock(&chr->lock);
    vmm_log(VMM_LOG_INFO, "chardev", "%s: connected to %s", chr->cfg.id, chr->cfg.path);
    send_event(chr, CHARDEV_OPENED);
    return G_SOURCE_REMOVE;
}

static int listen_unix(struct chardev *chr)
{
    struct sockaddr_un sa;
    struct stat st;
    if (unix_address(chr->cfg.path, &sa) < 0)
        return -1;
    /* A stale socket from an earlier run is replaced; other files are not. */
    if (lstat(chr->cfg.path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(chr->cfg.path);
    chr->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (chr->listen_fd < 0)
        return vmm_set_error_errno("socket");
    if (bind(chr->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        return vmm_set_error_errno("bind %s", chr->cfg.path);
    /* Remember which file is ours: only that one is removed at the end. */
    if (lstat(chr->cfg.path, &st) == 0) {
        chr->bound = true;
        chr->sock_dev = st.st_dev;
        chr->sock_ino = st.st_ino;
    }
    if (listen(chr->listen_fd, 1) < 0)
        return vmm_set_error_errno("listen %s", chr->cfg.path);
    return 0;
}

/* ---- input ------------------------------------------------------------- */

static size_t frontend_room(struct chardev *chr)
{
    const struct chardev_frontend *fe;
    void *opaque;
    frontend(chr, &fe, &opaque);
    return fe && fe->can_receive ? fe->can_receive(opaque) : 0;
}

static void frontend_receive(struct chardev *chr, const uint8_t *data, size_t len)
{
    const struct chardev_frontend *fe;
    void *opaque;
    frontend(chr, &fe, &opaque);
    if (fe && fe->receive)
        fe->receive(opaque, data, len);
}

/* The frontend is full: stop watching until accept_input, unless it asked
 * for more in the meantime. */
static bool pause_input(struct chardev *chr, unsigned seq)
{
    pthread_mutex_lock(&chr->lock);
    bool pause = seq == chr->accept_seq;
    if (pause) {
        drop_source(&chr->in_src);
        chr->input_paused = true;
    }
    pthread_mutex_unlock(&chr->lock);
    return pause;
}

static gboolean input_ready(gint fd, GIOCondition cond, gpointer opaque)
{
    (void)cond;
    struct chardev *chr = opaque;
    pthread_mutex_lock(&chr->lock);
    unsigned seq = chr->accept_seq;
    pthread_mutex_unlock(&chr->lock);
    size_t room = frontend_room(chr);
    if (!room)
        return pause_input(chr, seq) ? G_SOURCE_REMOVE : G_SOURCE_CONTINUE;
    uint8_t buf[CHARDEV_READ_MAX];
    ssize_t n = read(fd, buf, room < sizeof(buf) ? room : sizeof(buf));
    if (n > 0) {
        frontend_receive(chr, buf, (size_t)n);
        return G_SOURCE_CONTINUE;
    }
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return G_SOURCE_CONTINUE;
    peer_gone(chr);
    return G_SOURCE_REMOVE;
}

static gboolean resume_input(gpointer opaque)
{
    struct chardev *chr = opaque;
    pthread_mutex_lock(&chr->lock);
    chr->resume_queued = false;
    chr->input_paused = false;
    watch_input(chr);
    pthread_mutex_unlock(&chr->lock);
    return G_SOURCE_REMOVE;
}

void chardev_accept_input(struct chardev *chr)
{
    pthread_mutex_lock(&chr->lock);
    chr->accept_seq++;
    bool queue = chr->started && chr->input_paused && !chr->resume_queued;
    chr->resume_queued |= queue;
    pthread_mutex_unlock(&chr->lock);
    if (queue)
        g_main_context_invoke(chr->m->io_context, resume_input, chr);
}

/* ---- output ------------------------------------------------------------ */

/* write() that turns a vanished pipe reader into EPIPE instead of SIGPIPE
 * (whose default ends the process): the signal is blocked in this thread
 * around the call and the one the write raised is taken back. */
static ssize_t write_no_sigpipe(int fd, const void *data, size_t len)
{
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    ssize_t n = write(fd, data, len);
    int saved = errno;
    if (n < 0 && saved == EPIPE && !sigismember(&old, SIGPIPE)) {
        const struct timespec now = { 0, 0 };
        sigtimedwait(&pipe_set, NULL, &now);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = saved;
    return n;
}

/* Write what the fd takes without blocking: sockets are nonblocking; other
 * fds (stdio, files, pipes the user passed) are polled first and written at
 * most PIPE_BUF at a time.  -1 when the peer is gone. */
static ssize_t write_some(struct chardev *chr, const void *data, size_t len)
{
    ssize_t n;
    if (is_socket(chr)) {
        n = send(chr->out_fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    } else {
        struct pollfd p = { .fd = chr->out_fd, .events = POLLOUT };
        if (poll(&p, 1, 0) <= 0 || !(p.revents & POLLOUT))
            return (p.revents & (POLLERR | POLLHUP)) ? -1 : 0;
        n = write_no_sigpipe(chr->out_fd, data, len < 4096 ? len : 4096);
    }
    if (n < 0)
        return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
    return n;
}

static void flush_out_locked(struct chardev *chr)
{
    while (chr->out_len) {
        ssize_t n = write_some(chr, chr->out_buf, chr->out_len);
        if (n < 0) {
            chr->out_len = 0;   /* the peer is gone: the input side notices */
            break;
        }
        if (n == 0)
            break;
        memmove(chr->out_buf, chr->out_buf + n, chr->out_len - (size_t)n);
        chr->out_len -= (size_t)n;
    }
}

static gboolean output_ready(gint fd, GIOCondition cond, gpointer opaque)
{
    (void)fd;
    (void)cond;
    struct chardev *chr = opaque;
    pthread_mutex_lock(&chr->lock);
    flush_out_locked(chr);
    bool drained = !chr->out_len;
    bool notify = drained && chr->want_write_ready;
    if (drained) {
        chr->want_write_ready = false;
        drop_source(&chr->out_src);
    }
    pthread_mutex_unlock(&chr->lock);
    if (notify) {
        const struct chardev_frontend *fe;
        void *fe_opaque;
        frontend(chr, &fe, &fe_opaque);
        if (fe && fe->write_ready)
            fe->write_ready(fe_opaque);
    }
    return drained ? G_SOURCE_REMOVE : G_SOURCE_CONTINUE;
}

size_t chardev_write(struct chardev *chr, const void *data, size_t len)
{
    pthread_mutex_lock(&chr->lock);
    if (!chr->connected || chr->out_fd < 0) {
        pthread_mutex_unlock(&chr->lock);
        return len;   /* nobody listens: dropped */
    }
    size_t done = 0;
    if (!chr->out_len) {
        ssize_t n = write_some(chr, data, len);
        done = n < 0 ? len : (size_t)n;
    }
    size_t take = len - done;
    if (take > sizeof(chr->out_buf) - chr->out_len)
        take = sizeof(chr->out_buf) - chr->out_len;
    memcpy(chr->out_buf + chr->out_len, (const uint8_t *)data + done, take);
    chr->out_len += take;
    done += take;
    if (done < len)
        chr->want_write_ready = true;
    watch_output(chr);
    pthread_mutex_unlock(&chr->lock);
    return done;
}

bool chardev_connected(struct chardev *chr)
{
    pthread_mutex_lock(&chr->lock);
    bool c = chr->connected;
    pthread_mutex_unlock(&chr->lock);
    return c;
}

/* ---- frontends --------------------------------------------------------- */

int chardev_attach(struct chardev *chr, const struct chardev_frontend *fe, void *opaque,
                   const char *owner)
{
    pthread_mutex_lock(&chr->lock);
    if (chr->fe) {
        int ret = vmm_set_error(EBUSY, "chardev '%s' is already used by %s", chr->cfg.id,
                                chr->owner);
        pthread_mutex_unlock(&chr->lock);
        return ret;
    }
    pthread_mutex_unlock(&chr->lock);
    if (machine_ensure_io_thread(chr->m) < 0)
        return -1;
    char *name = strdup(owner);
    if (!name)
        return vmm_set_error(ENOMEM, "out of memory");
    pthread_mutex_lock(&chr->lock);
    chr->fe = fe;
    chr->opaque = opaque;
    chr->owner = name;
    chr->started = true;
    start_sources(chr);
    pthread_mutex_unlock(&chr->lock);
    return 0;
}

void chardev_detach(struct chardev *chr)
{
    pthread_mutex_lock(&chr->lock);
    chr->fe = NULL;
    chr->opaque = NULL;
    free(chr->owner);
    chr->owner = NULL;
    pthread_mutex_unlock(&chr->lock);
}

/* ---- creation ---------------------------------------------------------- */

static int open_file(struct chardev *chr)
{
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (chr->cfg.append ? O_APPEND : O_TRUNC);
    chr->out_fd = open(chr->cfg.path, flags, 0644);
    if (chr->out_fd < 0)
        return vmm_set_error_errno("%s", chr->cfg.path);
    chr->own_stream = true;
    chr->connected = true;
    return 0;
}

static int open_client(struct chardev *chr)
{
    int fd = connect_unix(chr->cfg.path);
    if (fd >= 0) {
        set_stream(chr, fd);
        return 0;
    }
    if (chr->cfg.reconnect_s)
        return 0;   /* retried from the I/O thread once attached */
    return vmm_set_error_errno("connect %s", chr->cfg.path);
}

/* A terminal to write to gets a private nonblocking open file description
 * (its own fd stays as it is: O_NONBLOCK on it would change the embedder's
 * and other processes' view).  poll() says a tty is writable with one byte
 * of room, and a blocking write() of more waits for the reader, stalling
 * the I/O thread; pipes, sockets and files take what poll promises. */
static void reopen_terminal_nonblocking(struct chardev *chr)
{
    if (chr->out_fd < 0 || !isatty(chr->out_fd))
        return;
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", chr->out_fd);
    int fd = open(path, O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        vmm_log(VMM_LOG_WARNING, "chardev", "%s: cannot reopen the terminal nonblocking (%s): "
                "a reader that stops may stall the I/O thread", chr->cfg.id, strerror(errno));
        return;
    }
    chr->out_fd = fd;
    chr->own_out = true;
}

static int open_backend(struct chardev *chr)
{
    switch (chr->cfg.backend) {
    case CHARDEV_NULL:
        chr->connected = true;
        return 0;
    case CHARDEV_STDIO:
        chr->in_fd = STDIN_FILENO;
        chr->out_fd = STDOUT_FILENO;
        chr->connected = true;
        reopen_terminal_nonblocking(chr);
        return 0;
    case CHARDEV_FD:
        chr->in_fd = chr->cfg.in_fd;
        chr->out_fd = chr->cfg.out_fd;
        if ((chr->in_fd >= 0 && fcntl(chr->in_fd, F_GETFD) < 0) ||
            (chr->out_fd >= 0 && fcntl(chr->out_fd, F_GETFD) < 0))
            return vmm_set_error(EBADF, "fd: in=%d out=%d: not an open file descriptor",
                                 chr->in_fd, chr->out_fd);
        chr->connected = true;
        reopen_terminal_nonblocking(chr);
        return 0;
    case CHARDEV_FILE:
        return open_file(chr);
    case CHARDEV_SOCKET:
        return chr->cfg.server ? listen_unix(chr) : open_client(chr);
    }
    return vmm_set_error(EINVAL, "bad backend");
}

/* Remove the socket file we created, unless someone replaced it since (a
 * failed bind created nothing: the file there is someone else's). */
static void remove_socket_file(struct chardev *chr)
{
    struct stat st;
    if (chr->bound && lstat(chr->cfg.path, &st) == 0 && S_ISSOCK(st.st_mode) &&
        st.st_dev == chr->sock_dev && st.st_ino == chr->sock_ino)
        unlink(chr->cfg.path);
}

static void chardev_free(struct chardev *chr)
{
    drop_source(&chr->in_src);
    drop_source(&chr->out_src);
    drop_source(&chr->listen_src);
    drop_source(&chr->retry_src);
    if (chr->own_stream && chr->in_fd >= 0)
        close(chr->in_fd);
    else if ((chr->own_stream || chr->own_out) && chr->out_fd >= 0)
        close(chr->out_fd);
    if (chr->listen_fd >= 0) {
        remove_socket_file(chr);
        close(chr->listen_fd);
    }
    free(chr->owner);
    chardev_config_release(&chr->cfg);
    pthread_mutex_destroy(&chr->lock);
    free(chr);
}

struct chardev *chardev_find(vmm_machine *m, const char *id)
{
    for (struct chardev *c = m->chardevs; c && id; c = c->next)
        if (!strcmp(c->cfg.id, id))
            return c;
    return NULL;
}

/* One stdio chardev per machine: two would split what the user types. */
static int stdio_taken(vmm_machine *m, const struct chardev *chr)
{
    if (chr->cfg.backend != CHARDEV_STDIO)
        return 0;
    for (struct chardev *c = m->chardevs; c; c = c->next)
        if (c->cfg.backend == CHARDEV_STDIO)
            return vmm_set_error(EBUSY, "stdio is used by chardev '%s' already", c->cfg.id);
    return 0;
}

static int add_chardev(vmm_machine *m, const char *spec)
{
    struct chardev *chr = calloc(1, sizeof(*chr));
    if (!chr)
        return vmm_set_error(ENOMEM, "out of memory");
    chr->m = m;
    chr->in_fd = chr->out_fd = chr->listen_fd = -1;
    pthread_mutex_init(&chr->lock, NULL);
    if (chardev_parse(spec, &chr->cfg) < 0) {
        chardev_free(chr);
        return -1;
    }
    if (chardev_find(m, chr->cfg.id)) {
        vmm_set_error(EEXIST, "a chardev with id '%s' exists already", chr->cfg.id);
        chardev_free(chr);
        return -1;
    }
    if (stdio_taken(m, chr) < 0) {
        chardev_free(chr);
        return -1;
    }
    if (open_backend(chr) < 0) {
        vmm_error_prefix("chardev '%s'", chr->cfg.id);
        chardev_free(chr);
        return -1;
    }
    struct chardev **tail = &m->chardevs;
    while (*tail)
        tail = &(*tail)->next;
    *tail = chr;
    return 0;
}

LIBVMM_EXPORT int vmm_machine_add_chardev(vmm_machine *m, const char *spec)
{
    vmm_clear_error();
    if (!m)
        return vmm_set_error(EINVAL, "vmm_machine_add_chardev: no machine given");
    enum vmm_machine_state state = vmm_machine_get_state(m);
    if (state != VMM_STATE_CREATED)
        return vmm_set_error(EBUSY, "vmm_machine_add_chardev: the machine is %s; this needs it "
                             "created", vmm_machine_state_name(state));
    if (add_chardev(m, spec) < 0)
        return vmm_error_prefix("vmm_machine_add_chardev");
    return 0;
}

void chardev_free_all(vmm_machine *m)
{
    while (m->chardevs) {
        struct chardev *next = m->chardevs->next;
        chardev_free(m->chardevs);
        m->chardevs = next;
    }
}
