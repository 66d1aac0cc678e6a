/* The machine's drives: block nodes with an id, from vmm_machine_add_drive,
 * vmm_machine_add_block or QMP blockdev-add, that devices (virtio-blk's
 * drive=ID) claim.  A claimed drive cannot be removed. */
#ifndef LIBVMM_MACHINE_DRIVES_H
#define LIBVMM_MACHINE_DRIVES_H

#include <stdbool.h>
#include "libvmm/block.h"
#include "libvmm/control.h"
#include "machine/machine.h"

struct device;

struct machine_drive {
    char *id;                      /* node-name */
    char *driver;                  /* "raw", "qcow2" */
    char *filename;
    bool read_only;
    bool discard_unmap;            /* discard=unmap: guests' discards reach the image */
    bool writethrough;             /* cache=writethrough/directsync: writes are FUA */
    vmm_block *blk;                /* owned: closed when the drive goes */
    struct device *user;           /* the device that claimed it, or NULL */
    GMutex stats_lock;             /* a leaf lock: taken under the device's or the list's */
    struct vmm_block_stats stats;  /* counted by the device (machine_drive_account) */
};

/* Add an open image under `id` (EEXIST when taken); on success the machine
 * owns blk, on failure the caller does.  Every option is set before the
 * drive is listed. */
struct machine_drive *machine_drive_insert(vmm_machine *m, const char *id, vmm_block *blk,
                                           const char *filename, bool read_only,
                                           bool discard_unmap);
bool machine_drive_exists(vmm_machine *m, const char *id);
/* A device takes the drive (ENOENT: none, EBUSY: another device has it). */
struct machine_drive *machine_drive_claim(vmm_machine *m, const char *id, struct device *user);
void machine_drive_release(vmm_machine *m, struct machine_drive *drive);
/* Remove and close (ENOENT, EBUSY while a device uses it). */
int machine_drive_remove(vmm_machine *m, const char *id);
/* Count a guest request of `op` that completed (`failed`: an error reported
 * to the guest), and `merged` requests of `op` joined into others. */
void machine_drive_account(struct machine_drive *d, enum vmm_block_op op, uint64_t bytes,
                           bool failed);
void machine_drive_account_merged(struct machine_drive *d, enum vmm_block_op op,
                                  unsigned merged);
/* Close every drive (machine free, after the devices).  The lock is a
 * zero-initialised GMutex: usable any time, nothing to clear. */
void machine_drives_free(vmm_machine *m);

#endif
