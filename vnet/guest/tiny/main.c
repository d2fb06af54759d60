/* vnet's tiny guest: a banner on the 16550 UART, then a virtio-net (virtio-mmio v2) driver
 * that answers ARP for its address, ICMP echo, and UDP echo on port 7.  Its IP comes from
 * the command line ("ip=A.B.C.D/N", or "ip=dhcp": a DHCP client, RFC 2131, that takes its
 * address, mask and router from the server), its MAC from the device's config space.  Optional:
 * "vlan=N" makes it speak 802.1Q-tagged frames of VLAN N only (a trunk NIC), and
 * "ping=A.B.C.D" makes it ping that address three times, printing each reply (through
 * "gw=A.B.C.D", its default gateway, when the address is outside its ip=/N subnet), and
 * "reboot" makes it pulse the i8042 reset line right after its banner, and "poweroff"
 * makes it write the ACPI soft-off request to the sleep control register (port 0x600).
 * For the NIC benchmark (vnet/bench/vmnic.py): "sink" makes it count the benchmark's data
 * frames (EtherType 0x88b5, payload 'D') and answer a query frame ('Q') with the count
 * ('C'), and "send=MAC" makes it transmit 60-byte data frames to MAC as fast as it can, a
 * queue's worth per kick ("frames=N": N of them, then it says so and goes on as usual).
 *
 * Freestanding, no interrupts, everything at CPL 3 so that it runs natively on nested KVM:
 * when there is nothing to do it writes to the paravirtual wait port, on which the VMM
 * blocks until the NIC has work (docs/kvm.md describes the whole guest ABI). */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

#define BOOT_INFO ((const volatile char *)0x7000)
#define UART_THR 0x3f8
#define UART_LSR 0x3fd
#define EXIT_PORT 0x501
#define WAIT_PORT 0x502
#define SHUTDOWN_PORT 0x503 /* reads 1 once the VMM asks the guest to power off */
#define MMIO_BASE 0xd0000000UL

/* virtio-mmio registers */
#define R_MAGIC 0x000
#define R_VERSION 0x004
#define R_DEVICE_ID 0x008
#define R_DEV_FEATURES 0x010
#define R_DEV_FEATURES_SEL 0x014
#define R_DRV_FEATURES 0x020
#define R_DRV_FEATURES_SEL 0x024
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_STATUS 0x070
#define R_QUEUE_DESC 0x080
#define R_QUEUE_DRIVER 0x090
#define R_QUEUE_DEVICE 0x0a0
#define R_CONFIG 0x100

#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define F_MAC (1u << 5)
#define F_VERSION_1_HI 1u /* bit 32 */

#define QSIZE 64 /* buffers per queue: a burst from the TAP fits, ring and all in 4 KiB pages */
#define BUF_SIZE 2048
#define NET_HDR 12
#define RING_BASE 0x200000UL /* two queues, 16 KiB apart */
#define BUF_BASE 0x210000UL  /* QSIZE receive buffers, then QSIZE transmit buffers */
#define TX_BUF(i) ((u8 *)(BUF_BASE + (u64)(QSIZE + (i)) * BUF_SIZE))
#define ETH_BENCH 0x88b5     /* IEEE local experimental: the NIC benchmark's frames */
#define BENCH_FRAME 60       /* a 64-byte frame on the wire, less its FCS */

struct desc { u64 addr; u32 len; u16 flags; u16 next; };
struct avail { u16 flags; u16 idx; u16 ring[QSIZE]; };
struct used_elem { u32 id; u32 len; };
struct used { u16 flags; u16 idx; struct used_elem ring[QSIZE]; };
struct queue { volatile struct desc *desc; volatile struct avail *avail;
               volatile struct used *used; u16 last_used; };

static struct queue rxq, txq;
static u8 my_mac[6];
static u32 my_ip; /* network byte order, as it sits in packets */
static u16 my_vlan; /* 0: untagged */
static u32 my_mask; /* the ip=/N subnet's mask, in packet byte order */
static u32 peer_ip, gw_ip;
static u32 hop_ip; /* whose MAC the pings go to: the peer, or the gateway on its behalf */
static u8 peer_mac[6];
static int peer_known, replies;
static u16 ping_seq;
enum { DHCP_OFF, DHCP_DISCOVERING, DHCP_REQUESTING, DHCP_BOUND };
static int dhcp_state;
static u32 dhcp_xid, dhcp_offer, dhcp_server, dhcp_idle;
static int sink;             /* count the benchmark's data frames, answer its queries */
static u32 sunk;             /* data frames counted */
static u8 send_mac[6];       /* send=: where the data frames go */
static u32 send_left, sent;  /* frames still to send (~0: no end), sent so far */
static int rx_posted;        /* receive buffers made available since the last RX kick */

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 mmio_read(u32 off) { return *(volatile u32 *)(MMIO_BASE + off); }
static inline void mmio_write(u32 off, u32 v) { *(volatile u32 *)(MMIO_BASE + off) = v; }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

