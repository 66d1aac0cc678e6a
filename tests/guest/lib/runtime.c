/* Start-up, exit, start_info accessors and string helpers. */
#include "guest.h"

static const struct hvm_start_info *boot_info;

_Noreturn void guest_exit(uint32_t code)
{
    outl(TEST_EXIT_PORT, code);
    /* Still here: no test-exit device.  End the machine some other way
     * rather than hang: ACPI power-off, then a reset through the i8042. */
    console_break_lock();
    printf("exit: no test-exit device at 0x%x (code 0x%x), powering off\n", TEST_EXIT_PORT, code);
    acpi_poweroff();
    i8042_reset();
    halt_forever();
}

_Noreturn void guest_fail(const char *fmt, ...)
{
    va_list ap;
    printf("FAIL: ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    guest_exit(GUEST_EXIT_FAILURE);
}

/* Called from entry.S on the boot CPU with EBX from the loader. */
void guest_start(uint64_t start_info_paddr);
void guest_start(uint64_t start_info_paddr)
{
    console_init();
    idt_init();
    const struct hvm_start_info *si = (const void *)(uintptr_t)start_info_paddr;
    if (!si || si->magic != HVM_START_MAGIC) {
        printf("FAIL: no PVH start_info (ebx=0x%lx, magic=0x%x)\n",
               (unsigned long)start_info_paddr, si ? si->magic : 0);
        guest_exit(GUEST_EXIT_BAD_BOOT);
    }
    boot_info = si;
    guest_exit(main(si) == 0 ? GUEST_EXIT_SUCCESS : GUEST_EXIT_FAILURE);
}

const struct hvm_start_info *start_info(void)
{
    return boot_info;
}

const char *start_cmdline(void)
{
    if (!boot_info || !boot_info->cmdline_paddr)
        return "";
    return (const char *)(uintptr_t)boot_info->cmdline_paddr;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n';
}

/* The value of "key=value" (up to the next blank), or NULL. */
static const char *cmdline_find(const char *key)
{
    const char *p = start_cmdline();
    size_t klen = strlen(key);
    while (*p) {
        while (is_space(*p))
            p++;
        if (strncmp(p, key, klen) == 0 && p[klen] == '=')
            return p + klen + 1;
        while (*p && !is_space(*p))
            p++;
    }
    return NULL;
}

bool cmdline_is(const char *key, const char *value)
{
    const char *v = cmdline_find(key);
    size_t n = strlen(value);
    return v && strncmp(v, value, n) == 0 && (v[n] == '\0' || is_space(v[n]));
}

uint64_t cmdline_u64(const char *key, uint64_t fallback)
{
    const char *d = cmdline_find(key);
    if (!d)
        return fallback;
    uint64_t v = 0;
    unsigned base = 10;
    if (d[0] == '0' && (d[1] == 'x' || d[1] == 'X')) {
        base = 16;
        d += 2;
    }
    for (;; d++) {
        unsigned digit;
        if (*d >= '0' && *d <= '9')
            digit = (unsigned)(*d - '0');
        else if (base == 16 && *d >= 'a' && *d <= 'f')
            digit = (unsigned)(*d - 'a' + 10);
        else if (base == 16 && *d >= 'A' && *d <= 'F')
            digit = (unsigned)(*d - 'A' + 10);
        else
            break;
        v = v * base + digit;
    }
    return v;
}

size_t memmap_count(void)
{
    if (!boot_info || boot_info->version < 1 || !boot_info->memmap_paddr)
        return 0;
    return boot_info->memmap_entries;
}

const struct hvm_memmap_entry *memmap_entry(size_t i)
{
    const struct hvm_memmap_entry *table = (const void *)(uintptr_t)boot_info->memmap_paddr;
    return &table[i];
}

const char *memmap_type_name(uint32_t type)
{
    switch (type) {
    case 1: return "ram";
    case 2: return "reserved";
    case 3: return "acpi";
    case 4: return "nvs";
    case 5: return "unusable";
    case 6: return "disabled";
    case 7: return "pmem";
    default: return "unknown";
    }
}

void memmap_print(void)
{
    size_t n = memmap_count();
    printf("memmap: %u entries\n", (unsigned)n);
    for (size_t i = 0; i < n; i++) {
        const struct hvm_memmap_entry *e = memmap_entry(i);
        if (!e->size)
            continue;    /* QEMU's pvh.bin counts one empty entry */
        printf("memmap: [0x%016lx-0x%016lx] %s\n", (unsigned long)e->addr,
               (unsigned long)(e->addr + e->size - 1), memmap_type_name(e->type));
    }
}

uint64_t memmap_ram_top_below_4g(void)
{
    uint64_t top = 0;
    for (size_t i = 0; i < memmap_count(); i++) {
        const struct hvm_memmap_entry *e = memmap_entry(i);
        uint64_t end = e->addr + e->size;
        if (e->type != 1 || !e->size || e->addr >= (1ull << 32))
            continue;
        if (end > (1ull << 32))
            end = 1ull << 32;
        if (end > top)
            top = end;
    }
    return top;
}

uint64_t memmap_ram_above_4g(void)
{
    uint64_t total = 0;
    for (size_t i = 0; i < memmap_count(); i++) {
        const struct hvm_memmap_entry *e = memmap_entry(i);
        uint64_t end = e->addr + e->size;
        if (e->type != 1 || !e->size || end <= (1ull << 32))
            continue;
        total += end - (e->addr > (1ull << 32) ? e->addr : (1ull << 32));
    }
    return total;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    if (d < s) {
        while (n--)
            *d++ = *s++;
    } else {
        while (n--)
            d[n] = s[n];
    }
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    uint8_t *d = dst;
    while (n--)
        *d++ = (uint8_t)c;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i])
            return x[i] < y[i] ? -1 : 1;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (a[i] != b[i])
            return (unsigned char)a[i] < (unsigned char)b[i] ? -1 : 1;
        if (!a[i])
            return 0;
    }
    return 0;
}

int strcmp(const char *a, const char *b)
{
    return strncmp(a, b, (size_t)-1);
}

void spin_lock(spinlock_t *l)
{
    while (__atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE))
        while (l->locked)
            cpu_relax();
}

void spin_unlock(spinlock_t *l)
{
    __atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE);
}
