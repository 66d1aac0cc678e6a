/* The machine's drives: images with an id that devices use (drive=ID). */
#include <errno.h>
#include <string.h>
#include "libvmm/control.h"
#include "devices/device.h"
#include "devices/virtio/virtio-blk.h"
#include "machine/drives.h"

static struct machine_drive *find_locked(vmm_machine *m, const char *id)
{
    for (GList *l = m->drives; l; l = l->next) {
        struct machine_drive *d = l->data;
        if (!strcmp(d->id, id))
            return d;
    }
    return NULL;
}

/* The drive that owns this image, if any. */
static struct machine_drive *find_image_locked(vmm_machine *m, const vmm_block *blk)
{
    for (GList *l = m->drives; l; l = l->next) {
        struct machine_drive *d = l->data;
        if (d->blk == blk)
            return d;
    }
    return NULL;
}

static void drive_free(struct machine_drive *d)
{
    g_mutex_clear(&d->stats_lock);
    vmm_block_close(d->blk);
    g_free(d->id);
    g_free(d->driver);
    g_free(d->filename);
    g_free(d);
}

/* Every field is set before the drive is listed: once the lock is gone,
 * another thread may claim or remove it. */
static struct machine_drive *insert_drive(vmm_machine *m, const char *id, vmm_block *blk,
                                          const char *filename, bool read_only,
                                          bool discard_unmap, bool writethrough)
{
    struct machine_drive *d = NULL;
    g_mutex_lock(&m->drives_lock);
    bool taken = find_locked(m, id) != NULL;
    /* One owner per image: a second drive would close it twice and share
     * its completion fd between two devices' locks. */
    const struct machine_drive *owner = taken ? NULL : find_image_locked(m, blk);
    char *owner_id = owner ? g_strdup(owner->id) : NULL;
    if (!taken && !owner) {
        d = g_new0(struct machine_drive, 1);
        d->id = g_strdup(id);
        d->driver = g_strdup(vmm_block_format(blk));
        d->filename = g_strdup(filename ? filename : "");
        d->read_only = read_only;
        d->discard_unmap = discard_unmap;
        d->writethrough = writethrough;
        d->blk = blk;
        m->drives = g_list_append(m->drives, d);
    }
    g_mutex_unlock(&m->drives_lock);
    if (taken)
        vmm_set_error(EEXIST, "a drive or block node '%s' exists already", id);
    if (owner_id)
        vmm_set_error(EBUSY, "the image is drive '%s' already", owner_id);
    g_free(owner_id);
    return d;
}

struct machine_drive *machine_drive_insert(vmm_machine *m, const char *id, vmm_block *blk,
                                           const char *filename, bool read_only,
                                           bool discard_unmap)
{
    return insert_drive(m, id, blk, filename, read_only, discard_unmap, false);
}

bool machine_drive_exists(vmm_machine *m, const char *id)
{
    g_mutex_lock(&m->drives_lock);
    bool found = find_locked(m, id) != NULL;
    g_mutex_unlock(&m->drives_lock);
    return found;
}

struct machine_drive *machine_drive_claim(vmm_machine *m, const char *id, struct device *user)
{
    g_mutex_lock(&m->drives_lock);
    struct machine_drive *d = find_locked(m, id);
    struct device *other = d ? d->user : NULL;
    if (d && !other)
        d->user = user;
    g_mutex_unlock(&m->drives_lock);
    if (!d) {
        vmm_set_error(ENOENT, "no drive '%s' (add it with --drive/vmm_machine_add_drive or "
                      "blockdev-add)", id);
        return NULL;
    }
    if (other) {
        vmm_set_error(EBUSY, "drive '%s' is in use by %s", id,
                      other->id ? other->id : other->cls->name);
        return NULL;
    }
    return d;
}

void machine_drive_release(vmm_machine *m, struct machine_drive *drive)
{
    g_mutex_lock(&m->drives_lock);
    drive->user = NULL;
    g_mutex_unlock(&m->drives_lock);
}

/* A device names the drive, realized or not. */
static const struct device *drive_user(vmm_machine *m, const struct machine_drive *d)
{
    if (d->user)
        return d->user;
    for (const struct device *dev = m->devices; dev; dev = dev->next)
        if (virtio_blk_uses_drive(dev, d->id))
            return dev;
    return NULL;
}

