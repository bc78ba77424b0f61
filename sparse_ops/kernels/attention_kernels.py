"""Triton kernels for causal sparse attention (structure of Triton's fused-attention tutorial).

One program computes one query block (BLOCK rows) of one (batch, head): it keeps the running row
max m_i, the running denominator l_i and the unnormalized output acc in registers and folds key
blocks in with the online softmax in base 2 (scores are pre-scaled by sm_scale * log2(e)).

One kernel, ``sparse_flash_attn_kernel``, serves both variants through two constexpr switches:

* block-sparse (USE_BLOCK_LIST): visit only the key blocks listed for the query block (padded
  int32 lists with counts; see sparse_ops/block_index.py);
* BLASST (THRESHOLD_SKIP): walk every causal key block in ascending order and skip one (no V load,
  no update) when, for every valid row of the tile, block max - running max < log2(lambda).

It writes the number of blocks each program computed, so the host reports the achieved
sparsity.

Tensors are [batch, heads, seq, head_dim] with any strides except a unit stride on head_dim.
Rows past the sequence end are computed on zero queries and never stored; keys past the end
and keys after the query (causal) are masked with -inf. Rows that see no key output 0.
CAST_F32: the interpreter's tl.dot is wrong for bfloat16 operands, so the host asks for an fp32
upcast there (on GPU the dots run in the input dtype with fp32 accumulation). DOT_PRECISION:
"ieee" for fp32 inputs (exact against the references), "tf32" (ignored) for fp16 / bf16.
"""

import triton
import triton.language as tl
from triton import knobs

INTERPRETED = bool(knobs.runtime.interpret)


@triton.jit
def load_rows(base, offs_rows, offs_d, stride_row, seq_len, CAST_F32: tl.constexpr):
    """Load rows offs_rows (masked past seq_len, as zeros) of a [seq, head_dim] slice."""
    t = tl.load(base + offs_rows[:, None] * stride_row + offs_d[None, :],
                mask=(offs_rows < seq_len)[:, None], other=0.0)
    if CAST_F32:
        t = t.to(tl.float32)
    return t


@triton.jit
def causal_scores(q, k, offs_m, offs_n, seq_len, qk_scale, DOT_PRECISION: tl.constexpr):
    """Scores in log2 units [BLOCK_M, BLOCK_N], -inf where the key is past the end or causal."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    visible = (offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] < seq_len)
    return tl.where(visible, s, float("-inf"))


@triton.jit
def online_softmax_step(acc, m_i, l_i, s, v, DOT_PRECISION: tl.constexpr):
    """Fold a score block s [M, N] and its values v [N, D] into (acc, m_i, l_i)."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that have seen no key yet
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def store_output(Out, acc, l_i, offs_m, offs_d, stride_os, seq_len):
    """Normalize and store the query block; rows that saw no key get 0."""
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(Out + offs_m[:, None] * stride_os + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=(offs_m < seq_len)[:, None])


@triton.jit
def sparse_flash_attn_kernel(
    Q, K, V, Out, KvIdx, KvCnt, Computed,
    seq_len, n_heads, n_q_blocks, qk_scale, skip_below,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_os,
    stride_ib, stride_ih, stride_iq,
    stride_cb, stride_ch,
    BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, CAST_F32: tl.constexpr,
    USE_BLOCK_LIST: tl.constexpr, THRESHOLD_SKIP: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Grid (n_q_blocks, batch * heads); writes the number of key blocks computed per program
    to Computed [batch * heads * n_q_blocks] int32.

    USE_BLOCK_LIST: visit the key blocks KvIdx[b, h, qb, :KvCnt[b, h, qb]] (block-sparse);
    otherwise visit 0..qb (dense causal). THRESHOLD_SKIP: skip a visited block when every valid
    row has block max - running max < skip_below = log2(lambda) (BLASST).
    """
    qb = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // n_heads
    h = bh % n_heads
    offs_m = qb * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    base_n = tl.arange(0, BLOCK)
    k_base = K + b.to(tl.int64) * stride_kb + h * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h * stride_vh
    q = load_rows(Q + b.to(tl.int64) * stride_qb + h * stride_qh, offs_m, offs_d, stride_qs,
                  seq_len, CAST_F32)
    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, HEAD_DIM], tl.float32)
    n_computed = tl.full([], 0, tl.int32)
    if USE_BLOCK_LIST:
        idx_row = KvIdx + b.to(tl.int64) * stride_ib + h * stride_ih + qb * stride_iq
        n_visits = tl.load(KvCnt + b.to(tl.int64) * stride_cb + h * stride_ch + qb)
    else:
        idx_row = KvIdx
        n_visits = qb + 1
    for t in range(n_visits):
        if USE_BLOCK_LIST:
            kb = tl.load(idx_row + t)
        else:
            kb = t
        offs_n = kb * BLOCK + base_n
        k = load_rows(k_base, offs_n, offs_d, stride_ks, seq_len, CAST_F32)
        s = causal_scores(q, k, offs_m, offs_n, seq_len, qk_scale, DOT_PRECISION)
        needed = True
        if THRESHOLD_SKIP:
            negligible = ((tl.max(s, axis=1) - m_i) < skip_below) | (offs_m >= seq_len)
            needed = tl.min(negligible.to(tl.int32), axis=0) == 0  # some row needs this block
        if needed:
            v = load_rows(v_base, offs_n, offs_d, stride_vs, seq_len, CAST_F32)
            acc, m_i, l_i = online_softmax_step(acc, m_i, l_i, s, v, DOT_PRECISION)
            n_computed += 1
    store_output(Out + b.to(tl.int64) * stride_ob + h * stride_oh, acc, l_i, offs_m, offs_d,
                 stride_os, seq_len)
    tl.store(Computed + bh * n_q_blocks + qb, n_computed)
