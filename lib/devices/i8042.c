/* i8042 keyboard controller: enough for guests that probe it and for the
 * reset line (command 0xfe on port 0x64) that restarts the machine. */
#include <errno.h>
#include <string.h>
#include "devices/device.h"
#include "devices/device-state.h"

#define STATUS_OBF    0x01   /* output buffer full */
#define STATUS_SYS    0x04   /* self test passed */
#define STATUS_CMD    0x08   /* last write was a command */


struct i8042 {
    struct device dev;
    struct i8042_state s;
};

static void push(struct i8042 *k, uint8_t byte)
{
    if (k->s.queue_len < I8042_QUEUE_SIZE)
        k->s.queue[k->s.queue_len++] = byte;
    k->s.status |= STATUS_OBF;
}

static uint8_t pop(struct i8042 *k)
{
    if (!k->s.queue_len)
        return 0;
    uint8_t byte = k->s.queue[0];
    memmove(k->s.queue, k->s.queue + 1, --k->s.queue_len);
    if (!k->s.queue_len)
        k->s.status &= ~STATUS_OBF;
    return byte;
}

static void controller_command(struct i8042 *k, uint8_t cmd)
{
    switch (cmd) {
    case 0x20: push(k, k->s.config); break;              /* read config byte */
    case 0x60: case 0xd1: k->s.pending_cmd = cmd; break; /* next data byte is an argument */
    case 0xaa: push(k, 0x55); break;                     /* self test passed */
    case 0xab: push(k, 0x00); break;                     /* keyboard interface ok */
    case 0xa7: k->s.config |= 0x20; break;               /* disable aux */
    case 0xa8: k->s.config &= ~0x20; break;
    case 0xa9: push(k, 0xff); break;                     /* no aux port */
    case 0xad: k->s.config |= 0x10; break;               /* disable keyboard */
    case 0xae: k->s.config &= ~0x10; break;
    case 0xd0: push(k, 0x01); break;                     /* output port: A20 on */
    case 0xfe:                                           /* pulse the reset line */
        machine_guest_reset(k->dev.m, "keyboard controller reset");
        break;
    default:
        break;
    }
}

static void keyboard_command(struct i8042 *k, uint8_t cmd)
{
    switch (cmd) {
    case 0xff: push(k, 0xfa); push(k, 0xaa); break;      /* reset: ack, self test ok */
    case 0xf2: push(k, 0xfa); push(k, 0xab); push(k, 0x83); break; /* identify: MF2 */
    default: push(k, 0xfa); break;                       /* acknowledge the rest */
    }
}

static uint64_t i8042_read(void *opaque, uint64_t offset, unsigned size)
{
    (void)size;
    struct i8042 *k = opaque;
    return offset == 0 ? pop(k) : k->s.status;
}

static void i8042_write(void *opaque, uint64_t offset, uint64_t value, unsigned size)
{
    (void)size;
    struct i8042 *k = opaque;
    uint8_t byte = (uint8_t)value;
    if (offset == 4) {
        k->s.status |= STATUS_CMD;
        controller_command(k, byte);
        return;
    }
    k->s.status &= ~STATUS_CMD;
    uint8_t pending = k->s.pending_cmd;
    k->s.pending_cmd = 0;
    if (pending == 0x60)
        k->s.config = byte;
    else if (pending == 0xd1 && !(byte & 1))
        machine_guest_reset(k->dev.m, "keyboard controller output port reset");
    else if (!pending)
        keyboard_command(k, byte);
}

static const struct io_ops i8042_ops = { i8042_read, i8042_write };

static int i8042_realize(struct device *dev)
{
    /* 0x60 data, 0x64 status/command; 0x61-0x63 never reach us (the
     * in-kernel PIT owns the speaker port) and read as status. */
    return device_map_pio(dev, 0x60, 5, &i8042_ops);
}

static void i8042_reset(struct device *dev)
{
    struct i8042 *k = (struct i8042 *)dev;
    memset(&k->s, 0, sizeof(k->s));
    k->s.status = STATUS_SYS;
    k->s.config = 0x45; /* keyboard interrupt, system flag, translation */
}

static void i8042_save(struct device *dev, void *state)
{
    memcpy(state, &((struct i8042 *)dev)->s, sizeof(struct i8042_state));
}

static int i8042_load(struct device *dev, const void *state)
{
    memcpy(&((struct i8042 *)dev)->s, state, sizeof(struct i8042_state));
    return 0;
}

static int i8042_post_load(void *opaque, uint32_t version)
{
    (void)version;
    struct i8042_state *s = opaque;
    if (s->queue_len > I8042_QUEUE_SIZE)
        return vmm_set_error(EINVAL, "i8042: queue_len %u exceeds %u", s->queue_len, I8042_QUEUE_SIZE);
    if (s->pending_cmd != 0 && s->pending_cmd != 0x60 && s->pending_cmd != 0xd1)
        return vmm_set_error(EINVAL, "i8042: 0x%02x is not a command that takes data",
                             s->pending_cmd);
    if (!!(s->status & STATUS_OBF) != !!s->queue_len)
        return vmm_set_error(EINVAL, "i8042: output-buffer-full disagrees with the queue");
    return 0;
}

static const struct state_field i8042_fields[] = {
    STATE_FIELD(struct i8042_state, status, STATE_U8),
    STATE_FIELD(struct i8042_state, config, STATE_U8),
    STATE_FIELD(struct i8042_state, pending_cmd, STATE_U8),
    STATE_FIELD(struct i8042_state, queue_len, STATE_U8),
    STATE_BYTES_FIELD(struct i8042_state, queue),
    STATE_END,
};

const struct state_desc i8042_state_desc = {
    .name = "i8042", .version = 1, .min_version = 1,
    .size = sizeof(struct i8042_state), .fields = i8042_fields, .post_load = i8042_post_load,
};

const struct device_class device_i8042 = {
    .name = "i8042",
    .help = "PS/2 keyboard controller (probe answers and the reset line)",
    .instance_size = sizeof(struct i8042),
    .platform = true,
    .realize = i8042_realize,
    .reset = i8042_reset,
    .state = &i8042_state_desc,
    .save = i8042_save,
    .load = i8042_load,
};