static void putc(char c) { while (!(inb(UART_LSR) & 0x20)) ; outb(UART_THR, (u8)c); }
static void puts(const volatile char *s) { for (int i = 0; s[i] && i < 4096; i++) putc(s[i]); }
static void put_hex8(u8 b) { const char *h = "0123456789abcdef"; putc(h[b >> 4]); putc(h[b & 15]); }
static void put_dec(u32 v) { char b[12]; int n = 0; do { b[n++] = (char)('0' + v % 10); v /= 10; } while (v); while (n) putc(b[--n]); }
static void fail(const char *why) { puts("tiny guest: "); puts(why); puts("\n"); outb(EXIT_PORT, 1); for (;;) ; }

static void copy(u8 *dst, const u8 *src, u32 n) { for (u32 i = 0; i < n; i++) dst[i] = src[i]; }
static int same(const u8 *a, const u8 *b, u32 n) { for (u32 i = 0; i < n; i++) if (a[i] != b[i]) return 0; return 1; }
static u16 be16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static void put_be16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }

static u16 checksum(const u8 *p, u32 n)
{
    u32 sum = 0;
    for (u32 i = 0; i + 1 < n; i += 2) sum += be16(p + i);
    if (n & 1) sum += (u32)p[n - 1] << 8;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (u16)~sum;
}

/* The command line option KEY (e.g. "ip=") as a starting index, or -1 */
static int option(const volatile char *s, const char *key)
{
    for (int i = 0; s[i] && i < 4000; i++) {
        if (i && s[i - 1] != ' ') continue;
        int k = 0;
        while (key[k] && s[i + k] == key[k]) k++;
        if (!key[k]) return i + k;
    }
    return -1;
}

/* "A.B.C.D" at s[j], ended by space, '/' or the end */
static int parse_ip(const volatile char *s, int j, u32 *out)
{
    u32 octets[4] = {0, 0, 0, 0};
    int k = 0, digits = 0;
    if (j < 0) return 0;
    for (; s[j] && s[j] != ' ' && s[j] != '/'; j++) {
        if (s[j] == '.') { if (!digits || ++k > 3) return 0; digits = 0; continue; }
        if (s[j] < '0' || s[j] > '9') return 0;
        octets[k] = octets[k] * 10 + (u32)(s[j] - '0');
        if (octets[k] > 255 || ++digits > 3) return 0;
    }
    if (k != 3 || !digits) return 0;
    *out = octets[0] | octets[1] << 8 | octets[2] << 16 | octets[3] << 24;
    return 1;
}

