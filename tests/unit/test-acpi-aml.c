/* The AML builder (lib/machine/acpi-aml.c) byte by byte, and the DSDT/MCFG
 * x86_build_acpi writes for `pc` (PCI0) and `microvm` with a virtio-mmio
 * device (LNRO0005), disassembled by ACPICA's iasl when it is installed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "devices/pci.h"
#include "devices/virtio/virtio.h"
#include "machine/acpi-aml.h"
#include "machine/machine.h"
#include "machine/x86.h"

static void expect_bytes(struct aml *a, const uint8_t *want, size_t n)
{
    assert_int_equal(aml_finish(a), 0);
    assert_int_equal(a->len, n);
    assert_memory_equal(a->data, want, n);
    aml_free(a);
    aml_init(a);
}

static void test_integers_and_names(void **s)
{
    (void)s;
    struct aml a;
    aml_init(&a);
    aml_integer(&a, 0);
    aml_integer(&a, 1);
    aml_integer(&a, 0x12);
    aml_integer(&a, 0x1234);
    aml_integer(&a, 0x12345678);
    aml_integer(&a, 0x100000000ull);
    static const uint8_t ints[] = { 0x00, 0x01, 0x0a, 0x12, 0x0b, 0x34, 0x12, 0x0c, 0x78, 0x56, 0x34,
                                    0x12, 0x0e, 0, 0, 0, 0, 1, 0, 0, 0 };
    expect_bytes(&a, ints, sizeof(ints));
    aml_namestring(&a, "\\_SB.PCI0");
    aml_namestring(&a, "_S5");
    aml_namestring(&a, "A.B.C");
    static const uint8_t names[] = { '\\', 0x2e, '_', 'S', 'B', '_', 'P', 'C', 'I', '0',
                                     '_', 'S', '5', '_',
                                     0x2f, 3, 'A', '_', '_', '_', 'B', '_', '_', '_', 'C', '_', '_', '_' };
    expect_bytes(&a, names, sizeof(names));
    aml_eisaid(&a, "PNP0A03");   /* the well-known 0x030AD041 */
    static const uint8_t eisa[] = { 0x0c, 0x41, 0xd0, 0x0a, 0x03 };
    expect_bytes(&a, eisa, sizeof(eisa));
    aml_free(&a);
}

static void test_pkglength(void **s)
{
    (void)s;
    struct aml a;
    aml_init(&a);
    aml_package_open(&a, 2);
    aml_integer(&a, 5);
    aml_integer(&a, 0);
    aml_close(&a);
    static const uint8_t small[] = { 0x12, 0x05, 0x02, 0x0a, 0x05, 0x00 };
    expect_bytes(&a, small, sizeof(small));
    /* 100 bytes of body: a two-byte PkgLength of 102 = 0x66. */
    aml_package_open(&a, 99);
    for (int i = 0; i < 99; i++)
        aml_integer(&a, 0);
    aml_close(&a);
    assert_int_equal(aml_finish(&a), 0);
    assert_int_equal(a.len, 1 + 2 + 100);
    assert_int_equal(a.data[1], 0x40 | (102 & 0xf));
    assert_int_equal(a.data[2], 102 >> 4);
    aml_free(&a);
    /* Unbalanced objects are an error. */
    aml_init(&a);
    aml_device_open(&a, "DEV0");
    assert_int_equal(aml_finish(&a), -1);
    aml_free(&a);
}

static void test_resources(void **s)
{
    (void)s;
    struct aml a;
    aml_init(&a);
    struct aml_res r;
    aml_res_init(&r);
    aml_res_memory32_fixed(&r, 0xfeb00000, 0x200);
    aml_res_interrupt(&r, 16, 1, 0);
    aml_name_resources(&a, "_CRS", &r);
    static const uint8_t want[] = {
        0x08, '_', 'C', 'R', 'S', 0x11, 0x1a, 0x0a, 0x17,
        0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0xb0, 0xfe, 0x00, 0x02, 0x00, 0x00,
        0x89, 0x06, 0x00, 0x01, 0x01, 0x10, 0x00, 0x00, 0x00,
        0x79, 0x00,
    };
    expect_bytes(&a, want, sizeof(want));
    aml_free(&a);
}

