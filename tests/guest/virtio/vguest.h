/* Guest-side PCI and virtio drivers for the test guests: written from the
 * PCI/PCIe and virtio 1.2 specifications so they run the same against
 * libvmm's devices and QEMU's. */
#ifndef VGUEST_H
#define VGUEST_H

#include "guest.h"

/* ---- PCI configuration space: mechanism #1 or ECAM (from the MCFG) */
extern uint64_t pci_ecam_base;                 /* 0: no MCFG */
bool pci_find_ecam(void);
uint32_t pci_cf8_read32(unsigned slot, unsigned reg);
void pci_cf8_write32(unsigned slot, unsigned reg, uint32_t v);
uint32_t pci_ecam_read32(unsigned slot, unsigned reg);
void pci_ecam_write32(unsigned slot, unsigned reg, uint32_t v);
/* Through ECAM when there is one, else mechanism #1. */
uint32_t pci_read32(unsigned slot, unsigned reg);
void pci_write32(unsigned slot, unsigned reg, uint32_t v);
uint16_t pci_read16(unsigned slot, unsigned reg);
void pci_write16(unsigned slot, unsigned reg, uint16_t v);
uint8_t pci_read8(unsigned slot, unsigned reg);
/* Offset of the first capability with `id` at or after `start` (0: from the
 * list head), 0 when none. */
unsigned pci_find_cap(unsigned slot, uint8_t id, unsigned after);
/* Size a BAR (decoding off while sizing); *is64 set for 64-bit BARs. */
uint64_t pci_bar_size(unsigned slot, unsigned bar, bool *is_io, bool *is64);
uint64_t pci_bar_addr(unsigned slot, unsigned bar);
void pci_bar_set(unsigned slot, unsigned bar, uint64_t addr);
/* First slot on bus 0 with vendor:device (device 0xffff: any), or -1. */
int pci_find_device(uint16_t vendor, uint16_t device_a, uint16_t device_b);

/* ---- virtio */
#define VQ_SIZE 8
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_DESC_F_INDIRECT 4
#define VIRTIO_F_INDIRECT_DESC 28
#define VIRTIO_F_EVENT_IDX 29
#define VIRTIO_F_VERSION_1 32
#define STATUS_ACK 1
#define STATUS_DRIVER 2
#define STATUS_DRIVER_OK 4
#define STATUS_FEATURES_OK 8
#define STATUS_NEEDS_RESET 0x40

struct vq_desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct vq_avail { uint16_t flags, idx, ring[VQ_SIZE], used_event; };
struct vq_used_elem { uint32_t id, len; };
struct vq_used { uint16_t flags, idx; struct vq_used_elem ring[VQ_SIZE]; uint16_t avail_event; };

struct vq {
    uint16_t size;
    struct vq_desc *desc;
    struct vq_avail *avail;
    struct vq_used *used;
    uint16_t last_used;
};

enum { VT_PCI, VT_MMIO };

struct vdev {
    int transport;
    unsigned slot;                   /* PCI */
    uint64_t common, isr, notify, devcfg;
    uint32_t notify_mult;
    uint64_t msix_table;
    unsigned msix_vectors;
    uint64_t base;                   /* MMIO */
    int gsi;                         /* MMIO: from the DSDT, -1 unknown */
    uint64_t features;               /* negotiated */
};

/* Find the device with virtio id `id` on PCI (modern caps, BAR relocated
 * below 4 GiB if needed) or on virtio-mmio (slots from the DSDT). */
bool vdev_find_pci(struct vdev *d, uint16_t id);
bool vdev_find_mmio(struct vdev *d, uint32_t id);
/* A test guest's start: x2APIC on, PIC masked, then the device with virtio
 * id `id` on the transport the cmdline names (transport=mmio, else PCI);
 * fails the test when there is none.  Returns true for MMIO. */
bool vdev_start_guest(struct vdev *d, uint16_t id);
void vdev_reset(struct vdev *d);
uint8_t vdev_status(struct vdev *d);
void vdev_set_status(struct vdev *d, uint8_t s);
/* Reset, ACK, DRIVER, features (`want` & offered | VERSION_1), FEATURES_OK;
 * returns false (with a line) when the device refuses. */
bool vdev_negotiate(struct vdev *d, uint64_t want);
uint64_t vdev_offered(struct vdev *d);
/* The largest size queue q takes (0: no such queue). */
uint16_t vdev_queue_max(struct vdev *d, unsigned q);
/* Give queue q the rings (size n); vector: MSI-X vector or 0xffff. */
bool vdev_setup_queue(struct vdev *d, unsigned q, struct vq *vq, uint16_t n, uint16_t vector);
/* Set size/addresses without checks and enable (for malicious guests). */
void vdev_raw_queue(struct vdev *d, unsigned q, uint16_t n, uint64_t desc, uint64_t avail,
                    uint64_t used);
void vdev_notify(struct vdev *d, unsigned q);
uint8_t vdev_isr(struct vdev *d);         /* PCI ISR read / MMIO status + ack */
void vdev_msix_vector(struct vdev *d, unsigned entry, uint8_t vector, uint32_t apic_id);
void vdev_msix_enable(struct vdev *d, bool on);
void vdev_config_vector(struct vdev *d, uint16_t vector);
/* PCI: MSI-X entry 0 -> config_vec, entry 1 -> queue_vec (this CPU), on,
 * config interrupts on entry 0.  Nothing on MMIO. */
void vdev_msix_simple(struct vdev *d, uint8_t config_vec, uint8_t queue_vec);

/* Rings in static memory for queue slot `i` (0..3). */
void vq_static(struct vq *vq, unsigned i);
/* Post one chain head (index) and return immediately. */
void vq_post(struct vq *vq, uint16_t head);
/* Wait up to ~`ms` for a used entry; true with *id, *len. */
bool vq_wait_used(struct vq *vq, uint32_t *id, uint32_t *len, unsigned ms);

/* Count interrupts in vdev_queue_irqs / vdev_config_irqs: handlers for
 * the MSI-X queue and config vectors and for a level line (INTx, MMIO)
 * whose handler reads the ISR of `d`. */
extern volatile unsigned vdev_queue_irqs, vdev_config_irqs;
void vdev_count_irqs(struct vdev *d, uint8_t queue_vec, uint8_t config_vec, uint8_t line_vec);

/* Level-triggered IOAPIC route for an MMIO device's GSI (false: not on
 * the first IOAPIC). */
bool ioapic_route_level(unsigned gsi, uint8_t vector);

#endif
