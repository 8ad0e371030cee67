/* braid XDP fwd: redirect every frame to the egress interface configured
 * for its ingress interface (tx_ports devmap), rewriting the Ethernet
 * addresses when mac_rules has an entry. Also holds braid_pass, the
 * do-nothing program that must sit on the peer of a veth that receives
 * XDP_REDIRECTed frames. */
#include "braid_xdp.h"

SEC("xdp")
int braid_fwd(struct xdp_md *ctx)
{
	__u32 tap = braid_tap_cfg(0);
	braid_count_rx(ctx, 0);
	braid_tap(ctx, tap, 0, BRAID_TAP_IN);
	braid_tap(ctx, tap, 0, BRAID_TAP_OUT);
	return braid_forward(ctx, 0);
}

SEC("xdp")
int braid_pass(struct xdp_md *ctx)
{
	braid_count_rx(ctx, 0);
	braid_count(0, BRAID_PASS, 1);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
