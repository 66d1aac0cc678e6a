/* NBD server internals exposed to the fuzz harness (tests/fuzz/
 * fuzz-nbd-server.c), which runs one client session over a socketpair
 * against an export of its own.  Internal. */
#ifndef LIBVMM_NBD_SERVER_H
#define LIBVMM_NBD_SERVER_H

#include "libvmm/nbd.h"

struct srv_client;
struct srv_req;

/* A server with one export ("") and no listening socket. */
vmm_nbd_server *nbd_server_new_for_fd(vmm_block *blk, unsigned export_flags);
/* A client session on a connected socket (the fd stays the caller's). */
struct srv_client *nbd_server_client_new(vmm_nbd_server *srv, int fd);
/* Handshake, then requests until the client leaves or is dropped. */
void nbd_server_client_serve(struct srv_client *cl);
void nbd_server_client_free(struct srv_client *cl);
/* Pieces of the session: 0 / -1 (drop the client). */
int nbd_server_handshake(struct srv_client *cl);
int nbd_server_read_request(struct srv_client *cl, struct srv_req **out);
int nbd_server_run_request(struct srv_client *cl, struct srv_req *r);

#endif