/* ---- whole tables --------------------------------------------------------- */

static const uint8_t *find_table(vmm_machine *m, const char sig[4])
{
    const uint8_t *rsdp = guest_memory_ptr(&m->mem, m->rsdp_addr, 36);
    assert_non_null(rsdp);
    uint64_t xsdt_addr;
    memcpy(&xsdt_addr, rsdp + 24, 8);
    const uint8_t *xsdt = guest_memory_ptr(&m->mem, xsdt_addr, 36);
    uint32_t len;
    memcpy(&len, xsdt + 4, 4);
    for (uint32_t off = 36; off + 8 <= len; off += 8) {
        uint64_t addr;
        memcpy(&addr, xsdt + off, 8);
        const uint8_t *t = guest_memory_ptr(&m->mem, addr, 36);
        if (!memcmp(t, sig, 4))
            return t;
        if (!memcmp(t, "FACP", 4) && !memcmp(sig, "DSDT", 4)) {
            uint64_t dsdt;
            memcpy(&dsdt, t + 140, 8);
            return guest_memory_ptr(&m->mem, dsdt, 36);
        }
    }
    return NULL;
}

static void check_sum(const uint8_t *t)
{
    uint32_t len;
    memcpy(&len, t + 4, 4);
    uint8_t sum = 0;
    for (uint32_t i = 0; i < len; i++)
        sum = (uint8_t)(sum + t[i]);
    assert_int_equal(sum, 0);
}

/* Disassemble with iasl; returns the .dsl text or NULL when iasl is absent. */
static char *disassemble(const uint8_t *t, const char *name)
{
    if (system("command -v iasl >/dev/null 2>&1") != 0)
        return NULL;
    char dir[] = "/tmp/acpi-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256], cmd[768];
    snprintf(path, sizeof(path), "%s/%s.dat", dir, name);
    uint32_t len;
    memcpy(&len, t + 4, 4);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(t, 1, len, f), len);
    fclose(f);
    snprintf(cmd, sizeof(cmd), "cd %s && iasl -d %s.dat > iasl.log 2>&1", dir, name);
    if (system(cmd) != 0) {
        snprintf(cmd, sizeof(cmd), "cat %s/iasl.log", dir);
        assert_int_equal(system(cmd), 0);
        fail_msg("iasl could not disassemble %s", name);
    }
    snprintf(path, sizeof(path), "%s/%s.dsl", dir, name);
    f = fopen(path, "r");
    assert_non_null(f);
    char *text = calloc(1, 1 << 20);
    size_t n = fread(text, 1, (1 << 20) - 1, f);
    text[n] = 0;
    fclose(f);
    if (getenv("ACPI_KEEP")) {
        fprintf(stderr, "kept %s\n", dir);   /* to read the disassembly */
    } else {
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        assert_int_equal(system(cmd), 0);
    }
    return text;
}

static void expect_text(const char *text, const char *needle)
{
    if (!text)
        fail_msg("no disassembly to look for '%s' in", needle);
    else if (!strstr(text, needle))
        fail_msg("disassembly lacks '%s':\n%s", needle, text);
}

static vmm_machine *fake_machine(void)
{
    vmm_machine *m = calloc(1, sizeof(*m));
    assert_int_equal(guest_memory_init(&m->mem, 16u << 20, 0), 0);
    m->ram_below_4g = 16u << 20;
    return m;
}

static void free_fake(vmm_machine *m)
{
    guest_memory_destroy(&m->mem);
    free(m);
}

