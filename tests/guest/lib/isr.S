/*
 * Interrupt entry stubs for vectors 0..IDT_VECTORS-1.  Each stub makes the
 * stack look the same (an error code, real or 0, then the vector), saves the
 * general registers and calls interrupt_dispatch(struct interrupt_frame *).
 */
#include "idt_vectors.h"

        .text
        .code64

.macro STUB vector
        .balign 16
isr_\vector:
        .if (\vector == 8) || (\vector == 10) || (\vector == 11) || (\vector == 12) || (\vector == 13) || (\vector == 14) || (\vector == 17) || (\vector == 21) || (\vector == 29) || (\vector == 30)
        .else
        pushq $0
        .endif
        pushq $\vector
        jmp isr_common
.endm

.altmacro
.macro STUBS from, to
        STUB %from
        .if \to - \from
        STUBS %(\from + 1), \to
        .endif
.endm

.macro TABLE_ENTRY vector
        .quad isr_\vector
.endm

.macro TABLE from, to
        TABLE_ENTRY %from
        .if \to - \from
        TABLE %(\from + 1), \to
        .endif
.endm

        STUBS 0, %(IDT_VECTORS - 1)

isr_common:
        pushq %rax
        pushq %rbx
        pushq %rcx
        pushq %rdx
        pushq %rsi
        pushq %rdi
        pushq %rbp
        pushq %r8
        pushq %r9
        pushq %r10
        pushq %r11
        pushq %r12
        pushq %r13
        pushq %r14
        pushq %r15
        cld
        movq %rsp, %rdi
        call interrupt_dispatch
        popq %r15
        popq %r14
        popq %r13
        popq %r12
        popq %r11
        popq %r10
        popq %r9
        popq %r8
        popq %rbp
        popq %rdi
        popq %rsi
        popq %rdx
        popq %rcx
        popq %rbx
        popq %rax
        addq $16, %rsp
        iretq

        .section .rodata
        .balign 8
        .global isr_stub_table
isr_stub_table:
        TABLE 0, %(IDT_VECTORS - 1)
