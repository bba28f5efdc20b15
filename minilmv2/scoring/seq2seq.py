"""UniLM-style sequence-to-sequence use of one bidirectional encoder: the s2s attention mask, the training
loss, and batched beam search over cached keys/values.

One encoder becomes a generator through its self-attention mask (UniLM, Dong et al. 2019): source tokens see
the whole source; each target token sees the source and the target tokens before it. The LM head that
predicts target tokens is the masked-LM head whose output matrix is tied to the word embeddings.

Training variant: s2s-ft's pseudo-masking (Bao et al. 2020, UniLMv2), not UniLM's random target masking.
Each target token t_j appears twice: as itself (its keys/values are what later tokens read) and as a
pseudo [MASK] at the same position, which sees the source, the real t_<j and itself, and predicts t_j.
Why: every target token is trained at every step (UniLM trains only the ~70% it masks), and a pseudo token
sees exactly what the decoder's [MASK] sees at generation time, so training and decoding share one context.
The price is a target block twice as long, which is small next to the source.

Sequence layout of a training batch (widths padded per batch; padding sits in the middle and at the end,
so positions are given explicitly and padding changes nothing):

    slots:     [CLS] s_1 .. s_m [SEP] <pad>  |  t_1 .. t_n [SEP] <pad>  |  [MASK] x (n+1) <pad>
    kind:      SOURCE ...               PAD  |  TARGET ...          PAD  |  PSEUDO ...     PAD
    position:  0 .. m+1                      |  m+2 .. m+n+2             |  m+2 .. m+n+2
    segment:   0                             |  1                        |  1

Decoding step t feeds [t_(t-1) (TARGET), [MASK] (PSEUDO)] at positions m+1+t and m+2+t over the cache of
the source and of t_<(t-1); the [MASK]'s keys/values are dropped from the cache again (`Cache.crop`), so
the cache always holds exactly what a full re-encoding would compute for the source and the real prefix.

Architectures: those whose masked-LM model accepts a prepared 4D attention mask and a `past_key_values`
cache through the bare encoder (in transformers 5.23 a 4D mask passes through `masking_utils` unchanged):
BERT, RoBERTa / XLM-R, ELECTRA (the architectures with an `lm_head` in `minilmv2.architectures`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from minilmv2.architectures import first_position_id, lm_head_path

# Slot kinds of the layout above.
PAD, SOURCE, TARGET, PSEUDO = -1, 0, 1, 2


@dataclass(frozen=True)
class SpecialIds:
    """Token ids the layout needs: [CLS]/<s>, [SEP]/</s> (also end of target), [MASK], [PAD]."""

    cls: int
    sep: int
    mask: int
    pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> SpecialIds:
        ids = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id, tokenizer.pad_token_id)
        if any(value is None for value in ids):
            raise ValueError("the tokenizer needs cls, sep, mask and pad tokens for UniLM-style s2s")
        return cls(*ids)


def s2s_attention_mask(
    query_kind: torch.Tensor, query_index: torch.Tensor, key_kind: torch.Tensor, key_index: torch.Tensor
) -> torch.Tensor:
    """Boolean UniLM s2s mask, True where a query slot may attend to a key slot.

    kinds: PAD / SOURCE / TARGET / PSEUDO, (B, Q) and (B, K); index: a target or pseudo slot's target index j
    (anything for other kinds). Returns (B, Q, K).
    Every query sees the valid source (padding queries too, so no softmax row is empty; their outputs are
    never read). A TARGET j also sees TARGET j' <= j; a PSEUDO j sees TARGET j' < j and itself.
    """
    q_kind, q_index = query_kind[:, :, None], query_index[:, :, None]
    k_kind, k_index = key_kind[:, None, :], key_index[:, None, :]
    sees_source = k_kind == SOURCE
    target_sees_prefix = (q_kind == TARGET) & (k_kind == TARGET) & (k_index <= q_index)
    pseudo_sees_prefix = (q_kind == PSEUDO) & (k_kind == TARGET) & (k_index < q_index)
    pseudo_sees_itself = (q_kind == PSEUDO) & (k_kind == PSEUDO) & (k_index == q_index)
    return sees_source | target_sees_prefix | pseudo_sees_prefix | pseudo_sees_itself


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, Q, K) bool -> (B, 1, Q, K) float: 0 where allowed, the dtype's minimum elsewhere.

    A float mask rather than a bool one: eager attention adds the mask to the scores, SDPA takes either.
    """
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, blocked)[:, None]