int machine_drive_remove(vmm_machine *m, const char *id)
{
    g_mutex_lock(&m->drives_lock);
    struct machine_drive *d = find_locked(m, id);
    const struct device *user = d ? drive_user(m, d) : NULL;
    if (d && !user)
        m->drives = g_list_remove(m->drives, d);
    g_mutex_unlock(&m->drives_lock);
    if (!d)
        return vmm_set_error(ENOENT, "no drive or block node '%s'", id);
    if (user)
        return vmm_set_error(EBUSY, "drive '%s' is in use by %s", id,
                             user->id ? user->id : user->cls->name);
    drive_free(d);
    return 0;
}

void machine_drives_free(vmm_machine *m)
{
    g_mutex_lock(&m->drives_lock);
    GList *drives = m->drives;
    m->drives = NULL;
    g_mutex_unlock(&m->drives_lock);
    g_list_free_full(drives, (GDestroyNotify)drive_free);
}

/* ---- public API ------------------------------------------------------------ */

struct drive_options {
    const char *file, *format, *id;
    unsigned open_flags;
    bool read_only, discard_unmap, writethrough;
};

static int pick(const char *key, const char *value, const char *const *choices, int *out)
{
    for (int i = 0; choices[i]; i++) {
        if (!strcmp(value, choices[i])) {
            *out = i;
            return 0;
        }
    }
    GString *known = g_string_new(NULL);
    for (int i = 0; choices[i]; i++)
        g_string_append_printf(known, "%s%s", i ? ", " : "", choices[i]);
    vmm_set_error(EINVAL, "%s=%s: expected one of %s", key, value, known->str);
    g_string_free(known, TRUE);
    return -1;
}

/* cache= as QEMU defines it: direct (O_DIRECT) and no-flush bits. */
static int parse_cache(const char *value, struct drive_options *d)
{
    static const char *const modes[] = { "writeback", "none", "writethrough", "directsync",
                                         "unsafe", NULL };
    static const unsigned bits[] = { 0, VMM_BLOCK_NOCACHE, 0, VMM_BLOCK_NOCACHE,
                                     VMM_BLOCK_NO_FLUSH };
    int i;
    if (!value)
        return 0;
    if (pick("cache", value, modes, &i) < 0)
        return -1;
    d->open_flags |= bits[i];
    d->writethrough = !strcmp(value, "writethrough") || !strcmp(value, "directsync");
    return 0;
}

static int parse_switch(const char *key, const char *value, const char *const *choices, bool *out)
{
    int i = 0;
    if (value && pick(key, value, choices, &i) < 0)
        return -1;
    *out = value && i % 2;   /* choices alternate off/on spellings */
    return 0;
}

static int parse_drive_options(vmm_opts *o, struct drive_options *d)
{
    static const char *const on_off[] = { "off", "on", "false", "true", NULL };
    static const char *const discard[] = { "ignore", "unmap", "off", "on", NULL };
    static const char *const aio[] = { "threads", "native", NULL };
    static const char *const formats[] = { "raw", "qcow2", NULL };
    int i;
    d->file = vmm_opts_get(o, "file");
    d->format = vmm_opts_get(o, "format");
    d->id = vmm_opts_get(o, "id");
    const char *aio_value = vmm_opts_get(o, "aio");
    if (parse_cache(vmm_opts_get(o, "cache"), d) < 0 ||
        parse_switch("readonly", vmm_opts_get(o, "readonly"), on_off, &d->read_only) < 0 ||
        parse_switch("discard", vmm_opts_get(o, "discard"), discard, &d->discard_unmap) < 0 ||
        (aio_value && pick("aio", aio_value, aio, &i) < 0) ||
        (d->format && pick("format", d->format, formats, &i) < 0) ||
        vmm_opts_check_all_used(o, "drive") < 0)
        return -1;
    if (aio_value && !strcmp(aio_value, "native"))
        d->open_flags |= VMM_BLOCK_NATIVE_AIO;
    if (!d->file || !*d->file)
        return vmm_set_error(EINVAL, "file= is required");
    if (!d->id || !*d->id)
        return vmm_set_error(EINVAL, "id= is required");
    return 0;
}

