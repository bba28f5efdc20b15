"""Fused streaming relation KL for one relation pair, in Triton: no S x S tensor ever reaches memory.

Same loss and gradients as `minilmv2.relations.relation_pair_loss` (formula (7)); that PyTorch path is the
reference this kernel is tested against. Import this module only when Triton is wanted: it imports triton, which
a CPU user does not need. On CPU tensors it runs only under Triton's interpreter (TRITON_INTERPRET=1 set before
this module is imported), which is how the tests check it without a GPU.

For relation head a of sample b, with teacher logits t = A_i A_j^T / sqrt(d_t) and student logits
s = A_i A_j^T / sqrt(d_s) (one row per query token, one column per key token, padded keys masked out), p and q the
row softmaxes of t and s, and w_row the row's weight in the loss (`relation_row_weights`):

    row KL = sum_k p_k (t_k - s_k) - LSE(t) + LSE(s)
    d loss / d s_k = w_row (q_k - p_k)

Three launches, each a grid over (query or key tile, sample x relation head), each streaming the other axis
through on-chip memory in tiles (the flash-attention scheme):
  1. `_relation_kl_forward`: per query tile, running max and normaliser of t and of s and a running
     sum_k e^(t_k - m_t) (t_k - s_k), rescaled whenever the running max moves (the online form of the
     two-distribution KL); writes the weighted row KL and both row log-sum-exps, O(S) per head.
  2. `_relation_grad_left`: per query tile, recomputes p and q tile by tile from the stored log-sum-exps and
     contracts w (q - p) / sqrt(d_s) with the student's right-hand states: d loss / d student_left.
  3. `_relation_grad_right`: per key tile, the same over query tiles, contracted with the student's left-hand
     states: d loss / d student_right.
The gradients are written into (B, S, H_s) fp32 buffers at the head's columns. For Q-Q, K-K and V-V the left and
right operand are the same tensor and autograd adds the two gradients: dX = (G + G^T) X / sqrt(d_s).

Why not one backward kernel with atomics: the left gradient of a query row sums over all key tiles, the right
gradient of a key over all query tiles; one of the two would need atomic adds, which make the result depend on
scheduling. Two recomputing passes keep the loss deterministic and cost one extra pair of exponentials.
Why q - p is formed before the contraction (not e^s V / l_s - e^t V / l_t online in the forward): late in
training q ~ p, and the difference of two nearly equal averages would lose the digits the gradient lives in.

Numerics: logits and everything after them are fp32. bf16/fp16 states enter the logit dots as they are (their
products are exact in fp32); fp32 operands use "tf32x3", three tf32 tensor-core passes, within a few fp32 ulps.
Masked keys get the logit -1e30 in both distributions (their t - s is 0, their probability exactly 0 when
the row has any real key); a row without a real key is a finite uniform distribution of weight 0, as in the
PyTorch path. Head sizes that are not powers of two (and below 16, the smallest tensor-core dot) are padded with
masked-off zero columns.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

# Tile sizes on a GPU (query rows x key columns per step): 64 x 64 fp32 tiles for t, s, p and q fit in registers
# with head sizes up to 64; the interpreter is fastest with few, large numpy blocks.
GPU_BLOCK = 64


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 logit dots in three tf32 tensor-core passes (fp32-accurate); bf16/fp16 dots ignore this setting."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def _padded_head_size(head_size: int) -> int:
    """Columns a head occupies in a tile: a power of two, at least 16 (the smallest K of a tensor-core dot)."""
    return max(16, triton.next_power_of_2(head_size))


@triton.jit
def _head_columns(
    batch,
    head,
    teacher_head,
    student_head,
    t_stride_b,
    t_stride_h,
    s_stride_b,
    s_stride_h,
    TEACHER_COLS: tl.constexpr,
    STUDENT_COLS: tl.constexpr,
):
    """Offsets of relation head `head` of sample `batch` in the (B, S, H) states (its d_r columns starting at
    head * d_r, padded to a power of two) and the masks of its real columns; teacher first, then student."""
    t_cols = tl.arange(0, TEACHER_COLS)
    s_cols = tl.arange(0, STUDENT_COLS)
    t_head = batch * t_stride_b + (head * teacher_head + t_cols)[None, :] * t_stride_h
    s_head = batch * s_stride_b + (head * student_head + s_cols)[None, :] * s_stride_h
    return t_head, s_head, (t_cols < teacher_head)[None, :], (s_cols < student_head)[None, :]


@triton.jit
def _masked_logits(
    t_left,
    t_right,
    s_left,
    s_right,
    key_ok,
    teacher_scale,
    student_scale,
    TEACHER_DOT: tl.constexpr,
    STUDENT_DOT: tl.constexpr,
):
    """Teacher and student logit tiles (rows x keys, fp32), padded keys at -1e30 in both."""
    t = tl.dot(t_left, tl.trans(t_right), input_precision=TEACHER_DOT) * teacher_scale
    s = tl.dot(s_left, tl.trans(s_right), input_precision=STUDENT_DOT) * student_scale
    return tl.where(key_ok[None, :], t, -1.0e30), tl.where(key_ok[None, :], s, -1.0e30)


@triton.jit
def _logit_gradient(
    t_left,
    t_right,
    s_left,
    s_right,
    key_ok,
    t_lse,
    s_lse,
    coefficient,
    teacher_scale,
    student_scale,
    TEACHER_DOT: tl.constexpr,
    STUDENT_DOT: tl.constexpr,
):
    """d loss / d (s_left . s_right) of one tile, the raw dot before its 1/sqrt(d_s) scale: w_row (q - p) / sqrt(d_s),
    p and q recomputed from the row log-sum-exps that the forward stored."""
    t, s = _masked_logits(
        t_left, t_right, s_left, s_right, key_ok, teacher_scale, student_scale, TEACHER_DOT, STUDENT_DOT
    )
    p = tl.exp(t - t_lse[:, None])
    q = tl.exp(s - s_lse[:, None])
    return (q - p) * coefficient[:, None]


@triton.jit
def _relation_kl_forward(
    teacher_left,
    teacher_right,
    student_left,
    student_right,
    key_mask,
    row_weight,
    row_loss,
    teacher_lse,
    student_lse,
    seq_len,
    num_heads,
    teacher_head,
    student_head,
    t_stride_b,
    t_stride_s,
    t_stride_h,
    s_stride_b,
    s_stride_s,
    s_stride_h,
    teacher_scale,
    student_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    TEACHER_COLS: tl.constexpr,
    STUDENT_COLS: tl.constexpr,
    TEACHER_DOT: tl.constexpr,
    STUDENT_DOT: tl.constexpr,
):
    """Grid (query tiles, B * A_r). Writes row_loss = w_row * KL_row and both LSEs, each (B * A_r, S) fp32."""
    group = tl.program_id(1)
    batch = group // num_heads
    head = group % num_heads
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_in = rows < seq_len
    t_head, s_head, t_col_in, s_col_in = _head_columns(
        batch,
        head,
        teacher_head,
        student_head,
        t_stride_b,
        t_stride_h,
        s_stride_b,
        s_stride_h,
        TEACHER_COLS,
        STUDENT_COLS,
    )
    t_left = tl.load(teacher_left + t_head + rows[:, None] * t_stride_s, mask=row_in[:, None] & t_col_in, other=0.0)
    s_left = tl.load(student_left + s_head + rows[:, None] * s_stride_s, mask=row_in[:, None] & s_col_in, other=0.0)
    tile = tl.arange(0, BLOCK_N)
    t_right_at = teacher_right + t_head + tile[:, None] * t_stride_s
    s_right_at = student_right + s_head + tile[:, None] * s_stride_s
    t_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    s_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    t_sum = tl.zeros((BLOCK_M,), tl.float32)
    s_sum = tl.zeros((BLOCK_M,), tl.float32)
    t_weighted_gap = tl.zeros((BLOCK_M,), tl.float32)  # sum_k e^(t_k - t_max) (t_k - s_k)
    for start in range(0, seq_len, BLOCK_N):
        keys = start + tile
        key_in = keys < seq_len
        key_ok = tl.load(key_mask + batch * seq_len + keys, mask=key_in, other=0) != 0
        t_right = tl.load(t_right_at, mask=key_in[:, None] & t_col_in, other=0.0)
        s_right = tl.load(s_right_at, mask=key_in[:, None] & s_col_in, other=0.0)
        t, s = _masked_logits(
            t_left, t_right, s_left, s_right, key_ok, teacher_scale, student_scale, TEACHER_DOT, STUDENT_DOT
        )
        t_max_new = tl.maximum(t_max, tl.max(t, axis=1))
        s_max_new = tl.maximum(s_max, tl.max(s, axis=1))
        # On the first tile the old maxima are -inf: alpha = 0 wipes the (zero) history; new maxima are finite.
        t_alpha = tl.exp(t_max - t_max_new)
        t_exp = tl.exp(t - t_max_new[:, None])
        t_sum = t_sum * t_alpha + tl.sum(t_exp, axis=1)
        t_weighted_gap = t_weighted_gap * t_alpha + tl.sum(t_exp * (t - s), axis=1)
        s_sum = s_sum * tl.exp(s_max - s_max_new) + tl.sum(tl.exp(s - s_max_new[:, None]), axis=1)
        t_max = t_max_new
        s_max = s_max_new
        t_right_at += BLOCK_N * t_stride_s
        s_right_at += BLOCK_N * s_stride_s
    t_log_sum = tl.log(t_sum)
    s_log_sum = tl.log(s_sum)
    # sum_k p_k (t_k - s_k) - LSE(t) + LSE(s), the maxima (the large terms) subtracted from each other first.
    row_kl = t_weighted_gap / t_sum - (t_max - s_max) - t_log_sum + s_log_sum
    weight = tl.load(row_weight + batch * seq_len + rows, mask=row_in, other=0.0)
    out = group * seq_len + rows
    tl.store(row_loss + out, tl.where(weight != 0.0, weight * row_kl, 0.0), mask=row_in)
    tl.store(teacher_lse + out, t_max + t_log_sum, mask=row_in)
    tl.store(student_lse + out, s_max + s_log_sum, mask=row_in)


@triton.jit
def _relation_grad_left(
    teacher_left,
    teacher_right,
    student_left,
    student_right,
    key_mask,
    row_weight,
    teacher_lse,
    student_lse,
    grad_left,
    seq_len,
    num_heads,
    teacher_head,
    student_head,
    t_stride_b,
    t_stride_s,
    t_stride_h,
    s_stride_b,
    s_stride_s,
    s_stride_h,
    teacher_scale,
    student_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    TEACHER_COLS: tl.constexpr,
    STUDENT_COLS: tl.constexpr,
    TEACHER_DOT: tl.constexpr,
    STUDENT_DOT: tl.constexpr,
):
    """Grid (query tiles, B * A_r). grad_left (B, S, H_s) fp32, contiguous: sum_k w (q_k - p_k) / sqrt(d_s) s_right."""
    group = tl.program_id(1)
    batch = group // num_heads
    head = group % num_heads
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_in = rows < seq_len
    t_head, s_head, t_col_in, s_col_in = _head_columns(
        batch,
        head,
        teacher_head,
        student_head,
        t_stride_b,
        t_stride_h,
        s_stride_b,
        s_stride_h,
        TEACHER_COLS,
        STUDENT_COLS,
    )
    t_left = tl.load(teacher_left + t_head + rows[:, None] * t_stride_s, mask=row_in[:, None] & t_col_in, other=0.0)
    s_left = tl.load(student_left + s_head + rows[:, None] * s_stride_s, mask=row_in[:, None] & s_col_in, other=0.0)
    t_lse = tl.load(teacher_lse + group * seq_len + rows, mask=row_in, other=0.0)
    s_lse = tl.load(student_lse + group * seq_len + rows, mask=row_in, other=0.0)
    coefficient = tl.load(row_weight + batch * seq_len + rows, mask=row_in, other=0.0) * student_scale
    tile = tl.arange(0, BLOCK_N)
    t_right_at = teacher_right + t_head + tile[:, None] * t_stride_s
    s_right_at = student_right + s_head + tile[:, None] * s_stride_s
    grad = tl.zeros((BLOCK_M, STUDENT_COLS), tl.float32)
    for start in range(0, seq_len, BLOCK_N):
        keys = start + tile
        key_in = keys < seq_len
        key_ok = tl.load(key_mask + batch * seq_len + keys, mask=key_in, other=0) != 0
        t_right = tl.load(t_right_at, mask=key_in[:, None] & t_col_in, other=0.0)
        s_right = tl.load(s_right_at, mask=key_in[:, None] & s_col_in, other=0.0)
        grad_logits = _logit_gradient(
            t_left,
            t_right,
            s_left,
            s_right,
            key_ok,
            t_lse,
            s_lse,
            coefficient,
            teacher_scale,
            student_scale,
            TEACHER_DOT,
            STUDENT_DOT,
        )  # (BLOCK_M, BLOCK_N)
        grad += tl.dot(grad_logits, s_right.to(tl.float32), input_precision="tf32x3")
        t_right_at += BLOCK_N * t_stride_s
        s_right_at += BLOCK_N * s_stride_s
    grad_cols = head * student_head + tl.arange(0, STUDENT_COLS)
    grad_head = batch * seq_len * num_heads * student_head + grad_cols[None, :]
    tl.store(grad_left + grad_head + rows[:, None] * num_heads * student_head, grad, mask=row_in[:, None] & s_col_in)


@triton.jit
def _relation_grad_right(
    teacher_left,
    teacher_right,
    student_left,
    student_right,
    key_mask,
    row_weight,
    teacher_lse,
    student_lse,
    grad_right,
    seq_len,
    num_heads,
    teacher_head,
    student_head,
    t_stride_b,
    t_stride_s,
    t_stride_h,
    s_stride_b,
    s_stride_s,
    s_stride_h,
    teacher_scale,
    student_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    TEACHER_COLS: tl.constexpr,
    STUDENT_COLS: tl.constexpr,
    TEACHER_DOT: tl.constexpr,
    STUDENT_DOT: tl.constexpr,
):
    """Grid (key tiles, B * A_r). grad_right (B, S, H_s) fp32, contiguous: sum_rows w (q - p) / sqrt(d_s) s_left."""
    group = tl.program_id(1)
    batch = group // num_heads
    head = group % num_heads
    keys = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    key_in = keys < seq_len
    key_ok = tl.load(key_mask + batch * seq_len + keys, mask=key_in, other=0) != 0
    t_head, s_head, t_col_in, s_col_in = _head_columns(
        batch,
        head,
        teacher_head,
        student_head,
        t_stride_b,
        t_stride_h,
        s_stride_b,
        s_stride_h,
        TEACHER_COLS,
        STUDENT_COLS,
    )
    t_right = tl.load(teacher_right + t_head + keys[:, None] * t_stride_s, mask=key_in[:, None] & t_col_in, other=0.0)
    s_right = tl.load(student_right + s_head + keys[:, None] * s_stride_s, mask=key_in[:, None] & s_col_in, other=0.0)
    tile = tl.arange(0, BLOCK_M)
    t_left_at = teacher_left + t_head + tile[:, None] * t_stride_s
    s_left_at = student_left + s_head + tile[:, None] * s_stride_s
    grad = tl.zeros((BLOCK_N, STUDENT_COLS), tl.float32)
    for start in range(0, seq_len, BLOCK_M):
        rows = start + tile
        row_in = rows < seq_len
        t_left = tl.load(t_left_at, mask=row_in[:, None] & t_col_in, other=0.0)
        s_left = tl.load(s_left_at, mask=row_in[:, None] & s_col_in, other=0.0)
        # Rows past S load zero states, LSE 0 and weight 0: their logits are 0 or masked, so p and q stay <= 1
        # and the zero weight removes them.
        t_lse = tl.load(teacher_lse + group * seq_len + rows, mask=row_in, other=0.0)
        s_lse = tl.load(student_lse + group * seq_len + rows, mask=row_in, other=0.0)
        coefficient = tl.load(row_weight + batch * seq_len + rows, mask=row_in, other=0.0) * student_scale
        grad_logits = _logit_gradient(
            t_left,
            t_right,
            s_left,
            s_right,
            key_ok,
            t_lse,
            s_lse,
            coefficient,
            teacher_scale,
            student_scale,
            TEACHER_DOT,
            STUDENT_DOT,
        )  # (BLOCK_M, BLOCK_N)
        grad += tl.dot(tl.trans(grad_logits), s_left.to(tl.float32), input_precision="tf32x3")
        t_left_at += BLOCK_M * t_stride_s
        s_left_at += BLOCK_M * s_stride_s
    grad_cols = head * student_head + tl.arange(0, STUDENT_COLS)
    grad_head = batch * seq_len * num_heads * student_head + grad_cols[None, :]
    tl.store(grad_right + grad_head + keys[:, None] * num_heads * student_head, grad, mask=key_in[:, None] & s_col_in)


def fused_relation_kl(
    teacher_left: torch.Tensor,
    teacher_right: torch.Tensor,
    student_left: torch.Tensor,
    student_right: torch.Tensor,
    key_mask: torch.Tensor,
    row_weight: torch.Tensor,
    num_relation_heads: int,
    need_grad: bool,
    block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Weighted relation KL of one pair and the gradients of the student states, without S x S buffers.

    Args: teacher_* (B, S, H_t) and student_* (B, S, H_s), fp32/bf16/fp16, any strides; key_mask (B, S) bool;
        row_weight (B, S) fp32 (`relation_row_weights`); block: tile size (a power of two >= 16; None: 64 on a
        GPU, 32 in the interpreter).
    Returns: loss (fp32 scalar), d loss / d student_left and d student_right ((B, S, H_s) fp32) or None.
    """
    batch, seq_len = key_mask.shape
    heads = num_relation_heads
    teacher_head = teacher_left.shape[-1] // heads
    student_head = student_left.shape[-1] // heads
    # One set of strides per model is passed to the kernels; the Q/K/V outputs of Linear layers share them.
    if teacher_left.stride() != teacher_right.stride():
        teacher_left, teacher_right = teacher_left.contiguous(), teacher_right.contiguous()
    if student_left.stride() != student_right.stride():
        student_left, student_right = student_left.contiguous(), student_right.contiguous()
    if not key_mask.is_cuda and teacher_left.dtype != torch.float32:
        # Triton 3.9's interpreter gets bf16 dots wrong; the fp32 copies hold the same values, and bf16 products
        # are exact in fp32, so this is the same arithmetic the GPU's bf16 tensor cores do.
        teacher_left, teacher_right = teacher_left.float(), teacher_right.float()
    if not key_mask.is_cuda and student_left.dtype != torch.float32:
        student_left, student_right = student_left.float(), student_right.float()
    if block is None:
        block = GPU_BLOCK if key_mask.is_cuda else 32
    device = key_mask.device
    key_mask = key_mask.to(torch.int8).contiguous()
    row_weight = row_weight.to(torch.float32).contiguous()
    row_loss = torch.empty(batch * heads, seq_len, dtype=torch.float32, device=device)
    teacher_lse = torch.empty_like(row_loss)
    student_lse = torch.empty_like(row_loss)
    shared = dict(
        seq_len=seq_len,
        num_heads=heads,
        teacher_head=teacher_head,
        student_head=student_head,
        t_stride_b=teacher_left.stride(0),
        t_stride_s=teacher_left.stride(1),
        t_stride_h=teacher_left.stride(2),
        s_stride_b=student_left.stride(0),
        s_stride_s=student_left.stride(1),
        s_stride_h=student_left.stride(2),
        teacher_scale=1.0 / math.sqrt(teacher_head),
        student_scale=1.0 / math.sqrt(student_head),
        BLOCK_M=block,
        BLOCK_N=block,
        TEACHER_COLS=_padded_head_size(teacher_head),
        STUDENT_COLS=_padded_head_size(student_head),
        TEACHER_DOT=_dot_precision(teacher_left.dtype),
        STUDENT_DOT=_dot_precision(student_left.dtype),
    )
    grid = (triton.cdiv(seq_len, block), batch * heads)
    operands = (teacher_left, teacher_right, student_left, student_right, key_mask, row_weight)
    _relation_kl_forward[grid](*operands, row_loss, teacher_lse, student_lse, **shared)
    loss = row_loss.sum()
    if not need_grad:
        return loss, None, None
    grad_left = torch.empty(student_left.shape, dtype=torch.float32, device=device)
    grad_right = torch.empty_like(grad_left)
    for kernel, grad in ((_relation_grad_left, grad_left), (_relation_grad_right, grad_right)):
        kernel[grid](*operands, teacher_lse, student_lse, grad, **shared)
    return loss, grad_left, grad_right
