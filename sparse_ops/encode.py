"""Fused SAE encode: ``(values, indices) = topk(ReLU(x @ W_enc.T + b_enc), k)``.

Shapes: x [tokens, d_in], W_enc [latents, d_in], b_enc [latents] or None ->
values [tokens, k] (x's dtype, sorted descending), indices [tokens, k] int64.

Semantics (both backends, bit for bit the same selection given the same pre-activations):

* pre-activations are accumulated in fp32; the k largest pre-activations are selected and ReLU is
  applied to their values (the same values as ``torch.topk(relu(pre), k).values``);
* ties break to the smaller latent index;
* rows with fewer than k positive pre-activations get value 0 in the remaining slots, and those
  slots hold the indices of the largest non-positive pre-activations (so every row always lists
  k distinct latents, and the zero slots carry no gradient).

Backends: the Triton kernel (``sparse_ops/kernels/encode_kernels.py``) never writes the
[tokens x latents] pre-activation matrix; the PyTorch path computes it in token chunks; the
native CPU backend (``sparse_ops/cpu_native.py``) computes it with one matmul into a reused
buffer and selects each row's top k in C. That buffer can be handed back
(``keep_preactivations=True``) so a second selection from the same pre-activations, e.g. AuxK's
top-k among the dead latents (:func:`topk_encode_among`), needs no second matmul.
Backward (every backend) touches only the selected latents:

    g = dL/dvalues * (values > 0)                           [tokens, k]
    dL/dx      = sum_j g[:, j] * W_enc[indices[:, j]]       (sparse_ops.decode.gather_sum)
    dL/dW_enc  = per latent, sum of g * x over its tokens   (sparse_ops.decode.segment_sum)
    dL/db_enc  = per latent, sum of g                       (same pass)

top-AFA (per-token k by norm matching): :func:`topafa_select` cuts a top-K_max candidate set per
row at its own k(x) (given every latent as candidates it is the full-sort definition of the rule);
:func:`topafa_encode` returns each token's kept latents as a ragged code (:class:`TopAFACode`,
flat bags with per-token offsets and lengths, no padding), so the decode and both backward passes
cost each token its own k(x), not the batch's largest. On the cpu backend the cut runs natively over the whole
dictionary (``cpu_native.topafa_rows``: no candidate width, no redo); elsewhere from a top-K_max
candidate set, widened and redone until no row keeps all of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_ops import cpu_native
from sparse_ops.decode import (
    bag_pair_sums,
    bag_sum,
    gather_sum,
    padding_mask,
    segment_sum,
    triton_cdiv,
)
from sparse_ops.dispatch import (
    check_same_device,
    check_same_dtype,
    check_tensor,
    load_kernels,
    next_power_of_two,
    require,
    resolve_backend,
)

# Largest k the Triton kernel accepts (its running set is k rounded up to a power of two).
TRITON_MAX_K = 1024
# Elements of the [rows, latents] pre-activation chunk the PyTorch path materializes at once.
_TORCH_CHUNK_ELEMENTS = 1 << 22
_LOW32 = 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------
# reference and key packing


def topk_encode_reference(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor | None, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition of correct: ``torch.topk(relu(x @ W_enc.T + b_enc), k)`` in fp32.

    Plain autograd (dense [tokens x latents] gradients: use it for tests, not training).
    Index order among equal values follows torch.topk (unspecified); compare values, and
    indices only where the values are distinct and positive.
    """
    pre = x.float() @ W_enc.float().T
    if b_enc is not None:
        pre = pre + b_enc.float()
    top = torch.topk(torch.relu(pre), k, dim=1)
    return top.values.to(x.dtype), top.indices


def pack_keys(pre: torch.Tensor, latent_ids: torch.Tensor) -> torch.Tensor:
    """fp32 [rows, n] and int ids [n] -> int64 keys ordered by (value, smaller id first).

    The same packing as the Triton kernel: the float's bits mapped to an order-preserving int32
    in the high word, ``0xFFFFFFFF - id`` in the low word.
    """
    bits = pre.float().contiguous().view(torch.int32)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: flip the 31 low bits
    keys = ordered.long()
    del ordered
    keys.bitwise_left_shift_(32)
    keys.bitwise_or_(_LOW32 - latent_ids.long())
    return keys


