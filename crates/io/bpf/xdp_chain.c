/* braid XDP chain: several kernel NFs on one host as one attached program
 * (`braid_chain`) and one stage program per NF kind, joined by tail calls.
 *
 *   chain_paths  hash: ingress ifindex -> the slots this direction crosses,
 *                in order (frames from the client side run the stages in
 *                chain order, frames from the server side in reverse)
 *   chain_progs  prog array: slot -> the stage program of that NF's kind
 *   chain_pos    per-CPU scratch: the index into the path of the stage now
 *                running. Tail calls run on the same CPU within one XDP
 *                invocation, which XDP never interrupts with another, so
 *                the scratch cannot be overwritten in between.
 *
 * Slot s is the s-th NF of the chain: its counters are counters[s * 8 ..],
 * its xor key xor_cfg[s], its firewall rules carry slot s in their keys.
 * A stage that passes a frame counts it as REDIRECT (handed on) and tail
 * calls the next one; the last stage forwards it like fwd (tx_ports,
 * mac_rules) and counts REDIRECT or PASS. An interface without a path
 * sends frames to the kernel stack, like every braid program. */
#define BRAID_SLOTS 8
#include "braid_xdp.h"
#include "braid_fw.h"
#include "braid_xor.h"

struct braid_chain_path {
	__u32 len;
	__u32 slots[BRAID_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct braid_chain_path);
} chain_paths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, BRAID_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} chain_progs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} chain_pos SEC(".maps");

SEC("xdp")
int braid_chain(struct xdp_md *ctx)
{
	__u32 in = ctx->ingress_ifindex, zero = 0;
	struct braid_chain_path *path = bpf_map_lookup_elem(&chain_paths, &in);
	__u32 *pos = bpf_map_lookup_elem(&chain_pos, &zero);
	if (!path || !pos || path->len == 0)
		return XDP_PASS;
	*pos = 0;
	__u32 first = path->slots[0];
	bpf_tail_call(ctx, &chain_progs, first);
	/* No stage program in that slot: a loader bug, never a silent pass. */
	return braid_drop(first & (BRAID_SLOTS - 1), BRAID_MALFORMED);
}

/* The slot of the stage now running, or BRAID_SLOTS if the scratch or the
 * path is missing (cannot happen after braid_chain). */
static __always_inline __u32 chain_slot(struct xdp_md *ctx)
{
	__u32 in = ctx->ingress_ifindex, zero = 0;
	struct braid_chain_path *path = bpf_map_lookup_elem(&chain_paths, &in);
	__u32 *pos = bpf_map_lookup_elem(&chain_pos, &zero);
	if (!path || !pos)
		return BRAID_SLOTS;
	__u32 slot = path->slots[*pos & (BRAID_SLOTS - 1)];
	return slot < BRAID_SLOTS ? slot : BRAID_SLOTS;
}

/* Hand the frame to the next stage of its path, or forward it. */
static __always_inline int chain_next(struct xdp_md *ctx, __u32 slot)
{
	__u32 in = ctx->ingress_ifindex, zero = 0;
	struct braid_chain_path *path = bpf_map_lookup_elem(&chain_paths, &in);
	__u32 *pos = bpf_map_lookup_elem(&chain_pos, &zero);
	if (!path || !pos)
		return braid_drop(slot, BRAID_MALFORMED);
	__u32 next = *pos + 1;
	if (next >= path->len || next >= BRAID_SLOTS)
		return braid_forward(ctx, slot);
	/* barrier_var keeps the compiler from dropping the mask (it knows
	 * next < BRAID_SLOTS) and indexing with an unchecked copy, which
	 * the verifier refuses. */
	__u32 idx = next;
	barrier_var(idx);
	__u32 next_slot = path->slots[idx & (BRAID_SLOTS - 1)];
	*pos = next;
	braid_count(slot, BRAID_REDIRECT, 1);
	bpf_tail_call(ctx, &chain_progs, next_slot);
	return braid_drop(slot, BRAID_MALFORMED);
}

SEC("xdp")
int braid_chain_fwd(struct xdp_md *ctx)
{
	__u32 slot = chain_slot(ctx);
	if (slot >= BRAID_SLOTS)
		return XDP_DROP;
	braid_count_rx(ctx, slot);
	return chain_next(ctx, slot);
}

SEC("xdp")
int braid_chain_firewall(struct xdp_md *ctx)
{
	__u32 slot = chain_slot(ctx);
	if (slot >= BRAID_SLOTS)
		return XDP_DROP;
	braid_count_rx(ctx, slot);
	if (!braid_fw_check(ctx, slot))
		return XDP_DROP;
	return chain_next(ctx, slot);
}

SEC("xdp")
int braid_chain_xor(struct xdp_md *ctx)
{
	__u32 slot = chain_slot(ctx);
	if (slot >= BRAID_SLOTS)
		return XDP_DROP;
	braid_count_rx(ctx, slot);
	if (!braid_xor_apply(ctx, slot))
		return XDP_DROP;
	return chain_next(ctx, slot);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
