/* vCPUs: one thread each, running KVM_RUN and dispatching exits to the
 * machine's address spaces. */
#include <errno.h>
#include <stdio.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include "kvm/kvm.h"
#include "machine/machine.h"
#include "migration/state.h"

#define KICK_SIGNAL SIGUSR2

/* MSRs set at power-on and carried in saved state. */
#define MSR_IA32_TSC            0x10
#define MSR_IA32_SYSENTER_CS    0x174
#define MSR_IA32_SYSENTER_ESP   0x175
#define MSR_IA32_SYSENTER_EIP   0x176
#define MSR_IA32_MISC_ENABLE    0x1a0
#define MSR_MTRR_DEF_TYPE       0x2ff
#define MSR_IA32_CR_PAT         0x277
#define MSR_STAR                0xc0000081
#define MSR_LSTAR               0xc0000082
#define MSR_CSTAR               0xc0000083
#define MSR_SYSCALL_MASK        0xc0000084
#define MSR_KERNEL_GS_BASE      0xc0000102
#define MSR_TSC_AUX             0xc0000103
#define MSR_KVM_WALL_CLOCK_NEW  0x4b564d00
#define MSR_KVM_SYSTEM_TIME_NEW 0x4b564d01

static const uint32_t saved_msrs[] = {
    MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP,
    MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SYSCALL_MASK, MSR_KERNEL_GS_BASE,
    MSR_IA32_TSC, MSR_IA32_MISC_ENABLE, MSR_MTRR_DEF_TYPE, MSR_IA32_CR_PAT,
    MSR_TSC_AUX, MSR_KVM_SYSTEM_TIME_NEW, MSR_KVM_WALL_CLOCK_NEW,
};

static void kick_handler(int sig)
{
    (void)sig; /* only interrupts KVM_RUN */
}

static pthread_once_t kick_once = PTHREAD_ONCE_INIT;

static void install_kick_handler(void)
{
    struct sigaction sa = { .sa_handler = kick_handler, .sa_flags = SA_RESTART };
    sigemptyset(&sa.sa_mask);
    sigaction(KICK_SIGNAL, &sa, NULL);
}

int vcpu_create(vmm_machine *m, unsigned index, const struct cpu_model *model, struct vcpu **out)
{
    struct vcpu *v = calloc(1, sizeof(*v));
    if (!v)
        return vmm_set_error(ENOMEM, "out of memory");
    v->m = m;
    v->index = index;
    v->run = MAP_FAILED;
    v->fd = ioctl(m->vm.vm_fd, KVM_CREATE_VCPU, (unsigned long)index);
    if (v->fd < 0) {
        vmm_set_error_errno("KVM_CREATE_VCPU %u", index);
        goto fail;
    }
    v->run = mmap(NULL, (size_t)m->vm.run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
    if (v->run == MAP_FAILED) {
        vmm_set_error_errno("mmap of vCPU %u's run area", index);
        goto fail;
    }
    v->cpuid = calloc(1, sizeof(*v->cpuid) + VCPU_MAX_CPUID * sizeof(v->cpuid->entries[0]));
    if (!v->cpuid) {
        vmm_set_error(ENOMEM, "out of memory");
        goto fail;
    }
    if (cpu_model_build_cpuid(model, m->vm.supported, index, m->nr_vcpus, v->cpuid,
                              VCPU_MAX_CPUID) < 0)
        goto fail;
    if (ioctl(v->fd, KVM_SET_CPUID2, v->cpuid) < 0) {
        vmm_set_error_errno("KVM_SET_CPUID2 on vCPU %u", index);
        goto fail;
    }
    *out = v;
    return 0;
fail:
    vcpu_destroy(v);
    return -1;
}

void vcpu_destroy(struct vcpu *v)
{
    if (!v)
        return;
    if (v->run != MAP_FAILED && v->run)
        munmap(v->run, (size_t)v->m->vm.run_size);
    if (v->fd >= 0)
        close(v->fd);
    free(v->cpuid);
    free(v);
}

/* A kvm_msrs with room for n entries (the struct ends in a flexible array). */
static struct kvm_msrs *msrs_alloc(unsigned n)
{
    struct kvm_msrs *msrs = calloc(1, sizeof(*msrs) + n * sizeof(msrs->entries[0]));
    if (msrs)
        msrs->nmsrs = n;
    else
        vmm_set_error(ENOMEM, "out of memory");
    return msrs;
}

static int set_msrs(struct vcpu *v, const uint32_t *index, const uint64_t *value, unsigned n)
{
    struct kvm_msrs *msrs = msrs_alloc(n);
    if (!msrs)
        return -1;
    for (unsigned i = 0; i < n; i++) {
        msrs->entries[i].index = index[i];
        msrs->entries[i].data = value[i];
    }
    int done = ioctl(v->fd, KVM_SET_MSRS, msrs);
    int ret = 0;
    if (done < 0)
        ret = vmm_set_error_errno("KVM_SET_MSRS on vCPU %u", v->index);
    else if ((unsigned)done != n)
        ret = vmm_set_error(EINVAL, "vCPU %u refused MSR 0x%x", v->index, index[done]);
    free(msrs);
    return ret;
}

static int reset_msrs(struct vcpu *v)
{
    static const uint32_t index[] = {
        MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP,
        MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SYSCALL_MASK, MSR_KERNEL_GS_BASE,
        MSR_IA32_TSC, MSR_IA32_MISC_ENABLE, MSR_MTRR_DEF_TYPE,
    };
    /* Fast strings on; MTRRs enabled with write-back as the default type,
     * as firmware leaves them (there is no firmware on direct boot). */
    static const uint64_t value[] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, (1u << 11) | 6 };
    return set_msrs(v, index, value, VMM_ARRAY_SIZE(index));
}

