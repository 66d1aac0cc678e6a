/* libvmm — NBD server: export block images (vmm_block handles, a running
 * machine's disk too) over the NBD protocol to qemu, nbdkit's clients,
 * libnbd (nbdcopy, nbdinfo, nbdsh) and the Linux kernel's nbd client.
 *
 * Fixed newstyle handshake (LIST, INFO, GO, ABORT, EXPORT_NAME), structured
 * replies with holes, the base:allocation metadata context, block size
 * information; all transmission commands.  The server runs on its own
 * threads: one accepts connections, each client has a reader and a few
 * workers that call the synchronous vmm_block functions, so an export must
 * stay open while the server runs.  The NBD client is the block driver
 * `nbd` (vmm_block_open("nbd://host/export", ...)).
 *
 * All calls follow common.h: 0 / -1 or pointer / NULL, the reason in
 * vmm_get_error().
 */
#ifndef LIBVMM_NBD_H
#define LIBVMM_NBD_H

#include "common.h"
#include "block.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vmm_nbd_server vmm_nbd_server;

/* vmm_nbd_server_new flags. */
#define VMM_NBD_SERVER_ONESHOT (1u << 0)  /* stop once the last client has gone (qemu-nbd without -t) */

/* Create a server with no exports and no listening sockets yet. */
LIBVMM_EXPORT vmm_nbd_server *vmm_nbd_server_new(unsigned flags);

/* How many clients may be connected at once (qemu-nbd -e; default 1, 0:
 * no limit).  Clients over the limit are refused.  With more than one,
 * exports advertise multi-conn: every connection goes to the same handle,
 * so a flush on one covers writes completed on all. */
LIBVMM_EXPORT int vmm_nbd_server_set_max_clients(vmm_nbd_server *srv, unsigned max_clients);

/* vmm_nbd_server_add_export flags. */
#define VMM_NBD_EXPORT_WRITABLE     (1u << 0)  /* read-write (the handle must be RDWR) */
#define VMM_NBD_EXPORT_DISCARD      (1u << 1)  /* trim and write-zeroes may deallocate (--discard=unmap) */
#define VMM_NBD_EXPORT_DETECT_ZEROES (1u << 2) /* all-zero writes become write-zeroes */

/* Export `blk` as `name` ("" is the default export), with an optional
 * description (NULL: none).  The handle stays the caller's: close it only
 * after vmm_nbd_server_free. */
LIBVMM_EXPORT int vmm_nbd_server_add_export(vmm_nbd_server *srv, vmm_block *blk, const char *name,
                                            const char *description, unsigned flags);

/* Listen on a Unix socket (created; an existing socket file is replaced). */
LIBVMM_EXPORT int vmm_nbd_server_listen_unix(vmm_nbd_server *srv, const char *path);

/* Listen on TCP `host` (NULL: 127.0.0.1) and `port` (NULL: 10809). */
LIBVMM_EXPORT int vmm_nbd_server_listen_tcp(vmm_nbd_server *srv, const char *host, const char *port);

/* Start accepting clients on a background thread. */
LIBVMM_EXPORT int vmm_nbd_server_start(vmm_nbd_server *srv);

/* Wait until the server stops (vmm_nbd_server_stop, or the last client of
 * a oneshot server left). */
LIBVMM_EXPORT int vmm_nbd_server_wait(vmm_nbd_server *srv);

/* Ask the server to stop: no more clients are accepted and connected ones
 * are disconnected.  Thread-safe; returns at once. */
LIBVMM_EXPORT int vmm_nbd_server_stop(vmm_nbd_server *srv);

/* Stop the server, wait for its threads, remove its Unix sockets and free
 * it.  NULL is a no-op. */
LIBVMM_EXPORT void vmm_nbd_server_free(vmm_nbd_server *srv);

#ifdef __cplusplus
}
#endif

#endif
