/* braid XDP chain: several kernel NFs on one host as one attached program
 * (`braid_chain`) and one stage program per NF kind, joined by tail calls.
 *
 *   chain_paths  hash: ingress ifindex -> the slots this direction crosses,
 *                in order (frames from the client side run the stages in
 *                chain order, frames from the server side in reverse)
 *   chain_progs  prog array: slot -> the stage program of that NF's kind
 *   chain_pos    per-CPU scratch: a copy of the frame's path and the index
 *                of the stage now running, so stages look nothing up in
 *                the hash. Tail calls run on the same CPU within one XDP
 *                invocation, which XDP never interrupts with another, so
 *                the scratch cannot be overwritten in between.
 *
 * Slot s is the s-th NF of the chain: its counters are counters[s * 8 ..],
 * its xor key xor_cfg[s], its firewall rules carry slot s in their keys,
 * its capture tap is braid_tap_words[s] (in at the stage's start, out when it hands
 * the frame on or forwards it, drops where it drops).
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

struct braid_chain_state {
	__u32 pos;
	struct braid_chain_path path;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct braid_chain_state);
} chain_pos SEC(".maps");

SEC("xdp")
int braid_chain(struct xdp_md *ctx)
{
	__u32 in = ctx->ingress_ifindex, zero = 0;
	struct braid_chain_path *path = bpf_map_lookup_elem(&chain_paths, &in);
	struct braid_chain_state *st = bpf_map_lookup_elem(&chain_pos, &zero);
	if (!path || !st || path->len == 0)
		return XDP_PASS;
	st->pos = 0;
	__builtin_memcpy(&st->path, path, sizeof(st->path));
	__u32 first = path->slots[0];
	bpf_tail_call(ctx, &chain_progs, first);
	/* No stage program in that slot: a loader bug, never a silent pass. */
	return braid_drop(ctx, first & (BRAID_SLOTS - 1), BRAID_MALFORMED);
}

/* Where the frame is: the per-CPU state (path copy and position), the
 * slot of the stage now running and the points its tap wants. */
struct chain_at {
	struct braid_chain_state *st;
	__u32 slot;
	__u32 tap;
};

/* Fill `at` for the stage now running; 0 if the scratch is missing or the
 * slot is out of range (cannot happen after braid_chain). */
static __always_inline int chain_enter(struct chain_at *at)
{
	__u32 zero = 0;
	at->st = bpf_map_lookup_elem(&chain_pos, &zero);
	if (!at->st)
		return 0;
	at->slot = at->st->path.slots[at->st->pos & (BRAID_SLOTS - 1)];
	if (at->slot >= BRAID_SLOTS)
		return 0;
	at->tap = braid_tap_cfg(at->slot);
	return 1;
}

/* Count the frame in and tap it at the stage's input. */
static __always_inline void chain_in(struct xdp_md *ctx, struct chain_at *at)
{
	braid_count_rx(ctx, at->slot);
	braid_tap(ctx, at->tap, at->slot, BRAID_TAP_IN);
}

/* Hand the frame to the next stage of its path, or forward it. */
static __always_inline int chain_next(struct xdp_md *ctx, struct chain_at *at)
{
	braid_tap(ctx, at->tap, at->slot, BRAID_TAP_OUT);
	__u32 next = at->st->pos + 1;
	if (next >= at->st->path.len || next >= BRAID_SLOTS)
		return braid_forward(ctx, at->slot);
	/* barrier_var keeps the compiler from dropping the mask (it knows
	 * next < BRAID_SLOTS) and indexing with an unchecked copy, which
	 * the verifier refuses. */
	__u32 idx = next;
	barrier_var(idx);
	__u32 next_slot = at->st->path.slots[idx & (BRAID_SLOTS - 1)];
	at->st->pos = next;
	braid_count(at->slot, BRAID_REDIRECT, 1);
	bpf_tail_call(ctx, &chain_progs, next_slot);
	return braid_drop(ctx, at->slot, BRAID_MALFORMED);
}

SEC("xdp")
int braid_chain_fwd(struct xdp_md *ctx)
{
	struct chain_at at;
	if (!chain_enter(&at))
		return XDP_DROP;
	chain_in(ctx, &at);
	return chain_next(ctx, &at);
}

SEC("xdp")
int braid_chain_firewall(struct xdp_md *ctx)
{
	struct chain_at at;
	if (!chain_enter(&at))
		return XDP_DROP;
	chain_in(ctx, &at);
	if (!braid_fw_check(ctx, at.slot))
		return XDP_DROP;
	return chain_next(ctx, &at);
}

SEC("xdp")
int braid_chain_xor(struct xdp_md *ctx)
{
	struct chain_at at;
	if (!chain_enter(&at))
		return XDP_DROP;
	chain_in(ctx, &at);
	if (!braid_xor_apply(ctx, at.slot))
		return XDP_DROP;
	return chain_next(ctx, &at);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
