/* Vector layout shared by isr.S and the C runtime (no C in here). */
#ifndef GUEST_IDT_VECTORS_H
#define GUEST_IDT_VECTORS_H

#define IDT_VECTORS        64     /* 0-31 exceptions, 32-63 interrupts */
#define VECTOR_TIMER       0x20
#define VECTOR_SELF_IPI    0x21
#define VECTOR_IOAPIC_BASE 0x30   /* IOAPIC pin n -> 0x30 + n (n < 16) */
#define VECTOR_SPURIOUS    0x3f

#endif
