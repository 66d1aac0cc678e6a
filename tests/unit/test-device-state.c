/* Every platform device's and the vCPU's saved state round-trips through
 * save and load, and corrupted or invalid streams are refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "devices/device-state.h"
#include "kvm/kvm.h"
#include "state-check.h"

/* Save `state` and assert that loading it fails naming `expect`. */
static void assert_refused(const struct state_desc *d, const void *state, const char *expect)
{
    struct state_buf buf = { 0 };
    assert_int_equal(state_save(d, state, &buf), 0);
    state_check_load_fails(d, buf.data, buf.len, expect);
    state_buf_free(&buf);
}

static void serial_sample(struct serial_state *s)
{
    memset(s, 0, sizeof(*s));
    s->ier = 0x05;
    s->lcr = 0x03;
    s->mcr = 0x0b;
    s->lsr = 0x61;
    s->msr = 0xb0;
    s->scr = 0x5a;
    s->fcr = 0xc1;
    s->dll = 0x01;
    s->thr_pending = 1;
    s->rx_count = 3;
    memcpy(s->rx_fifo, "abc", 3);
}

static void test_serial(void **unused)
{
    (void)unused;
    struct serial_state s;
    serial_sample(&s);
    state_check_roundtrip(&serial_state_desc, &s);
    s.rx_count = UART_FIFO_SIZE + 1;
    assert_refused(&serial_state_desc, &s, "exceeds the 16-byte FIFO");
    serial_sample(&s);
    s.fcr = 0;
    assert_refused(&serial_state_desc, &s, "with the FIFO off");
    serial_sample(&s);
    s.lsr &= ~1;
    assert_refused(&serial_state_desc, &s, "data-ready disagrees");
}

static void test_i8042(void **unused)
{
    (void)unused;
    struct i8042_state s;
    memset(&s, 0, sizeof(s));
    s.status = 0x05;
    s.config = 0x45;
    s.pending_cmd = 0x60;
    s.queue_len = 2;
    s.queue[0] = 0xfa;
    s.queue[1] = 0xaa;
    state_check_roundtrip(&i8042_state_desc, &s);
    s.queue_len = I8042_QUEUE_SIZE + 1;
    assert_refused(&i8042_state_desc, &s, "queue_len");
    s.queue_len = 2;
    s.pending_cmd = 0x42;
    assert_refused(&i8042_state_desc, &s, "not a command that takes data");
}

static void test_rtc(void **unused)
{
    (void)unused;
    struct rtc_state s;
    memset(&s, 0, sizeof(s));
    s.index = 0x8b;
    for (unsigned i = 0; i < CMOS_SIZE; i++)
        s.cmos[i] = (uint8_t)(i * 7 + 1);
    s.offset = (uint64_t)-3600;
    state_check_roundtrip(&rtc_state_desc, &s);
    s.offset = 1ull << 50;
    assert_refused(&rtc_state_desc, &s, "clock offset");
}

static void test_acpi_pm(void **unused)
{
    (void)unused;
    struct acpi_pm_state s = { .sts = 0x100, .en = 0x100, .cnt = 0x1401 };
    state_check_roundtrip(&acpi_pm_state_desc, &s);
    s.cnt |= 1u << 13;
    assert_refused(&acpi_pm_state_desc, &s, "SLP_EN");
}

static void vcpu_sample(struct vcpu_state *s)
{
    memset(s, 0, sizeof(*s));
    s->regs.rip = 0xffffffff81000000ull;
    s->regs.rsp = 0x8000;
    s->regs.rflags = 0x202;
    s->sregs.cr0 = 0x80050033;
    s->sregs.cr3 = 0x9000;
    s->sregs.cr4 = 0x20;
    s->sregs.efer = 0xd01;
    s->sregs.apic_base = 0xfee00900;
    s->xsave[0] = 0x7f;
    s->xsave[1] = 0x03;
    s->xcrs.nr_xcrs = 1;
    s->xcrs.xcrs[0].value = 3;
    s->lapic.regs[0x20] = 1;
    s->mp_state = KVM_MP_STATE_RUNNABLE;
    s->nr_msrs = 2;
    s->msr_index[0] = 0xc0000082; /* LSTAR */
    s->msr_value[0] = 0xffffffff81a00000ull;
    s->msr_index[1] = 0x10;       /* TSC */
    s->msr_value[1] = 123456789;
}

static void test_vcpu(void **unused)
{
    (void)unused;
    struct vcpu_state *s = malloc(sizeof(*s));
    vcpu_sample(s);
    state_check_roundtrip(&vcpu_state_desc, s);
    s->msr_index[1] = 0x1b; /* APIC_BASE is not in the restored set */
    assert_refused(&vcpu_state_desc, s, "MSR 0x1b");
    vcpu_sample(s);
    s->nr_msrs = VCPU_STATE_MSRS + 1;
    assert_refused(&vcpu_state_desc, s, "MSRs, at most");
    vcpu_sample(s);
    s->mp_state = 77;
    assert_refused(&vcpu_state_desc, s, "mp_state 77");
    vcpu_sample(s);
    s->sregs.cr0 = 0x80000000;
    assert_refused(&vcpu_state_desc, s, "paging on with protection off");
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_serial),
        cmocka_unit_test(test_i8042),
        cmocka_unit_test(test_rtc),
        cmocka_unit_test(test_acpi_pm),
        cmocka_unit_test(test_vcpu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
