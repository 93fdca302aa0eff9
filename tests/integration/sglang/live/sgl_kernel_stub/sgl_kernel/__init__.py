"""A pure-torch stand-in for the CPU ops of sgl-kernel, for the live SGLang tests only.

SGLang 0.5.23's CPU engine (``SGLANG_USE_CPU_ENGINE=1``) imports ``sgl_kernel`` at
module level and calls its CPU ops; PyPI's sgl-kernel wheel holds only CUDA builds.
These are loop-based reference versions of the 11 ops a tiny EAGLE server calls,
tied to 0.5.23's private signatures: KV / req-to-token bookkeeping, EAGLE tree build
(a port of SGLang's Triton reference ``sgl_build_tree_kernel_efficient_triton``),
greedy tree verify, and decode / extend attention with tree masks.

The live-test harness puts this folder on ``PYTHONPATH`` of the server process
only. It is never packaged (a real GPU install must find the real kernels), and
``convert_weight_packed`` is deliberately missing so SGLang never takes its AMX
MoE path (``cpu_has_amx_support()`` is False). Not covered: sampling verify
(``tree_speculative_sampling_target_only``) and ``rotate_input_ids_cpu``.
"""

import ctypes

import torch

__version__ = "0.0.0+torchshim"


def assign_req_to_token_pool_cpu(
    req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len
):
    off = 0
    for i in range(req_pool_indices.numel()):
        s, e = int(start_offset[i]), int(end_offset[i])
        n = e - s
        req_to_token[int(req_pool_indices[i]), s:e] = out_cache_loc[off : off + n].to(
            req_to_token.dtype
        )
        off += n


def assign_extend_cache_locs_cpu(
    req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len
):
    off = 0
    for i in range(req_pool_indices.numel()):
        s, e = int(start_offset[i]), int(end_offset[i])
        n = e - s
        out_cache_loc[off : off + n] = req_to_token[int(req_pool_indices[i]), s:e].to(
            out_cache_loc.dtype
        )
        off += n


def assign_draft_cache_locs_contiguous_cpu(
    req_pool_indices, req_to_token, seq_lens, out_cache_loc, pool_len, topk, num_steps
):
    n = topk * num_steps
    for i in range(req_pool_indices.numel()):
        s = int(seq_lens[i])
        out_cache_loc[i * n : (i + 1) * n] = req_to_token[int(req_pool_indices[i]), s : s + n].to(
            out_cache_loc.dtype
        )


def build_draft_decode_metadata_cpu(
    req_to_token, req_pool_indices, seq_lens, topk, num_steps, pool_len
):
    bs = req_pool_indices.numel()
    out = torch.zeros((bs * topk, pool_len), dtype=req_to_token.dtype)
    for b in range(bs):
        r, s = int(req_pool_indices[b]), int(seq_lens[b])
        for k in range(topk):
            row = out[b * topk + k]
            row[:s] = req_to_token[r, :s]
            row[s : s + num_steps] = req_to_token[r, s + k * num_steps : s + (k + 1) * num_steps]
    return out


def fill_bonus_tokens_cpu(accept_tokens, accept_lens, bonus_tokens, accept_stride):
    flat = accept_tokens.reshape(-1)
    for i in range(accept_lens.numel()):
        bonus_tokens[i] = flat[accept_stride * i + int(accept_lens[i]) - 1]


def fill_accept_out_cache_loc_cpu(accept_index, out_cache_loc, accept_out_cache_loc):
    idx = accept_index.reshape(-1)
    valid = idx[idx > -1]
    accept_out_cache_loc[: valid.numel()] = out_cache_loc[valid.long()].to(
        accept_out_cache_loc.dtype
    )


def copy_all_layer_kv_cache_cpu(data_ptrs, strides, tgt_loc, src_loc):
    for p, st in zip(data_ptrs.tolist(), strides.tolist(), strict=False):
        for t, s in zip(tgt_loc.tolist(), src_loc.tolist(), strict=False):
            ctypes.memmove(p + t * st, p + s * st, st)


def build_tree_kernel_efficient_cpu(
    parent_list,
    selected_index,
    verified_seq_len,
    tree_mask,
    positions,
    retrive_index,
    retrive_next_token,
    retrive_next_sibling,
    topk,
    depth,
    draft_token_num,
    tree_mask_mode,
):
    # Port of sgl_build_tree_kernel_efficient_triton (sglang/kernels/ops/speculative/spec_tree.py).
    N = draft_token_num
    bs = verified_seq_len.numel()
    mask = tree_mask.view(-1)
    seq_prefix = (torch.cumsum(verified_seq_len, 0) - verified_seq_len).tolist()
    sel = selected_index.tolist()
    par = parent_list.tolist()
    for b in range(bs):
        seq_len = int(verified_seq_len[b])
        seq_tree_idx = N * N * b + seq_prefix[b] * N
        positions[b * N] = seq_len
        base = b * N

        def find(tok, row=sel[b]):
            for pp in range(N - 1):
                if row[pp] == tok:
                    return pp
            return None

        for i in range(N - 1, 0, -1):
            retrive_index[b, i] = base + i
            ptb = sel[b][i - 1] // topk
            parent_position = None
            if ptb == 0:
                parent_position = 0
            else:
                pp = find(par[b][ptb])
                if pp is not None:
                    parent_position = pp + 1
            if parent_position is not None:
                nt = int(retrive_next_token[b, parent_position])
                retrive_next_token[b, parent_position] = i
                if nt != -1:
                    retrive_next_sibling[b, i] = nt
        retrive_index[b, 0] = base
        for x in range(N):
            if tree_mask_mode == 0:
                tti = seq_tree_idx + (seq_len + N) * x + seq_len + 1
            else:
                tti = N * N * b + N * x + 1
            mask[tti - 1] = True
            mask[tti : tti + N - 1] = False
            if x > 0:
                cur, position = x - 1, 0
                for _ in range(depth):
                    position += 1
                    mask[tti + cur] = True
                    ptb = sel[b][cur] // topk
                    if ptb == 0:
                        break
                    cp = find(par[b][ptb])
                    if cp is None:
                        break
                    cur = cp
                positions[b * N + x] = position + seq_len


