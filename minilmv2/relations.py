"""Multi-head self-attention relation KL: the loss of MiniLMv2, formulas (5)-(8).

Pure tensor math: knows nothing of models, files or ranks.

For a pair of vector kinds (i, j) in {Q, K, V}, each model's states of shape (B, S, H) are split into A_r relation
heads of size d_r = H / A_r, and per head

    R_ij = softmax(A_i A_j^T / sqrt(d_r))                                   (5)-(6)
    L_ij = 1 / (A_r |x|) * sum_{heads a, real query tokens t} KL(R_ij^T[a, t] || R_ij^S[a, t])   (7)

averaged over the samples of the batch (samples without any real token are left out of the average).
The total is the weighted sum over pairs (8).

Why a custom autograd function: the B x A_r x S x S relation tensors are what makes this loss expensive
(12.9 GB fp32 for B=256, A_r=48, S=512). Autograd would keep several of them alive until backward. The loss
is a KL between two softmaxes, whose gradient with respect to the student logits is simply
w_row * (q - p) (q = student softmax, p = teacher softmax, w_row = the row's weight in the loss). So the forward
pass walks over chunks of (sample, relation head) groups, computes loss *and* the gradient of the student states
for that chunk, and keeps only the (B, S, H) gradients. Peak memory is a few chunk-sized tensors, backward is a
multiplication by grad_output, and no S x S tensor is ever recomputed.

On a GPU that chunk loop still writes (chunk, S, S) fp32 tensors to memory and walks them several times; the
fused Triton kernel of `minilmv2.relation_kernel` streams key tiles through on-chip memory instead and never
stores an S x S tensor. `kernel=` picks the implementation (`KERNELS`); "auto" takes Triton on CUDA when triton
is installed, else this PyTorch path, which stays the reference the kernel is tested against.

Numerics: all relation math runs in fp32 whatever the autocast dtype, and masked keys are filled with the most
negative finite fp32 value (not -inf), so a row with no real key (a fully padded sample) is a uniform
distribution rather than NaN; its weight in the loss is zero.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable, Mapping

import torch

# Vector kinds, numbered as in the first public reimplementation's `relations` argument.
QUERY, KEY, VALUE = 1, 2, 3
KIND_NAMES = {QUERY: "Q", KEY: "K", VALUE: "V"}

# The reference's default relations: Q-Q, K-K and V-V with weight 1 each (the command line's default too).
DEFAULT_RELATIONS: dict[tuple[int, int], float] = {(QUERY, QUERY): 1.0, (KEY, KEY): 1.0, (VALUE, VALUE): 1.0}
# MiniLM v1 in MiniLMv2 terms: attention distributions (Q-K) and value relation (V-V), one relation head per
# attention head.
V1_RELATIONS: dict[tuple[int, int], float] = {(QUERY, KEY): 1.0, (VALUE, VALUE): 1.0}


def relations_literal(relations: Mapping[tuple[int, int], float]) -> str:
    """{(1, 1): 1.0, (3, 3): 0.5} -> '{(1, 1): 1, (3, 3): 0.5}': the command line's --minilm_relations form."""
    weights = (f"{float(w):g}" for w in relations.values())
    return "{" + ", ".join(f"({i}, {j}): {w}" for (i, j), w in zip(relations, weights, strict=True)) + "}"


# Elements of one (chunk, S, S) fp32 tensor. A chunk step holds about six of them at once. On a CPU, 1 MiB
# tensors keep those passes in the L2/L3 caches (measured fastest from 2**18 to 2**20 on 2 cores); a GPU wants
# few, large launches.
DEFAULT_CHUNK_ELEMENTS = {"cpu": 2**18, "cuda": 2**27}

_MASK_FILL = torch.finfo(torch.float32).min


def split_relation_heads(states: torch.Tensor, num_relation_heads: int) -> torch.Tensor:
    """(B, S, H) -> (B * A_r, S, H / A_r): one row block per (sample, relation head) group."""
    batch, seq, hidden = states.shape
    head_size = hidden // num_relation_heads
    return (
        states.reshape(batch, seq, num_relation_heads, head_size)
        .transpose(1, 2)
        .reshape(batch * num_relation_heads, seq, head_size)
    )


