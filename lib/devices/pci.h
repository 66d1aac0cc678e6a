/* PCI: bus 0 behind a host bridge (machine type `pc`), configuration
 * mechanism #1 (0xcf8/0xcfc) and PCIe ECAM, devices with config space and
 * write masks, BAR sizing and relocation, capability lists, MSI-X through
 * KVM irq routes and irqfds, and INTx through the IOAPIC (GSI 16-23).
 *
 * A PCI device embeds `struct pci_device` first (which embeds `struct
 * device` first), calls pci_device_init() from its realize, declares BARs
 * and capabilities, and pci_device_register() to appear on the bus. */
#ifndef LIBVMM_PCI_H
#define LIBVMM_PCI_H

#include <stdbool.h>
#include <stdint.h>
#include "devices/device.h"

#define PCI_CONFIG_SIZE   256
#define PCI_ECAM_SIZE     4096      /* per function in ECAM */
#define PCI_SLOTS         32
#define PCI_NUM_BARS      6

/* Platform layout of the `pc` machine. */
#define PCI_ECAM_BASE     0xe0000000ull   /* bus 0 only: 1 MiB */
#define PCI_ECAM_BUSES    1
#define PCI_MMIO_BASE     0xc0000000ull   /* 32-bit BAR window */
#define PCI_MMIO_SIZE     0x20000000ull
#define PCI_IO_BASE       0xc000u         /* I/O BAR window */
#define PCI_IO_SIZE       0x4000u
#define PCI_INTX_GSI_BASE 16              /* INTA..INTD of slot 0 -> GSI 16..19 */
#define PCI_MSI_GSI_BASE  24              /* GSIs for MSI routes start above the IOAPIC */

/* Config space registers. */
#define PCI_VENDOR_ID      0x00
#define PCI_DEVICE_ID      0x02
#define PCI_COMMAND        0x04
#define PCI_STATUS         0x06
#define PCI_REVISION_ID    0x08
#define PCI_CLASS_PROG     0x09
#define PCI_CLASS_DEVICE   0x0a
#define PCI_HEADER_TYPE    0x0e
#define PCI_BAR0           0x10
#define PCI_SUBSYSTEM_VENDOR_ID 0x2c
#define PCI_SUBSYSTEM_ID   0x2e
#define PCI_CAPABILITY_LIST 0x34
#define PCI_INTERRUPT_LINE 0x3c
#define PCI_INTERRUPT_PIN  0x3d

#define PCI_COMMAND_IO     0x0001
#define PCI_COMMAND_MEMORY 0x0002
#define PCI_COMMAND_MASTER 0x0004
#define PCI_COMMAND_INTX_DISABLE 0x0400
#define PCI_STATUS_INTERRUPT 0x0008
#define PCI_STATUS_CAP_LIST 0x0010

#define PCI_CAP_ID_MSIX    0x11
#define PCI_CAP_ID_VNDR    0x09

#define PCI_MSIX_FLAGS_ENABLE 0x8000
#define PCI_MSIX_FLAGS_MASKALL 0x4000
#define PCI_MSIX_ENTRY_SIZE 16
#define PCI_MSIX_ENTRY_CTRL_MASKBIT 1

enum pci_bar_type { PCI_BAR_NONE, PCI_BAR_IO, PCI_BAR_MEM32, PCI_BAR_MEM64 };

struct pci_bus;
struct pci_device;

struct pci_bar {
    enum pci_bar_type type;
    uint64_t size;                 /* power of two */
    const struct io_ops *ops;      /* opaque = the pci_device */
    uint64_t mapped_at;            /* where it is mapped now */
    bool mapped;
};

struct pci_msix {
    unsigned nvec;
    uint8_t cap;                   /* offset of the capability */
    int bar;
    uint32_t table_offset, pba_offset;
    uint8_t *table;                /* nvec * 16 bytes */
    uint64_t *pba;
    int *irqfd;                    /* eventfd per vector, bound to gsi[i] */
    unsigned *gsi;
    bool enabled, masked;          /* MSI-X enable, function mask */
};

struct pci_device {
    struct device dev;
    struct pci_bus *bus;
    uint8_t devfn;                 /* slot << 3 | function */
    uint8_t config[PCI_CONFIG_SIZE];
    uint8_t wmask[PCI_CONFIG_SIZE];
    uint8_t config_reset[PCI_CONFIG_SIZE]; /* "firmware" state restored on reset */
    uint8_t next_cap;              /* where the next capability goes */
    struct pci_bar bars[PCI_NUM_BARS];
    struct pci_msix msix;
    bool intx_level;
    /* Optional hooks, called with the device lock held. */
    void (*config_written)(struct pci_device *pd, unsigned offset, unsigned size);
    /* Optional: replace what a config read returns (value as stored). */
    uint32_t (*config_read_hook)(struct pci_device *pd, unsigned offset, unsigned size,
                                 uint32_t value);
    /* A BAR moved (or lost/gained decoding): old/new address, 0 = unmapped. */
    void (*bar_moved)(struct pci_device *pd, int bar, uint64_t old_addr, uint64_t new_addr);
};

/* ---- the bus (machine type `pc`) -------------------------------------- */
/* Create the host bridge device "pci-host" and the bus (m->pci). */
int pci_host_create(vmm_machine *m);
extern const struct device_class device_pci_host;