/* LINT0 delivers the 8259's ExtINT, LINT1 NMI: what firmware sets up. */
static int reset_lapic(struct vcpu *v)
{
    struct kvm_lapic_state lapic;
    if (ioctl(v->fd, KVM_GET_LAPIC, &lapic) < 0)
        return vmm_set_error_errno("KVM_GET_LAPIC");
    uint32_t *lvt_lint0 = (uint32_t *)&lapic.regs[0x350];
    uint32_t *lvt_lint1 = (uint32_t *)&lapic.regs[0x360];
    *lvt_lint0 = (*lvt_lint0 & ~0x700u & ~(1u << 16)) | (7u << 8);
    *lvt_lint1 = (*lvt_lint1 & ~0x700u & ~(1u << 16)) | (4u << 8);
    if (ioctl(v->fd, KVM_SET_LAPIC, &lapic) < 0)
        return vmm_set_error_errno("KVM_SET_LAPIC");
    return 0;
}

static void flat_segment(struct kvm_segment *s, uint16_t selector, uint8_t type, bool code64,
                         bool db)
{
    *s = (struct kvm_segment){
        .base = 0, .limit = 0xffffffff, .selector = selector, .type = type,
        .present = 1, .dpl = 0, .db = db, .s = 1, .l = code64, .g = 1,
    };
}

int vcpu_reset(struct vcpu *v)
{
    struct kvm_sregs sregs;
    if (ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0)
        return vmm_set_error_errno("KVM_GET_SREGS");
    /* Architectural reset state: real mode at f000:fff0. */
    struct kvm_segment cs = { .base = 0xffff0000, .limit = 0xffff, .selector = 0xf000,
                              .type = 0xb, .present = 1, .s = 1 };
    struct kvm_segment ds = { .base = 0, .limit = 0xffff, .type = 0x3, .present = 1, .s = 1 };
    sregs.cs = cs;
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = ds;
    sregs.cr0 = 0x60000010;
    sregs.cr2 = sregs.cr3 = sregs.cr4 = 0;
    sregs.efer = 0;
    sregs.apic_base = 0xfee00000 | (1u << 11) | (v->index == 0 ? (1u << 8) : 0);
    memset(sregs.interrupt_bitmap, 0, sizeof(sregs.interrupt_bitmap));
    if (ioctl(v->fd, KVM_SET_SREGS, &sregs) < 0)
        return vmm_set_error_errno("KVM_SET_SREGS");
    struct kvm_regs regs = { .rip = 0xfff0, .rflags = 2, .rdx = 0x600 };
    if (ioctl(v->fd, KVM_SET_REGS, &regs) < 0)
        return vmm_set_error_errno("KVM_SET_REGS");
    struct kvm_fpu fpu = { .fcw = 0x37f, .mxcsr = 0x1f80 };
    if (ioctl(v->fd, KVM_SET_FPU, &fpu) < 0)
        return vmm_set_error_errno("KVM_SET_FPU");
    if (reset_msrs(v) < 0 || reset_lapic(v) < 0)
        return -1;
    struct kvm_vcpu_events events;
    memset(&events, 0, sizeof(events));
    if (ioctl(v->fd, KVM_SET_VCPU_EVENTS, &events) < 0)
        return vmm_set_error_errno("KVM_SET_VCPU_EVENTS");
    /* The BSP runs; application processors wait for INIT/SIPI. */
    struct kvm_mp_state mp = { v->index == 0 ? KVM_MP_STATE_RUNNABLE : KVM_MP_STATE_UNINITIALIZED };
    if (ioctl(v->fd, KVM_SET_MP_STATE, &mp) < 0)
        return vmm_set_error_errno("KVM_SET_MP_STATE");
    return 0;
}

