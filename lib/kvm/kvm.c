/* The KVM VM: /dev/kvm, the VM fd, memory slots and the in-kernel irqchip. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include "kvm/kvm.h"
#include "util/util.h"

/* Addresses KVM needs for Intel's real-mode emulation, in the MMIO hole. */
#define KVM_TSS_ADDR          0xfffbd000u
#define KVM_IDENTITY_MAP_ADDR 0xfffbc000ull

static int open_kvm(void)
{
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd >= 0)
        return fd;
    if (errno == ENOENT)
        return vmm_set_error(ENOENT, "/dev/kvm does not exist: KVM is not available on this host "
                             "(is the kvm module loaded and virtualization enabled?)");
    if (errno == EACCES || errno == EPERM)
        return vmm_set_error(errno, "/dev/kvm: permission denied (add the user to the 'kvm' group)");
    return vmm_set_error_errno("/dev/kvm");
}

static int require_cap(int fd, int cap, const char *name)
{
    if (ioctl(fd, KVM_CHECK_EXTENSION, cap) <= 0)
        return vmm_set_error(ENOTSUP, "KVM lacks %s", name);
    return 0;
}

static int check_caps(struct kvm_vm *vm)
{
    static const struct { int cap; const char *name; } caps[] = {
        { KVM_CAP_IRQCHIP, "an in-kernel irqchip" },
        { KVM_CAP_USER_MEMORY, "user memory regions" },
        { KVM_CAP_SET_TSS_ADDR, "KVM_SET_TSS_ADDR" },
        { KVM_CAP_PIT2, "the in-kernel PIT" },
        { KVM_CAP_IMMEDIATE_EXIT, "immediate_exit" },
        { KVM_CAP_EXT_CPUID, "KVM_GET_SUPPORTED_CPUID" },
        { KVM_CAP_IOEVENTFD, "ioeventfd" },
        { KVM_CAP_IRQFD, "irqfd" },
    };
    for (size_t i = 0; i < VMM_ARRAY_SIZE(caps); i++)
        if (require_cap(vm->sys_fd, caps[i].cap, caps[i].name) < 0)
            return -1;
    return 0;
}

static int load_supported_cpuid(struct kvm_vm *vm)
{
    for (unsigned n = 128; n <= 4096; n *= 2) {
        struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(c->entries[0]));
        if (!c)
            return vmm_set_error(ENOMEM, "out of memory");
        c->nent = n;
        if (ioctl(vm->sys_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
            vm->supported = c;
            return 0;
        }
        int err = errno;
        free(c);
        if (err != E2BIG) {
            errno = err;
            return vmm_set_error_errno("KVM_GET_SUPPORTED_CPUID");
        }
    }
    return vmm_set_error(E2BIG, "KVM_GET_SUPPORTED_CPUID: too many entries");
}

static int create_irqchip(struct kvm_vm *vm)
{
    if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, (unsigned long)KVM_TSS_ADDR) < 0)
        return vmm_set_error_errno("KVM_SET_TSS_ADDR");
    uint64_t identity = KVM_IDENTITY_MAP_ADDR;
    if (ioctl(vm->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &identity) < 0)
        return vmm_set_error_errno("KVM_SET_IDENTITY_MAP_ADDR");
    if (ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0)
        return vmm_set_error_errno("KVM_CREATE_IRQCHIP");
    struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
    if (ioctl(vm->vm_fd, KVM_CREATE_PIT2, &pit) < 0)
        return vmm_set_error_errno("KVM_CREATE_PIT2");
    /* Keep the power-on state so a reset can restore it. */
    for (unsigned i = 0; i < 3; i++) {
        vm->initial_chips[i].chip_id = i;
        if (ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &vm->initial_chips[i]) < 0)
            return vmm_set_error_errno("KVM_GET_IRQCHIP");
    }
    if (ioctl(vm->vm_fd, KVM_GET_PIT2, &vm->initial_pit) < 0)
        return vmm_set_error_errno("KVM_GET_PIT2");
    return 0;
}

int kvm_vm_create(struct kvm_vm *vm)
{
    memset(vm, 0, sizeof(*vm));
    vm->vm_fd = -1;
    vm->sys_fd = open_kvm();
    if (vm->sys_fd < 0)
        return -1;
    int version = ioctl(vm->sys_fd, KVM_GET_API_VERSION, 0);
    if (version != KVM_API_VERSION) {
        vmm_set_error(ENOTSUP, "/dev/kvm speaks API version %d, libvmm needs %d", version,
                      KVM_API_VERSION);
        goto fail;
    }
    if (check_caps(vm) < 0 || load_supported_cpuid(vm) < 0)
        goto fail;
    vm->run_size = ioctl(vm->sys_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (vm->run_size <= 0) {
        vmm_set_error_errno("KVM_GET_VCPU_MMAP_SIZE");
        goto fail;
    }
    do {
        vm->vm_fd = ioctl(vm->sys_fd, KVM_CREATE_VM, 0);
    } while (vm->vm_fd < 0 && errno == EINTR);
    if (vm->vm_fd < 0) {
        vmm_set_error_errno("KVM_CREATE_VM");
        goto fail;
    }
    if (create_irqchip(vm) < 0)
        goto fail;
    return 0;
fail:
    kvm_vm_destroy(vm);
    return -1;
}

void kvm_vm_destroy(struct kvm_vm *vm)
{
    if (vm->vm_fd >= 0)
        close(vm->vm_fd);
    if (vm->sys_fd >= 0)
        close(vm->sys_fd);
    free(vm->supported);
    memset(vm, 0, sizeof(*vm));
    vm->vm_fd = vm->sys_fd = -1;
}

int kvm_vm_set_memory(struct kvm_vm *vm, unsigned slot, uint64_t gpa, uint64_t size, void *hva)
{
    struct kvm_userspace_memory_region region = {
        .slot = slot,
        .guest_phys_addr = gpa,
        .memory_size = size,
        .userspace_addr = (uintptr_t)hva,
    };
    if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        return vmm_set_error_errno("KVM_SET_USER_MEMORY_REGION slot %u at 0x%" PRIx64, slot, gpa);
    return 0;
}

int kvm_vm_irq_line(struct kvm_vm *vm, unsigned gsi, bool level)
{
    struct kvm_irq_level irq = { .irq = gsi, .level = level };
    if (ioctl(vm->vm_fd, KVM_IRQ_LINE, &irq) < 0)
        return vmm_set_error_errno("KVM_IRQ_LINE %u", gsi);
    return 0;
}

int kvm_vm_reset_irqchip(struct kvm_vm *vm)
{
    for (unsigned i = 0; i < 3; i++)
        if (ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &vm->initial_chips[i]) < 0)
            return vmm_set_error_errno("KVM_SET_IRQCHIP");
    if (ioctl(vm->vm_fd, KVM_SET_PIT2, &vm->initial_pit) < 0)
        return vmm_set_error_errno("KVM_SET_PIT2");
    return 0;
}
