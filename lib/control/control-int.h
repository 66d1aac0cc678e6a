/* lib/control internals: the per-machine control state, QMP sessions and the
 * command table.  Everything here runs in the machine's I/O thread except
 * the event listener, which only appends to output buffers under the lock. */
#ifndef LIBVMM_CONTROL_INT_H
#define LIBVMM_CONTROL_INT_H

#include <glib.h>
#include <json-glib/json-glib.h>
#include <stdbool.h>
#include "libvmm/block.h"
#include "libvmm/control.h"
#include "machine/machine.h"
#include "machine/drives.h"

/* Limits that keep one client from disturbing the others. */
#define QMP_MAX_MESSAGE (1u << 20)     /* bytes in one JSON message */
#define QMP_MAX_NESTING 64             /* nested objects/arrays in one message */
#define QMP_MAX_PENDING_OUTPUT (8u << 20) /* unread replies and events */

struct control {
    vmm_machine *m;
    GMutex lock;           /* clients' output buffers and the client list */
    GList *servers;        /* struct qmp_server */
    GList *clients;        /* struct qmp_client */
};

/* One command's outcome: a return value or an error class and text. */
struct qmp_result {
    JsonNode *ret;
    const char *error_class;
    char *error_desc;
    bool quit;             /* stop the machine once the reply is out */
};

void qmp_error(struct qmp_result *r, const char *cls, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

/* The "version" object of query-version and the greeting (a new reference). */
JsonObject *qmp_version_object(void);

/* Run `cmd` (a parsed JSON node) for a session; returns the reply object. */
JsonObject *qmp_dispatch(struct control *ctl, JsonNode *cmd, bool *negotiated,
                         bool *quit_after_reply);

/* The human monitor: run one command line, output as QEMU prints it. */
char *hmp_run(struct control *ctl, const char *line, struct qmp_result *r);

/* Run a QMP command by name with arguments (NULL: none) for the HMP. */
JsonNode *qmp_call(struct control *ctl, const char *name, JsonObject *args, struct qmp_result *r);

/* The fuzz harness's entry: a whole client session on the caller's thread;
 * returns the number of replies. */
size_t control_fuzz_feed(vmm_machine *m, const char *data, size_t len);

#endif