int vcpu_set_pvh_entry(struct vcpu *v, uint32_t entry, uint32_t start_info)
{
    struct kvm_sregs sregs;
    if (ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0)
        return vmm_set_error_errno("KVM_GET_SREGS");
    /* PVH: 32-bit protected mode, flat segments, paging off. */
    flat_segment(&sregs.cs, 0x10, 0xb, false, true);
    flat_segment(&sregs.ds, 0x18, 0x3, false, true);
    sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
    sregs.tr = (struct kvm_segment){ .limit = 0x67, .selector = 0x20, .type = 0xb, .present = 1 };
    sregs.cr0 = 0x11; /* PE | ET */
    sregs.cr4 = 0;
    sregs.efer = 0;
    if (ioctl(v->fd, KVM_SET_SREGS, &sregs) < 0)
        return vmm_set_error_errno("KVM_SET_SREGS");
    struct kvm_regs regs = { .rip = entry, .rbx = start_info, .rflags = 2 };
    if (ioctl(v->fd, KVM_SET_REGS, &regs) < 0)
        return vmm_set_error_errno("KVM_SET_REGS");
    return 0;
}

int vcpu_set_linux64_entry(struct vcpu *v, uint64_t entry, uint64_t boot_params,
                           uint64_t gdt_base, uint64_t pml4)
{
    struct kvm_sregs sregs;
    if (ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0)
        return vmm_set_error_errno("KVM_GET_SREGS");
    /* Linux's 64-bit boot protocol: long mode, identity paging, __BOOT_CS
     * (0x10) and __BOOT_DS (0x18) from the GDT at gdt_base. */
    flat_segment(&sregs.cs, 0x10, 0xb, true, false);
    flat_segment(&sregs.ds, 0x18, 0x3, false, true);
    sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
    sregs.tr = (struct kvm_segment){ .limit = 0x67, .selector = 0x20, .type = 0xb, .present = 1 };
    sregs.gdt.base = gdt_base;
    sregs.gdt.limit = 4 * 8 - 1;
    sregs.cr3 = pml4;
    sregs.cr4 = 1u << 5;                    /* PAE */
    sregs.cr0 = 0x80000011u | (1u << 16);   /* PG | PE | ET | WP */
    sregs.efer = (1u << 8) | (1u << 10);    /* LME | LMA */
    if (ioctl(v->fd, KVM_SET_SREGS, &sregs) < 0)
        return vmm_set_error_errno("KVM_SET_SREGS");
    struct kvm_regs regs = { .rip = entry, .rsi = boot_params, .rflags = 2 };
    if (ioctl(v->fd, KVM_SET_REGS, &regs) < 0)
        return vmm_set_error_errno("KVM_SET_REGS");
    return 0;
}

/* ---- the run loop ------------------------------------------------------ */

static void handle_io(struct vcpu *v)
{
    struct kvm_run *run = v->run;
    uint8_t *data = (uint8_t *)run + run->io.data_offset;
    unsigned size = run->io.size;
    for (uint32_t i = 0; i < run->io.count; i++, data += size) {
        uint64_t value = 0;
        if (run->io.direction == KVM_EXIT_IO_OUT) {
            memcpy(&value, data, size);
            address_space_write(&v->m->pio, run->io.port, size, value);
        } else {
            address_space_read(&v->m->pio, run->io.port, size, &value);
            memcpy(data, &value, size);
        }
    }
}

static void handle_mmio(struct vcpu *v)
{
    struct kvm_run *run = v->run;
    unsigned len = run->mmio.len;
    if (len == 0 || len > 8)
        return;
    uint64_t value = 0;
    if (run->mmio.is_write) {
        memcpy(&value, run->mmio.data, len);
        address_space_write(&v->m->mmio, run->mmio.phys_addr, len, value);
    } else {
        address_space_read(&v->m->mmio, run->mmio.phys_addr, len, &value);
        memcpy(run->mmio.data, &value, len);
    }
}

