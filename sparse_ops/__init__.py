"""sparse_ops: Triton kernels for the sparsity workbench's hot paths, with PyTorch references.

Every kernel has a PyTorch reference (the definition of correct), a dispatch (Triton on CUDA,
the reference elsewhere; ``backend="auto" | "triton" | "torch"``), autograd where training needs
it, interpreter tests (``TRITON_INTERPRET=1``) and a benchmark (``sparse_ops.bench``).
Depends only on torch; triton is imported lazily, so the package imports without it.

Public API (stable names):

* ``topk_encode(x, W_enc, b_enc, k, backend="auto") -> (values, indices)``
* ``sparse_decode(values, indices, W_dec, b_dec, backend="auto") -> x_hat``
* ``topafa_select(values, indices, dec_norms, z_norm) -> (values_masked, k_per_row)``
* ``topafa_encode(z, W_enc, b_enc, k_max, dec_norms, backend="auto")
  -> (values_masked, indices, k_per_row)``
* ``block_sparse_attention(q, k, v, block_index, block_size, backend="auto")
  -> (out, computed_fraction)``
* ``blasst_attention(q, k, v, threshold, block_size, backend="auto") -> (out, computed_fraction)``
* block indices: ``topk_block_index``, ``vertical_slash_index``, ``block_mask_to_lists``,
  ``block_lists_to_mask``, ``computed_fraction``
* ``resolve_backend(backend, device) -> "triton" | "torch"``
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
    SparseOpsInputError,
    interpreter_enabled,
    resolve_backend,
    triton_available,
)
from sparse_ops.encode import (
    topafa_encode,
    topafa_select,
    topk_encode,
    topk_encode_reference,
)

__all__ = [
    "SparseOpsInputError",
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
    "topafa_encode",
    "topafa_select",
    "topk_block_index",
    "topk_encode",
    "topk_encode_reference",
    "triton_available",
    "vertical_slash_index",
]
