/* CMOS RAM and the MC146818 RTC (index 0x70, data 0x71). */
#include "guest.h"

#define CMOS_INDEX 0x70
#define CMOS_DATA  0x71
#define RTC_REG_A  0x0a
#define RTC_REG_B  0x0b
#define RTC_A_UIP  0x80
#define RTC_B_24H  0x02
#define RTC_B_BINARY 0x04

uint8_t cmos_read(uint8_t reg)
{
    outb(CMOS_INDEX, reg);
    return inb(CMOS_DATA);
}

void cmos_write(uint8_t reg, uint8_t v)
{
    outb(CMOS_INDEX, reg);
    outb(CMOS_DATA, v);
}

static unsigned from_bcd(uint8_t v)
{
    return (v >> 4) * 10u + (v & 0x0f);
}

static void rtc_read_raw(uint8_t raw[7])
{
    static const uint8_t regs[7] = { 0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32 };
    for (unsigned spins = 0; spins < 100000 && (cmos_read(RTC_REG_A) & RTC_A_UIP); spins++)
        cpu_relax();
    for (unsigned i = 0; i < 7; i++)
        raw[i] = cmos_read(regs[i]);
}

void rtc_read(struct rtc_time *t)
{
    uint8_t a[7], b[7];
    /* Read until two reads agree so an update in between cannot tear it. */
    rtc_read_raw(a);
    for (unsigned tries = 0; tries < 5; tries++) {
        rtc_read_raw(b);
        if (memcmp(a, b, sizeof(a)) == 0)
            break;
        memcpy(a, b, sizeof(a));
    }
    uint8_t regb = cmos_read(RTC_REG_B);
    bool binary = regb & RTC_B_BINARY;
    uint8_t hour = a[2];
    bool pm = !(regb & RTC_B_24H) && (hour & 0x80);
    hour &= 0x7f;
    unsigned (*conv)(uint8_t) = binary ? NULL : from_bcd;
#define CONV(x) (conv ? conv(x) : (unsigned)(x))
    t->second = CONV(a[0]);
    t->minute = CONV(a[1]);
    t->hour = CONV(hour);
    t->day = CONV(a[3]);
    t->month = CONV(a[4]);
    unsigned century = CONV(a[6]);
#undef CONV
    unsigned year = binary ? a[5] : from_bcd(a[5]);
    if (century < 19 || century > 30)
        century = 20;    /* no century register: assume 20xx */
    t->year = century * 100 + year;
    if (!(regb & RTC_B_24H)) {
        if (t->hour == 12)
            t->hour = 0;
        if (pm)
            t->hour += 12;
    }
}
