/* braid XDP xor: XOR the UDP payload of IPv4 frames with a repeating
 * 16-byte key (xor_cfg[0]), then forward like fwd. Any payload length up
 * to XOR_MAX bytes; the loop is bounded so the verifier accepts it.
 *
 * The UDP checksum is updated incrementally (RFC 1624: HC' = ~(~HC + ~m +
 * m') summed over every changed 16-bit word), so receivers that verify it
 * keep accepting the datagrams; a zero checksum (none, allowed for IPv4)
 * stays zero. Fragmented datagrams are forwarded unchanged. Applying the
 * program twice with the same key restores the payload. */
#include "braid_xdp.h"

#define XOR_KEY_LEN 16
#define XOR_MAX 1500

struct braid_xor_cfg {
	__u8 key[XOR_KEY_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct braid_xor_cfg);
} xor_cfg SEC(".maps");

SEC("xdp")
int braid_xor(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int malformed;
	__u32 zero = 0;

	braid_count_rx(ctx);
	struct iphdr *ip = braid_ipv4(data, data_end, &malformed);
	if (malformed)
		return braid_drop(BRAID_MALFORMED);
	if (!ip || ip->protocol != IPPROTO_UDP || braid_later_fragment(ip) ||
	    (ip->frag_off & bpf_htons(0x2000)))
		return braid_forward(ctx);
	struct udphdr *udp = (void *)ip + ip->ihl * 4;
	if ((void *)(udp + 1) > data_end)
		return braid_drop(BRAID_MALFORMED);
	__u32 ulen = bpf_ntohs(udp->len);
	if (ulen < sizeof(*udp) || (void *)udp + ulen > data_end)
		return braid_drop(BRAID_MALFORMED);
	__u32 plen = ulen - sizeof(*udp);
	struct braid_xor_cfg *cfg = bpf_map_lookup_elem(&xor_cfg, &zero);
	if (!cfg)
		return braid_forward(ctx);

	__u8 *payload = (void *)(udp + 1);
	__u32 acc = 0; /* sum of ~old + new, per 16-bit word of the payload */
	for (__u32 i = 0; i < XOR_MAX; i++) {
		if (i >= plen)
			break;
		__u8 *p = payload + i;
		if ((void *)(p + 1) > data_end)
			break;
		__u8 old = *p;
		__u8 new = old ^ cfg->key[i & (XOR_KEY_LEN - 1)];
		*p = new;
		/* Payload offset parity equals word position: the payload
		 * starts 8 bytes into the UDP header. */
		__u32 shift = (i & 1) ? 0 : 8;
		acc += ((__u32)(__u8)~old << shift) + ((__u32) new << shift);
	}
	if (plen & 1)
		acc += 0xff; /* ~ of the zero pad byte; the new pad is zero too */
	if (plen > XOR_MAX)
		return braid_drop(BRAID_MALFORMED); /* cannot happen below MTU */

	if (udp->check) {
		__u32 sum = (__u16)~bpf_ntohs(udp->check) + acc;
		sum = (sum & 0xffff) + (sum >> 16);
		sum = (sum & 0xffff) + (sum >> 16);
		__u16 ck = ~sum & 0xffff;
		udp->check = bpf_htons(ck ? ck : 0xffff);
	}
	braid_count(BRAID_MATCHED, 1);
	return braid_forward(ctx);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
