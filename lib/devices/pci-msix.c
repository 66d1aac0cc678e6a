/* MSI-X: the table and PBA in a BAR, each vector an irqfd bound to a GSI
 * whose KVM route carries the address/data the guest wrote.  The bus keeps
 * the whole routing table (KVM_SET_GSI_ROUTING replaces it at once): the
 * default irqchip routes for GSI 0-23 first, then one MSI route per vector. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include "devices/pci.h"

#define IOAPIC_PINS 24

static int grow_routes(struct pci_bus *bus, unsigned want)
{
    if (want <= bus->cap_routes)
        return 0;
    unsigned cap = bus->cap_routes ? bus->cap_routes * 2 : 64;
    while (cap < want)
        cap *= 2;
    struct kvm_irq_routing_entry *r = realloc(bus->routes, cap * sizeof(*r));
    if (!r)
        return vmm_set_error(ENOMEM, "out of memory for irq routes");
    bus->routes = r;
    bus->cap_routes = cap;
    return 0;
}

static void add_irqchip_route(struct pci_bus *bus, unsigned gsi, unsigned chip, unsigned pin)
{
    struct kvm_irq_routing_entry *e = &bus->routes[bus->nr_routes++];
    memset(e, 0, sizeof(*e));
    e->gsi = gsi;
    e->type = KVM_IRQ_ROUTING_IRQCHIP;
    e->u.irqchip.irqchip = chip;
    e->u.irqchip.pin = pin;
}

/* What KVM sets up with the irqchip: PIC for 0-15, IOAPIC for 0-23. */
static int add_default_routes(struct pci_bus *bus)
{
    if (grow_routes(bus, IOAPIC_PINS + 16) < 0)
        return -1;
    for (unsigned gsi = 0; gsi < IOAPIC_PINS; gsi++) {
        add_irqchip_route(bus, gsi, KVM_IRQCHIP_IOAPIC, gsi);
        if (gsi < 16)
            add_irqchip_route(bus, gsi, gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE,
                              gsi % 8);
    }
    bus->routes_live = true;
    return 0;
}

static int commit_routes(struct pci_bus *bus)
{
    size_t bytes = sizeof(struct kvm_irq_routing) + bus->nr_routes * sizeof(bus->routes[0]);
    struct kvm_irq_routing *table = calloc(1, bytes);
    if (!table)
        return vmm_set_error(ENOMEM, "out of memory for irq routes");
    table->nr = bus->nr_routes;
    memcpy(table->entries, bus->routes, bus->nr_routes * sizeof(bus->routes[0]));
    int ret = ioctl(bus->m->vm.vm_fd, KVM_SET_GSI_ROUTING, table);
    free(table);
    if (ret < 0)
        return vmm_set_error_errno("KVM_SET_GSI_ROUTING");
    return 0;
}

int pci_bus_add_msi_route(struct pci_bus *bus, unsigned *gsi)
{
    int ret = -1;
    pthread_mutex_lock(&bus->lock);
    if (!bus->routes_live && add_default_routes(bus) < 0)
        goto out;
    if (grow_routes(bus, bus->nr_routes + 1) < 0)
        goto out;
    struct kvm_irq_routing_entry *e = &bus->routes[bus->nr_routes++];
    memset(e, 0, sizeof(*e));
    e->gsi = bus->next_gsi++;
    e->type = KVM_IRQ_ROUTING_MSI;
    *gsi = e->gsi;
    ret = commit_routes(bus);
out:
    pthread_mutex_unlock(&bus->lock);
    return ret;
}

int pci_bus_set_msi_route(struct pci_bus *bus, unsigned gsi, uint64_t address, uint32_t data)
{
    int ret = 0;
    pthread_mutex_lock(&bus->lock);
    for (unsigned i = 0; i < bus->nr_routes; i++) {
        struct kvm_irq_routing_entry *e = &bus->routes[i];
        if (e->gsi != gsi || e->type != KVM_IRQ_ROUTING_MSI)
            continue;
        if (e->u.msi.address_lo == (uint32_t)address && e->u.msi.address_hi == address >> 32 &&
            e->u.msi.data == data)
            break;
        e->u.msi.address_lo = (uint32_t)address;
        e->u.msi.address_hi = (uint32_t)(address >> 32);
        e->u.msi.data = data;
        ret = commit_routes(bus);
        break;
    }
    pthread_mutex_unlock(&bus->lock);
    return ret;
}

void pci_bus_release_routes(struct pci_bus *bus)
{
    free(bus->routes);
    bus->routes = NULL;
    bus->nr_routes = bus->cap_routes = 0;
}

/* ---- the capability and the table ---------------------------------------- */

