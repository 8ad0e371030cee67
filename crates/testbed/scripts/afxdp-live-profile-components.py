#!/usr/bin/env python3
"""Where the whole machine's CPU goes per request, from the system-wide
stacks afxdp-live-profile.sh samples with PERF_SYSTEM=1.

    afxdp-live-profile-components.py OUT

For every OUT/perf-sys-*.data (one per measurement; the matching row of
OUT/profile.tsv gives the requests sent): CPU time per request, by thread
(the probe and echo processes, the NF threads, the kernel's own threads)
and by the kind of the function the sample caught (its self time: user
space, XDP, AF_XDP, copies, allocation, the scheduler, system calls, the
rest of the kernel); the kinds add up to the machine's busy time.
Medians over the rounds. Samples are `cpu-clock` at 999 Hz per CPU (no
PMU on this VM): each is about 1 ms of one CPU.
"""
import csv
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

HZ = 999
# Self time (the sampled leaf function) by kind, first match wins. Self
# time, not inclusive time: the kernel's tail calls drop callers from the
# stacks (ip_forward_finish runs without ip_forward above it), so
# inclusive figures would undercount whole paths.
KINDS = [
    ("NF user space (braid's code and libc)", lambda comm, leaf, user: user and comm.startswith("braid-nf")),
    ("probe and echo user space", lambda comm, leaf, user: user),
    ("XDP: program, redirect, veth's XDP receive", lambda comm, leaf, user: re.match(r"^(bpf_prog_[0-9a-f]+_braid|bpf_xdp|xdp_|__xdp_|veth_xdp|dev_map|xsk_map|__xsk_map)", leaf)),
    ("AF_XDP in the kernel (xsk_*, xp_*: rings, UMEM buffers, copy-mode skbs)", lambda comm, leaf, user: re.match(r"^(__?xsk_|xp_|xskq_)", leaf)),
    ("copying bytes (memcpy, memmove, copies to and from user space, checksum-and-copy)", lambda comm, leaf, user: re.match(r"^(__?memcpy|__memmove|memmove|__pi_memcpy|memcpy_|copy_user|rep_movs|_copy_|csum_partial_copy|skb_copy|copyin|copyout|__copy)", leaf)),
    ("skb and page allocation and freeing (incl. the page-pool copy skb_pp_cow_data)", lambda comm, leaf, user: re.match(r"^(kmem_cache|kmalloc|__kmalloc|kfree|__alloc_skb|alloc_skb|__napi_build_skb|napi_build_skb|build_skb|skb_release|skb_free|__skb_free|kfree_skb|consume_skb|__consume|napi_consume|skb_pp_cow|page_pool|__page_pool|page_frag|__free_pages|free_unref|get_page|put_page|skb_defer|skb_attempt_defer|sock_wfree|skb_set_owner|sock_alloc_send|__build_skb|slab_|___slab|__slab|memcg|mod_objcg|obj_cgroup|refill_obj)", leaf)),
    ("scheduler, wake-ups, idle entry and exit (incl. the VM's wake-up IPIs under raw_spin_unlock_irqrestore)", lambda comm, leaf, user: re.match(r"^(__schedule|schedule|finish_task_switch|try_to_wake_up|ttwu|_raw_spin_unlock_irq|__raw_callee_save|pv_|enqueue_|dequeue_|update_curr|update_load|pick_|set_next|put_prev|select_task|__switch_to|switch_mm|psi_|sched_|cpuacct|__update|reweight|place_entity|wakeup_|native_|__wake_up|autoremove_wake|ep_poll|do_sys_poll|do_poll|__pollwait|poll_|sock_poll|xsk_poll|hrtimer|__hrtimer|tick_|ktime_)", leaf)),
    ("system call entry and exit", lambda comm, leaf, user: re.match(r"^(entry_SYSCALL|do_syscall|syscall_|__x64_sys|__sys_|exit_to_user|__rseq|rseq_|fpregs|restore_fpregs|switch_fpu|x64_sys_call|__fdget|fput|fdget)", leaf)),
]
OTHER_KERNEL = "other kernel (IP, UDP, veth, routing, sockets, softirq)"


def thread_class(comm):
    if comm.startswith("braid-nf"):
        return "NF threads"
    if comm == "braid":
        return "probe and echo (braid probe, braid echo)"
    if comm == "swapper":
        return None
    if comm.startswith("ksoftirqd"):
        return "ksoftirqd"
    return "other"


def stacks(path):
    """(comm, [(symbol, in the kernel?) leaf first]) per sample: `perf script` prints a
    sample's thread name on a line of its own, then one tab-indented line
    per frame (address, symbol)."""
    out = subprocess.run(["perf", "script", "-i", str(path), "-F", "comm,ip,sym"],
                         capture_output=True, text=True, check=False).stdout
    comm, syms = None, []
    for line in out.splitlines():
        if line.startswith("\t"):
            parts = line.split()
            if len(parts) >= 2:
                # Kernel addresses are in the top half of the address space.
                kernel = int(parts[0], 16) >= 1 << 63 if re.fullmatch(r"[0-9a-f]+", parts[0]) else False
                syms.append((parts[1].split("+")[0], kernel))
        elif line.strip():
            if comm is not None:
                yield comm, syms
            comm, syms = line.strip(), []
    if comm is not None:
        yield comm, syms


def main():
    out = Path(sys.argv[1])
    rows = {}
    for r in csv.DictReader(open(out / "profile.tsv"), delimiter="\t"):
        tag = re.sub(r"[^a-z0-9-]", "_", f"{r['binary']}-{'default' if r['opts'] == '(default)' else r['opts']}-{r['rate']}-{r['round']}")
        rows[tag] = r
    per = defaultdict(lambda: defaultdict(list))
    for data in sorted(out.glob("perf-sys-*.data")):
        tag = data.name[len("perf-sys-"):-len(".data")]
        r = rows.get(tag)
        if not r or not r.get("requests"):
            continue
        req = int(r["requests"])
        counts = defaultdict(int)
        for comm, syms in stacks(data):
            c = thread_class(comm)
            if c is None:
                continue
            counts["machine (busy)"] += 1
            counts[c] += 1
            leaf, kernel = syms[0] if syms else ("", False)
            user = not kernel
            for label, test in KINDS:
                if test(comm, leaf, user):
                    counts[label] += 1
                    break
            else:
                counts[OTHER_KERNEL] += 1
        key = (r["binary"], r["opts"], int(r["rate"]))
        for k, v in counts.items():
            per[key][k].append(v / HZ * 1e9 / req)
    keys = sorted(per, key=lambda k: (k[2], k[1], k[0]))
    labels = ["machine (busy)", "probe and echo (braid probe, braid echo)", "NF threads", "ksoftirqd", "other"] + [l for l, _ in KINDS] + [OTHER_KERNEL]
    print("| ns per request | " + " | ".join(f"`{k[1]}` {k[2]} pps" + (f" (binary {k[0]})" if k[0] != "0" else "") for k in keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for label in labels:
        vals = [statistics.median(per[k][label]) if per[k].get(label) else None for k in keys]
        print(f"| {label} | " + " | ".join("–" if v is None else f"{v:,.0f}" for v in vals) + " |")


main()
