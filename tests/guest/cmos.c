/* cmos: RTC time (BCD or binary per register B) and the CMOS memory-size
 * bytes, checked against the PVH memory map. */
#include "guest.h"

#define KIB 1024ull
#define MIB (1024ull * 1024)

static unsigned cmos16(uint8_t lo)
{
    return cmos_read(lo) | (unsigned)cmos_read((uint8_t)(lo + 1)) << 8;
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static bool check_rtc(void)
{
    struct rtc_time t;
    rtc_read(&t);
    uint8_t regb = cmos_read(0x0b), regd = cmos_read(0x0d);
    printf("rtc: %04u-%02u-%02u %02u:%02u:%02u (register B 0x%02x: %s, %s; register D 0x%02x)\n",
           t.year, t.month, t.day, t.hour, t.minute, t.second, regb,
           regb & 0x04 ? "binary" : "bcd", regb & 0x02 ? "24h" : "12h", regd);
    bool ok = t.year >= 2020 && t.year <= 2099 && t.month >= 1 && t.month <= 12 &&
              t.day >= 1 && t.day <= 31 && t.hour < 24 && t.minute < 60 && t.second < 60;
    if (!ok)
        printf("cmos: RTC time is not plausible\n");
    if (!(regd & 0x80)) {
        printf("cmos: register D says the RTC time is not valid\n");
        ok = false;
    }
    return ok;
}

static bool check_one(const char *what, uint64_t got, uint64_t want)
{
    printf("cmos: %-34s %lu (memmap says %lu)\n", what, (unsigned long)got, (unsigned long)want);
    return got == want;
}

static bool check_memory(void)
{
    uint64_t top = memmap_ram_top_below_4g();
    uint64_t high = memmap_ram_above_4g();
    if (!top) {
        printf("cmos: no RAM in the start_info memory map\n");
        return false;
    }
    unsigned ext_kib = cmos16(0x30);
    unsigned above16 = cmos16(0x34);
    uint64_t above4g = cmos_read(0x5b) | (uint64_t)cmos_read(0x5c) << 8 |
                       (uint64_t)cmos_read(0x5d) << 16;
    bool ok = true;
    ok &= check_one("0x30/0x31 KiB above 1 MiB:", ext_kib,
                    top > MIB ? min_u64(0xffff, (top - MIB) / KIB) : 0);
    ok &= check_one("0x34/0x35 64 KiB above 16 MiB:", above16,
                    top > 16 * MIB ? min_u64(0xffff, (top - 16 * MIB) / (64 * KIB)) : 0);
    ok &= check_one("0x5b-0x5d 64 KiB above 4 GiB:", above4g, high / (64 * KIB));
    return ok;
}

int main(const struct hvm_start_info *si)
{
    (void)si;
    memmap_print();
    bool ok = check_rtc();
    ok &= check_memory();
    if (!ok)
        return 1;
    printf("cmos: ok\n");
    return 0;
}