int pci_device_add_msix(struct pci_device *pd, unsigned nvec, int bar, uint32_t table_offset,
                        uint32_t pba_offset)
{
    struct pci_msix *x = &pd->msix;
    if (!nvec || nvec > 2048)
        return vmm_set_error(EINVAL, "MSI-X: %u vectors", nvec);
    uint8_t cap = pci_device_add_capability(pd, PCI_CAP_ID_MSIX, 12);
    if (!cap)
        return vmm_set_error(ENOSPC, "no room for the MSI-X capability");
    x->cap = cap;
    x->nvec = nvec;
    x->bar = bar;
    x->table_offset = table_offset;
    x->pba_offset = pba_offset;
    pci_set_word(pd, cap + 2, (uint16_t)(nvec - 1));
    pci_set_long(pd, cap + 4, table_offset | (uint32_t)bar);
    pci_set_long(pd, cap + 8, pba_offset | (uint32_t)bar);
    pd->wmask[cap + 3] = 0xc0;   /* enable, function mask */
    x->table = calloc(nvec, PCI_MSIX_ENTRY_SIZE);
    x->pba = calloc((nvec + 63) / 64, sizeof(uint64_t));
    x->irqfd = malloc(nvec * sizeof(int));
    x->gsi = calloc(nvec, sizeof(unsigned));
    if (!x->table || !x->pba || !x->irqfd || !x->gsi)
        return vmm_set_error(ENOMEM, "out of memory for MSI-X");
    for (unsigned i = 0; i < nvec; i++)
        x->irqfd[i] = -1;
    pci_msix_reset(pd);
    for (unsigned i = 0; i < nvec; i++) {
        if (pci_bus_add_msi_route(pd->bus, &x->gsi[i]) < 0)
            return -1;
        x->irqfd[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (x->irqfd[i] < 0)
            return vmm_set_error_errno("eventfd");
        struct kvm_irqfd irqfd = { .fd = (uint32_t)x->irqfd[i], .gsi = x->gsi[i] };
        if (ioctl(pd->dev.m->vm.vm_fd, KVM_IRQFD, &irqfd) < 0)
            return vmm_set_error_errno("KVM_IRQFD");
    }
    return 0;
}

void pci_msix_release(struct pci_device *pd)
{
    struct pci_msix *x = &pd->msix;
    for (unsigned i = 0; x->irqfd && i < x->nvec; i++) {
        if (x->irqfd[i] < 0)
            continue;
        struct kvm_irqfd irqfd = { .fd = (uint32_t)x->irqfd[i], .gsi = x->gsi[i],
                                   .flags = KVM_IRQFD_FLAG_DEASSIGN };
        ioctl(pd->dev.m->vm.vm_fd, KVM_IRQFD, &irqfd);
        close(x->irqfd[i]);
    }
    free(x->table);
    free(x->pba);
    free(x->irqfd);
    free(x->gsi);
    memset(x, 0, sizeof(*x));
    x->bar = -1;
}

void pci_msix_reset(struct pci_device *pd)
{
    struct pci_msix *x = &pd->msix;
    if (!x->table)
        return;
    memset(x->table, 0, x->nvec * PCI_MSIX_ENTRY_SIZE);
    for (unsigned i = 0; i < x->nvec; i++)
        x->table[i * PCI_MSIX_ENTRY_SIZE + 12] = PCI_MSIX_ENTRY_CTRL_MASKBIT;
    memset(x->pba, 0, (x->nvec + 63) / 64 * sizeof(uint64_t));
    x->enabled = x->masked = false;
}

bool pci_msix_enabled(const struct pci_device *pd)
{
    return pd->msix.enabled;
}

static uint32_t entry_word(const struct pci_msix *x, unsigned v, unsigned off)
{
    uint32_t w;
    memcpy(&w, x->table + v * PCI_MSIX_ENTRY_SIZE + off, 4);
    return w;
}

static bool vector_masked(const struct pci_msix *x, unsigned v)
{
    return x->masked || (entry_word(x, v, 12) & PCI_MSIX_ENTRY_CTRL_MASKBIT);
}

static void fire(struct pci_msix *x, unsigned v)
{
    uint64_t one = 1;
    if (write(x->irqfd[v], &one, sizeof(one)) < 0)
        vmm_log(VMM_LOG_WARNING, "pci", "MSI-X vector %u: eventfd write failed", v);
}

void pci_msix_notify(struct pci_device *pd, unsigned v)
{
    struct pci_msix *x = &pd->msix;
    if (!x->enabled || v >= x->nvec)
        return;
    if (vector_masked(x, v)) {
        x->pba[v / 64] |= 1ull << (v % 64);
        return;
    }
    fire(x, v);
}

/* Deliver what became pending while masked, for vectors now unmasked. */
static void deliver_pending(struct pci_msix *x)
{
    if (!x->enabled)
        return;
    for (unsigned v = 0; v < x->nvec; v++) {
        uint64_t bit = 1ull << (v % 64);
        if ((x->pba[v / 64] & bit) && !vector_masked(x, v)) {
            x->pba[v / 64] &= ~bit;
            fire(x, v);
        }
    }
}

static void sync_route(struct pci_device *pd, unsigned v);

void pci_msix_control_written(struct pci_device *pd)
{
    struct pci_msix *x = &pd->msix;
    uint16_t ctrl = pci_get_word(pd, x->cap + 2u);
    x->enabled = ctrl & PCI_MSIX_FLAGS_ENABLE;
    x->masked = ctrl & PCI_MSIX_FLAGS_MASKALL;
    if (!x->enabled)
        return;
    for (unsigned v = 0; v < x->nvec; v++)
        if (!vector_masked(x, v))
            sync_route(pd, v);
    deliver_pending(x);
}

bool pci_msix_handles(const struct pci_device *pd, int bar, uint64_t offset)
{
    const struct pci_msix *x = &pd->msix;
    if (!x->table || bar != x->bar)
        return false;
    uint64_t table_len = (uint64_t)x->nvec * PCI_MSIX_ENTRY_SIZE;
    uint64_t pba_len = (x->nvec + 63) / 64 * 8;
    return (offset >= x->table_offset && offset - x->table_offset < table_len) ||
           (offset >= x->pba_offset && offset - x->pba_offset < pba_len);
}

uint64_t pci_msix_read(struct pci_device *pd, uint64_t offset, unsigned size)
{
    struct pci_msix *x = &pd->msix;
    uint64_t table_len = (uint64_t)x->nvec * PCI_MSIX_ENTRY_SIZE;
    uint64_t v = 0;
    if (offset >= x->table_offset && offset - x->table_offset + size <= table_len)
        memcpy(&v, x->table + (offset - x->table_offset), size);
    else if (offset >= x->pba_offset && offset - x->pba_offset + size <= (x->nvec + 63) / 64 * 8)
        memcpy(&v, (uint8_t *)x->pba + (offset - x->pba_offset), size);
    return v;
}

/* Point the vector's KVM route at what the guest wrote.  Done when the
 * vector can fire (unmasked), not on every dword the guest writes. */
static void sync_route(struct pci_device *pd, unsigned v)
{
    struct pci_msix *x = &pd->msix;
    uint64_t addr = entry_word(x, v, 0) | (uint64_t)entry_word(x, v, 4) << 32;
    if (pci_bus_set_msi_route(pd->bus, x->gsi[v], addr, entry_word(x, v, 8)) < 0)
        vmm_log(VMM_LOG_WARNING, "pci", "%s: MSI-X vector %u: %s", pd->dev.cls->name, v,
                vmm_get_error());
}

void pci_msix_write(struct pci_device *pd, uint64_t offset, uint64_t value, unsigned size)
{
    struct pci_msix *x = &pd->msix;
    uint64_t table_len = (uint64_t)x->nvec * PCI_MSIX_ENTRY_SIZE;
    if (!(offset >= x->table_offset && offset - x->table_offset + size <= table_len))
        return; /* the PBA is read-only */
    uint64_t rel = offset - x->table_offset;
    unsigned v = (unsigned)(rel / PCI_MSIX_ENTRY_SIZE);
    memcpy(x->table + rel, &value, size);
    /* Only the mask bit of vector control is writable. */
    uint32_t ctrl = entry_word(x, v, 12) & PCI_MSIX_ENTRY_CTRL_MASKBIT;
    memcpy(x->table + v * PCI_MSIX_ENTRY_SIZE + 12, &ctrl, 4);
    if (!vector_masked(x, v)) {
        sync_route(pd, v);
        deliver_pending(x);
    }
}

/* ---- saved state ---------------------------------------------------------- */

void pci_msix_save(const struct pci_device *pd, uint8_t *table, size_t table_len, uint64_t *pba)
{
    const struct pci_msix *x = &pd->msix;
    size_t len = (size_t)x->nvec * PCI_MSIX_ENTRY_SIZE;
    memset(table, 0, table_len);
    memcpy(table, x->table, len < table_len ? len : table_len);
    *pba = x->nvec ? x->pba[0] : 0;
}

/* Before the config space (whose MSI-X control write syncs the routes and
 * delivers what is pending). */
int pci_msix_restore(struct pci_device *pd, const uint8_t *table, size_t table_len, uint64_t pba)
{
    struct pci_msix *x = &pd->msix;
    size_t len = (size_t)x->nvec * PCI_MSIX_ENTRY_SIZE;
    if (len > table_len || x->nvec > 64)
        return vmm_set_error(EINVAL, "%s: %u MSI-X vectors do not fit the saved table",
                             pd->dev.cls->name, x->nvec);
    if (x->nvec < 64 && (pba >> x->nvec))
        return vmm_set_error(EINVAL, "%s: MSI-X pending bits 0x%" PRIx64 " beyond %u vectors",
                             pd->dev.cls->name, pba, x->nvec);
    memcpy(x->table, table, len);
    for (unsigned v = 0; v < x->nvec; v++) {
        /* Only the mask bit of vector control exists. */
        uint32_t ctrl = entry_word(x, v, 12) & PCI_MSIX_ENTRY_CTRL_MASKBIT;
        memcpy(x->table + v * PCI_MSIX_ENTRY_SIZE + 12, &ctrl, 4);
    }
    x->pba[0] = pba;
    return 0;
}
