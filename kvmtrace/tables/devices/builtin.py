"""The built-in table of the fixed PC port and MMIO ranges, with a description per QEMU region name.

Used for an address space a trace has no memory map for; the descriptions
serve both sources.  Its names are the region names QEMU 7.2 uses with KVM's
default ``kernel-irqchip=on``, so reports read the same whichever source
named a range.

Pure Python; importing this module has no side effects.
"""

from __future__ import annotations

from kvmtrace.tables.devices.region import Region, is_in_kernel

__all__ = ["BUILTIN_RANGES", "DESCRIPTIONS"]

# Names and ranges were checked against QEMU 7.2's own `info mtree -f` on this
# project's machines (tests/data/mtree/*.txt: pc and q35, before and after
# SeaBIOS ran, with serial, parallel, VGA, isa-debugcon, pvpanic and
# isa-debug-exit added) and against QEMU's source, file named per row.
# Firmware-programmed ranges (ACPI PM and SMBus bases, PCI BARs) are where
# SeaBIOS puts them; OVMF may choose others, which only the guest's own map
# (DeviceMap.from_mtree) can tell.

DESCRIPTIONS: dict[str, str] = {
    # port I/O
    "dma-chan": "8237 DMA controller: channel address/count registers",
    "dma-cont": "8237 DMA controller: command/status/mask registers",
    "dma-page": "DMA page registers (74LS612)",
    "kvm-pic": "8259 PIC, emulated in the kernel (QEMU's 'pic' with kernel-irqchip=off/split)",
    "pic": "8259 PIC, emulated by QEMU",
    "kvm-pit": "8254 PIT, emulated in the kernel (QEMU's 'pit' with kernel-irqchip=off/split)",
    "pit": "8254 PIT, emulated by QEMU",
    "i8042-data": "i8042 keyboard controller: data port",
    "i8042-cmd": "i8042 keyboard controller: command/status port",
    "pcspk": "PC speaker / NMI status and control (port 0x61)",
    "rtc-index": "MC146818 RTC/CMOS: index port (coalesced in QEMU)",
    "rtc": "MC146818 RTC/CMOS: data port",
    "kvmvapic": "QEMU's VAPIC option-ROM interface (userspace, despite the name)",
    "ioport80": "POST code / I/O delay port 0x80 (a no-op in QEMU)",
    "port92": "System control port A: fast A20 gate and fast reset",
    "apm-io": "APM control and status (SMI command port 0xb2)",
    "ioportF0": "Math coprocessor error reset (port 0xf0)",
    "isa-debugcon": "QEMU debug console (SeaBIOS/OVMF log port 0x402; Bochs port 0xe9)",
    "isa-debug-exit": "QEMU isa-debug-exit: a write ends QEMU with status (value << 1) | 1",
    "ide": "ISA/PIIX IDE: command block (0x1f0/0x170) or control (0x3f6/0x376)",
    "vbe": "Bochs VBE display interface (index 0x1ce, data 0x1cf)",
    "serial": "16550A UART",
    "parallel": "Parallel port",
    "vga": "VGA registers",
    "fdc": "Floppy disk controller",
    "kvm-elcr": "PIC edge/level control registers, emulated in the kernel",
    "elcr": "PIC edge/level control registers, emulated by QEMU",
    "pvpanic": "pvpanic: the guest reports a panic",
    "fwcfg": "QEMU firmware configuration (selector 0x510, data 0x511)",
    "fwcfg.dma": "QEMU firmware configuration DMA address",
    "acpi-evt": "ACPI PM1a event block (status/enable)",
    "acpi-cnt": "ACPI PM1a control block (sleep, SCI_EN)",
    "acpi-tmr": "ACPI PM timer (3.579545 MHz)",
    "acpi-gpe0": "ACPI general-purpose event block 0",
    "acpi-smi": "ICH9 SMI enable/status",
    "sm-tco": "ICH9 TCO watchdog",
    "pm-smbus": "SMBus host controller",
    "acpi-pci-hotplug": "QEMU ACPI PCI hotplug registers",
    "acpi-cpu-hotplug": "QEMU ACPI CPU hotplug registers",
    "pci-conf-idx": "PCI configuration address (CONFIG_ADDRESS, 0xcf8)",
    "pci-conf-data": "PCI configuration data (CONFIG_DATA, 0xcfc)",
    "reset-control": "Reset control register 0xcf9 (QEMU: piix3-/lpc-reset-control)",
    "piix3-reset-control": "PIIX3 reset control register (0xcf9)",
    "lpc-reset-control": "ICH9 LPC reset control register (0xcf9)",
    "vmport": "VMware backdoor port",
    "piix-bmdma": "PIIX IDE bus-master DMA (PCI BAR 4)",
    "bmdma": "IDE bus-master DMA PRD table address",
    "ahci-idp": "AHCI index/data pair (PCI BAR 4)",
    # memory
    "pc.ram": "Guest RAM (no exit; a kvm_mmio here is unexpected)",
    "pc.rom": "Option ROM area (read-only slot: writes exit)",
    "pc.bios": "Firmware ROM (read-only slot: writes exit)",
    "vga-lowmem": "Legacy VGA window (RAM when there is no VGA device)",
    "vga.vram": "VGA framebuffer (PCI BAR 0)",
    "vga.mmio": "Bochs/std VGA MMIO registers (PCI BAR 2)",
    "edid": "std VGA EDID blob",
    "vga ioports remapped": "std VGA: VGA ports via MMIO",
    "bochs dispi interface": "std VGA: Bochs VBE registers via MMIO",
    "qemu extended regs": "std VGA: QEMU extension registers",
    "ahci": "ICH9 AHCI controller registers (ABAR)",
    "pcie-mmcfg-mmio": "PCIe ECAM / MMCONFIG window (Q35, set by firmware)",
    "kvm-ioapic": "IOAPIC, emulated in the kernel (QEMU's 'ioapic' with kernel-irqchip=off/split)",
    "ioapic": "IOAPIC, emulated by QEMU",
    "hpet": "HPET timer block",
    "lpc-rcrb-mmio": "ICH9 root complex register block (RCBA)",
    "tpm-tis-mmio": "TPM TIS interface (QEMU's tpm-crb uses 0xfed40000 too)",
    "kvm-apic-msi": "Local APIC page 0xfee00000-0xfee00fff (the kernel's LAPIC) and the MSI window",
    "apic-msi": "Local APIC page and MSI window, emulated by QEMU",
    "system.flash0": "pflash firmware code (OVMF)",
    "system.flash1": "pflash firmware variables (OVMF)",
}
"""QEMU region name -> what it is.  Used for both sources."""

