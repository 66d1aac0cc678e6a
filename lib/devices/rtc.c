/* MC146818 CMOS RTC at ports 0x70/0x71: wall-clock time (BCD or binary,
 * 12 or 24 hour, as register B asks), the update-in-progress flag, and CMOS
 * memory with the memory-size bytes firmware and guests read.
 * Not emulated: periodic, alarm and update-ended interrupts. */
#include <errno.h>
#include <string.h>
#include <time.h>
#include "devices/device.h"
#include "devices/device-state.h"

enum {
    RTC_SEC = 0, RTC_MIN = 2, RTC_HOUR = 4, RTC_WDAY = 6, RTC_MDAY = 7, RTC_MON = 8,
    RTC_YEAR = 9, RTC_A = 0x0a, RTC_B = 0x0b, RTC_C = 0x0c, RTC_D = 0x0d, RTC_CENTURY = 0x32,
};
#define B_SET 0x80
#define B_DM_BINARY 0x04
#define B_24H 0x02
#define A_UIP 0x80
#define D_VRT 0x80


struct rtc {
    struct device dev;
    struct rtc_state s;
};

static uint8_t to_bcd(const struct rtc *r, int v)
{
    return (r->s.cmos[RTC_B] & B_DM_BINARY) ? (uint8_t)v : (uint8_t)(((v / 10) << 4) | (v % 10));
}

static int from_bcd(const struct rtc *r, uint8_t v)
{
    return (r->s.cmos[RTC_B] & B_DM_BINARY) ? v : ((v >> 4) * 10 + (v & 0xf));
}

static time_t guest_now(const struct rtc *r)
{
    return time(NULL) + (time_t)(int64_t)r->s.offset;
}

static uint8_t encode_hour(const struct rtc *r, int hour)
{
    if (r->s.cmos[RTC_B] & B_24H)
        return to_bcd(r, hour);
    int h12 = hour % 12 ? hour % 12 : 12;
    return (uint8_t)(to_bcd(r, h12) | (hour >= 12 ? 0x80 : 0));
}

static int decode_hour(const struct rtc *r, uint8_t v)
{
    if (r->s.cmos[RTC_B] & B_24H)
        return from_bcd(r, v);
    int h = from_bcd(r, v & 0x7f) % 12;
    return (v & 0x80) ? h + 12 : h;
}

/* Refresh the time registers from the clock (not while the guest sets it). */
static void latch_time(struct rtc *r)
{
    if (r->s.cmos[RTC_B] & B_SET)
        return;
    time_t now = guest_now(r);
    struct tm tm;
    gmtime_r(&now, &tm);
    uint8_t *c = r->s.cmos;
    c[RTC_SEC] = to_bcd(r, tm.tm_sec);
    c[RTC_MIN] = to_bcd(r, tm.tm_min);
    c[RTC_HOUR] = encode_hour(r, tm.tm_hour);
    c[RTC_WDAY] = to_bcd(r, tm.tm_wday + 1);
    c[RTC_MDAY] = to_bcd(r, tm.tm_mday);
    c[RTC_MON] = to_bcd(r, tm.tm_mon + 1);
    c[RTC_YEAR] = to_bcd(r, tm.tm_year % 100);
    c[RTC_CENTURY] = to_bcd(r, (tm.tm_year + 1900) / 100);
}

/* The guest finished setting the clock: remember it as an offset. */
static void commit_time(struct rtc *r)
{
    const uint8_t *c = r->s.cmos;
    struct tm tm = {
        .tm_sec = from_bcd(r, c[RTC_SEC]),
        .tm_min = from_bcd(r, c[RTC_MIN]),
        .tm_hour = decode_hour(r, c[RTC_HOUR]),
        .tm_mday = from_bcd(r, c[RTC_MDAY]),
        .tm_mon = from_bcd(r, c[RTC_MON]) - 1,
        .tm_year = from_bcd(r, c[RTC_CENTURY]) * 100 + from_bcd(r, c[RTC_YEAR]) - 1900,
    };
    time_t t = timegm(&tm);
    if (t != (time_t)-1)
        r->s.offset = (uint64_t)(int64_t)(t - time(NULL));
}

static bool update_in_progress(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_nsec >= 1000000000L - 244000L; /* the last 244 us of each second */
}

static uint64_t rtc_read(void *opaque, uint64_t offset, unsigned size)
{
    (void)size;
    struct rtc *r = opaque;
    if (offset == 0)
        return 0xff;
    uint8_t index = r->s.index & 0x7f;
    switch (index) {
    case RTC_A:
        return (r->s.cmos[RTC_A] & ~A_UIP) | (update_in_progress() ? A_UIP : 0);
    case RTC_C: {
        uint8_t v = r->s.cmos[RTC_C];
        r->s.cmos[RTC_C] = 0;
        return v;
    }
    case RTC_D:
        return D_VRT;
    default:
        if (index <= RTC_YEAR || index == RTC_CENTURY)
            latch_time(r);
        return r->s.cmos[index];
    }
}

