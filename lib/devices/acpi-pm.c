/* ACPI fixed-hardware power management block (the registers the FADT
 * points at): PM1a event (status/enable), PM1a control (sleep to S5 powers
 * off), the 3.579545 MHz PM timer and the reset register.  The power button
 * is the fixed-feature one, raising SCI on GSI 9. */
#include <errno.h>
#include <string.h>
#include <time.h>
#include "devices/device.h"
#include "devices/device-state.h"
#include "devices/acpi-pm.h"

#define PM1_STS_PWRBTN   (1u << 8)
#define PM1_STS_WAK      (1u << 15)
#define PM1_CNT_SCI_EN   (1u << 0)
#define PM1_CNT_SLP_EN   (1u << 13)
#define PM_TIMER_HZ      3579545ull


struct acpi_pm {
    struct device dev;
    struct acpi_pm_state s;
    bool sci_level;
};

static void update_sci(struct acpi_pm *pm)
{
    bool level = (pm->s.sts & pm->s.en & PM1_STS_PWRBTN) != 0;
    if (level != pm->sci_level) {
        pm->sci_level = level;
        machine_set_irq(pm->dev.m, ACPI_SCI_GSI, level);
    }
}

static uint32_t pm_timer(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    unsigned __int128 ticks = ((unsigned __int128)ts.tv_sec * 1000000000u + ts.tv_nsec) *
                              PM_TIMER_HZ / 1000000000u;
    return (uint32_t)ticks & 0xffffff; /* 24-bit timer (TMR_VAL_EXT clear) */
}

static uint64_t read_field(uint64_t value, uint64_t offset, unsigned size)
{
    value >>= 8 * offset;
    return size >= 8 ? value : value & ((1ull << (8 * size)) - 1);
}

static uint64_t acpi_pm_read(void *opaque, uint64_t offset, unsigned size)
{
    struct acpi_pm *pm = opaque;
    if (offset < 4)
        return read_field(pm->s.sts | ((uint32_t)pm->s.en << 16), offset, size);
    if (offset < 6)
        return read_field(pm->s.cnt | PM1_CNT_SCI_EN, offset - 4, size);
    if (offset >= 8 && offset < 12)
        return read_field(pm_timer(), offset - 8, size);
    return 0;
}

static void write_cnt(struct acpi_pm *pm, uint16_t value)
{
    pm->s.cnt = value & ~PM1_CNT_SLP_EN;
    if (!(value & PM1_CNT_SLP_EN))
        return;
    unsigned slp_typ = (value >> 10) & 7;
    if (slp_typ == ACPI_S5_SLP_TYP)
        machine_end(pm->dev.m, VMM_EXIT_POWEROFF, 0, "guest powered off (ACPI S5)");
    else
        vmm_log(VMM_LOG_WARNING, "acpi", "guest asked for unsupported sleep type %u", slp_typ);
}

static void acpi_pm_write(void *opaque, uint64_t offset, uint64_t value, unsigned size)
{
    struct acpi_pm *pm = opaque;
    if (offset == 0 && size >= 2) {
        pm->s.sts &= ~(uint16_t)value; /* write one to clear */
        if (size == 4)
            pm->s.en = (uint16_t)(value >> 16);
    } else if (offset == 2 && size == 2) {
        pm->s.en = (uint16_t)value;
    } else if (offset == 4 && size == 2) {
        write_cnt(pm, (uint16_t)value);
    } else if (offset == ACPI_RESET_OFFSET && (uint8_t)value == ACPI_RESET_VALUE) {
        machine_guest_reset(pm->dev.m, "ACPI reset register");
    }
    update_sci(pm);
}

static const struct io_ops acpi_pm_ops = { acpi_pm_read, acpi_pm_write };

static int acpi_pm_realize(struct device *dev)
{
    return device_map_pio(dev, ACPI_PM_BASE, ACPI_PM_LEN, &acpi_pm_ops);
}

static void acpi_pm_reset(struct device *dev)
{
    struct acpi_pm *pm = (struct acpi_pm *)dev;
    memset(&pm->s, 0, sizeof(pm->s));
    update_sci(pm);
}

void acpi_pm_press_power_button(struct device *dev)
{
    struct acpi_pm *pm = (struct acpi_pm *)dev;
    pthread_mutex_lock(&dev->lock);
    pm->s.sts |= PM1_STS_PWRBTN;
    update_sci(pm);
    pthread_mutex_unlock(&dev->lock);
}

static void acpi_pm_save(struct device *dev, void *state)
{
    memcpy(state, &((struct acpi_pm *)dev)->s, sizeof(struct acpi_pm_state));
}

static int acpi_pm_load(struct device *dev, const void *state)
{
    struct acpi_pm *pm = (struct acpi_pm *)dev;
    memcpy(&pm->s, state, sizeof(pm->s));
    update_sci(pm);
    return 0;
}

static const struct state_field acpi_pm_fields[] = {
    STATE_FIELD(struct acpi_pm_state, sts, STATE_U16),
    STATE_FIELD(struct acpi_pm_state, en, STATE_U16),
    STATE_FIELD(struct acpi_pm_state, cnt, STATE_U16),
    STATE_END,
};

static int acpi_pm_post_load(void *opaque, uint32_t version)
{
    (void)version;
    struct acpi_pm_state *s = opaque;
    if (s->cnt & PM1_CNT_SLP_EN)
        return vmm_set_error(EINVAL, "acpi-pm: SLP_EN is write-only and cannot be saved set");
    return 0;
}

const struct state_desc acpi_pm_state_desc = {
    .name = "acpi-pm", .version = 1, .min_version = 1,
    .size = sizeof(struct acpi_pm_state), .fields = acpi_pm_fields,
    .post_load = acpi_pm_post_load,
};

const struct device_class device_acpi_pm = {
    .name = "acpi-pm",
    .help = "ACPI PM1 event/control, PM timer and reset register",
    .instance_size = sizeof(struct acpi_pm),
    .platform = true,
    .realize = acpi_pm_realize,
    .reset = acpi_pm_reset,
    .state = &acpi_pm_state_desc,
    .save = acpi_pm_save,
    .load = acpi_pm_load,
};
