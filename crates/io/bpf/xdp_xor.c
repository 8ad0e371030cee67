/* braid XDP xor: XOR the UDP payload of IPv4 frames with a repeating
 * key (its stream in xor_cfg[0]), then forward like fwd. The body is in
 * braid_xor.h, shared with the chain program. */
#include "braid_xor.h"

SEC("xdp")
int braid_xor(struct xdp_md *ctx)
{
	__u32 tap = braid_tap_cfg(0);
	braid_count_rx(ctx, 0);
	braid_tap(ctx, tap, 0, BRAID_TAP_IN);
	if (!braid_xor_apply(ctx, 0))
		return XDP_DROP;
	braid_tap(ctx, tap, 0, BRAID_TAP_OUT);
	return braid_forward(ctx, 0);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