def verify_tree_greedy_cpu(
    predicts,
    accept_index,
    accept_token_num,
    candidates,
    retrive_index,
    retrive_next_token,
    retrive_next_sibling,
    target_predict,
):
    bs, N = candidates.shape
    S = accept_index.shape[1]
    tp = target_predict.reshape(-1)
    for bx in range(bs):
        last = int(retrive_index[bx, 0])
        accept_index[bx, 0] = last
        n_acc = 0
        cur = 0
        for _j in range(1, S):
            cur = int(retrive_next_token[bx, cur])
            target = int(tp[last])
            matched = False
            while cur != -1:
                if int(candidates[bx, cur]) == target:
                    predicts[last] = target
                    n_acc += 1
                    accept_index[bx, n_acc] = int(retrive_index[bx, cur])
                    last = int(retrive_index[bx, cur])
                    matched = True
                    break
                cur = int(retrive_next_sibling[bx, cur])
            if not matched:
                break
        accept_token_num[bx] = n_acc
        predicts[last] = int(tp[last])


def rotate_input_ids_cpu(*args, **kwargs):
    raise NotImplementedError("rotate_input_ids_cpu (multi-layer EAGLE) is not in the torch shim")


def _attend(q, k, v, scaling, logit_cap, allowed=None, sinks=None):
    # q [Lq, Hq, D], k/v [Lk, Hkv, D]; allowed [Lq, Lk] bool or None
    hq, hkv = q.shape[1], k.shape[1]
    if hq != hkv:
        k = k.repeat_interleave(hq // hkv, dim=1)
        v = v.repeat_interleave(hq // hkv, dim=1)
    s = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scaling
    if logit_cap and logit_cap > 0:
        s = logit_cap * torch.tanh(s / logit_cap)
    if allowed is not None:
        s = s.masked_fill(~allowed.unsqueeze(0), float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("hqk,khd->qhd", p, v.float())


def decode_attention_cpu(
    q,
    k_buffer,
    v_buffer,
    k_scale,
    v_scale,
    o,
    k_new,
    v_new,
    cache_loc,
    attn_logits,
    req_to_token,
    req_pool_indices,
    seq_lens,
    scaling,
    logit_cap,
    is_cross,
    sliding_window_size,
    encoder_lens,
    sinks,
):
    if k_new is not None and v_new is not None:
        loc = cache_loc.long()
        k_buffer[loc] = k_new.view(loc.numel(), *k_buffer.shape[1:]).to(k_buffer.dtype)
        v_buffer[loc] = v_new.view(loc.numel(), *v_buffer.shape[1:]).to(v_buffer.dtype)
    for i in range(q.shape[0]):
        L = int(seq_lens[i])
        idx = req_to_token[int(req_pool_indices[i]), :L].long()
        out = _attend(q[i : i + 1], k_buffer[idx], v_buffer[idx], scaling, logit_cap)
        o[i : i + 1] = out.to(o.dtype)


def extend_attention_cpu(
    q_extend,
    k_extend,
    v_extend,
    o_extend,
    k_buffer,
    v_buffer,
    k_scale,
    v_scale,
    req_to_token,
    req_pool_indices,
    seq_lens,
    extend_seq_lens,
    extend_start_loc,
    max_len_extend,
    sm_scale,
    logit_cap,
    is_cross,
    sliding_window_size,
    encoder_lens,
    sinks,
    tree_mask,
    is_causal,
):
    bs = seq_lens.numel()
    for i in range(bs):
        L = int(seq_lens[i])
        E = int(extend_seq_lens[i])
        st = int(extend_start_loc[i])
        P = L - E
        idx = req_to_token[int(req_pool_indices[i]), :P].long()
        k = torch.cat(
            [
                k_buffer[idx].to(k_extend.dtype if k_extend is not None else k_buffer.dtype),
                (
                    k_extend[st : st + E]
                    if k_extend is not None
                    else k_buffer[req_to_token[int(req_pool_indices[i]), P:L].long()]
                ),
            ],
            0,
        )
        v = torch.cat(
            [
                v_buffer[idx].to(v_extend.dtype if v_extend is not None else v_buffer.dtype),
                (
                    v_extend[st : st + E]
                    if v_extend is not None
                    else v_buffer[req_to_token[int(req_pool_indices[i]), P:L].long()]
                ),
            ],
            0,
        )
        allowed = torch.ones((E, L), dtype=torch.bool)
        if tree_mask is not None:
            m = tree_mask.reshape(-1)[i * E * E : (i + 1) * E * E].view(E, E).bool()
            allowed[:, P:] = m
        elif is_causal:
            allowed[:, P:] = torch.ones((E, E), dtype=torch.bool).tril()
        out = _attend(q_extend[st : st + E], k, v, sm_scale, logit_cap, allowed)
        o_extend[st : st + E] = out.to(o_extend.dtype)


for _name in (
    "decode_attention_cpu",
    "extend_attention_cpu",
    "build_tree_kernel_efficient_cpu",
    "verify_tree_greedy_cpu",
    "assign_req_to_token_pool_cpu",
    "build_draft_decode_metadata_cpu",
):
    setattr(torch.ops.sgl_kernel, _name, globals()[_name])


def __getattr__(name):
    raise ImportError(f"sgl_kernel torch shim has no {name!r}")
