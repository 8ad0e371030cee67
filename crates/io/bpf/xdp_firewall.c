/* braid XDP firewall (subset): drop or pass IPv4 frames by rules held in
 * maps (see braid_fw.h for the lookup order), then forward like fwd. */
#include "braid_fw.h"

SEC("xdp")
int braid_firewall(struct xdp_md *ctx)
{
	braid_count_rx(ctx, 0);
	if (!braid_fw_check(ctx, 0))
		return XDP_DROP;
	return braid_forward(ctx, 0);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
