/* vnet's tiny guest: prints a banner and its command line on the 16550 UART at 0x3f8, then
 * reports its exit status on the paravirtual exit port.  Freestanding: no libc, no
 * interrupts, everything at CPL 3 so that it runs natively on nested KVM (docs/kvm.md). */

#define BOOT_INFO ((const volatile char *)0x7000) /* the VMM puts the command line here */
#define UART_THR 0x3f8
#define UART_LSR 0x3fd
#define LSR_THR_EMPTY 0x20
#define EXIT_PORT 0x501

static inline void outb(unsigned short port, unsigned char value)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline unsigned char inb(unsigned short port)
{
    unsigned char value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static void putc(char c)
{
    while (!(inb(UART_LSR) & LSR_THR_EMPTY))
        ;
    outb(UART_THR, (unsigned char)c);
}

static void puts(const volatile char *s)
{
    for (int i = 0; s[i] && i < 4096; i++)
        putc(s[i]);
}

void guest_main(void)
{
    puts("vnet tiny guest 1: cmdline=");
    puts(BOOT_INFO);
    puts("\n");
    outb(EXIT_PORT, 0);
    for (;;)
        ;
}
