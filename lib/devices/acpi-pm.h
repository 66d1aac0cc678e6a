/* Where the ACPI PM block lives; the FADT and DSDT builders use the same. */
#ifndef LIBVMM_ACPI_PM_H
#define LIBVMM_ACPI_PM_H
#define ACPI_PM_BASE      0x600
#define ACPI_PM_LEN       16
#define ACPI_PM1_EVT      (ACPI_PM_BASE + 0)   /* 4 bytes: status, enable */
#define ACPI_PM1_CNT      (ACPI_PM_BASE + 4)   /* 2 bytes */
#define ACPI_PM_TMR       (ACPI_PM_BASE + 8)   /* 4 bytes */
#define ACPI_RESET_OFFSET 12
#define ACPI_RESET_REG    (ACPI_PM_BASE + ACPI_RESET_OFFSET)
#define ACPI_RESET_VALUE  0x01
#define ACPI_SCI_GSI      9
#define ACPI_S5_SLP_TYP   5
struct device;
void acpi_pm_press_power_button(struct device *dev);
#endif
