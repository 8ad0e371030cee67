/* Shared pieces of braid's XDP programs: counters, the forwarding tail
 * (devmap redirect with optional MAC rewrite) and header parsing.
 *
 * Every program object defines the same maps so one Rust loader drives
 * them all:
 *   counters   per-CPU array of u64, BRAID_COUNTERS per slot, indexed by
 *              slot * BRAID_COUNTERS + enum braid_counter
 *   tx_ports   devmap (hash) ingress ifindex -> egress ifindex
 *   mac_rules  hash ingress ifindex -> struct braid_mac_rule
 *   .bss       braid_tap_words: slot -> the points a capture taps (0: none)
 *   tap_ring   ring buffer of struct braid_tap_sample (braid capture)
 * A frame whose ingress interface has no tx_ports entry goes to the
 * kernel stack (XDP_PASS), so an unconfigured program is harmless.
 */
#ifndef BRAID_XDP_H
#define BRAID_XDP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <stddef.h>

/* Counter and configuration slots: 1 for a single-NF program, one per
 * stage for the chain program (which defines it before including this). */
#ifndef BRAID_SLOTS
#define BRAID_SLOTS 1
#endif

/* Keep in sync with `Counter` in crates/io/src/xdp.rs. */
enum braid_counter {
	BRAID_RX_PACKETS = 0,
	BRAID_RX_BYTES = 1,
	BRAID_PASS = 2,
	BRAID_DROP = 3,
	BRAID_REDIRECT = 4,
	BRAID_MATCHED = 5,   /* program specific: rule hit, payload rewritten */
	BRAID_MALFORMED = 6, /* headers too short or inconsistent */
	BRAID_TAP_LOST = 7,  /* tap samples the ring buffer had no room for */
	BRAID_COUNTERS = 8,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BRAID_COUNTERS * BRAID_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct bpf_devmap_val);
} tx_ports SEC(".maps");

struct braid_mac_rule {
	__u8 dst[ETH_ALEN];
	__u8 src[ETH_ALEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct braid_mac_rule);
} mac_rules SEC(".maps");

static __always_inline void braid_count(__u32 slot, __u32 idx, __u64 n)
{
	__u32 at = slot * BRAID_COUNTERS + idx;
	__u64 *v = bpf_map_lookup_elem(&counters, &at);
	if (v)
		*v += n;
}

static __always_inline void braid_count_rx(struct xdp_md *ctx, __u32 slot)
{
	braid_count(slot, BRAID_RX_PACKETS, 1);
	braid_count(slot, BRAID_RX_BYTES, (__u64)(ctx->data_end - ctx->data));
}

/* The tap (`braid capture` on a kernel NF): while the slot's tap word has the
 * bit of a point, every frame at that point of the slot's NF is copied (up
 * to BRAID_TAP_SNAP bytes) with its metadata into tap_ring. With no
 * capture running the word is 0: one load per NF call and a branch not
 * taken. A full ring loses the sample and counts it in
 * BRAID_TAP_LOST. Keep the layout in sync with crates/io/src/xdp_tap.rs. */
enum braid_tap_point {
	BRAID_TAP_IN = 0,   /* entering the NF */
	BRAID_TAP_OUT = 1,  /* leaving it (before the MAC rewrite of forwarding) */
	BRAID_TAP_DROP = 2, /* dropped by it, as it entered; reason: the counter */
};

#define BRAID_TAP_SNAP 1536
#define BRAID_TAP_VERSION 1
#ifndef BRAID_TAP_RING
#define BRAID_TAP_RING (1 << 21)
#endif

struct braid_tap_sample {
	__u64 ts_ns;    /* bpf_ktime_get_ns: CLOCK_MONOTONIC */
	__u32 ifindex;  /* ingress interface */
	__u32 orig_len; /* the whole frame */
	__u16 cap_len;  /* bytes in data: min(orig_len, BRAID_TAP_SNAP) */
	__u8 slot;
	__u8 point;     /* enum braid_tap_point */
	__u8 reason;    /* drops: enum braid_counter (BRAID_DROP, BRAID_MALFORMED) */
	__u8 version;   /* BRAID_TAP_VERSION */
	__u8 pad[2];
	__u8 data[BRAID_TAP_SNAP];
};

/* The tap words, one per slot: global data, so the `.bss` array map
 * (one element, this array as its value) that a load reads directly,
 * without a helper call or a bounds-checked lookup. */
__u32 braid_tap_words[BRAID_SLOTS];

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, BRAID_TAP_RING);
} tap_ring SEC(".maps");

/* The points tapped on `slot` (bit 1 << enum braid_tap_point). */
static __always_inline __u32 braid_tap_cfg(__u32 slot)
{
	return *(volatile __u32 *)&braid_tap_words[slot & (BRAID_SLOTS - 1)];
}

/* Scratch for one sample, assembled here and then copied into the ring
 * with its real length (header + captured bytes), so a small frame takes
 * a small record (bpf_ringbuf_reserve wants a constant size). XDP runs
 * one frame at a time per CPU, so a per-CPU slot is never shared. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct braid_tap_sample);
} tap_scratch SEC(".maps");

/* Copy the frame into the ring (a subprogram: the fast path without a
 * capture stays as short as before). */