static void handle_internal_error(struct vcpu *v)
{
    struct kvm_run *run = v->run;
    struct kvm_regs regs;
    uint64_t rip = ioctl(v->fd, KVM_GET_REGS, &regs) == 0 ? regs.rip : 0;
    machine_end(v->m, VMM_EXIT_ERROR, 0,
                "vCPU %u: KVM internal error (suberror %u%s) at rip 0x%" PRIx64, v->index,
                run->internal.suberror,
                run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION ?
                    ": the instruction could not be emulated" : "",
                rip);
}

/* Handle one exit; returns false when the loop should end. */
static bool handle_exit(struct vcpu *v)
{
    struct kvm_run *run = v->run;
    switch (run->exit_reason) {
    case KVM_EXIT_IO:
        handle_io(v);
        return true;
    case KVM_EXIT_MMIO:
        handle_mmio(v);
        return true;
    case KVM_EXIT_INTR:
        return true;
    case KVM_EXIT_HLT:
        machine_end(v->m, VMM_EXIT_POWEROFF, 0, "vCPU %u halted with interrupts off", v->index);
        return false;
    case KVM_EXIT_SHUTDOWN:
        machine_guest_reset(v->m, "triple fault");
        return true;
    case KVM_EXIT_SYSTEM_EVENT:
        if (run->system_event.type == KVM_SYSTEM_EVENT_RESET)
            machine_guest_reset(v->m, "system reset event");
        else
            machine_end(v->m, VMM_EXIT_POWEROFF, 0, "guest powered off");
        return true;
    case KVM_EXIT_INTERNAL_ERROR:
        handle_internal_error(v);
        return false;
    case KVM_EXIT_FAIL_ENTRY:
        machine_end(v->m, VMM_EXIT_ERROR, 0, "vCPU %u: entry failed (hardware reason 0x%llx)",
                    v->index, (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
        return false;
    default:
        machine_end(v->m, VMM_EXIT_ERROR, 0, "vCPU %u: unexpected KVM exit %u", v->index,
                    run->exit_reason);
        return false;
    }
}

static void *vcpu_thread(void *opaque)
{
    struct vcpu *v = opaque;
    char name[16];
    snprintf(name, sizeof(name), "vcpu %u", v->index);
    pthread_setname_np(pthread_self(), name);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, KICK_SIGNAL);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);

    while (machine_vcpu_checkpoint(v->m)) {
        int ret = ioctl(v->fd, KVM_RUN, 0);
        if (ret < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                v->run->immediate_exit = 0;
                continue;
            }
            machine_end(v->m, VMM_EXIT_ERROR, 0, "vCPU %u: KVM_RUN failed: %s", v->index,
                        strerror(errno));
            break;
        }
        if (!handle_exit(v))
            break;
    }
    return NULL;
}

int vcpu_start(struct vcpu *v)
{
    pthread_once(&kick_once, install_kick_handler);
    /* Block the kick signal while creating so it is only unblocked inside
     * the new thread; restore the caller's mask afterwards. */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, KICK_SIGNAL);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    int err = pthread_create(&v->thread, NULL, vcpu_thread, v);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        errno = err;
        return vmm_set_error_errno("cannot start vCPU %u's thread", v->index);
    }
    v->thread_started = true;
    return 0;
}

void vcpu_kick(struct vcpu *v)
{
    __atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
    if (v->thread_started)
        pthread_kill(v->thread, KICK_SIGNAL);
}

void vcpu_join(struct vcpu *v)
{
    if (v->thread_started) {
        pthread_join(v->thread, NULL);
        v->thread_started = false;
    }
}

/* ---- saved state ------------------------------------------------------- */

_Static_assert(VMM_ARRAY_SIZE(saved_msrs) <= VCPU_STATE_MSRS, "saved MSRs fit the state");

static bool msr_is_saved(uint32_t index)
{
    for (size_t i = 0; i < VMM_ARRAY_SIZE(saved_msrs); i++)
        if (saved_msrs[i] == index)
            return true;
    return false;
}

static int vcpu_state_post_load(void *opaque, uint32_t version)
{
    (void)version;
    struct vcpu_state *s = opaque;
    if (s->mp_state > KVM_MP_STATE_AP_RESET_HOLD)
        return vmm_set_error(EINVAL, "vcpu: mp_state %u is not a valid state", s->mp_state);
    if (s->nr_msrs > VCPU_STATE_MSRS)
        return vmm_set_error(EINVAL, "vcpu: %u MSRs, at most %u", s->nr_msrs, VCPU_STATE_MSRS);
    for (uint32_t i = 0; i < s->nr_msrs; i++)
        if (!msr_is_saved(s->msr_index[i]))
            return vmm_set_error(EINVAL, "vcpu: MSR 0x%x is not one libvmm restores",
                                 s->msr_index[i]);
    if ((s->sregs.cr0 & 0x80000000u) && !(s->sregs.cr0 & 1))
        return vmm_set_error(EINVAL, "vcpu: cr0 has paging on with protection off");
    if ((s->sregs.efer & (1u << 10)) && !(s->sregs.cr0 & 0x80000000u))
        return vmm_set_error(EINVAL, "vcpu: long mode active with paging off");
    return 0;
}