/* ---- devices ----------------------------------------------------------- */
/* Fill the header; fails when the machine has no PCI bus. */
int pci_device_init(struct pci_device *pd, uint16_t vendor, uint16_t device, uint32_t class_code,
                    uint8_t revision, uint16_t subsys_vendor, uint16_t subsys_id);
/* Declare BAR `bar` (size a power of two; MEM64 uses bar and bar + 1). */
void pci_device_add_bar(struct pci_device *pd, int bar, enum pci_bar_type type, uint64_t size,
                        const struct io_ops *ops);
/* Reserve `len` bytes for a capability with `id`; returns its offset, or 0
 * when config space is full. */
uint8_t pci_device_add_capability(struct pci_device *pd, uint8_t id, uint8_t len);
/* MSI-X with `nvec` vectors: table at table_offset and PBA at pba_offset
 * inside `bar` (which the device's BAR ops must forward to
 * pci_msix_read/write for those ranges). */
int pci_device_add_msix(struct pci_device *pd, unsigned nvec, int bar, uint32_t table_offset,
                        uint32_t pba_offset);
/* Take a slot (the first free one), assign BARs as firmware would, enable
 * decoding and map them. */
int pci_device_register(struct pci_device *pd);
void pci_device_unregister(struct pci_device *pd);
/* Back to the state pci_device_register left (BARs assigned). */
void pci_device_reset(struct pci_device *pd);
/* Load saved config space: identity bytes must match, only writable bytes
 * are taken; BARs and MSI-X follow. */
int pci_device_restore_config(struct pci_device *pd, const uint8_t *saved);
/* Current BAR address (0 when not decoded). */
uint64_t pci_bar_address(const struct pci_device *pd, int bar);

/* Config space accessors (device lock held). */
uint32_t pci_config_read(struct pci_device *pd, unsigned offset, unsigned size);
void pci_config_write(struct pci_device *pd, unsigned offset, uint32_t value, unsigned size);
static inline void pci_set_byte(struct pci_device *pd, unsigned off, uint8_t v) { pd->config[off] = v; }
void pci_set_word(struct pci_device *pd, unsigned off, uint16_t v);
void pci_set_long(struct pci_device *pd, unsigned off, uint32_t v);
uint16_t pci_get_word(const struct pci_device *pd, unsigned off);
uint32_t pci_get_long(const struct pci_device *pd, unsigned off);

/* ---- interrupts -------------------------------------------------------- */
bool pci_msix_enabled(const struct pci_device *pd);
/* Send vector `v` (or set its pending bit while masked). */
void pci_msix_notify(struct pci_device *pd, unsigned v);
/* Accesses to the table/PBA ranges of the MSI-X BAR. */
/* Saved state: the vector table (at most table_len bytes) and the first 64
 * pending bits; restore before pci_device_restore_config. */
void pci_msix_save(const struct pci_device *pd, uint8_t *table, size_t table_len, uint64_t *pba);
int pci_msix_restore(struct pci_device *pd, const uint8_t *table, size_t table_len, uint64_t pba);
bool pci_msix_handles(const struct pci_device *pd, int bar, uint64_t offset);
uint64_t pci_msix_read(struct pci_device *pd, uint64_t offset, unsigned size);
void pci_msix_write(struct pci_device *pd, uint64_t offset, uint64_t value, unsigned size);
/* Assert or deassert INTx (level; the bus ORs shared lines). */
void pci_set_intx(struct pci_device *pd, bool level);
/* The GSI a slot's INTA#..INTD# (pin 1..4) reaches. */
unsigned pci_intx_gsi(unsigned slot, unsigned pin);

/* ---- ACPI -------------------------------------------------------------- */
struct aml;
/* \_SB.PCI0 with _HID/_CID/_SEG/_BBN/_CRS/_PRT (inside Scope(\_SB)). */
void pci_build_aml(vmm_machine *m, struct aml *a);


/* ---- bus internals shared by pci.c and pci-msix.c ------------------------ */
struct kvm_irq_routing_entry;
struct pci_bus {
    vmm_machine *m;
    pthread_mutex_t lock;          /* cf8, INTx counts, routes, allocators; inner to device locks */
    uint32_t cf8;
    struct pci_device *slots[PCI_SLOTS];
    unsigned intx_count[4];
    uint64_t mmio_next;
    uint32_t io_next;
    unsigned next_gsi;
    struct kvm_irq_routing_entry *routes;
    unsigned nr_routes, cap_routes;
    bool routes_live;              /* defaults were installed at least once */
};
/* Take a GSI for an MSI route (and its entry, address 0). */
int pci_bus_add_msi_route(struct pci_bus *bus, unsigned *gsi);
/* Point an MSI route at (address, data) and commit the routing table. */
int pci_bus_set_msi_route(struct pci_bus *bus, unsigned gsi, uint64_t address, uint32_t data);
void pci_bus_release_routes(struct pci_bus *bus);
void pci_msix_release(struct pci_device *pd);
void pci_msix_reset(struct pci_device *pd);
/* MSI-X capability's control word was written. */
void pci_msix_control_written(struct pci_device *pd);

#endif