static __noinline int braid_tap_emit(struct xdp_md *ctx, __u32 slot, __u32 point, __u32 reason)
{
	/* A ring without room for the largest sample (the reader is behind)
	 * loses this one before any copy: the cost of a capture whose reader
	 * cannot keep up stays that of this check. */
	__u64 used = bpf_ringbuf_query(&tap_ring, BPF_RB_AVAIL_DATA);
	__u64 room = bpf_ringbuf_query(&tap_ring, BPF_RB_RING_SIZE);
	if (used + sizeof(struct braid_tap_sample) + 8 > room) {
		braid_count(slot, BRAID_TAP_LOST, 1);
		return 0;
	}
	__u32 zero = 0;
	struct braid_tap_sample *s = bpf_map_lookup_elem(&tap_scratch, &zero);
	if (!s)
		return 0;
	__u32 len = bpf_xdp_get_buff_len(ctx);
	s->ts_ns = bpf_ktime_get_ns();
	s->ifindex = ctx->ingress_ifindex;
	s->orig_len = len;
	s->slot = (__u8)slot;
	s->point = (__u8)point;
	s->reason = (__u8)reason;
	s->version = BRAID_TAP_VERSION;
	s->pad[0] = 0;
	s->pad[1] = 0;
	__u64 cap = len;
	if (cap > BRAID_TAP_SNAP)
		cap = BRAID_TAP_SNAP;
	if (cap == 0 || bpf_xdp_load_bytes(ctx, 0, s->data, cap) < 0)
		cap = 0;
	s->cap_len = (__u16)cap;
	__u64 size = offsetof(struct braid_tap_sample, data) + cap;
	if (size > sizeof(*s))
		size = sizeof(*s);
	if (bpf_ringbuf_output(&tap_ring, s, size, 0) < 0)
		braid_count(slot, BRAID_TAP_LOST, 1);
	return 0;
}

/* Tap the frame at `point` if the slot's tap word `tap` asks for it. */
static __always_inline void braid_tap(struct xdp_md *ctx, __u32 tap, __u32 slot, __u32 point)
{
	if (tap & (1u << point))
		braid_tap_emit(ctx, slot, point, 0);
}

static __always_inline int braid_drop(struct xdp_md *ctx, __u32 slot, __u32 why)
{
	braid_count(slot, why, 1);
	if (why != BRAID_DROP)
		braid_count(slot, BRAID_DROP, 1);
	if (braid_tap_cfg(slot) & (1u << BRAID_TAP_DROP))
		braid_tap_emit(ctx, slot, BRAID_TAP_DROP, why);
	return XDP_DROP;
}

/* Send the frame on: rewrite the MACs if a rule exists for the ingress
 * interface, then redirect through tx_ports (XDP_PASS if no entry). */
static __always_inline int braid_forward(struct xdp_md *ctx, __u32 slot)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 in = ctx->ingress_ifindex;
	struct braid_mac_rule *rule = bpf_map_lookup_elem(&mac_rules, &in);

	if (rule) {
		struct ethhdr *eth = data;
		if ((void *)(eth + 1) > data_end)
			return braid_drop(ctx, slot, BRAID_MALFORMED);
		__builtin_memcpy(eth->h_dest, rule->dst, ETH_ALEN);
		__builtin_memcpy(eth->h_source, rule->src, ETH_ALEN);
	}
	long rc = bpf_redirect_map(&tx_ports, in, XDP_PASS);
	braid_count(slot, rc == XDP_REDIRECT ? BRAID_REDIRECT : BRAID_PASS, 1);
	return (int)rc;
}

struct vlan_hdr_braid {
	__be16 tci;
	__be16 inner_proto;
};

/* The ethertype after Ethernet and up to two VLAN tags, with *l3 set to
 * where that protocol's header starts; 0 if the frame is too short for
 * the Ethernet header or a tag. */
static __always_inline __u16 braid_ethertype(void *data, void *data_end, void **l3)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return 0;
	__u16 proto = eth->h_proto;
	void *cur = eth + 1;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		struct vlan_hdr_braid *v = cur;
		if ((void *)(v + 1) > data_end)
			return 0;
		proto = v->inner_proto;
		cur = v + 1;
	}
	*l3 = cur;
	return proto;
}

/* Find the IPv4 header after Ethernet and up to two VLAN tags. Returns
 * NULL if the frame is not IPv4 or too short; *malformed tells which. */
static __always_inline struct iphdr *braid_ipv4(void *data, void *data_end, int *malformed)
{
	void *cur = data;
	__u16 proto = braid_ethertype(data, data_end, &cur);
	*malformed = 0;
	if (!proto) {
		*malformed = 1;
		return NULL;
	}
	if (proto != bpf_htons(ETH_P_IP))
		return NULL;
	struct iphdr *ip = cur;
	if ((void *)(ip + 1) > data_end || ip->ihl < 5 || ip->version != 4) {
		*malformed = 1;
		return NULL;
	}
	if ((void *)ip + ip->ihl * 4 > data_end) {
		*malformed = 1;
		return NULL;
	}
	return ip;
}

/* True for a fragment that is not the first one (no L4 header). */
static __always_inline int braid_later_fragment(struct iphdr *ip)
{
	return (ip->frag_off & bpf_htons(0x1fff)) != 0;
}

#endif
