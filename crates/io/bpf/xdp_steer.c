/* braid XDP steer: hand every frame to the AF_XDP socket bound to its
 * receive queue (xsks map), so a chain that starts in the kernel goes on
 * in user space. Frames for a queue without a socket go to the stack. */
#include "braid_xdp.h"

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

SEC("xdp")
int braid_steer(struct xdp_md *ctx)
{
	braid_count_rx(ctx, 0);
	long rc = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	braid_count(0, rc == XDP_REDIRECT ? BRAID_REDIRECT : BRAID_PASS, 1);
	return (int)rc;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