static const struct state_field vcpu_fields[] = {
    STATE_BYTES_FIELD(struct vcpu_state, regs),
    STATE_BYTES_FIELD(struct vcpu_state, sregs),
    STATE_BYTES_FIELD(struct vcpu_state, xsave),
    STATE_BYTES_FIELD(struct vcpu_state, xcrs),
    STATE_BYTES_FIELD(struct vcpu_state, lapic),
    STATE_BYTES_FIELD(struct vcpu_state, events),
    STATE_BYTES_FIELD(struct vcpu_state, debugregs),
    STATE_FIELD(struct vcpu_state, mp_state, STATE_U32),
    STATE_FIELD(struct vcpu_state, nr_msrs, STATE_U32),
    STATE_ARRAY(struct vcpu_state, msr_index, STATE_U32_ARRAY),
    STATE_ARRAY(struct vcpu_state, msr_value, STATE_U64_ARRAY),
    STATE_END,
};

const struct state_desc vcpu_state_desc = {
    .name = "vcpu",
    .version = 1,
    .min_version = 1,
    .size = sizeof(struct vcpu_state),
    .fields = vcpu_fields,
    .post_load = vcpu_state_post_load,
};

static int get_msrs(struct vcpu *v, struct vcpu_state *s)
{
    unsigned n = VMM_ARRAY_SIZE(saved_msrs);
    struct kvm_msrs *msrs = msrs_alloc(n);
    if (!msrs)
        return -1;
    for (unsigned i = 0; i < n; i++)
        msrs->entries[i].index = saved_msrs[i];
    int done = ioctl(v->fd, KVM_GET_MSRS, msrs);
    if (done < 0) {
        free(msrs);
        return vmm_set_error_errno("KVM_GET_MSRS");
    }
    s->nr_msrs = (uint32_t)done; /* KVM stops at the first MSR it lacks */
    for (int i = 0; i < done; i++) {
        s->msr_index[i] = msrs->entries[i].index;
        s->msr_value[i] = msrs->entries[i].data;
    }
    free(msrs);
    return 0;
}

int vcpu_save_state(struct vcpu *v, struct vcpu_state *s)
{
    memset(s, 0, sizeof(*s));
    struct kvm_mp_state mp;
    if (ioctl(v->fd, KVM_GET_REGS, &s->regs) < 0 || ioctl(v->fd, KVM_GET_SREGS, &s->sregs) < 0 ||
        ioctl(v->fd, KVM_GET_XSAVE, s->xsave) < 0 || ioctl(v->fd, KVM_GET_XCRS, &s->xcrs) < 0 ||
        ioctl(v->fd, KVM_GET_LAPIC, &s->lapic) < 0 ||
        ioctl(v->fd, KVM_GET_VCPU_EVENTS, &s->events) < 0 ||
        ioctl(v->fd, KVM_GET_DEBUGREGS, &s->debugregs) < 0 ||
        ioctl(v->fd, KVM_GET_MP_STATE, &mp) < 0)
        return vmm_set_error_errno("saving vCPU %u", v->index);
    s->mp_state = mp.mp_state;
    return get_msrs(v, s);
}

int vcpu_load_state(struct vcpu *v, const struct vcpu_state *s)
{
    struct kvm_mp_state mp = { s->mp_state };
    if (ioctl(v->fd, KVM_SET_SREGS, &s->sregs) < 0 || ioctl(v->fd, KVM_SET_REGS, &s->regs) < 0 ||
        ioctl(v->fd, KVM_SET_XSAVE, s->xsave) < 0 || ioctl(v->fd, KVM_SET_XCRS, &s->xcrs) < 0 ||
        ioctl(v->fd, KVM_SET_LAPIC, &s->lapic) < 0 ||
        ioctl(v->fd, KVM_SET_VCPU_EVENTS, &s->events) < 0 ||
        ioctl(v->fd, KVM_SET_DEBUGREGS, &s->debugregs) < 0 ||
        ioctl(v->fd, KVM_SET_MP_STATE, &mp) < 0)
        return vmm_set_error_errno("loading vCPU %u", v->index);
    return set_msrs(v, s->msr_index, s->msr_value, s->nr_msrs);
}