def unpack_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_keys`: int64 keys -> (fp32 values, int64 latent ids)."""
    ordered = (keys >> 32).to(torch.int32)
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    return bits.view(torch.float32), _LOW32 - (keys & _LOW32)


# ----------------------------------------------------------------------------------------------
# forward implementations (no autograd)


def _select_topk_rows(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k of each row of fp32 pre-activations [rows, latents], ties to the smaller index,
    ordered by (value descending, index ascending): the kernel's selection and order.

    Fast path: torch.topk on the floats. Rows where the k-th and (k+1)-th values tie (where
    torch.topk's choice is unspecified) are redone with the packed int64 keys.
    """
    n_latents = pre.shape[1]
    top = torch.topk(pre, min(k + 1, n_latents), dim=1)
    values, indices = top.values[:, :k], top.indices[:, :k]
    if k < n_latents:
        tied = (top.values[:, k - 1] == top.values[:, k]).nonzero().flatten()
        if tied.numel():
            ids = torch.arange(n_latents, device=pre.device)
            redo = unpack_keys(torch.topk(pack_keys(pre[tied], ids), k, dim=1).values)
            values, indices = values.clone(), indices.clone()
            values[tied], indices[tied] = redo
    # equal values inside the selection: smaller index first (stable sort by value after index)
    by_index = indices.argsort(dim=1)
    values, indices = values.gather(1, by_index), indices.gather(1, by_index)
    by_value = values.argsort(dim=1, descending=True, stable=True)
    return values.gather(1, by_value), indices.gather(1, by_value)


def _encode_torch(x, W_enc, b_enc, k) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch forward, token-chunked: pre-activations of one chunk exist at a time.

    Returns fp32 pre-activation values [T, k] (before ReLU) and int64 ids [T, k].
    """
    n_rows, n_latents = x.shape[0], W_enc.shape[0]
    W32 = W_enc.float()
    chunk = max(1, _TORCH_CHUNK_ELEMENTS // n_latents)
    values, indices = [], []
    for s in range(0, n_rows, chunk):
        pre = x[s : s + chunk].float() @ W32.T
        if b_enc is not None:
            pre += b_enc.float()
        v, i = _select_topk_rows(pre, k)
        values.append(v)
        indices.append(i)
    if not values:
        return x.new_zeros((0, k), dtype=torch.float32), x.new_zeros((0, k), dtype=torch.int64)
    return torch.cat(values), torch.cat(indices)


def _encode_triton(
    x, W_enc, b_enc, k, n_splits=None, merge=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton forward: returns fp32 pre-activation values [T, k] (before ReLU) and ids [T, k].

    merge: "bitonic" (tl.topk + bitonic merge; default on CUDA) or "extract" (iterative max
    extraction; default in the interpreter, where Triton's sort primitives are very slow).
    """
    merge = merge or ("bitonic" if x.is_cuda else "extract")
    kernels = load_kernels("encode_kernels")
    x, W_enc = x.contiguous(), W_enc.contiguous()
    n_rows, d_in = x.shape
    n_latents = W_enc.shape[0]
    k_pad = next_power_of_two(k)
    block_n = max(64, k_pad)  # tl.topk needs K_PAD <= BLOCK_N
    block_m = 64 if k_pad <= 128 else (32 if k_pad <= 256 else 16)
    block_k = 64 if x.dtype != torch.float32 else 32
    n_tiles = triton_cdiv(n_latents, block_n)
    row_blocks = triton_cdiv(n_rows, block_m)
    if n_splits is None:
        if x.is_cuda:  # enough programs to fill the GPU twice over
            sms = torch.cuda.get_device_properties(x.device).multi_processor_count
            n_splits = min(n_tiles, max(1, triton_cdiv(2 * sms, row_blocks)))
        else:
            n_splits = 1
    tiles_per_split = triton_cdiv(n_tiles, max(1, min(n_splits, n_tiles)))
    n_splits = triton_cdiv(n_tiles, tiles_per_split)
    cand = torch.empty((n_rows, n_splits, k_pad), device=x.device, dtype=torch.int64)
    interp = not x.is_cuda
    kernels.topk_encode_kernel[(row_blocks, n_splits)](
        x, W_enc, b_enc if b_enc is not None else W_enc, cand,
        n_rows, n_latents, d_in, n_tiles, tiles_per_split,
        x.stride(0), W_enc.stride(0), cand.stride(0), cand.stride(1),
        HAS_BIAS=b_enc is not None, K_PAD=k_pad,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        CAST_F32=interp and x.dtype == torch.bfloat16,
        INPUT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        MERGE_BITONIC=merge == "bitonic",
        **({} if interp else {"num_warps": 8 if block_m * block_n >= 8192 else 4}),
    )
    keys = torch.topk(cand.view(n_rows, n_splits * k_pad), k, dim=1).values
    return unpack_keys(keys)


# ----------------------------------------------------------------------------------------------
# autograd


class TopKEncodeFunction(torch.autograd.Function):
    """Autograd for the fused encode; backward touches only the selected latents.

    columns: select among these latents only (indices are still latent ids); preactivations:
    [tokens, latents] x W_enc^T + b_enc already computed by the cpu backend (reused, not
    recomputed); sort: order each row by value (descending, ties to the smaller id)."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, k, backend, kernel_options, columns=None,  # type: ignore[override]
                preactivations=None, sort=True):
        if backend == "cpu":
            if preactivations is None:
                preactivations = cpu_native.dense_preactivations(x, W_enc, b_enc)
            pre_values, indices = cpu_native.topk_rows(preactivations, k, columns)
            if sort:  # topk_rows lists a row's latents in increasing id order
                order = pre_values.argsort(dim=1, descending=True, stable=True)
                pre_values, indices = pre_values.gather(1, order), indices.gather(1, order)
        else:
            W_sel, b_sel = W_enc, b_enc
            if columns is not None:
                W_sel = W_enc[columns]
                b_sel = b_enc[columns] if b_enc is not None else None
            if backend == "triton":
                pre_values, indices = _encode_triton(x, W_sel, b_sel, k, **kernel_options)
            else:
                pre_values, indices = _encode_torch(x, W_sel, b_sel, k)
            if columns is not None:
                indices = columns[indices]
        values = torch.relu(pre_values).to(x.dtype)
        ctx.backend = backend
        ctx.has_bias = b_enc is not None
        ctx.save_for_backward(x, W_enc, values, indices)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values, _grad_indices):  # type: ignore[override]
        grad_x, grad_W, grad_b = _encode_backward(ctx, grad_values)
        return grad_x, grad_W, grad_b, None, None, None, None, None, None


class EncodeAtFunction(torch.autograd.Function):
    """values = ReLU pre-activations already read at chosen latents, as flat bags (token t's
    pairs from offsets[t], lengths[t] of them; every value > 0), differentiable w.r.t. x, W_enc
    and b_enc like the fused encode: backward touches only the kept pairs."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, values, indices, offsets, lengths, backend):  # type: ignore[override]
        ctx.backend = backend
        ctx.has_bias = b_enc is not None
        ctx.save_for_backward(x, W_enc, indices, offsets, lengths)
        return values.clone()

    @staticmethod
    def backward(ctx, grad_values):  # type: ignore[override]
        x, W_enc, indices, offsets, lengths = ctx.saved_tensors
        g = grad_values.float().contiguous()  # dL/dpre: every kept value is positive
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = bag_sum(g, indices, offsets, W_enc, None, x.dtype)
        want_w = ctx.needs_input_grad[1]
        want_b = ctx.has_bias and ctx.needs_input_grad[2]
        if want_w or want_b:
            out, bias, _ = bag_pair_sums(g, indices, offsets, lengths, x.contiguous(),
                                         W_enc.shape[0], ctx.backend, with_bias=want_b)
            grad_W = out.to(W_enc.dtype) if want_w else None
            grad_b = bias.to(W_enc.dtype) if want_b else None
        return grad_x, grad_W, grad_b, None, None, None, None, None


def _encode_backward(ctx, grad_values):
    """dL/dx, dL/dW_enc, dL/db_enc of a sparse encode from dL/dvalues (see the module doc)."""
    x, W_enc, values, indices = ctx.saved_tensors
    g = (grad_values.float() * (values > 0)).contiguous()  # dL/dpre at the selected latents
    grad_x = grad_W = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = gather_sum(g, indices, W_enc, None, ctx.backend, out_dtype=x.dtype)
    want_w = ctx.needs_input_grad[1]
    want_b = ctx.has_bias and ctx.needs_input_grad[2]
    if want_w or want_b:
        grad_W, grad_b = segment_sum(
            g, indices, x, W_enc.shape[0], ctx.backend, W_enc.dtype, with_bias=want_b)
        grad_W = grad_W if want_w else None
        grad_b = grad_b.to(W_enc.dtype) if want_b else None
    return grad_x, grad_W, grad_b


# ----------------------------------------------------------------------------------------------
# public entry points


def check_encode_inputs(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor | None, k: int
) -> None:
    """Validate topk_encode's inputs; raises SparseOpsInputError naming the problem and fix."""
    check_tensor("x", x, ndim=2)
    check_tensor("W_enc", W_enc, ndim=2)
    if b_enc is not None:
        check_tensor("b_enc", b_enc, ndim=1)
    check_same_device(x=x, W_enc=W_enc, b_enc=b_enc)
    check_same_dtype(x=x, W_enc=W_enc, b_enc=b_enc)
    n_latents, d_in = W_enc.shape
    require(
        x.shape[1] == d_in,
        f"x has d_in={x.shape[1]} but W_enc is {tuple(W_enc.shape)}; W_enc must be shaped "
        f"[latents, d_in] (transpose it if it is [d_in, latents])",
    )
    if b_enc is not None:
        require(
            b_enc.shape[0] == n_latents,
            f"b_enc has {b_enc.shape[0]} entries but W_enc has {n_latents} latents (rows)",
        )
    require(
        isinstance(k, int) and not isinstance(k, bool),
        f"k must be an int, got {type(k).__name__}",
    )
    require(1 <= k <= n_latents, f"k={k} must be between 1 and the number of latents ({n_latents})")
    require(n_latents < 2**31 - 1, f"{n_latents} latents exceed the 32-bit latent index")


def topk_encode(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor | None,
    k: int,
    backend: str = "auto",
    *,
    n_splits: int | None = None,
    merge: str | None = None,
    sort: bool = True,
    keep_preactivations: bool = False,
):
    """Top-k SAE encode without differentiating the [tokens x latents] pre-activations.

    Args:
        x: [tokens, d_in] inputs.
        W_enc: [latents, d_in] encoder rows; b_enc: [latents] or None (same dtype as x).
        k: number of latents kept per token, 1 <= k <= latents (<= 1024 on the Triton backend;
            ``backend="auto"`` takes the PyTorch path on the same device for larger k).
        backend: one of sparse_ops.dispatch.BACKENDS ("auto" picks, see there).
        n_splits: Triton only: split the latents over this many programs per row block (default:
            enough programs to fill the GPU; 1 on CPU). Results do not depend on it.
        merge: Triton only: "bitonic" (default on CUDA) or "extract" (default in the
            interpreter); see sparse_ops/kernels/encode_kernels.py. Results do not depend on it.
        sort: order each row by value; with False the order within a row is unspecified (the
            cpu backend then skips its sort).
        keep_preactivations: also return the pre-activations x W_enc^T + b_enc [tokens,
            latents] (no autograd) where the backend computed them (cpu), else None. They live
            in a reused buffer, valid until the next cpu-backend encode: hand them to
            :func:`topk_encode_among` right away.

    Returns:
        values [tokens, k] sorted descending (x's dtype; 0 where fewer than k pre-activations are
        positive) and indices [tokens, k] int64 (plus the pre-activations or None when
        ``keep_preactivations``). ``values`` is differentiable w.r.t. x, W_enc and b_enc;
        gradients touch only the selected latents.
    """
    check_encode_inputs(x, W_enc, b_enc, k)
    chosen = _encode_backend(backend, x, W_enc, b_enc, k)
    require(merge in (None, "bitonic", "extract"), f"merge={merge!r}: use 'bitonic' or 'extract'")
    require(
        n_splits is None or (isinstance(n_splits, int) and n_splits >= 1),
        f"n_splits={n_splits!r} must be a positive int or None",
    )
    options = {"n_splits": n_splits, "merge": merge}
    pre = None
    if keep_preactivations and chosen == "cpu":
        pre = cpu_native.dense_preactivations(x, W_enc, b_enc)
    values, indices = TopKEncodeFunction.apply(x, W_enc, b_enc, k, chosen, options, None, pre,
                                               sort)
    return (values, indices, pre) if keep_preactivations else (values, indices)


def topk_encode_among(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor | None,
    k: int,
    columns: torch.Tensor,
    backend: str = "auto",
    *,
    preactivations: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`topk_encode` restricted to the latents ``columns`` [C] int64 (e.g. AuxK's dead
    latents): (values [tokens, k], latent ids [tokens, k]), rows in unspecified order.

    preactivations: the [tokens, latents] pre-activations of the same x, W_enc, b_enc, as a
    cpu-backend :func:`topk_encode` with ``keep_preactivations=True`` returned them; the
    selection then reads them instead of multiplying again. Gradients flow to x, W_enc and
    b_enc through the selected latents only.
    """
    check_encode_inputs(x, W_enc, b_enc, 1)
    check_tensor("columns", columns, ndim=1, dtypes=(torch.int64,))
    require(1 <= k <= columns.numel(),
            f"k={k} must be between 1 and the number of columns ({columns.numel()})")
    chosen = _encode_backend(backend, x, W_enc, b_enc, k)
    if preactivations is not None:
        require(chosen == "cpu" and tuple(preactivations.shape) == (x.shape[0], W_enc.shape[0]),
                f"preactivations {tuple(preactivations.shape)} must be the [tokens, latents] "
                f"matrix a cpu-backend topk_encode returned for these x, W_enc and b_enc")
    return TopKEncodeFunction.apply(x, W_enc, b_enc, k, chosen, {}, columns, preactivations,
                                    False)


def _encode_backend(backend: str, x: torch.Tensor, W_enc: torch.Tensor,
                    b_enc: torch.Tensor | None, k: int) -> str:
    """The backend an encode runs on (dispatch's choice, adjusted to the inputs)."""
    chosen = resolve_backend(backend, x.device)
    if x.shape[0] == 0:
        return "torch"  # nothing to launch
    if chosen == "cpu" and not cpu_native.usable(x, W_enc, b_enc):
        return "torch"  # the native code reads float32 only
    if chosen == "triton" and k > TRITON_MAX_K:
        require(
            backend == "auto",
            f"k={k} exceeds the Triton kernel's limit of {TRITON_MAX_K}; use backend='torch'",
        )
        return "torch"
    return chosen


def topafa_select(
    values: torch.Tensor,
    indices: torch.Tensor,
    dec_norms: torch.Tensor,
    z_norm: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """top-AFA: cut each row of a top-K_max candidate set at its own k(x).

    s_i = (a_i * ||W_dec,i||)^2 sorted descending, C_j = cumulative sums (in float64),
    k(x) = argmin_j |sqrt(C_j) - ||z||| + 1 (the first minimum: equal C_j tie to the earlier j,
    see _topafa_cut); the k(x) candidates with the largest s stay, the others become 0. When the candidate set is every latent (K_max ==
    latents) the last C_j is replaced by a large guard value, as in the reference code; with a
    truncated set no guard is applied, so k(x) == K_max signals that K_max may be too small.

    Args:
        values: [tokens, K_max] candidate activations (>= 0), e.g. from topk_encode.
        indices: [tokens, K_max] their latent ids.
        dec_norms: [latents] decoder row norms ||W_dec,i||.
        z_norm: [tokens] norms of the encoder input z = x - b_dec.

    Returns:
        values_masked [tokens, K_max] (same positions as ``values``, differentiable through the
        kept values; no gradient flows through the choice of k) and k_per_row [tokens] int64.
    """
    check_tensor("values", values, ndim=2)
    check_tensor("dec_norms", dec_norms, ndim=1)
    check_tensor("z_norm", z_norm, ndim=1)
    check_tensor("indices", indices, ndim=2, dtypes=(torch.int64, torch.int32))
    check_same_device(values=values, indices=indices, dec_norms=dec_norms, z_norm=z_norm)
    require(
        indices.shape == values.shape,
        f"indices {tuple(indices.shape)} and values {tuple(values.shape)} must match",
    )
    require(
        z_norm.shape[0] == values.shape[0],
        f"z_norm has {z_norm.shape[0]} entries but values has {values.shape[0]} rows (tokens)",
    )
    k_per_row, order = _topafa_cut(values, indices, dec_norms, z_norm)
    with torch.no_grad():
        keep_sorted = padding_mask(k_per_row, values.shape[1])
        keep = torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)
    return values * keep.to(values.dtype), k_per_row


@dataclass
class TopAFACode:
    """Each token's kept latents, a ragged code stored as flat bags (no padding).

    values [nnz] (> 0), indices [nnz] int64: token t's pairs are values[offsets[t] :
    offsets[t] + lengths[t]] (within a token in increasing latent id on the cpu backend, else by
    s = (a * ||W_dec,i||)^2 descending); offsets [tokens] int64 (exclusive prefix sums of
    lengths, F.embedding_bag's offsets), lengths [tokens] int64 (kept latents with a positive
    activation), k [tokens] int64 (the rule's k(x); k > lengths only where the cut reached
    latents with activation 0), width: the candidate set size used (the whole dictionary on the
    cpu backend), preactivations: the [tokens, latents] pre-activations where the backend
    computed them (cpu), for AuxK, else None. Decode with
    ``sparse_decode(values, indices, W_dec, b_dec, offsets=offsets)``.
    """

    values: torch.Tensor
    indices: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    k: torch.Tensor
    width: int
    preactivations: torch.Tensor | None = None

    def rows(self) -> torch.Tensor:
        """The token of every pair [nnz] int64."""
        return torch.repeat_interleave(
            torch.arange(self.lengths.shape[0], device=self.lengths.device), self.lengths)


def topafa_encode(
    z: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor | None,
    dec_norms: torch.Tensor,
    backend: str = "auto",
    *,
    width: int = 64,
) -> TopAFACode:
    """top-AFA encode: ReLU(z W_enc^T + b_enc) cut per row at its own k(x) (see topafa_select).

    Args:
        z: [tokens, d_in] encoder input (x - b_dec after the input standardization).
        W_enc: [latents, d_in]; b_enc: [latents] or None (the reference top-AFA has none).
        dec_norms: [latents] decoder row norms.
        backend: one of sparse_ops.dispatch.BACKENDS ("auto" picks). On "cpu" the cut is exact
            over the whole dictionary. On "torch"/"triton" the candidates are the top ``width``
            pre-activations; the rows that keep all of them are redone alone with twice the
            width, until none does (exact when the decoder rows have equal norms, as the
            trainer keeps them).
        width: candidate set size for the torch/triton backends (ignored on cpu): a bound on
            most rows' k(x), e.g. twice a high quantile of the last batch's (the few rows above
            it cost a redo of those rows only).

    Returns:
        A :class:`TopAFACode`; ``values`` is differentiable w.r.t. z, W_enc and b_enc, and the
        backward touches each row's kept latents only.
    """
    check_encode_inputs(z, W_enc, b_enc, 1)
    check_tensor("dec_norms", dec_norms, ndim=1)
    n_latents = W_enc.shape[0]
    require(dec_norms.shape[0] == n_latents,
            f"dec_norms has {dec_norms.shape[0]} entries but W_enc has {n_latents} latents")
    require(isinstance(width, int) and width >= 1, f"width={width!r} must be a positive int")
    chosen = _encode_backend(backend, z, W_enc, b_enc, min(width, n_latents))
    z_norm = z.detach().float().norm(dim=1)
    if chosen == "cpu":
        pre = cpu_native.dense_preactivations(z.detach(), W_enc.detach(),
                                              None if b_enc is None else b_enc.detach())
        k, lengths, offsets, indices, kept = cpu_native.topafa_rows(pre, dec_norms.detach(),
                                                                    z_norm)
        values = EncodeAtFunction.apply(z, W_enc, b_enc, kept.to(z.dtype), indices, offsets,
                                        lengths, chosen)
        return TopAFACode(values, indices, offsets, lengths, k, n_latents, pre)
    width = min(width, n_latents)
    values, indices, lengths, k = _topafa_candidates(z, W_enc, b_enc, dec_norms, z_norm, width,
                                                     chosen)
    keep = padding_mask(lengths, values.shape[1])  # the padded rows as flat bags
    return TopAFACode(values[keep], indices[keep], torch.cumsum(lengths, 0) - lengths, lengths,
                      k, width, None)


def _topafa_candidates(z, W_enc, b_enc, dec_norms, z_norm, width, backend):
    """The torch/triton path: the cut on each row's top ``width`` candidates; the rows that keep
    all of them (where the cut may lie further out) are redone alone with twice the width, until
    none does or the candidates are the whole dictionary. Returns the compact code (values,
    indices [n, K], lengths, k)."""
    n_latents = W_enc.shape[0]
    values, indices = topk_encode(z, W_enc, b_enc, width, backend=backend, sort=False)
    k, order = _topafa_cut(values, indices, dec_norms, z_norm)
    ordered = values.gather(1, order)
    lengths = torch.minimum(k, (ordered > 0).sum(dim=1))
    ids = indices.gather(1, order)
    redo = (k >= width).nonzero().flatten() if width < n_latents else k.new_zeros(0)
    if redo.numel():
        wide = _topafa_candidates(z[redo], W_enc, b_enc, dec_norms, z_norm[redo],
                                  min(n_latents, 2 * width), backend)
        cols = max(int(lengths.max()), wide[0].shape[1])
        ordered, ids = _pad_cols(ordered, cols), _pad_cols(ids, cols)
        rows = torch.arange(z.shape[0], device=z.device)
        keep_rows = rows[k < width]
        # the redone rows replace theirs: concatenate, then put every row back in its place
        place = torch.empty_like(rows)
        place[torch.cat([keep_rows, redo])] = rows
        ordered = torch.cat([ordered[keep_rows], _pad_cols(wide[0], cols)])[place]
        ids = torch.cat([ids[keep_rows], _pad_cols(wide[1], cols)])[place]
        lengths = torch.cat([lengths[keep_rows], wide[2]])[place]
        k = torch.cat([k[keep_rows], wide[3]])[place]
    cols = int(lengths.max()) if lengths.numel() else 0
    keep = padding_mask(lengths, cols)
    return (ordered[:, :cols] * keep.to(ordered.dtype), ids[:, :cols].masked_fill(~keep, 0),
            lengths, k)


def _pad_cols(t: torch.Tensor, cols: int) -> torch.Tensor:
    """[n, c] -> [n, cols] (cols >= c), zeros appended (differentiable)."""
    return torch.nn.functional.pad(t, (0, cols - t.shape[1])) if cols > t.shape[1] else t


def _topafa_cut(values: torch.Tensor, indices: torch.Tensor, dec_norms: torch.Tensor,
                z_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule on a candidate set (no autograd): k per row [tokens] and the candidates' kept
    order [tokens, K_max] (s descending, ties to the earlier candidate).

    The first argmin of |sqrt(C_j) - ||z||| is found exactly rather than by comparing every gap:
    C (float64 cumulative sums) only grows, so the minimum sits where C first reaches ||z||^2
    or just before (the first of a run of equal C); a guard C_L wins only when strictly closer.
    Comparing all gaps would let the last bit of sqrt decide between positions whose C differ
    by less than a rounding step, and sqrt's last bit differs between libraries (torch's CPU
    sqrt is not correctly rounded): this way cpu_native's cut agrees exactly."""
    with torch.no_grad():
        scaled = (values.float() * dec_norms.float()[indices.long()]) ** 2
        s_sorted, order = torch.sort(scaled, dim=1, descending=True, stable=True)
        cumulative = torch.cumsum(s_sorted.double(), dim=1)
        z = z_norm.double()[:, None]
        n, width = cumulative.shape
        if width < dec_norms.shape[0]:  # a truncated candidate set: no guard
            return _first_argmin_gap(cumulative, z)[0] + 1, order
        if width == 1:
            return torch.ones(n, dtype=torch.int64, device=values.device), order
        k0, best = _first_argmin_gap(cumulative[:, :-1], z)
        guard_closer = (z[:, 0] - 1e4).abs() < best  # C_L replaced by 1e8
        return torch.where(guard_closer, width - 1, k0) + 1, order


def _first_argmin_gap(cumulative: torch.Tensor, z: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """First argmin over j of |sqrt(C_j) - z| for non-decreasing rows C [n, K] and z [n, 1]
    (float64) -> (j [n] int64, the gap there [n])."""
    width = cumulative.shape[1]
    n_below = (cumulative < z * z).sum(dim=1, keepdim=True)  # the first j with C_j >= z^2
    c_a = cumulative.gather(1, (n_below - 1).clamp(min=0))
    c_b = cumulative.gather(1, n_below.clamp(max=width - 1))
    gap_a, gap_b = z - c_a.sqrt(), c_b.sqrt() - z
    take_a = (n_below == width) | ((n_below > 0) & (gap_a <= gap_b))
    value = torch.where(take_a, c_a, c_b)
    first = (cumulative < value).sum(dim=1)  # the first j of value's run of equal C
    return first, torch.where(take_a, gap_a, gap_b)[:, 0]


def topafa_dense(code: TopAFACode, n_latents: int) -> torch.Tensor:
    """A TopAFACode as dense activations [tokens, latents] (zeros elsewhere): for tests and
    small inputs."""
    dense = code.values.new_zeros((code.lengths.shape[0], n_latents))
    return dense.index_put((code.rows(), code.indices), code.values, accumulate=True)