LIBVMM_EXPORT int vmm_machine_add_drive(vmm_machine *m, const char *spec)
{
    vmm_clear_error();
    if (!m || !spec)
        return vmm_set_error(EINVAL, "vmm_machine_add_drive: machine and spec are required");
    vmm_opts *o = vmm_opts_parse(spec, NULL);
    if (!o)
        return vmm_error_prefix("vmm_machine_add_drive");
    struct drive_options d = { 0 };
    int ret = parse_drive_options(o, &d);
    if (ret == 0 && machine_drive_exists(m, d.id))
        ret = vmm_set_error(EEXIST, "a drive or block node '%s' exists already", d.id);
    vmm_block *blk = NULL;
    if (ret == 0) {
        blk = vmm_block_open(d.file, d.format, d.open_flags | (d.read_only ? 0 : VMM_BLOCK_RDWR));
        ret = blk && insert_drive(m, d.id, blk, d.file, d.read_only, d.discard_unmap,
                                  d.writethrough) ? 0 : -1;
    }
    if (ret < 0 && blk)
        vmm_block_close(blk);
    vmm_opts_free(o);
    return ret < 0 ? vmm_error_prefix("vmm_machine_add_drive") : 0;
}

LIBVMM_EXPORT int vmm_machine_add_block(vmm_machine *m, const char *id, vmm_block *blk,
                                        int read_only)
{
    vmm_clear_error();
    if (!m || !id || !*id || !blk)
        return vmm_set_error(EINVAL, "vmm_machine_add_block: machine, id and image are required");
    if (!machine_drive_insert(m, id, blk, NULL, read_only != 0, false))
        return vmm_error_prefix("vmm_machine_add_block");
    return 0;
}

LIBVMM_EXPORT int vmm_machine_remove_drive(vmm_machine *m, const char *id)
{
    vmm_clear_error();
    if (!m || !id)
        return vmm_set_error(EINVAL, "vmm_machine_remove_drive: machine and id are required");
    if (machine_drive_remove(m, id) < 0)
        return vmm_error_prefix("vmm_machine_remove_drive");
    return 0;
}

LIBVMM_EXPORT int vmm_machine_list_block_nodes(vmm_machine *m, vmm_block_node_fn fn, void *user_data)
{
    vmm_clear_error();
    if (!m || !fn)
        return vmm_set_error(EINVAL, "vmm_machine_list_block_nodes: machine and callback are required");
    g_mutex_lock(&m->drives_lock);
    for (GList *l = m->drives; l; l = l->next) {
        const struct machine_drive *d = l->data;
        const struct device *user = drive_user(m, d);
        struct vmm_block_stats stats;
        g_mutex_lock((GMutex *)&d->stats_lock);
        stats = d->stats;
        g_mutex_unlock((GMutex *)&d->stats_lock);
        struct vmm_block_node_info info = {
            .size = sizeof(info), .name = d->id, .driver = d->driver,
            .filename = d->filename, .read_only = d->read_only, .block = d->blk,
            .device = user ? (user->id ? user->id : user->cls->name) : NULL,
            .stats = &stats,
        };
        if (fn(user_data, &info))
            break;
    }
    g_mutex_unlock(&m->drives_lock);
    return 0;
}

/* As QEMU: a failed request counts in failed_* only. */
void machine_drive_account(struct machine_drive *d, enum vmm_block_op op, uint64_t bytes,
                           bool failed)
{
    struct vmm_block_stats *s = &d->stats;
    uint64_t *ops, *failures, *nbytes = NULL;
    switch (op) {
    case VMM_BLOCK_OP_READ:
        ops = &s->rd_operations, failures = &s->failed_rd_operations, nbytes = &s->rd_bytes;
        break;
    case VMM_BLOCK_OP_FLUSH:
        ops = &s->flush_operations, failures = &s->failed_flush_operations;
        break;
    case VMM_BLOCK_OP_DISCARD:
        ops = &s->unmap_operations, failures = &s->failed_unmap_operations,
        nbytes = &s->unmap_bytes;
        break;
    default:   /* writes and write-zeroes */
        ops = &s->wr_operations, failures = &s->failed_wr_operations, nbytes = &s->wr_bytes;
        break;
    }
    g_mutex_lock(&d->stats_lock);
    if (failed) {
        (*failures)++;
    } else {
        (*ops)++;
        if (nbytes)
            *nbytes += bytes;
    }
    g_mutex_unlock(&d->stats_lock);
}

void machine_drive_account_merged(struct machine_drive *d, enum vmm_block_op op, unsigned merged)
{
    g_mutex_lock(&d->stats_lock);
    if (op == VMM_BLOCK_OP_READ)
        d->stats.rd_merged += merged;
    else if (op == VMM_BLOCK_OP_WRITE)
        d->stats.wr_merged += merged;
    g_mutex_unlock(&d->stats_lock);
}
