/* braid XDP firewall (subset): drop or pass IPv4 frames by rules held in
 * maps, then forward like fwd. Lookup order, first hit wins:
 *   1. fw_rules, exact 5-tuple {src, dst, sport, dport, proto}
 *   2. fw_rules, "any source" rule {0, dst, 0, dport, proto}
 *   3. fw_src_prefixes, longest source-prefix match
 *   4. fw_cfg[0], the default action (pass when unset)
 * Ports are 0 for protocols without ports and for later fragments.
 * Non-IPv4 frames (ARP, IPv6) are never filtered. */
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
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct braid_fw_key);
	__type(value, __u32);
} fw_rules SEC(".maps");

struct braid_lpm_v4 {
	__u32 prefixlen;
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
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} fw_cfg SEC(".maps");

static __always_inline int verdict(struct xdp_md *ctx, __u32 action)
{
	if (action == FW_DROP)
		return braid_drop(BRAID_DROP);
	return braid_forward(ctx);
}

SEC("xdp")
int braid_firewall(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int malformed;
	__u32 zero = 0;

	braid_count_rx(ctx);
	struct iphdr *ip = braid_ipv4(data, data_end, &malformed);
	if (malformed)
		return braid_drop(BRAID_MALFORMED);
	if (!ip)
		return braid_forward(ctx);

	struct braid_fw_key key = {};
	key.src = ip->saddr;
	key.dst = ip->daddr;
	key.proto = ip->protocol;
	void *l4 = (void *)ip + ip->ihl * 4;
	if (!braid_later_fragment(ip) &&
	    (ip->protocol == IPPROTO_UDP || ip->protocol == IPPROTO_TCP)) {
		/* UDP and TCP both start with the two ports. */
		struct udphdr *ports = l4;
		if ((void *)(ports + 1) > data_end)
			return braid_drop(BRAID_MALFORMED);
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
		struct braid_lpm_v4 lpm = { .prefixlen = 32, .addr = ip->saddr };
		action = bpf_map_lookup_elem(&fw_src_prefixes, &lpm);
	}
	if (action) {
		braid_count(BRAID_MATCHED, 1);
		return verdict(ctx, *action);
	}
	__u32 *dflt = bpf_map_lookup_elem(&fw_cfg, &zero);
	return verdict(ctx, dflt ? *dflt : FW_PASS);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
