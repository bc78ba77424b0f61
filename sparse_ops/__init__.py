"""sparse_ops: Triton kernels for the sparsity workbench's hot paths, with PyTorch references.

Every kernel has a PyTorch reference (the definition of correct), one dispatch (Triton on CUDA;
the native CPU kernels of ``cpu_native`` for encode/decode on CPU where they build, the
reference otherwise; ``backend="auto" | "cpu" | "triton" | "torch"``, see ``dispatch``), autograd
where training needs it, interpreter tests (``TRITON_INTERPRET=1``) and a benchmark (``sparse_ops.bench``).
Depends only on torch; triton is imported lazily, so the package imports without it.

Public API (stable names):

* ``topk_encode(x, W_enc, b_enc, k, backend="auto") -> (values, indices)`` (``sort=False`` leaves
  rows unsorted; ``keep_preactivations=True`` also returns the cpu backend's pre-activations)
* ``topk_encode_among(x, W_enc, b_enc, k, columns, backend="auto", preactivations=None)
  -> (values, latent ids)``: the top k among some latents (AuxK's dead ones)
* ``sparse_decode(values, indices, W_dec, b_dec, backend="auto", lengths=None, offsets=None)
  -> x_hat`` (``lengths``: a ragged code, row t holding its first lengths[t] pairs;
  ``offsets``: a ragged code as flat bags, values and indices [nnz])
* ``topafa_select(values, indices, dec_norms, z_norm) -> (values_masked, k_per_row)``: the rule
  (given every latent as candidates, its full-sort definition)
* ``topafa_encode(z, W_enc, b_enc, dec_norms, backend="auto", width=64) -> TopAFACode``
  (values, indices [nnz], offsets, lengths, k: each token's kept latents as flat bags);
  ``topafa_dense(code, latents)``
* ``block_sparse_attention(q, k, v, block_index, block_size, backend="auto")
  -> (out, computed_fraction)``
* ``blasst_attention(q, k, v, threshold, block_size, backend="auto") -> (out, computed_fraction)``
* block indices: ``topk_block_index``, ``vertical_slash_index``, ``block_mask_to_lists``,
  ``block_lists_to_mask``, ``computed_fraction``
* ``resolve_backend(backend, device) -> "triton" | "cpu" | "torch"``; ``BACKENDS``
* references: ``topk_encode_reference``, ``sparse_decode_reference``,
  ``block_sparse_attention_reference``, ``blasst_attention_reference``,
  ``dense_causal_attention``
"""

from sparse_ops.attention_blasst import blasst_attention, blasst_attention_reference
from sparse_ops.attention_block_sparse import (
    block_sparse_attention,
    block_sparse_attention_reference,
)
from sparse_ops.attention_common import dense_causal_attention
from sparse_ops.block_index import (
    block_lists_to_mask,
    block_mask_to_lists,
    causal_block_pairs,
    computed_fraction,
    topk_block_index,
    vertical_slash_index,
)
from sparse_ops.decode import sparse_decode, sparse_decode_reference
from sparse_ops.dispatch import (
    BACKENDS,
    SparseOpsInputError,
    interpreter_enabled,
    resolve_backend,
    triton_available,
)
from sparse_ops.encode import (
    TopAFACode,
    topafa_dense,
    topafa_encode,
    topafa_select,
    topk_encode,
    topk_encode_among,
    topk_encode_reference,
)

__all__ = [
    "BACKENDS",
    "SparseOpsInputError",
    "TopAFACode",
    "blasst_attention",
    "blasst_attention_reference",
    "block_lists_to_mask",
    "block_mask_to_lists",
    "block_sparse_attention",
    "block_sparse_attention_reference",
    "causal_block_pairs",
    "computed_fraction",
    "dense_causal_attention",
    "interpreter_enabled",
    "resolve_backend",
    "sparse_decode",
    "sparse_decode_reference",
    "topafa_dense",
    "topafa_encode",
    "topafa_select",
    "topk_block_index",
    "topk_encode",
    "topk_encode_among",
    "topk_encode_reference",
    "triton_available",
    "vertical_slash_index",
]
