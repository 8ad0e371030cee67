/* braid XDP firewall (subset): drop or pass IPv4 frames by rules held in
 * maps (see braid_fw.h for the lookup order), then forward like fwd. */
#include "braid_fw.h"

SEC("xdp")
int braid_firewall(struct xdp_md *ctx)
{
	__u32 tap = braid_tap_cfg(0);
	braid_count_rx(ctx, 0);
	braid_tap(ctx, tap, 0, BRAID_TAP_IN);
	if (!braid_fw_check(ctx, 0))
		return XDP_DROP;
	braid_tap(ctx, tap, 0, BRAID_TAP_OUT);
	return braid_forward(ctx, 0);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
