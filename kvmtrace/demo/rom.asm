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
; TICK_HZ=0 (the default): with STEADY=1 the passes follow each other as fast
; as the host emulates them.  No other instruction in here touches I/O ports
; or MMIO, and nothing executes cpuid, hlt (before the end), rdmsr/wrmsr or the
; like, so the kvm_pio/kvm_mmio and userspace-exit counts are exactly the ones
; above.  Interrupts stay disabled from the first instruction on (IF is
; already 0 after reset; the explicit cli documents it), so nothing is ever
; delivered to the guest.  The image is byte for byte the one built before
; TICK_HZ existed.
;
; TICK_HZ=1..10000 (only with STEADY=1): PACED steady mode.  The passes are
; started by a clock, TICK_HZ times a second, so the exit RATES are set by the
; host's PIT timer and not by how fast the host emulates the guest.  Once, in
; protected mode, before the first pass (all of these are in-kernel devices,
; "kvm-pic" and "kvm-pit": kvm_pio events, no userspace exit), in the order
; master ICWs, slave ICWs, both masks, PIT:
;
;   PIC master   out 0x20: ICW1 0x11                          1 write to 0x20
;                out 0x21: ICW2 0x20, ICW3 0x04, ICW4 0x01,
;                          OCW1 0xFE (only IRQ0 unmasked)     4 writes to 0x21
;   PIC slave    out 0xA0: ICW1 0x11                          1 write to 0xA0
;                out 0xA1: ICW2 0x28, ICW3 0x02, ICW4 0x01,
;                          OCW1 0xFF (all masked)             4 writes to 0xA1
;   PIT ch. 0    out 0x43: 0x34 (ch 0, lo/hi byte, mode 2)    1 write to 0x43
;                out 0x40: divisor low byte, high byte        2 writes to 0x40
;
; Before that, two 4-byte MMIO writes to KVM's in-kernel local APIC (kvm_mmio
; "write" events, no userspace exit): SVR (0xFEE000F0) = 0x12F to enable it,
; then LVT0 (0xFEE00350) = 0x700, LINT0 = ExtINT.  The PIC's output reaches the
; CPU through LINT0, which QEMU leaves masked at reset; without these two
; writes KVM never delivers a PIC interrupt.
;
; The IDT (in ROM) sends vector 0x20 (IRQ0) to timer_isr, which sends a
; non-specific EOI (out 0x20, al with al = 0x20: one more in-kernel write to
; 0x20 per interrupt) and counts the interrupt in EBP.  Vectors 0x21..0x2F
; (the masked PIC lines, a spurious IRQ7, the APIC's spurious vector 0x2F)
; send no EOI and count nothing.  Vectors 0..0x1F are not present (an
; exception would triple-fault and reset the machine: the setup writes would
; then show twice).
;
; No handler returns with iret: KVM's instruction emulator, which runs every
; instruction of a guest that is not PVM-aware on a PVM host, implements IRET
; in real mode only ("emulation failure", KVM_EXIT_INTERNAL_ERROR, on iretd in
; protected mode).  An interrupt is only ever taken inside the wait loop's
; sti; hlt (IF is 0 everywhere else, and an interrupt gate clears it again),
; so the handlers drop the interrupt frame (reload ESP) and jump back to the
; wait loop, with IF = 0 as after its cli.  That is ordinary x86 on VMX and
; SVM hosts too.
;
; Then: pass, wait, pass, wait, ... where "wait" is sti; hlt until the timer
; handler has counted IRQS_PER_TICK more interrupts.  HLT is handled in the
; kernel (the in-kernel irqchip wakes the vCPU): no kvm_pio, no userspace
; exit.  The first pass starts at once; pass n+1 starts after n *
; IRQS_PER_TICK interrupts.  The PIT runs at 1193182 / PIT_DIVISOR Hz, where
; PIT_DIVISOR = round(1193182 / (TICK_HZ * IRQS_PER_TICK)) (halves up) and
; IRQS_PER_TICK is the smallest k >= 1 that keeps the divisor within 16 bits:
; 1 for TICK_HZ >= 19, more below (the PIT cannot go slower than 18.2 Hz).
;
; If a pass takes longer than a tick, the interrupt is already pending when
; the loop reaches sti; hlt and the next pass starts at once (KVM's PIT, in
; its default "reinject" mode, also delivers ticks it could not deliver in
; time, one per EOI): the guest catches up after a short overrun, but a pass
; that is always longer than a tick makes the rates throughput-bound again.
; KVM also limits a periodic PIT to one tick per kvm.min_timer_period_us
; (200 us by default: 5000 Hz).
;
; FINITE ENDINGS (STEADY=0), ENDING=
;   0  write 0 to port 0xF4 (isa-debug-exit), as above (the default);
;   1  an emulation failure: lidt of a zero-limit IDT, then int3.  On a host
;      whose KVM emulates every guest instruction (the development machines)
;      this is one KVM_EXIT_INTERNAL_ERROR, suberror 1 (EMULATION); QEMU stops
;      the vCPU and the domain stays paused;
;   2  a triple fault: lidt of a zero-limit IDT, then ud2 (#UD, then #GP and
;      #DF find no IDT either): one KVM_EXIT_SHUTDOWN, measured on the
;      development machines too; QEMU resets, libvirt (on_reboot=destroy) ends
;      the domain.
;
; FINITE INTERRUPTS (STEADY=0, IRQS=n > 0, needs TICK_HZ): after the paced
; mode's setup (below), wait for n PIT interrupts, one per "sti; nop; nop;
; hlt", before the pass; every odd one is first left pending: a spin of SPIN
; iterations with IF=0 that outlasts a tick.  With the irqchip in the kernel nothing of
; the wait leaves the kernel but the n EOIs; with kernel_irqchip=off every
; PIC/PIT/IOAPIC/LAPIC access is QEMU's and each of the n waits is one
; userspace exit, KVM_EXIT_HLT (the vCPU halted before the tick) or
; KVM_EXIT_IRQ_WINDOW_OPEN (the tick was pending at sti).
;
; SEVERAL vCPUs (VCPUS=n, 2..8): before anything else the bootstrap processor
; enables its local APIC (SVR, as below), copies a real-mode trampoline to
; RAM at TRAMPOLINE (4 KiB aligned, below 1 MiB) and starts the application
; processors with INIT, SIPI, SIPI (three 4-byte writes to the in-kernel
; APIC's ICR low, 0xFEE00300, "all excluding self").  Each AP switches to
; protected mode, reads its APIC id (one 4-byte read of 0xFEE00020, in the
; kernel) and writes port 0x80 AP_WRITES[id] times (ap_counts below: 59, 61,
; 67, ... for ids 1, 2, 3, ...), counts itself done in RAM and halts for ever
; (cli; hlt, in the kernel).  The BSP waits for all of them, then goes on.
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
%ifndef TICK_HZ
  %define TICK_HZ 0
%endif
%ifndef ENDING
  %define ENDING 0
%endif
%ifndef IRQS
  %define IRQS 0
%endif
%ifndef VCPUS
  %define VCPUS 1
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
%if (TICK_HZ) < 0 || (TICK_HZ) > 10000
  %error "TICK_HZ must be in 0 .. 10000"
%endif
%if (TICK_HZ) != 0 && STEADY == 0 && (IRQS) == 0
  %error "TICK_HZ needs STEADY=1 (a paced run never ends) or IRQS > 0"
%endif
%if (IRQS) != 0 && ((TICK_HZ) == 0 || STEADY != 0)
  %error "IRQS needs TICK_HZ and STEADY=0"
%endif
check_count IRQS
%if ENDING < 0 || ENDING > 2
  %error "ENDING must be 0 (isa-debug-exit), 1 (emulation failure) or 2 (triple fault)"
%endif
%if (VCPUS) < 1 || (VCPUS) > 8
  %error "VCPUS must be in 1 .. 8"
%endif

PIT_HZ      equ 1193182         ; the PIT's input clock (KVM's KVM_PIT_FREQ)

%if TICK_HZ
  ; IRQS_PER_TICK: the smallest k >= 1 for which the divisor fits 16 bits;
  ; PIT_DIVISOR = round(PIT_HZ / (TICK_HZ * k)), halves rounded up.  The Python
  ; side (kvmtrace.guest.Workload) computes the same two numbers.
  %assign IRQS_PER_TICK 1
  %rep 100
    %assign PIT_DIVISOR (2 * PIT_HZ + TICK_HZ * IRQS_PER_TICK) / (2 * TICK_HZ * IRQS_PER_TICK)
    %if PIT_DIVISOR <= 0xFFFF
      %exitrep
    %endif
    %assign IRQS_PER_TICK IRQS_PER_TICK + 1
  %endrep
  %if PIT_DIVISOR > 0xFFFF || PIT_DIVISOR < 1
    %error "no PIT divisor for this TICK_HZ"
  %endif
%endif

ROM_SIZE    equ 0x10000
ROM_BASE    equ 0xF0000         ; linear address of ROM offset 0 (below 1 MiB)
RESET_OFF   equ 0xFFF0          ; ROM offset of the reset vector

PORT_DELAY  equ 0x80            ; POST/delay port (QEMU "ioport80")
PORT_RTC    equ 0x71            ; CMOS/RTC data port
PORT_PITCMD equ 0x43            ; PIT mode/command register (in-kernel PIT)
PORT_PIT0   equ 0x40            ; PIT channel 0 data (in-kernel PIT)
PORT_EXIT   equ 0xF4            ; isa-debug-exit,iobase=0xf4,iosize=1
PORT_PIC1   equ 0x20            ; master 8259 command (in-kernel PIC)
PORT_PIC1D  equ 0x21            ; master 8259 data
PORT_PIC2   equ 0xA0            ; slave 8259 command
PORT_PIC2D  equ 0xA1            ; slave 8259 data

IRQ_BASE1   equ 0x20            ; vectors of the master's IRQ0..7
IRQ_BASE2   equ 0x28            ; vectors of the slave's IRQ8..15
STACK_TOP   equ 0x10000         ; paced mode only: a stack in guest RAM

LAPIC_BASE  equ 0xFEE00000      ; KVM's local APIC: emulated in the kernel
LAPIC_SVR   equ 0xF0            ; spurious-interrupt vector register
LAPIC_LVT0  equ 0x350           ; local vector table: LINT0
SPURIOUS    equ 0x2F            ; the LAPIC's spurious vector (low nibble 0xF)

HPET_BASE   equ 0xFED00000      ; QEMU's HPET: emulated in userspace
IOAPIC_BASE equ 0xFEC00000      ; KVM's IOAPIC: emulated in the kernel

LAPIC_ID    equ 0x20            ; APIC id register (bits 31:24)
LAPIC_ICR   equ 0x300           ; interrupt command register, low half
ICR_INIT    equ 0x000C4500      ; INIT, level assert, all excluding self
ICR_SIPI    equ 0x000C4600      ; start-up IPI, all excluding self (| vector)
TRAMPOLINE  equ 0x8000          ; the APs' real-mode start (SIPI vector 0x08)
AP_DONE     equ 0x7000          ; RAM: APs that have finished
%ifndef SPIN
  %define SPIN 20000            ; IRQS: iterations that outlast a tick here
%endif

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
; No stack is needed unless paced: the code makes no calls and, unpaced, takes
; no interrupts.
; ---------------------------------------------------------------------------
        bits    32
pm32:
        mov     ax, SEL_DATA
        mov     ds, ax
        mov     es, ax
        mov     ss, ax

%if VCPUS > 1
        ; Start the APs (see the top of this file) and wait until they are done.
        mov     dword [LAPIC_BASE + LAPIC_SVR], 0x100 | SPURIOUS
        mov     dword [AP_DONE], 0
        mov     esi, ROM_BASE + ap_tramp
        mov     edi, TRAMPOLINE
        mov     ecx, ap_tramp_end - ap_tramp
        rep     movsb
        mov     dword [LAPIC_BASE + LAPIC_ICR], ICR_INIT
        mov     dword [LAPIC_BASE + LAPIC_ICR], ICR_SIPI | (TRAMPOLINE >> 12)
        mov     dword [LAPIC_BASE + LAPIC_ICR], ICR_SIPI | (TRAMPOLINE >> 12)
.wait_aps:
        cmp     dword [AP_DONE], VCPUS - 1
        jb      .wait_aps
%endif

%if TICK_HZ
        ; Paced mode: stack, IDT, PIC, PIT (see the top of this file).  IF
        ; stays 0 throughout; nothing is delivered before the first sti.
        mov     esp, STACK_TOP
        lidt    [ROM_BASE + idt_desc]

        ; The PIC's INTR reaches the CPU through the local APIC's LINT0 pin,
        ; which QEMU leaves masked at reset (KVM then never takes a PIC
        ; interrupt), and KVM keeps every LVT entry masked while the APIC is
        ; software-disabled.  So, as a BIOS does: enable the APIC (SVR bit 8),
        ; then LINT0 = ExtINT, unmasked.  ExtINT interrupts bypass the APIC's
        ; IRR/ISR: no APIC EOI is needed.
        mov     dword [LAPIC_BASE + LAPIC_SVR], 0x100 | SPURIOUS
        mov     dword [LAPIC_BASE + LAPIC_LVT0], 0x700

        mov     al, 0x11                ; ICW1: edge, cascade, ICW4 follows
        out     PORT_PIC1, al
        mov     al, IRQ_BASE1           ; ICW2: vector base
        out     PORT_PIC1D, al
        mov     al, 0x04                ; ICW3: a slave on IRQ2
        out     PORT_PIC1D, al
        mov     al, 0x01                ; ICW4: 8086 mode, normal EOI
        out     PORT_PIC1D, al

        mov     al, 0x11                ; ICW1
        out     PORT_PIC2, al
        mov     al, IRQ_BASE2           ; ICW2
        out     PORT_PIC2D, al
        mov     al, 0x02                ; ICW3: cascade identity 2
        out     PORT_PIC2D, al
        mov     al, 0x01                ; ICW4
        out     PORT_PIC2D, al

        mov     al, 0xFE                ; OCW1: master, only IRQ0 (the PIT)
        out     PORT_PIC1D, al
        mov     al, 0xFF                ; OCW1: slave, everything masked
        out     PORT_PIC2D, al

        mov     al, 0x34                ; channel 0, lo/hi byte, mode 2, binary
        out     PORT_PITCMD, al
        mov     al, PIT_DIVISOR & 0xFF
        out     PORT_PIT0, al
        mov     al, (PIT_DIVISOR >> 8) & 0xFF
        out     PORT_PIT0, al

        xor     ebp, ebp                ; interrupts counted by timer_isr
        xor     edi, edi                ; the count at which the next pass is due
%endif

%if IRQS
        ; Finite interrupts: IRQS waits, every odd one with its tick pending.
tick_wait:
        cmp     ebp, IRQS
        jae     irqs_done
        test    ebp, 1
        jz      .now
        mov     ecx, SPIN
.spin:
        dec     ecx
        jnz     .spin
.now:
        sti                             ; IF = 1 after the next instruction:
        nop                             ; ... this one
        nop                             ; a pending tick is taken here (or before)
        hlt                             ; else the vCPU halts until it comes
        cli
        jmp     tick_wait
irqs_done:
%endif

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
  %if TICK_HZ
        ; Wait until timer_isr has counted IRQS_PER_TICK more interrupts.
        ; Interrupts are taken only inside sti; hlt (sti holds them off for
        ; one instruction, so none slips in between and hlt cannot miss one);
        ; the handlers come back to tick_wait, never to the instruction after
        ; hlt (which only runs should hlt ever end without an interrupt).
        add     edi, IRQS_PER_TICK
tick_wait:
        mov     eax, ebp
        sub     eax, edi
        jns     tick_due                ; ebp >= edi (mod 2^32): go
        sti
        hlt
        cli
        jmp     tick_wait
tick_due:
  %endif
        jmp     pass
%else
  %if ENDING == 0
        xor     eax, eax
        out     PORT_EXIT, al           ; isa-debug-exit: QEMU exits with status 1
  %elif ENDING == 1
        lidt    [ROM_BASE + null_idt]   ; no IDT at all ...
        int3                            ; ... and an interrupt: emulation failure here
  %else
        lidt    [ROM_BASE + null_idt]
        ud2                             ; #UD -> #GP -> #DF -> triple fault: shutdown
  %endif
.halt:                                  ; without that device: stop here quietly
        cli
        hlt
        jmp     .halt
null_idt:
        dw      0                       ; limit 0: no vector is present
        dd      0
%endif

%if VCPUS > 1
; ---------------------------------------------------------------------------
; The APs: the real-mode trampoline (copied to TRAMPOLINE; CS = TRAMPOLINE >> 4,
; so its own labels are CS offsets from ap_tramp) and their protected-mode work.
; ---------------------------------------------------------------------------
        bits    16
ap_tramp:
        cli
        o32 lgdt [cs:ap_gdt_desc - ap_tramp]
        mov     eax, cr0
        or      al, 1
        mov     cr0, eax
        jmp     dword SEL_CODE:(ROM_BASE + ap_pm32)
ap_gdt_desc:
        dw      gdt_end - gdt - 1
        dd      ROM_BASE + gdt
ap_tramp_end:

        bits    32
ap_pm32:
        mov     ax, SEL_DATA
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     eax, [LAPIC_BASE + LAPIC_ID]
        shr     eax, 24                 ; this AP's APIC id
        and     eax, 7
        mov     ecx, [ROM_BASE + ap_counts + eax * 4]
        xor     eax, eax
        test    ecx, ecx
        jz      .done
.writes:
        out     PORT_DELAY, al
        dec     ecx
        jnz     .writes
.done:
        lock inc dword [AP_DONE]
.halt:
        cli
        hlt
        jmp     .halt

        align   4
ap_counts:                              ; port 0x80 writes by APIC id (guest.AP_WRITES)
        dd      0, 59, 61, 67, 71, 73, 79, 83
%endif

%if TICK_HZ
; ---------------------------------------------------------------------------
; Paced mode: interrupt handlers and the IDT, all in ROM (the CPU only reads
; the IDT).  Interrupt gates (type 0x8E) clear IF on entry.  The handlers do
; not iret (see the top of this file): they drop the frame and go back to
; tick_wait, which recomputes everything it needs (EAX is free there).
; ---------------------------------------------------------------------------
timer_isr:                              ; vector IRQ_BASE1 + 0: PIT channel 0
        mov     al, 0x20                ; OCW2: non-specific EOI
        out     PORT_PIC1, al
        inc     ebp                     ; one more interrupt for the wait loop
spurious_isr:                           ; any other vector 0x21..0x2F: no EOI
        mov     esp, STACK_TOP          ; drop the frame (EIP, CS, EFLAGS)
        jmp     tick_wait

; An interrupt gate to the ROM code at label %1 (flat code segment).
%macro gate 1
        dw      (ROM_BASE + (%1 - $$)) & 0xFFFF
        dw      SEL_CODE
        db      0, 0x8E
        dw      (ROM_BASE + (%1 - $$)) >> 16
%endmacro

        align   8
idt:
        times   IRQ_BASE1 dq 0          ; exceptions: not present
        gate    timer_isr
  %rep 15
        gate    spurious_isr
  %endrep
idt_end:

idt_desc:
        dw      idt_end - idt - 1       ; limit
        dd      ROM_BASE + idt          ; linear base
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
        db      " steady=", %str(STEADY)
%if ENDING
        db      " ending=", %str(ENDING)
%endif
%if IRQS
        db      " irqs=", %str(IRQS)
%endif
%if VCPUS > 1
        db      " vcpus=", %str(VCPUS)
%endif
%if TICK_HZ
        db      " tick_hz=", %str(TICK_HZ)
        db      " pit_divisor=", %str(PIT_DIVISOR)
        db      " irqs_per_tick=", %str(IRQS_PER_TICK)
%endif
        db      0

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
