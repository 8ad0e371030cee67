/* The body of braid's XDP xor, shared by xdp_xor.c (one NF) and
 * xdp_chain.c (a stage of a chain): XOR the UDP payload of IPv4 frames
 * with a key stream (xor_cfg[slot]: the key repeated from payload byte 0,
 * written by the loader, so a key of any length repeats exactly as in the
 * user-space xor). Any payload length up to XOR_MAX bytes, 8 bytes per
 * step plus a byte-wise tail; both loops are bounded so the verifier
 * accepts them.
 *
 * The UDP checksum is updated incrementally (RFC 1624: HC' = ~(~HC + ~m +
 * m') summed over every changed 16-bit word), so receivers that verify it
 * keep accepting the datagrams; a zero checksum (none, allowed for IPv4)
 * stays zero. Fragmented datagrams are left unchanged. Applying it twice
 * with the same key restores the payload. */
#ifndef BRAID_XOR_H
#define BRAID_XOR_H

#include "braid_xdp.h"

#define XOR_MAX 1500
/* XOR_MAX rounded up to whole 8-byte steps. */
#define XOR_STREAM 1504

struct braid_xor_cfg {
	__u8 stream[XOR_STREAM];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BRAID_SLOTS);
	__type(key, __u32);
	__type(value, struct braid_xor_cfg);
} xor_cfg SEC(".maps");

/* XOR the frame's UDP payload with the key of `slot`. Returns 1 when the
 * frame goes on (changed or not ours), 0 when it was dropped (counted). */
static __always_inline int braid_xor_apply(struct xdp_md *ctx, __u32 slot)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int malformed;

	struct iphdr *ip = braid_ipv4(data, data_end, &malformed);
	if (malformed) {
		braid_drop(ctx, slot, BRAID_MALFORMED);
		return 0;
	}
	if (!ip || ip->protocol != IPPROTO_UDP || braid_later_fragment(ip) ||
	    (ip->frag_off & bpf_htons(0x2000)))
		return 1;
	struct udphdr *udp = (void *)ip + ip->ihl * 4;
	if ((void *)(udp + 1) > data_end) {
		braid_drop(ctx, slot, BRAID_MALFORMED);
		return 0;
	}
	__u32 ulen = bpf_ntohs(udp->len);
	if (ulen < sizeof(*udp) || (void *)udp + ulen > data_end) {
		braid_drop(ctx, slot, BRAID_MALFORMED);
		return 0;
	}
	__u32 plen = ulen - sizeof(*udp);
	struct braid_xor_cfg *cfg = bpf_map_lookup_elem(&xor_cfg, &slot);
	if (!cfg)
		return 1;

	__u8 *payload = (void *)(udp + 1);
	__u64 *stream64 = (__u64 *)cfg->stream;
	/* Checksum bookkeeping: the sum of ~old + new over every changed
	 * 16-bit word. The 8-byte chunks are loaded little-endian, so their
	 * lanes are byte-swapped words; a one's complement sum of swapped
	 * words is the swapped sum (RFC 1071, 2.B), so acc_le is swapped back
	 * once at the end. Tail bytes go straight into acc in network order. */
	__u64 acc_le = 0;
	__u32 acc = 0;
	__u32 i = 0;
	for (int j = 0; j < XOR_MAX / 8; j++) {
		if (i + 8 > plen)
			break;
		/* Packet loads need not be aligned on the architectures XDP
		 * runs on natively; the verifier allows them there. */
		__u64 *p = (void *)(payload + i);
		if ((void *)(p + 1) > data_end)
			break;
		__u64 old = *p;
		__u64 new = old ^ stream64[j];
		*p = new;
		__u64 nold = ~old;
		acc_le += (nold & 0xffff) + ((nold >> 16) & 0xffff) + ((nold >> 32) & 0xffff) + (nold >> 48);
		acc_le += (new & 0xffff) + ((new >> 16) & 0xffff) + ((new >> 32) & 0xffff) + (new >> 48);
		i += 8;
	}
	for (int t = 0; t < 8; t++) {
		if (i >= plen)
			break;
		__u8 *p = payload + i;
		if ((void *)(p + 1) > data_end || i >= XOR_STREAM)
			break;
		__u8 old = *p;
		__u8 new = old ^ cfg->stream[i];
		*p = new;
		/* Payload offset parity equals word position: the payload
		 * starts 8 bytes into the UDP header. */
		__u32 shift = (i & 1) ? 0 : 8;
		acc += ((__u32)(__u8)~old << shift) + ((__u32) new << shift);
		i++;
	}
	if (i != plen) {
		/* over XOR_MAX: cannot happen below MTU */
		braid_drop(ctx, slot, BRAID_MALFORMED);
		return 0;
	}
	if (plen & 1)
		acc += 0xff; /* ~ of the zero pad byte; the new pad is zero too */
	acc_le = (acc_le & 0xffff) + (acc_le >> 16);
	acc_le = (acc_le & 0xffff) + (acc_le >> 16);
	acc_le = (acc_le & 0xffff) + (acc_le >> 16);
	acc += ((acc_le & 0xff) << 8) | ((acc_le >> 8) & 0xff);

	if (udp->check) {
		__u32 sum = (__u16)~bpf_ntohs(udp->check) + acc;
		sum = (sum & 0xffff) + (sum >> 16);
		sum = (sum & 0xffff) + (sum >> 16);
		sum = (sum & 0xffff) + (sum >> 16);
		__u16 ck = ~sum & 0xffff;
		udp->check = bpf_htons(ck ? ck : 0xffff);
	}
	braid_count(slot, BRAID_MATCHED, 1);
	return 1;
}

#endif