def _pad_rows(rows: Sequence[Sequence[int]], width: int, value: int) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for row_index, row in enumerate(rows):
        out[row_index, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def _block(lengths: torch.Tensor, width: int, kind: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kind, index) of a block of `width` slots whose first lengths[b] are valid; (B, width) each."""
    index = torch.arange(width).expand(len(lengths), width)
    kinds = torch.where(index < lengths[:, None], kind, PAD)
    return kinds, index


def training_batch(
    sources: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    special: SpecialIds,
    use_segments: bool = True,
    first_position: int = 0,
    source_width: int | None = None,
    target_width: int | None = None,
) -> dict[str, torch.Tensor]:
    """Tensors of the layout in the module docstring for a batch of examples.

    sources: token ids with [CLS] ... [SEP]; targets: token ids ending with [SEP]. Widths default to the
    longest source / target (tests widen them to check that padding is harmless).
    Returns input_ids, token_type_ids, position_ids (B, S) with S = source_width + 2 * target_width;
    kind, index (B, S); labels (B, S) = t_j on pseudo slots, -100 elsewhere.
    """
    source_lengths = torch.tensor([len(row) for row in sources])
    target_lengths = torch.tensor([len(row) for row in targets])
    source_width = source_width or int(source_lengths.max())
    target_width = target_width or int(target_lengths.max())
    target_ids = _pad_rows(targets, target_width, special.pad)

    source_kind, source_index = _block(source_lengths, source_width, SOURCE)
    target_kind, target_index = _block(target_lengths, target_width, TARGET)
    pseudo_kind, _ = _block(target_lengths, target_width, PSEUDO)
    kind = torch.cat([source_kind, target_kind, pseudo_kind], dim=1)
    index = torch.cat([source_index, target_index, target_index], dim=1)

    pseudo_ids = torch.where(pseudo_kind == PSEUDO, special.mask, special.pad)
    input_ids = torch.cat([_pad_rows(sources, source_width, special.pad), target_ids, pseudo_ids], dim=1)
    target_positions = source_lengths[:, None] + target_index
    position_ids = torch.cat([source_index, target_positions, target_positions], dim=1)
    position_ids = torch.where(kind == PAD, 0, position_ids) + first_position
    token_type_ids = (kind >= TARGET).long() if use_segments else torch.zeros_like(input_ids)
    labels = torch.where(pseudo_kind == PSEUDO, target_ids, -100)
    labels = torch.cat([torch.full((len(sources), source_width + target_width), -100), labels], dim=1)
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "position_ids": position_ids,
        "kind": kind,
        "index": index,
        "labels": labels,
    }


class Seq2SeqLM:
    """A masked-LM model (e.g. BertForMaskedLM) used as a UniLM s2s generator.

    Holds no parameters of its own: `model` is what gets trained and saved.
    """

    def __init__(self, model: nn.Module, special: SpecialIds):
        config = model.config
        head = lm_head_path(config.model_type)  # ValueError naming the supported architectures
        self.model = model
        self.special = special
        self.encoder = model.base_model
        self.head_parts = [getattr(model, name) for name in head]
        self.use_segments = getattr(config, "type_vocab_size", 1) >= 2
        self.first_position = first_position_id(config)

    def batch(self, sources, targets, **widths) -> dict[str, torch.Tensor]:
        return training_batch(sources, targets, self.special, self.use_segments, self.first_position, **widths)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., V) vocabulary logits."""
        for part in self.head_parts:
            hidden = part(hidden)
        return hidden

    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def hidden_states(self, batch: dict[str, torch.Tensor], cache=None) -> torch.Tensor:
        """Encoder output (B, S, H) of a `training_batch` under the s2s mask."""
        allowed = s2s_attention_mask(batch["kind"], batch["index"], batch["kind"], batch["index"])
        return self.encoder(
            input_ids=batch["input_ids"],
            token_type_ids=batch["token_type_ids"],
            position_ids=batch["position_ids"],
            attention_mask=additive_mask(allowed, self._dtype()),
            past_key_values=cache,
        ).last_hidden_state

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy of the pseudo slots' predictions of their target tokens.

        The head runs on the labelled slots only: a (B, S, V) logit tensor would dwarf the encoder's work.
        """
        hidden = self.hidden_states(batch)
        labelled = batch["labels"] != -100
        logits = self.head(hidden[labelled])
        return nn.functional.cross_entropy(logits.float(), batch["labels"][labelled])


# ---------------------------------------------------------------------------------------------------------
# Decoding


@dataclass(frozen=True)
class BeamSettings:
    """beam_size 1 is greedy. length_penalty: finished scores are sum(log p) / length**length_penalty (0: raw
    sum). ngram_size > 0 forbids repeating any n-gram of that size unless it holds an `exempt_ids` token."""

    beam_size: int = 5
    max_target_length: int = 48
    min_target_length: int = 0
    length_penalty: float = 0.0
    ngram_size: int = 0
    exempt_ids: frozenset[int] = frozenset()


def forbidden_next_tokens(tokens: Sequence[int], ngram_size: int, exempt_ids: frozenset[int]) -> set[int]:
    """Tokens that would complete an n-gram already in `tokens` (n-grams holding an exempt id excepted)."""
    if ngram_size < 1 or len(tokens) < ngram_size - 1:
        return set()
    if ngram_size == 1:
        return {token for token in tokens if token not in exempt_ids}
    prefix = tuple(tokens[len(tokens) - ngram_size + 1 :])
    if exempt_ids.intersection(prefix):  # every n-gram this token would complete holds an exempt id
        return set()
    banned = set()
    for start in range(len(tokens) - ngram_size + 1):
        ngram = tuple(tokens[start : start + ngram_size])
        if ngram[:-1] == prefix and not exempt_ids.intersection(ngram):
            banned.add(ngram[-1])
    return banned


class _Step:
    """Keys/values of the source and of the real target prefix, kept across decoding steps."""

    def __init__(self, s2s: Seq2SeqLM, sources: Sequence[Sequence[int]], beam_size: int):
        from transformers import DynamicCache

        self.s2s = s2s
        device = next(s2s.model.parameters()).device
        self.device = device
        lengths = torch.tensor([len(row) for row in sources])
        source_kind, source_index = _block(lengths, int(lengths.max()), SOURCE)
        source_ids = _pad_rows(sources, source_kind.shape[1], s2s.special.pad)
        batch = {
            "input_ids": source_ids,
            "token_type_ids": torch.zeros_like(source_ids),
            "position_ids": torch.where(source_kind == PAD, 0, source_index) + s2s.first_position,
            "kind": source_kind,
            "index": source_index,
        }
        self.cache = DynamicCache(config=s2s.model.config)
        s2s.hidden_states({key: value.to(device) for key, value in batch.items()}, cache=self.cache)
        # One cache row per beam: each example's source is encoded once, then shared by its beams.
        self.cache.batch_repeat_interleave(beam_size)
        self.source_kind = source_kind.repeat_interleave(beam_size, dim=0).to(device)
        self.source_lengths = lengths.repeat_interleave(beam_size).to(device)
        self.num_real = 0  # target tokens whose keys/values are cached

    def log_probs(self, last_tokens: torch.Tensor | None) -> torch.Tensor:
        """Next-token log-probabilities (N, V) after feeding the previous step's token (None at step 0).

        last_tokens: (N,) the token chosen at step num_real for each row (rows already reordered).
        """
        s2s, rows, device = self.s2s, len(self.source_kind), self.device
        special = s2s.special
        mask_column = torch.full((rows, 1), special.mask, device=device)
        if last_tokens is None:
            new_ids, new_kind = mask_column, torch.full((rows, 1), PSEUDO, device=device)
            new_index = torch.zeros((rows, 1), dtype=torch.long, device=device)
        else:
            new_ids = torch.cat([last_tokens[:, None], mask_column], dim=1)
            new_kind = torch.tensor([[TARGET, PSEUDO]], device=device).expand(rows, 2)
            new_index = torch.tensor([[self.num_real, self.num_real + 1]], device=device).expand(rows, 2)
        cached_kind = torch.full((rows, self.num_real), TARGET, device=device)
        cached_index = torch.arange(self.num_real, device=device).expand(rows, self.num_real)
        source_index = torch.zeros_like(self.source_kind)
        key_kind = torch.cat([self.source_kind, cached_kind, new_kind], dim=1)
        key_index = torch.cat([source_index, cached_index, new_index], dim=1)
        allowed = s2s_attention_mask(new_kind, new_index, key_kind, key_index)
        segment = 1 if s2s.use_segments else 0
        hidden = s2s.encoder(
            input_ids=new_ids,
            token_type_ids=torch.full_like(new_ids, segment),
            position_ids=self.source_lengths[:, None] + new_index + s2s.first_position,
            attention_mask=additive_mask(allowed, s2s._dtype()),
            past_key_values=self.cache,
        ).last_hidden_state
        # Keep the real token's keys/values, drop the [MASK]'s: the next step needs the former only.
        self.cache.crop(-1)
        if last_tokens is not None:
            self.num_real += 1
        return torch.log_softmax(s2s.head(hidden[:, -1]).float(), dim=-1)

    def reorder(self, rows: torch.Tensor) -> None:
        self.cache.reorder_cache(rows)


@torch.no_grad()
def beam_search(s2s: Seq2SeqLM, sources: Sequence[Sequence[int]], settings: BeamSettings) -> list[list[int]]:
    """Best target token ids (without the final [SEP]) for each source ([CLS] ... [SEP] ids).

    All examples and beams run as one batch of B * K rows. An example stops when it has K finished
    hypotheses (a [SEP] chosen among the top K candidates), or at max_target_length, where the running beams
    count as finished. Ties are broken by token id order of `topk`, so decoding is deterministic.
    """
    special, beams = s2s.special, settings.beam_size
    num_examples = len(sources)
    step = _Step(s2s, sources, beams)
    device = step.device
    # Only beam 0 is live at first, so the K beams do not start as K copies of one hypothesis.
    scores = torch.full((num_examples, beams), float("-inf"), device=device)
    scores[:, 0] = 0.0
    hypotheses: list[list[int]] = [[] for _ in range(num_examples * beams)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(num_examples)]
    done = [False] * num_examples
    never_output = [special.cls, special.pad, special.mask]
    last_tokens = None

    for length in range(settings.max_target_length):
        log_probs = step.log_probs(last_tokens)
        log_probs[:, never_output] = float("-inf")
        if length < settings.min_target_length:
            log_probs[:, special.sep] = float("-inf")
        if settings.ngram_size > 0:
            for row, tokens in enumerate(hypotheses):
                banned = forbidden_next_tokens(tokens, settings.ngram_size, settings.exempt_ids)
                if banned:
                    log_probs[row, list(banned)] = float("-inf")
        vocab = log_probs.shape[-1]
        candidates = (scores.reshape(-1, 1) + log_probs).reshape(num_examples, beams * vocab)
        top_scores, top_ids = candidates.topk(2 * beams, dim=1)
        top_scores, top_ids = top_scores.tolist(), top_ids.tolist()

        next_rows, next_tokens, next_scores = [], [], []
        for example in range(num_examples):
            kept = []
            for rank, (score, flat) in enumerate(zip(top_scores[example], top_ids[example], strict=True)):
                if done[example] or score == float("-inf") or len(kept) == beams:
                    break
                row, token = example * beams + flat // vocab, flat % vocab
                if token == special.sep:
                    if rank < beams:  # a [SEP] below the top K is not a hypothesis the beam would keep
                        tokens = hypotheses[row]
                        finished[example].append((score / (len(tokens) + 1) ** settings.length_penalty, tokens))
                else:
                    kept.append((row, token, score))
            if len(finished[example]) >= beams:
                done[example] = True
            # Done or starved examples keep dummy rows (score -inf) so the batch keeps its shape.
            kept += [(example * beams, special.sep, float("-inf"))] * (beams - len(kept))
            for row, token, score in kept:
                next_rows.append(row)
                next_tokens.append(token)
                next_scores.append(score)
        if all(done):
            break
        rows = torch.tensor(next_rows, device=device)
        step.reorder(rows)
        hypotheses = [hypotheses[row] + [token] for row, token in zip(next_rows, next_tokens, strict=True)]
        last_tokens = torch.tensor(next_tokens, device=device)
        scores = torch.tensor(next_scores, device=device).reshape(num_examples, beams)

    results = []
    for example in range(num_examples):
        pool = list(finished[example])
        if not done[example]:  # out of length: the running beams end here
            for beam in range(beams):
                score = float(scores[example, beam])
                if score != float("-inf"):
                    tokens = hypotheses[example * beams + beam]
                    pool.append((score / max(len(tokens), 1) ** settings.length_penalty, tokens))
        # max() keeps the first of equal scores: finished before running, higher-ranked first.
        best = max(pool, key=lambda item: item[0]) if pool else (0.0, [])
        results.append(best[1])
    return results
