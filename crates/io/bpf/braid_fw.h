/* The body of braid's XDP firewall (subset), shared by xdp_firewall.c (one
 * NF) and xdp_chain.c (a stage of a chain): drop or pass IPv4 frames by
 * rules held in maps. Lookup order, first hit wins:
 *   1. fw_rules, exact 5-tuple {src, dst, sport, dport, proto, slot}
 *   2. fw_rules, "any source" rule {0, dst, 0, dport, proto, slot}
 *   3. fw_src_prefixes, longest source-prefix match within the slot
 *   4. fw_cfg[slot], the default action (pass when unset)
 * Every key carries the slot so the stages of a chain keep separate rule
 * sets in the same maps; a single-NF program uses slot 0.
 * Ports are 0 for protocols without ports and for later fragments.
 * ARP always passes (IPv4 needs it); other non-IPv4 frames (IPv6, more
 * than two VLAN tags) get the default action, as in the user-space
 * firewall. */
#ifndef BRAID_FW_H
#define BRAID_FW_H

#include "braid_xdp.h"

#define FW_PASS 1
#define FW_DROP 2

/* Addresses and ports in network byte order. */
struct braid_fw_key {
	__u32 src;
	__u32 dst;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 slot;
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct braid_fw_key);
	__type(value, __u32);
} fw_rules SEC(".maps");

/* The prefix covers the 32 slot bits, then the address bits. */
struct braid_lpm_v4 {
	__u32 prefixlen;
	__u32 slot;
	__u32 addr;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct braid_lpm_v4);
	__type(value, __u32);
} fw_src_prefixes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BRAID_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} fw_cfg SEC(".maps");

/* Apply the rules of `slot`. Returns 1 when the frame goes on, 0 when it
 * was dropped (counted). */
static __always_inline int braid_fw_check(struct xdp_md *ctx, __u32 slot)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int malformed;

	struct iphdr *ip = braid_ipv4(data, data_end, &malformed);
	if (malformed) {
		braid_drop(ctx, slot, BRAID_MALFORMED);
		return 0;
	}
	if (!ip) {
		void *l3;
		if (braid_ethertype(data, data_end, &l3) == bpf_htons(ETH_P_ARP))
			return 1;
		__u32 *dflt = bpf_map_lookup_elem(&fw_cfg, &slot);
		if (dflt && *dflt == FW_DROP) {
			braid_drop(ctx, slot, BRAID_DROP);
			return 0;
		}
		return 1;
	}

	struct braid_fw_key key = {};
	key.src = ip->saddr;
	key.dst = ip->daddr;
	key.proto = ip->protocol;
	key.slot = (__u8)slot;
	void *l4 = (void *)ip + ip->ihl * 4;
	if (!braid_later_fragment(ip) &&
	    (ip->protocol == IPPROTO_UDP || ip->protocol == IPPROTO_TCP)) {
		/* UDP and TCP both start with the two ports. */
		struct udphdr *ports = l4;
		if ((void *)(ports + 1) > data_end) {
			braid_drop(ctx, slot, BRAID_MALFORMED);
			return 0;
		}
		key.sport = ports->source;
		key.dport = ports->dest;
	}

	__u32 *action = bpf_map_lookup_elem(&fw_rules, &key);
	if (!action) {
		key.src = 0;
		key.sport = 0;
		action = bpf_map_lookup_elem(&fw_rules, &key);
	}
	if (!action) {
		struct braid_lpm_v4 lpm = { .prefixlen = 64, .slot = slot, .addr = ip->saddr };
		action = bpf_map_lookup_elem(&fw_src_prefixes, &lpm);
	}
	if (action)
		braid_count(slot, BRAID_MATCHED, 1);
	else
		action = bpf_map_lookup_elem(&fw_cfg, &slot);
	if (action && *action == FW_DROP) {
		braid_drop(ctx, slot, BRAID_DROP);
		return 0;
	}
	return 1;
}

#endif