static void rtc_write(void *opaque, uint64_t offset, uint64_t value, unsigned size)
{
    (void)size;
    struct rtc *r = opaque;
    if (offset == 0) {
        r->s.index = (uint8_t)value; /* bit 7 is the NMI mask */
        return;
    }
    uint8_t index = r->s.index & 0x7f, byte = (uint8_t)value;
    switch (index) {
    case RTC_B: {
        bool was_setting = r->s.cmos[RTC_B] & B_SET;
        if (!was_setting && (byte & B_SET))
            latch_time(r);
        r->s.cmos[RTC_B] = byte;
        if (was_setting && !(byte & B_SET))
            commit_time(r);
        break;
    }
    case RTC_C:
    case RTC_D:
        break; /* read-only */
    case RTC_A:
        r->s.cmos[RTC_A] = byte & ~A_UIP;
        break;
    default: {
        bool clock = index <= RTC_YEAR || index == RTC_CENTURY;
        bool setting = r->s.cmos[RTC_B] & B_SET;
        if (clock && !setting)
            latch_time(r); /* the other time fields must be current */
        r->s.cmos[index] = byte;
        if (clock && !setting)
            commit_time(r);
        break;
    }
    }
}

static const struct io_ops rtc_ops = { rtc_read, rtc_write };

static void put16(uint8_t *cmos, unsigned index, uint64_t value)
{
    if (value > 0xffff)
        value = 0xffff;
    cmos[index] = (uint8_t)value;
    cmos[index + 1] = (uint8_t)(value >> 8);
}

/* Memory sizes where firmware and guests look for them (QEMU's layout). */
static void fill_memory_size(struct rtc *r)
{
    uint8_t *c = r->s.cmos;
    vmm_machine *m = r->dev.m;
    uint64_t below = m->ram_below_4g, above = m->ram_above_4g;
    put16(c, 0x15, 640);                                     /* base memory, KiB */
    uint64_t ext_kib = below > (1u << 20) ? (below - (1u << 20)) / 1024 : 0;
    put16(c, 0x17, ext_kib);
    put16(c, 0x30, ext_kib);
    put16(c, 0x34, below > (16u << 20) ? (below - (16u << 20)) >> 16 : 0);
    uint64_t high = above >> 16;                             /* 64 KiB units */
    c[0x5b] = (uint8_t)high;
    c[0x5c] = (uint8_t)(high >> 8);
    c[0x5d] = (uint8_t)(high >> 16);
    c[0x5f] = (uint8_t)(m->nr_vcpus - 1);
}

static int rtc_realize(struct device *dev)
{
    return device_map_pio(dev, 0x70, 2, &rtc_ops);
}

/* A reset clears the control registers; the clock and the battery-backed
 * NVRAM bytes survive it, as on real hardware. */
static void rtc_reset(struct device *dev)
{
    struct rtc *r = (struct rtc *)dev;
    r->s.index = 0;
    r->s.cmos[RTC_A] = 0x26;
    r->s.cmos[RTC_B] = B_24H;
    r->s.cmos[RTC_C] = 0;
    r->s.cmos[RTC_D] = D_VRT;
    fill_memory_size(r);
}

static void rtc_save(struct device *dev, void *state)
{
    memcpy(state, &((struct rtc *)dev)->s, sizeof(struct rtc_state));
}

static int rtc_load(struct device *dev, const void *state)
{
    memcpy(&((struct rtc *)dev)->s, state, sizeof(struct rtc_state));
    return 0;
}

static int rtc_post_load(void *opaque, uint32_t version)
{
    (void)version;
    struct rtc_state *s = opaque;
    int64_t offset = (int64_t)s->offset;
    /* Beyond a few thousand years, time arithmetic could overflow. */
    if (offset > (int64_t)1 << 40 || offset < -((int64_t)1 << 40))
        return vmm_set_error(EINVAL, "rtc: clock offset %lld s is out of range", (long long)offset);
    return 0;
}

static const struct state_field rtc_fields[] = {
    STATE_FIELD(struct rtc_state, index, STATE_U8),
    STATE_BYTES_FIELD(struct rtc_state, cmos),
    STATE_FIELD(struct rtc_state, offset, STATE_U64),
    STATE_END,
};

const struct state_desc rtc_state_desc = {
    .name = "rtc", .version = 1, .min_version = 1,
    .size = sizeof(struct rtc_state), .fields = rtc_fields, .post_load = rtc_post_load,
};

const struct device_class device_rtc = {
    .name = "mc146818rtc",
    .help = "CMOS real-time clock and NVRAM",
    .instance_size = sizeof(struct rtc),
    .platform = true,
    .realize = rtc_realize,
    .reset = rtc_reset,
    .state = &rtc_state_desc,
    .save = rtc_save,
    .load = rtc_load,
};