static u32 parse_dec(const volatile char *s, int j)
{
    u32 v = 0;
    for (; j >= 0 && s[j] >= '0' && s[j] <= '9' && v < 100000; j++) v = v * 10 + (u32)(s[j] - '0');
    return v;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* "aa:bb:cc:dd:ee:ff" at s[j] */
static int parse_mac(const volatile char *s, int j, u8 *out)
{
    if (j < 0) return 0;
    for (int i = 0; i < 6; i++, j += 3) {
        int hi = hex_digit(s[j]), lo = hex_digit(s[j + 1]);
        if (hi < 0 || lo < 0 || (i < 5 && s[j + 2] != ':')) return 0;
        out[i] = (u8)(hi << 4 | lo);
    }
    return 1;
}

static void setup_queue(u32 index, struct queue *q)
{
    u64 base = RING_BASE + index * 0x4000;
    q->desc = (volatile struct desc *)base;
    q->avail = (volatile struct avail *)(base + 0x1000);
    q->used = (volatile struct used *)(base + 0x2000);
    q->last_used = 0;
    mmio_write(R_QUEUE_SEL, index);
    if (mmio_read(R_QUEUE_NUM_MAX) < QSIZE) fail("queue too small");
    mmio_write(R_QUEUE_NUM, QSIZE);
    mmio_write(R_QUEUE_DESC, (u32)base); mmio_write(R_QUEUE_DESC + 4, 0);
    mmio_write(R_QUEUE_DRIVER, (u32)(base + 0x1000)); mmio_write(R_QUEUE_DRIVER + 4, 0);
    mmio_write(R_QUEUE_DEVICE, (u32)(base + 0x2000)); mmio_write(R_QUEUE_DEVICE + 4, 0);
    mmio_write(R_QUEUE_READY, 1);
}

static void post_rx(u16 id)
{
    rxq.desc[id].addr = BUF_BASE + (u64)id * BUF_SIZE;
    rxq.desc[id].len = BUF_SIZE;
    rxq.desc[id].flags = 2; /* VIRTQ_DESC_F_WRITE */
    rxq.desc[id].next = 0;
    rxq.avail->ring[rxq.avail->idx % QSIZE] = id;
    barrier();
    rxq.avail->idx++;
    rx_posted = 1;
}

/* Tell the device about the receive buffers posted since the last kick: once per drained
 * ring, not per frame, and not at all while the device says it needs no kick
 * (VIRTQ_USED_F_NO_NOTIFY; read after the new avail index is written, as virtio requires). */
static void kick_rx(void)
{
    if (!rx_posted) return;
    rx_posted = 0;
    __asm__ volatile("mfence" ::: "memory");
    if (!(rxq.used->flags & 1)) mmio_write(R_QUEUE_NOTIFY, 0);
}

/* Put a frame in transmit descriptor (and buffer) SLOT and make it available; the device
 * sees it at the next kick (flush). */
static void put_tx(u16 slot, const u8 *frame, u32 len)
{
    u8 *buf = TX_BUF(slot);
    for (u32 i = 0; i < NET_HDR; i++) buf[i] = 0;
    if (my_vlan) { /* 802.1Q: the tag goes after the MAC addresses */
        copy(buf + NET_HDR, frame, 12);
        put_be16(buf + NET_HDR + 12, 0x8100);
        put_be16(buf + NET_HDR + 14, my_vlan);
        copy(buf + NET_HDR + 16, frame + 12, len - 12);
        len += 4;
    } else {
        copy(buf + NET_HDR, frame, len);
    }
    txq.desc[slot].addr = (u64)buf;
    txq.desc[slot].len = NET_HDR + len;
    txq.desc[slot].flags = 0;
    txq.avail->ring[txq.avail->idx % QSIZE] = slot;
    barrier();
    txq.avail->idx++;
}

/* Kick the transmit queue and wait until the device has used all N frames put since. */
static void flush_tx(u16 n)
{
    barrier();
    mmio_write(R_QUEUE_NOTIFY, 1);
    u16 used;
    while ((u16)((used = txq.used->idx) - txq.last_used) < n) ; /* the device sends them */
    if ((u16)(used - txq.last_used) != n) fail("the device used more transmit buffers than were put");
    txq.last_used = used;
}

static void transmit(const u8 *frame, u32 len) { put_tx(0, frame, len); flush_tx(1); }

/* The benchmark's frame: KIND ('D' data, 'C' count) and a big-endian number, padded. */
static void bench_frame(u8 *f, const u8 *dst, u8 kind, u32 value)
{
    for (int i = 0; i < BENCH_FRAME; i++) f[i] = 0;
    copy(f, dst, 6); copy(f + 6, my_mac, 6); put_be16(f + 12, ETH_BENCH);
    f[14] = kind;
    put_be16(f + 15, (u16)(value >> 16)); put_be16(f + 17, (u16)value);
}

/* send=: a queue's worth of data frames per kick, numbered from 1. */
static void send_burst(void)
{
    u8 f[BENCH_FRAME];
    u16 n = 0;
    for (; n < QSIZE && send_left; n++, send_left--) {
        bench_frame(f, send_mac, 'D', ++sent);
        put_tx(n, f, BENCH_FRAME);
    }
    flush_tx(n);
    if (!send_left) { puts("tiny guest: sent "); put_dec(sent); puts(" frames\n"); }
}

/* sink: count data frames; a query is answered with the count, to whoever asked. */
static void bench_received(const u8 *f, u32 len)
{
    if (len < 15) return;
    if (f[14] == 'D') {
        sunk++;
    } else if (f[14] == 'Q') {
        u8 reply[BENCH_FRAME];
        bench_frame(reply, f + 6, 'C', sunk);
        transmit(reply, BENCH_FRAME);
    }
}

static void print_ip(u32 a) { for (int i = 0; i < 4; i++) { put_dec((a >> (8 * i)) & 255); if (i < 3) putc('.'); } }

/* Where pings go: to the peer itself, or through the gateway when it is off our subnet. */
static void route(void) { hop_ip = gw_ip && ((peer_ip ^ my_ip) & my_mask) ? gw_ip : peer_ip; }

/* A DHCPDISCOVER (1) or DHCPREQUEST (3), broadcast: we have no address to be answered at. */
static void dhcp_send(int type)
{
    u8 f[14 + 20 + 8 + 300];
    for (u32 i = 0; i < sizeof f; i++) f[i] = 0;
    for (int i = 0; i < 6; i++) f[i] = 0xff;
    copy(f + 6, my_mac, 6); put_be16(f + 12, 0x0800);
    u8 *ip = f + 14, *udp = ip + 20, *b = udp + 8, *o = b + 240;
    b[0] = 1; b[1] = 1; b[2] = 6;                         /* BOOTREQUEST from an Ethernet MAC */
    copy(b + 4, (u8 *)&dhcp_xid, 4);
    put_be16(b + 10, 0x8000);                              /* please broadcast the answer */
    copy(b + 28, my_mac, 6);
    b[236] = 99; b[237] = 130; b[238] = 83; b[239] = 99;   /* the magic cookie */
    *o++ = 53; *o++ = 1; *o++ = (u8)type;
    if (type == 3) {                                       /* the offer we take, and from whom */
        *o++ = 50; *o++ = 4; copy(o, (u8 *)&dhcp_offer, 4); o += 4;
        *o++ = 54; *o++ = 4; copy(o, (u8 *)&dhcp_server, 4); o += 4;
    }
    *o++ = 55; *o++ = 2; *o++ = 1; *o++ = 3;               /* we want the mask and a router */
    *o = 255;
    u32 udp_len = 8 + 300, total = 20 + udp_len;           /* a BOOTP message is 300 bytes */
    ip[0] = 0x45; put_be16(ip + 2, (u16)total); ip[8] = 64; ip[9] = 17;
    for (int i = 16; i < 20; i++) ip[i] = 0xff;            /* 0.0.0.0 -> 255.255.255.255 */
    put_be16(ip + 10, checksum(ip, 20));
    put_be16(udp, 68); put_be16(udp + 2, 67); put_be16(udp + 4, (u16)udp_len);
    transmit(f, 14 + total);
}

/* A server's BOOTREPLY for us: an OFFER is requested, an ACK binds, a NAK starts over. */
static void dhcp_answer(const u8 *b, u32 n)
{
    static const u8 cookie[4] = {99, 130, 83, 99};
    if (n < 240 || b[0] != 2 || !same(b + 4, (u8 *)&dhcp_xid, 4) || !same(b + 28, my_mac, 6)
        || !same(b + 236, cookie, 4)) return;
    u32 type = 0, server = 0, mask = 0, router = 0;
    for (u32 i = 240; i < n && b[i] != 255; ) {
        if (b[i] == 0) { i++; continue; }                  /* pad */
        if (i + 2 > n || i + 2 + b[i + 1] > n) return;     /* an option running off the end */
        const u8 *v = b + i + 2;
        u32 len = b[i + 1];
        if (b[i] == 53 && len >= 1) type = v[0];
        else if (b[i] == 54 && len >= 4) copy((u8 *)&server, v, 4);
        else if (b[i] == 1 && len >= 4) copy((u8 *)&mask, v, 4);
        else if (b[i] == 3 && len >= 4) copy((u8 *)&router, v, 4);
        i += 2 + len;
    }
    if (dhcp_state == DHCP_DISCOVERING && type == 2) {
        copy((u8 *)&dhcp_offer, b + 16, 4);
        dhcp_server = server;
        dhcp_state = DHCP_REQUESTING;
        dhcp_send(3);
    } else if (dhcp_state == DHCP_REQUESTING && type == 5) {
        copy((u8 *)&my_ip, b + 16, 4);
        my_mask = mask ? mask : 0xffffffffu;
        gw_ip = router;
        dhcp_state = DHCP_BOUND;
        route();
        u32 prefix = 0;
        for (u32 m = my_mask; m; m >>= 1) prefix += m & 1;
        puts("tiny guest: dhcp lease "); print_ip(my_ip); putc('/'); put_dec(prefix);
        puts(" gw "); print_ip(gw_ip); puts("\n");
    } else if (dhcp_state == DHCP_REQUESTING && type == 6) {
        dhcp_state = DHCP_DISCOVERING;
    }
}

/* Called when idle (the wait port returns at least every 200 ms): ask again every ~second. */
static void dhcp_step(void)
{
    if (dhcp_state == DHCP_OFF || dhcp_state == DHCP_BOUND || ++dhcp_idle % 5) return;
    dhcp_send(dhcp_state == DHCP_DISCOVERING ? 1 : 3);
}

static void answer(u8 *f, u32 len)
{
    static const u8 bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    if (len < 14 || (!same(f, my_mac, 6) && !same(f, bcast, 6))) return;
    u16 type = be16(f + 12);
    if (type == ETH_BENCH && sink) { bench_received(f, len); return; }
    if (type == 0x0806 && len >= 42 && be16(f + 20) == 2 && hop_ip &&
        same(f + 28, (u8 *)&hop_ip, 4)) {                  /* the next hop's ARP reply */
        copy(peer_mac, f + 22, 6);
        peer_known = 1;
        return;
    }
    if (type == 0x0806 && len >= 42 && be16(f + 20) == 1 && my_ip
        && same(f + 38, (u8 *)&my_ip, 4)) {
        copy(f, f + 6, 6); copy(f + 6, my_mac, 6);        /* Ethernet back to the asker */
        put_be16(f + 20, 2);                                /* ARP reply */
        copy(f + 32, f + 22, 10);                           /* target = the asker */
        copy(f + 22, my_mac, 6); copy(f + 28, (u8 *)&my_ip, 4);
        transmit(f, 42);
        return;
    }
    if (type != 0x0800 || len < 34 || (f[14] >> 4) != 4) return;
    u32 ihl = (u32)(f[14] & 15) * 4, total = be16(f + 16);
    if (ihl < 20 || total < ihl || 14 + total > len) return;
    u8 *ip = f + 14, *l4 = ip + ihl;
    u32 l4len = total - ihl;
    if (dhcp_state != DHCP_OFF && dhcp_state != DHCP_BOUND && ip[9] == 17 && l4len >= 8
        && be16(l4 + 2) == 68) {                             /* to the DHCP client port */
        dhcp_answer(l4 + 8, l4len - 8);
        return;
    }
    if (!my_ip || !same(f + 30, (u8 *)&my_ip, 4)) return;
    if (ip[9] == 1 && l4len >= 8 && l4[0] == 0 && peer_ip && same(ip + 12, (u8 *)&peer_ip, 4)
        && be16(l4 + 4) == 0x7e57) {                         /* a reply to our ping */
        replies++;
        puts("tiny guest: reply from ");
        u32 from; copy((u8 *)&from, ip + 12, 4); print_ip(from);
        puts(" seq "); put_dec(be16(l4 + 6)); puts("\n");
        return;
    }
    if (ip[9] == 1 && l4len >= 8 && l4[0] == 8) {           /* ICMP echo request */
        l4[0] = 0; put_be16(l4 + 2, 0); put_be16(l4 + 2, checksum(l4, l4len));
    } else if (ip[9] == 17 && l4len >= 8 && be16(l4 + 2) == 7) { /* UDP echo */
        u8 port[2]; copy(port, l4, 2); copy(l4, l4 + 2, 2); copy(l4 + 2, port, 2);
        put_be16(l4 + 6, 0);                                /* no checksum: allowed in IPv4 */
    } else {
        return;
    }
    u8 addr[4]; copy(addr, ip + 12, 4); copy(ip + 12, ip + 16, 4); copy(ip + 16, addr, 4);
    ip[8] = 64; put_be16(ip + 10, 0); put_be16(ip + 10, checksum(ip, ihl));
    copy(f, f + 6, 6); copy(f + 6, my_mac, 6);
    transmit(f, 14 + total);
}

/* One step of pinging the peer: ARP until it answers, then echo requests, three replies. */
static void ping_step(void)
{
    static const u8 bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    u8 f[64];
    for (int i = 0; i < 64; i++) f[i] = 0;
    if (!peer_ip || !my_ip || replies >= 3) return;
    if (!peer_known) {
        copy(f, bcast, 6); copy(f + 6, my_mac, 6); put_be16(f + 12, 0x0806);
        put_be16(f + 14, 1); put_be16(f + 16, 0x0800); f[18] = 6; f[19] = 4; put_be16(f + 20, 1);
        copy(f + 22, my_mac, 6); copy(f + 28, (u8 *)&my_ip, 4); copy(f + 38, (u8 *)&hop_ip, 4);
        transmit(f, 42);
        return;
    }
    u8 *ip = f + 14, *icmp = ip + 20;
    copy(f, peer_mac, 6); copy(f + 6, my_mac, 6); put_be16(f + 12, 0x0800);
    ip[0] = 0x45; put_be16(ip + 2, 20 + 16); ip[8] = 64; ip[9] = 1;
    copy(ip + 12, (u8 *)&my_ip, 4); copy(ip + 16, (u8 *)&peer_ip, 4);
    put_be16(ip + 10, checksum(ip, 20));
    icmp[0] = 8; put_be16(icmp + 4, 0x7e57); put_be16(icmp + 6, ++ping_seq);
    put_be16(icmp + 2, checksum(icmp, 16));
    transmit(f, 14 + 20 + 16);
}

void guest_main(void)
{
    puts("vnet tiny guest 1: cmdline=");
    puts(BOOT_INFO);
    puts("\n");
    if (option(BOOT_INFO, "reboot") >= 0) { /* the i8042 reset line, as a PC reboots */
        puts("tiny guest: rebooting\n");
        outb(0x64, 0xfe);
    }
    if (option(BOOT_INFO, "poweroff") >= 0) { /* ACPI soft-off: SLP_TYP 5 | SLP_EN */
        puts("tiny guest: powering off\n");
        outb(0x600, 5 << 2 | 0x20);
    }
    if (option(BOOT_INFO, "crash") >= 0) { /* hlt at CPL 3 faults; with no IDT: a triple fault */
        puts("tiny guest: crashing\n");
        __asm__ volatile("hlt");
    }
    int flood = option(BOOT_INFO, "flood") >= 0; /* count without waiting: console at full speed */
    if (flood || option(BOOT_INFO, "count") >= 0) { /* a guest that visibly runs: pause stops it */
        int honour = option(BOOT_INFO, "ignore-shutdown") < 0;
        for (u32 n = 1;; n++) {
            puts("count "); put_dec(n); puts("\n");
            if (!flood) outb(WAIT_PORT, 0);
            if (honour && inb(SHUTDOWN_PORT) == 1) {
                puts("tiny guest: shutdown requested, powering off\n");
                outb(0x600, 5 << 2 | 0x20);
            }
        }
    }
    int ip_at = option(BOOT_INFO, "ip=");
    int dhcp = ip_at >= 0 && BOOT_INFO[ip_at] == 'd' && BOOT_INFO[ip_at + 1] == 'h'
               && BOOT_INFO[ip_at + 2] == 'c' && BOOT_INFO[ip_at + 3] == 'p';
    if (!dhcp && !parse_ip(BOOT_INFO, ip_at, &my_ip)) { puts("tiny guest: no ip= on the command line, done\n"); outb(EXIT_PORT, 0); for (;;) ; }
    if (mmio_read(R_MAGIC) != 0x74726976 || mmio_read(R_VERSION) != 2 || mmio_read(R_DEVICE_ID) != 1)
        fail("no virtio-mmio v2 network device at 0xd0000000");
    mmio_write(R_STATUS, 0);
    mmio_write(R_STATUS, S_ACK | S_DRIVER);
    mmio_write(R_DEV_FEATURES_SEL, 1);
    if (!(mmio_read(R_DEV_FEATURES) & F_VERSION_1_HI)) fail("device lacks VIRTIO_F_VERSION_1");
    mmio_write(R_DRV_FEATURES_SEL, 0); mmio_write(R_DRV_FEATURES, F_MAC);
    mmio_write(R_DRV_FEATURES_SEL, 1); mmio_write(R_DRV_FEATURES, F_VERSION_1_HI);
    mmio_write(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    if (!(mmio_read(R_STATUS) & S_FEATURES_OK)) fail("features refused");
    for (int i = 0; i < 6; i++) my_mac[i] = *(volatile u8 *)(MMIO_BASE + R_CONFIG + i);
    setup_queue(0, &rxq);
    setup_queue(1, &txq);
    mmio_write(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    for (u16 i = 0; i < QSIZE; i++) post_rx(i);
    mmio_write(R_QUEUE_NOTIFY, 0);
    puts("tiny guest: eth0 ");
    for (int i = 0; i < 6; i++) { put_hex8(my_mac[i]); if (i < 5) putc(':'); }
    puts(" ip ");
    if (dhcp) puts("dhcp"); else print_ip(my_ip);
    my_vlan = (u16)(parse_dec(BOOT_INFO, option(BOOT_INFO, "vlan=")) & 0xfff);
    parse_ip(BOOT_INFO, option(BOOT_INFO, "ping="), &peer_ip);
    parse_ip(BOOT_INFO, option(BOOT_INFO, "gw="), &gw_ip);
    int slash = ip_at;
    while (BOOT_INFO[slash] && BOOT_INFO[slash] != ' ' && BOOT_INFO[slash] != '/') slash++;
    u32 prefix = BOOT_INFO[slash] == '/' ? parse_dec(BOOT_INFO, slash + 1) : 32;
    u32 mask = prefix >= 32 ? 0xffffffffu : prefix ? ~(0xffffffffu >> prefix) : 0;
    my_mask = mask >> 24 | (mask >> 8 & 0xff00) | (mask << 8 & 0xff0000) | mask << 24;
    route();
    if (my_vlan) { puts(" vlan "); put_dec(my_vlan); }
    sink = option(BOOT_INFO, "sink") >= 0;
    if (parse_mac(BOOT_INFO, option(BOOT_INFO, "send="), send_mac)) {
        int frames = option(BOOT_INFO, "frames=");
        send_left = frames >= 0 ? parse_dec(BOOT_INFO, frames) : ~0u;
        puts(" sending");
    }
    if (sink) puts(" sink");
    puts(" up\n");
    if (dhcp) {
        copy((u8 *)&dhcp_xid, my_mac + 2, 4);               /* ours alone on this link */
        dhcp_state = DHCP_DISCOVERING;
        dhcp_send(1);
    }
    for (u32 bursts = 1, busy_waits = 0;; bursts++) {
        if (send_left) {               /* sending: no waiting, frames in between are answered */
            send_burst();
            if (bursts % 64 == 0 && inb(SHUTDOWN_PORT) == 1) {
                puts("tiny guest: shutdown requested, powering off\n");
                outb(0x600, 5 << 2 | 0x20);
            }
            if (rxq.used->idx == rxq.last_used) { kick_rx(); continue; }
        } else if (rxq.used->idx == rxq.last_used) {
            kick_rx();
            barrier();
            if (rxq.used->idx != rxq.last_used) continue; /* it came while we kicked */
            outb(WAIT_PORT, 0);            /* the one exit while frames keep coming */
            /* The console and the shutdown port cost an exit each: look at them when the
             * wait brought no frame, and every 64th wait under load, not on every frame. */
            if (rxq.used->idx == rxq.last_used || ++busy_waits % 64 == 0) {
                while (inb(UART_LSR) & 1) putc((char)inb(UART_THR)); /* echo the console's input */
                if (inb(SHUTDOWN_PORT) == 1) {
                    puts("tiny guest: shutdown requested, powering off\n");
                    outb(0x600, 5 << 2 | 0x20);
                }
            }
            dhcp_step();
            ping_step();
            continue;
        }
        barrier();
        volatile struct used_elem *e = &rxq.used->ring[rxq.last_used % QSIZE];
        u16 id = (u16)(e->id % QSIZE);
        u32 len = e->len;
        rxq.last_used++;
        u8 *frame = (u8 *)(BUF_BASE + (u64)id * BUF_SIZE + NET_HDR);
        if (len > NET_HDR + 14 && len <= BUF_SIZE) {
            len -= NET_HDR;
            if (my_vlan) { /* a trunk: only our VLAN's tagged frames, the tag taken off */
                if (be16(frame + 12) == 0x8100 && (be16(frame + 14) & 0xfff) == my_vlan) {
                    for (int i = 11; i >= 0; i--) frame[i + 4] = frame[i];
                    answer(frame + 4, len - 4);
                }
            } else if (be16(frame + 12) != 0x8100) {
                answer(frame, len);
            }
        }
        post_rx(id); /* the kick waits until the ring is drained (kick_rx) */
    }
}