def merge_relation_heads(groups: torch.Tensor, batch: int) -> torch.Tensor:
    """Inverse of `split_relation_heads`: (B * A_r, S, d_r) -> (B, S, A_r * d_r)."""
    total, seq, head_size = groups.shape
    heads = total // batch
    return groups.reshape(batch, heads, seq, head_size).transpose(1, 2).reshape(batch, seq, heads * head_size)


def relation_row_weights(key_mask: torch.Tensor, num_relation_heads: int) -> torch.Tensor:
    """Weight of each (sample, query token) KL row in the loss, fp32 (B, S).

    A real query token of sample b weighs 1 / (A_r * |x_b| * B'), where B' counts the samples that have at
    least one real token: formula (7) per sample, then the batch mean. Padded rows weigh zero.
    """
    mask = key_mask.to(torch.float32)
    tokens = mask.sum(dim=1, keepdim=True)  # (B, 1)
    nonempty = (tokens > 0).sum().clamp(min=1)
    return mask / (tokens.clamp(min=1) * num_relation_heads * nonempty)


def _relation_log_probs(left: torch.Tensor, right: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
    """log softmax(left right^T / sqrt(d_r)) over real keys, fp32 (G, S, S) for (G, S, d_r) inputs.

    key_bias (G, 1, S) is 0 for real keys and the most negative fp32 for padding; adding it inside the
    batched matmul costs nothing extra, and unlike -inf it keeps a row without real keys finite.
    """
    # Scaling the (G, S, d_r) input is cheaper than scaling the (G, S, S) product.
    scaled_left = left.float() * (1.0 / math.sqrt(left.shape[-1]))
    logits = torch.baddbmm(key_bias, scaled_left, right.float().transpose(1, 2))
    return torch.log_softmax(logits, dim=-1)


def relation_kl_chunk(
    teacher_left: torch.Tensor,
    teacher_right: torch.Tensor,
    student_left: torch.Tensor,
    student_right: torch.Tensor,
    key_bias: torch.Tensor,
    row_weight: torch.Tensor,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Weighted relation KL of one chunk of G groups, and the gradients of the student states.

    Args: teacher_* (G, S, d_t), student_* (G, S, d_s), key_bias fp32 (G, 1, S) (see `_relation_log_probs`),
        row_weight fp32 (G, S).
    Returns: loss (fp32 scalar), d loss / d student_left and d student_right (G, S, d_s, fp32) or None.

    Runs without autograd (inside `_RelationKL.forward`), so the (G, S, S) buffers are updated in place: each
    full pass over them is memory traffic, and this is the hot loop of the whole distillation.
    """
    log_p = _relation_log_probs(teacher_left, teacher_right, key_bias)
    log_q = _relation_log_probs(student_left, student_right, key_bias)
    p = log_p.exp()
    log_ratio = log_p.sub_(log_q)  # log p - log q, reusing log p's buffer
    # KL per row = sum_k p_k log(p_k / q_k); masked keys have p = 0 exactly (exp of a hugely negative number).
    row_kl = torch.einsum("gqk,gqk->gq", p, log_ratio)  # a batched dot product: no (G, S, S) temporary
    loss = (row_kl * row_weight).sum()
    if not need_grad:
        return loss, None, None
    # d KL(p || softmax(z)) / dz = q - p, times the row weight and the 1/sqrt(d_r) of the logits.
    scale = 1.0 / math.sqrt(student_left.shape[-1])
    grad_logits = log_q.exp_().sub_(p).mul_((row_weight * scale)[:, :, None])  # (G, S, S)
    grad_left = torch.bmm(grad_logits, student_right.float())
    grad_right = torch.bmm(grad_logits.transpose(1, 2), student_left.float())
    return loss, grad_left, grad_right


# The chunk function of kernel="torch" (the reference path), looked up at call time so tests can record calls.
_chunk_fn: Callable = relation_kl_chunk
_compiled_chunk_fn: Callable | None = None

# "auto": the Triton kernel on CUDA when triton imports, else the PyTorch chunk path; "torch": the PyTorch chunk
# path (the reference); "compile": the same chunk math through torch.compile; "triton": the fused kernel.
KERNELS = ("auto", "torch", "compile", "triton")


def _compiled_chunks() -> Callable:
    """kernel="compile": the chunk math through torch.compile, which fuses the elementwise passes over the
    (chunk, S, S) tensors. Compiled once per process, on first use: it costs seconds, most runs never ask."""
    global _compiled_chunk_fn
    if _compiled_chunk_fn is None:
        _compiled_chunk_fn = torch.compile(relation_kl_chunk)
    return _compiled_chunk_fn


def check_kernel(kernel: str) -> str:
    """Return `kernel` if it names a relation-loss implementation; ValueError in one line otherwise."""
    if kernel not in KERNELS:
        raise ValueError(f"relation kernel must be one of {', '.join(KERNELS)}; got {kernel!r}")
    return kernel


def triton_available() -> bool:
    """Whether triton imports. Checked lazily: a CPU user distils without it."""
    return importlib.util.find_spec("triton") is not None


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "yes", "on")


def resolve_kernel(kernel: str, device: torch.device | str) -> str:
    """The implementation `kernel` means on `device`: "auto" becomes "triton" on CUDA with triton, else "torch".

    ValueError in one line when "triton" cannot run there (no triton, or CPU tensors outside the interpreter).
    """
    check_kernel(kernel)
    device_type = torch.device(device).type
    if kernel == "auto":
        return "triton" if device_type == "cuda" and triton_available() else "torch"
    if kernel == "triton":
        if not triton_available():
            raise ValueError("relation kernel 'triton' needs the triton package; install it or use 'torch'")
        if device_type != "cuda" and not _triton_interpreting():
            raise ValueError(
                f"relation kernel 'triton' runs on CUDA tensors (got {device_type}; TRITON_INTERPRET=1 runs it "
                "slowly on the CPU, for tests); use 'torch' or 'auto'"
            )
    return kernel


class _RelationKL(torch.autograd.Function):
    """Loss of one relation pair; the forward also computes the student gradients (see module docstring)."""

    @staticmethod
    def forward(
        ctx,
        teacher_left: torch.Tensor,
        teacher_right: torch.Tensor,
        student_left: torch.Tensor,
        student_right: torch.Tensor,
        key_mask: torch.Tensor,
        num_relation_heads: int,
        chunk_elements: int,
        grad_enabled: bool,
        chunk_fn: Callable,
    ) -> torch.Tensor:
        batch, seq = key_mask.shape
        heads = num_relation_heads
        # needs_input_grad stays true under torch.no_grad(), so the caller's grad mode is passed in: an eval
        # pass must not pay for two extra (G, S, S) matmuls per chunk.
        need_grad = grad_enabled and (ctx.needs_input_grad[2] or ctx.needs_input_grad[3])
        t_left, t_right = (
            split_relation_heads(teacher_left, heads),
            split_relation_heads(teacher_right, heads),
        )
        s_left, s_right = (
            split_relation_heads(student_left, heads),
            split_relation_heads(student_right, heads),
        )
        key_bias = torch.zeros(key_mask.shape, dtype=torch.float32, device=key_mask.device)
        key_bias = key_bias.masked_fill_(~key_mask, _MASK_FILL).repeat_interleave(heads, dim=0)[:, None, :]
        group_weight = relation_row_weights(key_mask, heads).repeat_interleave(heads, dim=0)
        groups_per_chunk = max(1, chunk_elements // (seq * seq))

        loss = torch.zeros((), dtype=torch.float32, device=key_mask.device)
        grad_left = torch.empty_like(s_left, dtype=torch.float32) if need_grad else None
        grad_right = torch.empty_like(s_right, dtype=torch.float32) if need_grad else None
        # Autocast would run the relation matmuls in bf16/fp16; this math stays in fp32 by design.
        with torch.autocast(key_mask.device.type, enabled=False):
            for start in range(0, batch * heads, groups_per_chunk):
                part = slice(start, start + groups_per_chunk)
                chunk_loss, chunk_grad_left, chunk_grad_right = chunk_fn(
                    t_left[part],
                    t_right[part],
                    s_left[part],
                    s_right[part],
                    key_bias[part],
                    group_weight[part],
                    need_grad,
                )
                loss = loss + chunk_loss
                if need_grad:
                    grad_left[part] = chunk_grad_left
                    grad_right[part] = chunk_grad_right
        if need_grad:
            ctx.save_for_backward(
                merge_relation_heads(grad_left, batch).to(student_left.dtype),
                merge_relation_heads(grad_right, batch).to(student_right.dtype),
            )
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_left, grad_right = ctx.saved_tensors
        return None, None, grad_output * grad_left, grad_output * grad_right, None, None, None, None, None


class _FusedRelationKL(torch.autograd.Function):
    """`_RelationKL` with the fused Triton kernel of `minilmv2.relation_kernel` instead of the chunk loop."""

    @staticmethod
    def forward(
        ctx,
        teacher_left: torch.Tensor,
        teacher_right: torch.Tensor,
        student_left: torch.Tensor,
        student_right: torch.Tensor,
        key_mask: torch.Tensor,
        num_relation_heads: int,
        grad_enabled: bool,
    ) -> torch.Tensor:
        from minilmv2.relation_kernel import fused_relation_kl  # imports triton: only when asked for

        need_grad = grad_enabled and (ctx.needs_input_grad[2] or ctx.needs_input_grad[3])
        loss, grad_left, grad_right = fused_relation_kl(
            teacher_left,
            teacher_right,
            student_left,
            student_right,
            key_mask,
            relation_row_weights(key_mask, num_relation_heads),
            num_relation_heads,
            need_grad,
        )
        if need_grad:
            ctx.save_for_backward(grad_left.to(student_left.dtype), grad_right.to(student_right.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_left, grad_right = ctx.saved_tensors
        return None, None, grad_output * grad_left, grad_output * grad_right, None, None, None


def relation_pair_loss(
    teacher_left: torch.Tensor,
    teacher_right: torch.Tensor,
    student_left: torch.Tensor,
    student_right: torch.Tensor,
    key_mask: torch.Tensor,
    num_relation_heads: int,
    chunk_elements: int | None = None,
    kernel: str = "auto",
) -> torch.Tensor:
    """L_ij of formula (7): relation KL between teacher and student for one pair of vector kinds.

    Args:
        teacher_left, teacher_right: teacher states of kinds i and j, (B, S, H_t). Treated as constants.
        student_left, student_right: student states of kinds i and j, (B, S, H_s).
        key_mask: (B, S), true for real tokens; any padding side, and fully padded rows, are fine.
        num_relation_heads: A_r; must divide H_t and H_s.
        chunk_elements: bound on the elements of one (groups, S, S) fp32 tensor; None picks one per device.
        kernel: one of `KERNELS` (see there); `resolve_kernel` says what "auto" picks.
    Returns: fp32 scalar.
    """
    kernel = resolve_kernel(kernel, key_mask.device)
    if kernel == "triton":
        return _FusedRelationKL.apply(
            teacher_left,
            teacher_right,
            student_left,
            student_right,
            key_mask.bool(),
            num_relation_heads,
            torch.is_grad_enabled(),
        )
    chunk_fn = _compiled_chunks() if kernel == "compile" else _chunk_fn
    if chunk_elements is None:
        chunk_elements = DEFAULT_CHUNK_ELEMENTS.get(key_mask.device.type, DEFAULT_CHUNK_ELEMENTS["cuda"])
    return _RelationKL.apply(
        teacher_left,
        teacher_right,
        student_left,
        student_right,
        key_mask.bool(),
        num_relation_heads,
        chunk_elements,
        torch.is_grad_enabled(),
        chunk_fn,
    )


def relation_loss(
    teacher_states: Mapping[int, torch.Tensor],
    student_states: Mapping[int, torch.Tensor],
    key_mask: torch.Tensor,
    relations: Mapping[tuple[int, int], float],
    num_relation_heads: int,
    chunk_elements: int | None = None,
    kernel: str = "auto",
) -> tuple[torch.Tensor, dict[tuple[int, int], torch.Tensor]]:
    """Formula (8): sum over relation pairs (i, j) of weight * L_ij.

    Args: *_states map a vector kind (1=Q, 2=K, 3=V) to (B, S, H) states; key_mask (B, S); kernel: see `KERNELS`.
    Returns: the total (fp32 scalar) and each pair's unweighted loss.
    """
    pair_losses = {
        (i, j): relation_pair_loss(
            teacher_states[i],
            teacher_states[j],
            student_states[i],
            student_states[j],
            key_mask,
            num_relation_heads,
            chunk_elements,
            kernel,
        )
        for (i, j) in relations
    }
    total = sum(weight * pair_losses[pair] for pair, weight in relations.items())
    return total, pair_losses