static void test_pc_tables(void **s)
{
    (void)s;
    vmm_machine *m = fake_machine();
    struct pci_bus bus;
    memset(&bus, 0, sizeof(bus));
    m->pci = &bus;
    assert_int_equal(x86_build_acpi(m), 0);
    const uint8_t *mcfg = find_table(m, "MCFG"), *dsdt = find_table(m, "DSDT");
    assert_non_null(mcfg);
    assert_non_null(dsdt);
    check_sum(mcfg);
    check_sum(dsdt);
    uint64_t ecam;
    memcpy(&ecam, mcfg + 44, 8);
    assert_int_equal(ecam, PCI_ECAM_BASE);
    struct e820_entry e820[E820_MAX];
    unsigned n = x86_build_e820(m, e820);
    bool reserved = false;
    for (unsigned i = 0; i < n; i++)
        reserved |= e820[i].addr == PCI_ECAM_BASE && e820[i].type == E820_RESERVED;
    assert_true(reserved);
    char *text = disassemble(dsdt, "dsdt");
    if (text) {
        expect_text(text, "Device (PCI0)");
        expect_text(text, "Name (_HID, EisaId (\"PNP0A08\")");
        expect_text(text, "Name (_CID, EisaId (\"PNP0A03\")");
        expect_text(text, "Name (_SEG, Zero)");
        expect_text(text, "Name (_BBN, Zero)");
        expect_text(text, "WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,");
        expect_text(text, "0xC0000000,         // Range Minimum");
        expect_text(text, "0xDFFFFFFF,         // Range Maximum");
        expect_text(text, "Name (_PRT, Package (0x80)");
        expect_text(text, "0x001FFFFF,");
        expect_text(text, "Name (_S5, Package (0x04)");
        free(text);
        text = disassemble(mcfg, "mcfg");
        expect_text(text, "Base Address : 00000000E0000000");
        expect_text(text, "End Bus Number : 00");
        free(text);
    } else {
        print_message("iasl not installed (Debian: acpica-tools): tables checked without it\n");
    }
    free_fake(m);
}

static void test_microvm_tables(void **s)
{
    (void)s;
    vmm_machine *m = fake_machine();
    struct virtio_proxy *p = calloc(1, sizeof(*p));
    p->pci.dev.cls = &device_virtio_rng_mmio.dc;
    p->pci.dev.m = m;
    p->pci.dev.realized = true;
    p->t.mmio.slot = 2;
    p->t.mmio.base = 0xfeb00400;
    p->t.mmio.gsi = 18;
    m->devices = &p->pci.dev;
    assert_int_equal(x86_build_acpi(m), 0);
    assert_null(find_table(m, "MCFG"));
    const uint8_t *dsdt = find_table(m, "DSDT");
    check_sum(dsdt);
    char *text = disassemble(dsdt, "dsdt");
    if (text) {
        expect_text(text, "Device (VR02)");
        expect_text(text, "Name (_HID, \"LNRO0005\")");
        expect_text(text, "Memory32Fixed (ReadWrite,");
        expect_text(text, "0xFEB00400,         // Address Base");
        expect_text(text, "Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive, ,, )");
        expect_text(text, "0x00000012,");
        free(text);
    }
    /* Without devices the DSDT is exactly the _S5 package it always was. */
    m->devices = NULL;
    assert_int_equal(x86_build_acpi(m), 0);
    dsdt = find_table(m, "DSDT");
    static const uint8_t s5[] = { 0x08, '_', 'S', '5', '_', 0x12, 0x08, 0x04,
                                  0x0a, 5, 0x0a, 5, 0x00, 0x00 };
    uint32_t len;
    memcpy(&len, dsdt + 4, 4);
    assert_int_equal(len, 36 + sizeof(s5));
    assert_memory_equal(dsdt + 36, s5, sizeof(s5));
    free(p);
    free_fake(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_integers_and_names),
        cmocka_unit_test(test_pkglength),
        cmocka_unit_test(test_resources),
        cmocka_unit_test(test_pc_tables),
        cmocka_unit_test(test_microvm_tables),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
