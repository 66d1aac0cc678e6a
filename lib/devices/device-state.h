/* Saved state of the platform devices: plain structs, separate from the
 * live devices, described by versioned field tables (ARCHITECTURE.md §8). */
#ifndef LIBVMM_DEVICE_STATE_H
#define LIBVMM_DEVICE_STATE_H

#include <stdint.h>
#include "migration/state.h"

#define UART_FIFO_SIZE 16
#define I8042_QUEUE_SIZE 16
#define CMOS_SIZE 128

struct serial_state {
    uint8_t ier, lcr, mcr, lsr, msr, scr, fcr, dll, dlm;
    uint8_t thr_pending;            /* THRE interrupt waiting to be seen */
    uint8_t rx_count;
    uint8_t rx_fifo[UART_FIFO_SIZE];
};

extern const struct state_desc serial_state_desc;

struct i8042_state {
    uint8_t status, config, pending_cmd;
    uint8_t queue_len;
    uint8_t queue[I8042_QUEUE_SIZE];
};

extern const struct state_desc i8042_state_desc;

struct rtc_state {
    uint8_t index;
    uint8_t cmos[CMOS_SIZE];
    uint64_t offset;        /* guest time minus host time, seconds (two's complement) */
};

extern const struct state_desc rtc_state_desc;

struct acpi_pm_state {
    uint16_t sts, en, cnt;
};

extern const struct state_desc acpi_pm_state_desc;

#endif
