/* Entry of the tiny guest.  The VMM enters here directly in 64-bit mode at CPL 3 with a
 * stack, IOPL 3 (so port I/O works without a ring-0 stub) and the boot info at BOOT_INFO. */
    .section .text.start, "ax"
    .globl _start
_start:
    call guest_main
1:  jmp 1b