# (space, first, last, name, kind, note, source file in QEMU)
# `note` refines the name's description for one row (e.g. which COM port).
BUILTIN_RANGES: tuple[tuple[str, int, int, str, str, str, str], ...] = (
    # ---- port I/O ----
    ("io", 0x0000, 0x0007, "dma-chan", "i/o", "DMA1, channels 0-3", "hw/dma/i8257.c"),
    ("io", 0x0008, 0x000F, "dma-cont", "i/o", "DMA1", "hw/dma/i8257.c"),
    ("io", 0x0020, 0x0021, "kvm-pic", "i/o", "master", "hw/i386/kvm/i8259.c, hw/intc/i8259_common.c"),
    ("io", 0x0040, 0x0043, "kvm-pit", "i/o", "", "hw/i386/kvm/i8254.c"),
    ("io", 0x0060, 0x0060, "i8042-data", "i/o", "", "hw/input/pckbd.c"),
    ("io", 0x0061, 0x0061, "pcspk", "i/o", "", "hw/audio/pcspk.c"),
    ("io", 0x0064, 0x0064, "i8042-cmd", "i/o", "", "hw/input/pckbd.c"),
    ("io", 0x0070, 0x0070, "rtc-index", "i/o", "", "hw/rtc/mc146818rtc.c"),
    ("io", 0x0071, 0x0071, "rtc", "i/o", "", "hw/rtc/mc146818rtc.c"),
    ("io", 0x007E, 0x007F, "kvmvapic", "i/o", "", "hw/i386/kvmvapic.c"),
    ("io", 0x0080, 0x0080, "ioport80", "i/o", "", "hw/i386/pc.c"),
    ("io", 0x0081, 0x0083, "dma-page", "i/o", "channels 2, 3, 1", "hw/dma/i8257.c"),
    ("io", 0x0087, 0x0087, "dma-page", "i/o", "channel 0", "hw/dma/i8257.c"),
    ("io", 0x0089, 0x008B, "dma-page", "i/o", "channels 6, 7, 5", "hw/dma/i8257.c"),
    ("io", 0x008F, 0x008F, "dma-page", "i/o", "channel 4", "hw/dma/i8257.c"),
    ("io", 0x0092, 0x0092, "port92", "i/o", "", "hw/i386/port92.c"),
    ("io", 0x00A0, 0x00A1, "kvm-pic", "i/o", "slave", "hw/i386/kvm/i8259.c"),
    ("io", 0x00B2, 0x00B3, "apm-io", "i/o", "", "hw/isa/apm.c"),
    ("io", 0x00C0, 0x00CF, "dma-chan", "i/o", "DMA2, channels 4-7", "hw/dma/i8257.c"),
    ("io", 0x00D0, 0x00DF, "dma-cont", "i/o", "DMA2", "hw/dma/i8257.c"),
    ("io", 0x00E9, 0x00E9, "isa-debugcon", "i/o", "Bochs port e9, isa-debugcon's default iobase", "hw/char/debugcon.c"),
    ("io", 0x00F0, 0x00F0, "ioportF0", "i/o", "", "hw/i386/pc.c"),
    ("io", 0x00F4, 0x00F4, "isa-debug-exit", "i/o", "the usual iobase=0xf4,iosize=1", "hw/misc/debugexit.c"),
    ("io", 0x0170, 0x0177, "ide", "i/o", "secondary channel", "hw/ide/piix.c"),
    ("io", 0x01CE, 0x01D1, "vbe", "i/o", "", "hw/display/vga.c"),
    ("io", 0x01F0, 0x01F7, "ide", "i/o", "primary channel", "hw/ide/piix.c"),
    ("io", 0x0278, 0x027F, "parallel", "i/o", "LPT2", "hw/char/parallel.c"),
    ("io", 0x02E8, 0x02EF, "serial", "i/o", "COM4", "hw/char/serial-isa.c"),
    ("io", 0x02F8, 0x02FF, "serial", "i/o", "COM2", "hw/char/serial-isa.c"),
    ("io", 0x0376, 0x0376, "ide", "i/o", "secondary channel control", "hw/ide/piix.c"),
    ("io", 0x0378, 0x037F, "parallel", "i/o", "LPT1", "hw/char/parallel.c"),
    ("io", 0x03B4, 0x03B5, "vga", "i/o", "mono CRTC", "hw/display/vga.c"),
    ("io", 0x03BA, 0x03BA, "vga", "i/o", "mono status", "hw/display/vga.c"),
    ("io", 0x03C0, 0x03CF, "vga", "i/o", "attribute/sequencer/DAC/GC", "hw/display/vga.c"),
    ("io", 0x03D4, 0x03D5, "vga", "i/o", "colour CRTC", "hw/display/vga.c"),
    ("io", 0x03DA, 0x03DA, "vga", "i/o", "colour status", "hw/display/vga.c"),
    ("io", 0x03E8, 0x03EF, "serial", "i/o", "COM3", "hw/char/serial-isa.c"),
    # QEMU's FDC leaves 0x3f0 unassigned and gives 0x3f6 to IDE (observed).
    ("io", 0x03F1, 0x03F5, "fdc", "i/o", "", "hw/block/fdc-isa.c"),
    ("io", 0x03F6, 0x03F6, "ide", "i/o", "primary channel control", "hw/ide/piix.c"),
    ("io", 0x03F7, 0x03F7, "fdc", "i/o", "digital input register", "hw/block/fdc-isa.c"),
    ("io", 0x03F8, 0x03FF, "serial", "i/o", "COM1", "hw/char/serial-isa.c"),
    ("io", 0x0402, 0x0402, "isa-debugcon", "i/o", "", "hw/char/debugcon.c"),
    ("io", 0x04D0, 0x04D1, "kvm-elcr", "i/o", "", "hw/i386/kvm/i8259.c"),
    ("io", 0x0501, 0x0502, "isa-debug-exit", "i/o", "isa-debug-exit's default iobase", "hw/misc/debugexit.c"),
    ("io", 0x0505, 0x0505, "pvpanic", "i/o", "", "hw/misc/pvpanic-isa.c"),
    ("io", 0x0510, 0x0511, "fwcfg", "i/o", "", "hw/nvram/fw_cfg.c"),
    ("io", 0x0514, 0x051B, "fwcfg.dma", "i/o", "", "hw/nvram/fw_cfg.c"),
    # ACPI PM base 0x600 is SeaBIOS's choice (PIIX4 block 0x600-0x63f; ICH9 0x600-0x67f).
    ("io", 0x0600, 0x0603, "acpi-evt", "i/o", "", "hw/acpi/core.c"),
    ("io", 0x0604, 0x0605, "acpi-cnt", "i/o", "", "hw/acpi/core.c"),
    ("io", 0x0608, 0x060B, "acpi-tmr", "i/o", "", "hw/acpi/core.c"),
    ("io", 0x0620, 0x062F, "acpi-gpe0", "i/o", "ICH9 (Q35)", "hw/acpi/ich9.c"),
    ("io", 0x0630, 0x0637, "acpi-smi", "i/o", "ICH9 (Q35)", "hw/acpi/ich9.c"),
    ("io", 0x0660, 0x067F, "sm-tco", "i/o", "ICH9 (Q35)", "hw/acpi/tco.c"),
    ("io", 0x0700, 0x073F, "pm-smbus", "i/o", "as SeaBIOS places it", "hw/i2c/pm_smbus.c"),
    ("io", 0x0CC0, 0x0CD7, "acpi-pci-hotplug", "i/o", "ICH9 (Q35)", "hw/acpi/pcihp.c"),
    ("io", 0x0CD8, 0x0CF7, "acpi-cpu-hotplug", "i/o", "ICH9 (Q35)", "hw/acpi/cpu.c"),
    ("io", 0x0CF8, 0x0CF8, "pci-conf-idx", "i/o", "", "hw/pci-host/i440fx.c, hw/pci-host/q35.c"),
    ("io", 0x0CF9, 0x0CF9, "reset-control", "i/o", "", "hw/isa/piix.c, hw/isa/lpc_ich9.c"),
    ("io", 0x0CFA, 0x0CFB, "pci-conf-idx", "i/o", "", "hw/pci-host/i440fx.c, hw/pci-host/q35.c"),
    ("io", 0x0CFC, 0x0CFF, "pci-conf-data", "i/o", "", "hw/pci-host/i440fx.c, hw/pci-host/q35.c"),
    ("io", 0x5658, 0x5658, "vmport", "i/o", "", "hw/i386/vmport.c"),
    ("io", 0xAE00, 0xAE17, "acpi-pci-hotplug", "i/o", "PIIX4 (pc)", "hw/acpi/pcihp.c"),
    ("io", 0xAF00, 0xAF1F, "acpi-cpu-hotplug", "i/o", "PIIX4 (pc)", "hw/acpi/cpu_hotplug.c"),
    ("io", 0xAFE0, 0xAFE3, "acpi-gpe0", "i/o", "PIIX4 (pc)", "hw/acpi/piix4.c"),
    ("io", 0xB100, 0xB13F, "pm-smbus", "i/o", "PIIX4 default before firmware moves it", "hw/acpi/piix4.c"),
    # ---- memory (MMIO) ----
    ("memory", 0x000A0000, 0x000BFFFF, "vga-lowmem", "i/o", "", "hw/display/vga.c"),
    ("memory", 0x000C0000, 0x000DFFFF, "pc.rom", "rom", "", "hw/i386/pc.c"),
    ("memory", 0x000E0000, 0x000FFFFF, "pc.bios", "rom", "low alias (isa-bios)", "hw/i386/x86.c"),
    ("memory", 0xB0000000, 0xBFFFFFFF, "pcie-mmcfg-mmio", "i/o", "", "hw/pci-host/q35.c"),
    ("memory", 0xFEC00000, 0xFEC00FFF, "kvm-ioapic", "i/o", "", "hw/i386/kvm/ioapic.c"),
    ("memory", 0xFED00000, 0xFED003FF, "hpet", "i/o", "", "hw/timer/hpet.c"),
    ("memory", 0xFED1C000, 0xFED1FFFF, "lpc-rcrb-mmio", "i/o", "ICH9 (Q35)", "hw/isa/lpc_ich9.c"),
    ("memory", 0xFED40000, 0xFED44FFF, "tpm-tis-mmio", "i/o", "", "hw/tpm/tpm_tis_isa.c"),
    ("memory", 0xFEE00000, 0xFEEFFFFF, "kvm-apic-msi", "i/o", "", "hw/i386/kvm/apic.c"),
    ("memory", 0xFFFC0000, 0xFFFFFFFF, "pc.bios", "rom", "top of 4 GiB (up to 256 KiB of SeaBIOS)", "hw/i386/x86.c"),
)
"""The fixed PC ranges: (space, first, last, QEMU region name, kind, note, QEMU source)."""


def _describe(name: str, note: str = "") -> str:
    text = DESCRIPTIONS.get(name, "")
    if note:
        text = f"{text} ({note})" if text else note
    return text


def _builtin_regions() -> list[Region]:
    return [
        Region(start=first, end=last, name=name, space=space, kind=kind,
               in_kernel=is_in_kernel(name), source="builtin", description=_describe(name, note))
        for space, first, last, name, kind, note, _src in BUILTIN_RANGES
    ]
