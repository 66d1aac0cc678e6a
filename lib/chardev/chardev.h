/* Character devices (lib/chardev): byte streams between a device model (the
 * "frontend": a virtio-console port) and the host (the "backend": stdio,
 * fds, a file, a Unix socket, nothing).  See README.md.
 *
 * Threads: backends run in the machine's I/O thread.  A frontend calls in
 * with its own device lock held, from any thread; the chardev calls the
 * frontend back from the I/O thread without holding its own lock (the
 * order is always device lock -> chardev lock). */
#ifndef LIBVMM_CHARDEV_H
#define LIBVMM_CHARDEV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "libvmm/machine.h"

struct chardev;

enum chardev_backend {
    CHARDEV_NULL,
    CHARDEV_STDIO,
    CHARDEV_FD,
    CHARDEV_FILE,
    CHARDEV_SOCKET,
};

/* A parsed "-chardev" spec (no resources). */
struct chardev_config {
    enum chardev_backend backend;
    char *id;
    char *path;           /* file, socket */
    int in_fd, out_fd;    /* fd: -1 = none */
    bool server;          /* socket: listen (on) or connect (off) */
    bool wait;            /* socket: refused when on */
    bool append;          /* file */
    uint32_t reconnect_s; /* socket client: retry interval, 0 = never */
};

/* Parse "BACKEND,id=ID,key=value,..." (QEMU's -chardev syntax). */
int chardev_parse(const char *spec, struct chardev_config *cfg);
void chardev_config_release(struct chardev_config *cfg);

enum chardev_event {
    CHARDEV_OPENED,       /* a host peer is there (socket client connected) */
    CHARDEV_CLOSED,       /* it went away */
};

struct chardev_frontend {
    /* Bytes the frontend can take right now (0: stop reading the backend
     * until chardev_accept_input). */
    size_t (*can_receive)(void *opaque);
    /* At most what can_receive said; data beyond what fits is the
     * frontend's to drop (only after a reset raced with the read). */
    void (*receive)(void *opaque, const uint8_t *data, size_t len);
    void (*event)(void *opaque, enum chardev_event event);
    /* The output buffer drained: chardev_write accepts bytes again. */
    void (*write_ready)(void *opaque);
};

/* The machine's chardev with `id`, or NULL. */
struct chardev *chardev_find(vmm_machine *m, const char *id);
/* Free every chardev of the machine (after its devices and I/O thread). */
void chardev_free_all(vmm_machine *m);

/* Bind a frontend (one per chardev; `owner` names it in errors).  Starts the
 * machine's I/O thread if needed. */
int chardev_attach(struct chardev *chr, const struct chardev_frontend *fe, void *opaque,
                   const char *owner);
void chardev_detach(struct chardev *chr);
/* Whether a host peer is connected (always true except for sockets). */
bool chardev_connected(struct chardev *chr);
/* Nonblocking write: the bytes accepted (fewer than `len` when the backend
 * is full: write_ready follows).  Without a peer the bytes are dropped and
 * counted as accepted (as QEMU's socket chardev does). */
size_t chardev_write(struct chardev *chr, const void *data, size_t len);
/* The frontend can receive again: resume reading the backend. */
void chardev_accept_input(struct chardev *chr);
const char *chardev_id(const struct chardev *chr);

#endif
