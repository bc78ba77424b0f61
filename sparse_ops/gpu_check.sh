#!/usr/bin/env bash
# GPU check for sparse_ops, for a session that has a CUDA machine. Run from the repo root:
#
#     bash sparse_ops/gpu_check.sh [OUTDIR]          (default OUTDIR: $OUT or ./gpu_check_out)
#
# 1. the sparse_ops tests on CUDA tensors with compiled Triton kernels (no interpreter);
# 2. a kernel-level smoke check at the benchmark's real shapes (Triton vs the torch path);
# 3. the kernel benchmark as JSON (quick by default; FULL=1 for every shape) and as a table.
# Everything is written under OUTDIR; the exit status is non-zero if a step failed.
set -uo pipefail

OUTDIR="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUTDIR"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
unset TRITON_INTERPRET
export SPARSE_OPS_TEST_DEVICE=cuda
status=0

"$PY" - <<'EOF' 2>&1 | tee "$OUTDIR/env.txt"
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__)
assert torch.cuda.is_available(), "no CUDA device: this script is for a GPU machine"
print(torch.cuda.get_device_name(0))
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1

echo "== tests (compiled kernels on CUDA)" | tee "$OUTDIR/pytest.txt"
timeout 900 "$PY" -m pytest tests/test_sparse_ops_encode.py tests/test_sparse_ops_decode.py \
    tests/test_sparse_ops_attention.py tests/test_sparse_ops_dispatch.py -q -ra \
    2>&1 | tee -a "$OUTDIR/pytest.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== smoke at benchmark shapes" | tee "$OUTDIR/smoke.txt"
timeout 600 "$PY" - <<'EOF' 2>&1 | tee -a "$OUTDIR/smoke.txt"
import torch, sparse_ops
from sparse_ops.bench import SaeShape, AttentionShape, sae_inputs, attention_inputs, mask_for_sparsity
dev = torch.device("cuda")
for shape in (SaeShape(8192, 768, 16384, 64), SaeShape(8192, 2304, 65536, 128)):
    x, W, b, Wd, bd = sae_inputs(shape, dev, torch.bfloat16)
    for merge in ("bitonic", "extract"):
        v, i = sparse_ops.topk_encode(x, W, b, shape.k, merge=merge)
        rv, ri = sparse_ops.topk_encode(x, W, b, shape.k, backend="torch")
        agree = (i == ri).float().mean().item()
        err = (v.float() - rv.float()).abs().max().item()
        print(f"encode {shape} {merge}: index agreement {agree:.5f}, max value diff {err:.3g}")
    xh = sparse_ops.sparse_decode(v, i, Wd, bd)
    rx = sparse_ops.sparse_decode_reference(v, i, Wd, bd)
    print(f"decode {shape}: max diff {(xh.float() - rx.float()).abs().max().item():.3g}")
for shape in (AttentionShape(1, 16, 4096, 128, 128, 0.9), AttentionShape(1, 16, 4096, 64, 64, 0.5)):
    q, k, v = attention_inputs(shape, dev, torch.bfloat16, peaked_heads=0.7)
    mask = mask_for_sparsity(shape, dev)
    out, frac = sparse_ops.block_sparse_attention(q, k, v, mask, shape.block)
    ref, _ = sparse_ops.block_sparse_attention(q, k, v, mask, shape.block, backend="torch")
    print(f"block-sparse {shape}: computed {frac:.3f}, max diff {(out.float() - ref.float()).abs().max().item():.3g}")
    out, frac = sparse_ops.blasst_attention(q, k, v, 1e-3, shape.block)
    ref, rfrac = sparse_ops.blasst_attention_reference(q, k, v, 1e-3, shape.block)
    print(f"blasst {shape}: computed {frac:.3f} (reference {rfrac:.3f}), max diff {(out.float() - ref.float()).abs().max().item():.3g}")
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== benchmark"
QUICK="True"; [ "${FULL:-0}" = "1" ] && QUICK="False"
timeout 1200 "$PY" - "$OUTDIR" "$QUICK" <<'EOF' 2>&1 | tee "$OUTDIR/bench.txt"
import json, sys
from sparse_ops.bench import format_table, run_kernel_benchmarks
outdir, quick = sys.argv[1], sys.argv[2] == "True"
rows = run_kernel_benchmarks(device="cuda", quick=quick)
with open(f"{outdir}/bench.json", "w") as fh:
    json.dump(rows, fh, indent=2)
print(format_table(rows))
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "gpu_check: status $status; results in $OUTDIR"
exit $status
