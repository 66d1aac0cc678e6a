/* KVM: the VM file descriptor, its irqchip, and vCPUs with their threads. */
#ifndef LIBVMM_KVM_H
#define LIBVMM_KVM_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct vmm_machine vmm_machine;

struct kvm_vm {
    int sys_fd;                    /* /dev/kvm */
    int vm_fd;
    int run_size;                  /* mmap size of struct kvm_run */
    struct kvm_cpuid2 *supported;  /* KVM_GET_SUPPORTED_CPUID */
    struct kvm_irqchip initial_chips[3];   /* PIC master, slave, IOAPIC */
    struct kvm_pit_state2 initial_pit;
};

int kvm_vm_create(struct kvm_vm *vm);
void kvm_vm_destroy(struct kvm_vm *vm);
int kvm_vm_set_memory(struct kvm_vm *vm, unsigned slot, uint64_t gpa, uint64_t size, void *hva);
int kvm_vm_irq_line(struct kvm_vm *vm, unsigned gsi, bool level);
/* Put the PIC, IOAPIC and PIT back to their power-on state. */
int kvm_vm_reset_irqchip(struct kvm_vm *vm);

/* ---- CPU models -------------------------------------------------------- */
struct cpu_model;
const struct cpu_model *cpu_model_find(const char *name);
/* Fill `out` (capacity `max` entries) with the CPUID the vCPU `apic_id` of
 * `nr_cpus` sees under `model`. */
int cpu_model_build_cpuid(const struct cpu_model *model, const struct kvm_cpuid2 *supported,
                          unsigned apic_id, unsigned nr_cpus, struct kvm_cpuid2 *out,
                          unsigned max);
/* Error text listing the known models, for "unknown cpu model" messages. */
const char *cpu_model_names(void);

/* ---- vCPUs ------------------------------------------------------------- */
#define VCPU_MAX_CPUID 256

struct vcpu {
    vmm_machine *m;
    unsigned index;
    int fd;
    struct kvm_run *run;
    pthread_t thread;
    bool thread_started;
    atomic_bool in_run;
    struct kvm_cpuid2 *cpuid;
};

int vcpu_create(vmm_machine *m, unsigned index, const struct cpu_model *model,
                struct vcpu **out);
void vcpu_destroy(struct vcpu *v);
/* Power-on state: registers, MSRs, LAPIC, and (APs) waiting for SIPI. */
int vcpu_reset(struct vcpu *v);
int vcpu_start(struct vcpu *v);
/* Make the vCPU leave KVM_RUN soon (immediate_exit plus the kick signal). */
void vcpu_kick(struct vcpu *v);
void vcpu_join(struct vcpu *v);

/* Boot entry states. */
int vcpu_set_pvh_entry(struct vcpu *v, uint32_t entry, uint32_t start_info);
int vcpu_set_linux64_entry(struct vcpu *v, uint64_t entry, uint64_t boot_params,
                           uint64_t gdt_base, uint64_t pml4);

/* ---- saved vCPU state -------------------------------------------------- */
#define VCPU_STATE_MSRS 16
struct vcpu_state {
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    /* struct kvm_xsave as KVM_GET_XSAVE fills it (its legacy 4 KiB size; a
     * byte array because the struct ends in a flexible array). */
    uint8_t xsave[4096] __attribute__((aligned(8)));
    struct kvm_xcrs xcrs;
    struct kvm_lapic_state lapic;
    struct kvm_vcpu_events events;
    struct kvm_debugregs debugregs;
    uint32_t mp_state;
    uint32_t nr_msrs;
    uint32_t msr_index[VCPU_STATE_MSRS];
    uint64_t msr_value[VCPU_STATE_MSRS];
};
extern const struct state_desc vcpu_state_desc;
int vcpu_save_state(struct vcpu *v, struct vcpu_state *s);
int vcpu_load_state(struct vcpu *v, const struct vcpu_state *s);

#endif
