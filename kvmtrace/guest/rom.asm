; kvmtrace demo guest: a 64 KiB firmware ROM whose VM exits are known in advance.
;
; Build:  nasm -f bin -DPORT_WRITES=997 ... -o demo.rom rom.asm
;
; QEMU maps a 64 KiB "-bios" image (or libvirt's <loader type='rom'>) at
; 0xF0000-0xFFFFF and again at 0xFFFF0000-0xFFFFFFFF.  The CPU leaves reset in
; real mode with CS.base = 0xFFFF0000 and IP = 0xFFF0, i.e. at ROM offset 0xFFF0,
; where a far jump takes it to F000:start.
;
; The guest then switches to 32-bit protected mode at once and does all of its
; work there, so that a steady (endless) run never leaves protected mode.
; Each pass performs, in order, with 32-bit loop counters:
;
;   PORT_WRITES    out 0x80, al          port 0x80, QEMU's ioport80  -> KVM_EXIT_IO
;   RTC_READS      in  al, 0x71          CMOS/RTC data, QEMU         -> KVM_EXIT_IO
;   PIT_WRITES     out 0x43, al (al=0)   PIT mode/command, in-kernel -> no user exit
;   PIT_READS      in  al, 0x40          PIT channel 0, in-kernel    -> no user exit
;   HPET_WRITES    mov [0xFED00010], 0   HPET config register, QEMU  -> KVM_EXIT_MMIO
;   HPET_READS     mov eax, [0xFED00000] HPET capabilities, QEMU     -> KVM_EXIT_MMIO
;   IOAPIC_WRITES  mov [0xFEC00000], 0   IOAPIC IOREGSEL, in-kernel  -> no user exit
;
; STEADY=0: after one pass write 0 to port 0xF4 (QEMU's isa-debug-exit, if
;           present, then exits with status (0 << 1) | 1 = 1), then cli; hlt for
;           ever.  That final write is one more port write / KVM_EXIT_IO.
; STEADY=1: repeat the pass for ever.
;
; No other instruction in here touches I/O ports or MMIO, and nothing executes
; cpuid, hlt (before the end), rdmsr/wrmsr or the like, so the kvm_pio/kvm_mmio
; and userspace-exit counts are exactly the ones above.  Interrupts stay
; disabled from the first instruction on (IF is already 0 after reset; the
; explicit cli documents it), so nothing is ever delivered to the guest.
;
; Every value written is harmless: 0x00 to port 0x43 is a counter-latch command
; for PIT channel 0 (the PIT keeps its mode and count); 0 written to the HPET's
; general configuration register keeps the HPET disabled; 0 written to the
; IOAPIC's index register just selects register 0 (its ID).

%ifndef PORT_WRITES
  %define PORT_WRITES 997
%endif
%ifndef RTC_READS
  %define RTC_READS 503
%endif
%ifndef PIT_WRITES
  %define PIT_WRITES 257
%endif
%ifndef PIT_READS
  %define PIT_READS 263
%endif
%ifndef HPET_WRITES
  %define HPET_WRITES 127
%endif
%ifndef HPET_READS
  %define HPET_READS 131
%endif
%ifndef IOAPIC_WRITES
  %define IOAPIC_WRITES 137
%endif
%ifndef STEADY
  %define STEADY 0
%endif

; Counts are used as unsigned 32-bit loop counters; the Python side keeps them
; below 2^31.  Reject anything else here too, for hand-made builds.
%macro check_count 1
  %if (%1) < 0 || (%1) > 0x7FFFFFFF
    %error %1 must be in 0 .. 2^31-1
  %endif
%endmacro
check_count PORT_WRITES
check_count RTC_READS
check_count PIT_WRITES
check_count PIT_READS
check_count HPET_WRITES
check_count HPET_READS
check_count IOAPIC_WRITES
%if STEADY != 0 && STEADY != 1
  %error STEADY must be 0 or 1
%endif

ROM_SIZE    equ 0x10000
ROM_BASE    equ 0xF0000         ; linear address of ROM offset 0 (below 1 MiB)
RESET_OFF   equ 0xFFF0          ; ROM offset of the reset vector

PORT_DELAY  equ 0x80            ; POST/delay port (QEMU "ioport80")
PORT_RTC    equ 0x71            ; CMOS/RTC data port
PORT_PITCMD equ 0x43            ; PIT mode/command register (in-kernel PIT)
PORT_PIT0   equ 0x40            ; PIT channel 0 data (in-kernel PIT)
PORT_EXIT   equ 0xF4            ; isa-debug-exit,iobase=0xf4,iosize=1

HPET_BASE   equ 0xFED00000      ; QEMU's HPET: emulated in userspace
IOAPIC_BASE equ 0xFEC00000      ; KVM's IOAPIC: emulated in the kernel

SEL_CODE    equ 0x08
SEL_DATA    equ 0x10

; repeat COUNT, body...: run the body COUNT times with ECX as a 32-bit down
; counter.  A count of 0 skips the body entirely (the test is done at run time,
; before the loop, so no iteration slips through).  Only relative jumps are
; used, so the code does not care at which linear address it runs.
%macro repeat 2+
    mov     ecx, %1
    test    ecx, ecx
    jz      %%done
%%loop:
    %2
    dec     ecx
    jnz     %%loop
%%done:
%endmacro

        org     0
        bits    16

; ---------------------------------------------------------------------------
; Real mode: only the switch to 32-bit protected mode.  CS = 0xF000 here (base
; 0xF0000), so ROM offsets are CS offsets; DS is not set up, hence the cs:
; override.  lgdt with a 32-bit operand loads the full 32-bit linear base.
; ---------------------------------------------------------------------------
start:
        cli
        cld
        o32 lgdt [cs:gdt_desc]
        mov     eax, cr0
        or      al, 1                   ; CR0.PE
        mov     cr0, eax
        ; 32-bit far jump (66 EA imm32 sel16) to the linear address of pm32
        ; through the flat code segment: this loads CS with a 32-bit descriptor.
        jmp     dword SEL_CODE:(ROM_BASE + pm32)

; ---------------------------------------------------------------------------
; The GDT lives in read-only ROM.  The CPU sets a descriptor's "accessed" bit
; when it loads a segment register from it unless that bit is already set; a
; write into the ROM would be an MMIO exit (and under KVM's instruction
; emulator the far jump would be retried for ever).  So the types are 0x9B
; (code, exec/read, accessed) and 0x93 (data, read/write, accessed).
; ---------------------------------------------------------------------------
        align   8
gdt:
        dq      0                       ; 0x00: null descriptor
        ; 0x08: base 0, limit 0xFFFFF * 4 KiB, type 0x9B, G=1 D=1 (32-bit)
        dw      0xFFFF, 0x0000
        db      0x00, 0x9B, 0xCF, 0x00
        ; 0x10: base 0, limit 0xFFFFF * 4 KiB, type 0x93, G=1 B=1
        dw      0xFFFF, 0x0000
        db      0x00, 0x93, 0xCF, 0x00
gdt_end:

gdt_desc:
        dw      gdt_end - gdt - 1       ; limit
        dd      ROM_BASE + gdt          ; linear base

; ---------------------------------------------------------------------------
; 32-bit protected mode, flat segments, CPL 0 (so in/out need no I/O bitmap).
; No stack is needed: the code makes no calls and takes no interrupts.
; ---------------------------------------------------------------------------
        bits    32
pm32:
        mov     ax, SEL_DATA
        mov     ds, ax
        mov     es, ax
        mov     ss, ax

pass:
        xor     eax, eax                ; al = 0: the value every out writes

        repeat  PORT_WRITES,   out PORT_DELAY, al
        repeat  RTC_READS,     in al, PORT_RTC
        ; in al,0x71 clobbered al: write 0 (latch channel 0) to the PIT.
        xor     eax, eax
        repeat  PIT_WRITES,    out PORT_PITCMD, al
        repeat  PIT_READS,     in al, PORT_PIT0

        ; Memory-mapped I/O: one 4-byte access per iteration.
        repeat  HPET_WRITES,   mov dword [HPET_BASE + 0x10], 0
        repeat  HPET_READS,    mov eax, [HPET_BASE]
        repeat  IOAPIC_WRITES, mov dword [IOAPIC_BASE], 0

%if STEADY
        jmp     pass
%else
        xor     eax, eax
        out     PORT_EXIT, al           ; isa-debug-exit: QEMU exits with status 1
.halt:                                  ; without that device: stop here quietly
        cli
        hlt
        jmp     .halt
%endif

; A readable tag in the image (never executed): which workload this ROM runs.
tag:
        db      "kvmtrace-demo"
        db      " port_writes=", %str(PORT_WRITES)
        db      " rtc_reads=", %str(RTC_READS)
        db      " pit_writes=", %str(PIT_WRITES)
        db      " pit_reads=", %str(PIT_READS)
        db      " hpet_writes=", %str(HPET_WRITES)
        db      " hpet_reads=", %str(HPET_READS)
        db      " ioapic_writes=", %str(IOAPIC_WRITES)
        db      " steady=", %str(STEADY), 0

; ---------------------------------------------------------------------------
; Reset vector at ROM offset 0xFFF0 (linear 0xFFFFFFF0 at reset).
; ---------------------------------------------------------------------------
%if ($ - $$) > RESET_OFF
  %error code and data overrun the reset vector
%endif
        times   RESET_OFF - ($ - $$) db 0xFF
        bits    16
reset:
        jmp     0xF000:start            ; EA imm16 sel16: CS base becomes 0xF0000
        times   ROM_SIZE - ($ - $$) db 0xFF
