/*
 * PVH entry for test guests.
 *
 * The loader enters pvh_entry32 in 32-bit protected mode with paging off,
 * flat segments and EBX = physical address of struct hvm_start_info.  We
 * zero .bss, switch to our own GDT and identity page tables (first 4 GiB,
 * 2 MiB pages, built at assembly time so boot costs no loop), enable long
 * mode and call guest_start(start_info) on the boot CPU's stack.
 *
 * Application processors come in through ap_trampoline (copied below
 * 1 MiB by smp.c), switch to protected mode and then follow the same path.
 */

#define XEN_ELFNOTE_PHYS32_ENTRY 18

#define SEL_CODE64 0x08
#define SEL_DATA   0x10
#define SEL_CODE32 0x18

#define CR0_PE   0x00000001
#define CR0_PG   0x80000000
#define CR4_PAE  0x00000020
#define MSR_EFER 0xc0000080
#define EFER_LME 0x00000100

#define BOOT_STACK_SIZE 16384

/* ELF note read by PVH loaders (QEMU reads the descriptor as 64 bits). */
        .section .note.Xen, "a", @note
        .balign 4
        .long 4f - 3f           /* namesz */
        .long 6f - 5f           /* descsz */
        .long XEN_ELFNOTE_PHYS32_ENTRY
3:      .asciz "Xen"
4:      .balign 4
5:      .quad pvh_entry32
6:      .balign 4

/* Paging on, long mode on; used by the BSP and by every AP. */
.macro ENTER_LONG_MODE target
        movl %cr4, %eax
        orl $CR4_PAE, %eax
        movl %eax, %cr4
        movl $pml4, %eax
        movl %eax, %cr3
        movl $MSR_EFER, %ecx
        rdmsr
        orl $EFER_LME, %eax
        wrmsr
        movl %cr0, %eax
        orl $(CR0_PG | CR0_PE), %eax
        movl %eax, %cr0
        ljmp $SEL_CODE64, $\target
.endm

.macro LOAD_DATA_SEGMENTS
        movw $SEL_DATA, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        xorw %ax, %ax
        movw %ax, %fs
        movw %ax, %gs
.endm

        .section .text.entry, "ax"
        .code32
        .global pvh_entry32
pvh_entry32:
        cli
        cld
        /* Zero .bss first: start_info_paddr lives in .data, not .bss. */
        movl %ebx, start_info_paddr
        movl $__bss_start, %edi
        movl $__bss_end, %ecx
        subl %edi, %ecx
        shrl $2, %ecx
        xorl %eax, %eax
        rep stosl
        lgdt gdt_descriptor
        ljmp $SEL_CODE32, $1f
1:      LOAD_DATA_SEGMENTS
        ENTER_LONG_MODE bsp_entry64

        .global ap_entry32
ap_entry32:
        LOAD_DATA_SEGMENTS
        ENTER_LONG_MODE ap_entry64

        .code64
bsp_entry64:
        LOAD_DATA_SEGMENTS
        leaq bsp_stack_top(%rip), %rsp
        xorl %ebp, %ebp
        movl start_info_paddr(%rip), %edi
        call guest_start
        jmp halt_forever

ap_entry64:
        LOAD_DATA_SEGMENTS
        movq ap_boot_stack(%rip), %rsp
        xorl %ebp, %ebp
        call ap_start
        jmp halt_forever

        .global halt_forever
halt_forever:
        cli
1:      hlt
        jmp 1b

/*
 * Real-mode trampoline for APs.  smp.c copies [ap_trampoline,
 * ap_trampoline_end) to a page below 1 MiB and sends a SIPI with that page
 * number; CS:IP is then page:0, so everything here is addressed relative to
 * the copy.  The GDT itself stays in the image (lgdtl takes a 32-bit base).
 */
        .code16
        .global ap_trampoline, ap_trampoline_end
ap_trampoline:
        cli
        cld
        movw %cs, %ax
        movw %ax, %ds
        lgdtl (ap_trampoline_gdtr - ap_trampoline)
        movl %cr0, %eax
        orl $CR0_PE, %eax
        movl %eax, %cr0
        ljmpl $SEL_CODE32, $ap_entry32
        .balign 8
ap_trampoline_gdtr:
        .word gdt_end - gdt - 1
        .long gdt
ap_trampoline_end:
        .code64

        .section .rodata
        .balign 16
gdt:
        .quad 0
        .quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
        .quad 0x00cf92000000ffff        /* 0x10: flat data */
        .quad 0x00cf9a000000ffff        /* 0x18: 32-bit code */
gdt_end:
        .balign 8
        .global gdt_descriptor
gdt_descriptor:
        .word gdt_end - gdt - 1
        .quad gdt

        .section .data
        .balign 8
        .global start_info_paddr, ap_boot_stack
start_info_paddr:
        .quad 0
ap_boot_stack:
        .quad 0

/* Identity map of the first 4 GiB; 3 GiB and up (MMIO) uncached. */
        .section .data.pagetables, "aw"
        .balign 4096
pml4:
        .quad pdpt + 0x3
        .fill 511, 8, 0
pdpt:
        .quad pd + 0x3
        .quad pd + 0x1000 + 0x3
        .quad pd + 0x2000 + 0x3
        .quad pd + 0x3000 + 0x3
        .fill 508, 8, 0
pd:
        .set page, 0
        .rept 2048
        .if page >= 0xc0000000
        .quad page | 0x9b               /* P, RW, PWT, PCD, PS */
        .else
        .quad page | 0x83               /* P, RW, PS */
        .endif
        .set page, page + 0x200000
        .endr

        .section .stacks, "aw", @nobits
        .balign 16
bsp_stack:
        .skip BOOT_STACK_SIZE
bsp_stack_top:
