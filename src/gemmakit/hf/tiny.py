"""Tiny randomly initialised Gemma 3 (with a SigLIP vision tower) and Gemma 3n (with its audio tower)
checkpoints for smoke tests: the real architectures with every size shrunk, the real Gemma tokenizer
taken from the bundled GGUF, and a saved processor. Their outputs are random by construction.

Gemma 3n numbers its multimodal control tokens differently from Gemma 3 (id 256000 is
`<start_of_audio>`, not `<end_of_image>`; the vocabulary grows to 262,400 with image and audio
tokens), so its tokenizer is derived from Gemma 3's with those ids renamed and added."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Literal

from gemmakit.errors import ConfigError

log = logging.getLogger("gemmakit.hf")

Kind = Literal["gemma3", "gemma3n"]
KINDS: tuple[str, ...] = ("gemma3", "gemma3n")

# Gemma 3 (4B+): image placeholders; Gemma 3n adds audio and renumbers (Gemma3nConfig defaults).
GEMMA3_SPECIAL = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                  "image_token": "<image_soft_token>"}
GEMMA3N_SPECIAL = {**GEMMA3_SPECIAL, "boa_token": "<start_of_audio>",
                   "eoa_token": "<end_of_audio>", "audio_token": "<audio_soft_token>"}
GEMMA3N_IDS = {"<start_of_image>": 255_999, "<start_of_audio>": 256_000,
               "<end_of_image>": 262_144, "<image_soft_token>": 262_145,
               "<end_of_audio>": 262_272, "<audio_soft_token>": 262_273}
GEMMA3N_VOCAB = 262_400
GEMMA3_VOCAB = 262_208  # the 4B+ embedding: 262,145 tokens padded


def _readme(kind: str) -> str:
    modality = ("a SigLIP vision tower (64x64 images, 16 image tokens)" if kind == "gemma3"
                else "the audio tower (USM conformer; 188 audio tokens per clip)")
    extractor = ", audio feature extractor" if kind == "gemma3n" else ""
    return f"""# Tiny random {kind} checkpoint (gemmakit)

**Its outputs are random.** The weights are randomly initialised: this checkpoint exists so that
a vision/audio deployment can be smoke-tested end to end (request parsing, media decoding,
placeholder expansion, the model's multimodal forward pass, token counts) without downloading
gigabytes. Never use it to judge quality.

- architecture: the real `{kind}` configuration with every size shrunk, and {modality};
- tokenizer: the real Gemma tokenizer, extracted from the bundled Gemma 3 270M GGUF
  {"(Gemma 3n's renumbered image/audio control tokens applied)" if kind == "gemma3n" else ""};
- processor: saved with the checkpoint (PIL image backend{extractor}).

Written by `gemmakit tiny-model {kind} OUT_DIR`.
"""


def _gemma3n_tokenizer_json(src: Path, dst: Path) -> None:
    """Gemma 3's tokenizer.json renumbered as Gemma 3n's: id 256000 becomes <start_of_audio>,
    ids 262144..262399 are added (named image/audio tokens, the rest reserved)."""
    data = json.loads(src.read_text())
    added = [t for t in data["added_tokens"] if t["id"] < 262_144]
    by_id = {t["id"]: t for t in added}
    vocab: dict[str, int] = data["model"]["vocab"]  # BPE: piece -> id
    piece_of = {i: p for p, i in vocab.items()}
    names = {tid: name for name, tid in GEMMA3N_IDS.items()}
    for tid in range(len(vocab), GEMMA3N_VOCAB):
        piece_of[tid] = f"<unused_mm_{tid}>"
    for tid, name in names.items():
        piece_of[tid] = name
    for tid in sorted(set(names) | set(range(len(vocab), GEMMA3N_VOCAB))):
        if tid in by_id:
            by_id[tid]["content"] = piece_of[tid]
        else:
            added.append({"id": tid, "content": piece_of[tid], "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False, "special": True})
    data["model"]["vocab"] = {p: i for i, p in sorted(piece_of.items())}
    data["added_tokens"] = sorted(added, key=lambda t: t["id"])
    dst.write_text(json.dumps(data, ensure_ascii=False))


def write_tiny_model(kind: str, out_dir: Path, tokenizer_dir: Path, *, seed: int = 0) -> Path:
    """Write a tiny `kind` checkpoint into `out_dir` using the Gemma tokenizer in `tokenizer_dir`
    (a folder with tokenizer.json, e.g. from `checkpoint.tokenizer_from_gguf`)."""
    import torch
    from transformers import AutoTokenizer

    if kind not in KINDS:
        raise ConfigError(f"unknown tiny model '{kind}' (choose from {', '.join(KINDS)})")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} exists and is not empty")
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        torch.manual_seed(seed)
        tok_src = tmp / "tok-src"
        tok_src.mkdir()
        if kind == "gemma3":
            shutil.copy(tokenizer_dir / "tokenizer.json", tok_src / "tokenizer.json")
        else:
            _gemma3n_tokenizer_json(tokenizer_dir / "tokenizer.json", tok_src / "tokenizer.json")
        shutil.copy(tokenizer_dir / "tokenizer_config.json", tok_src / "tokenizer_config.json")
        names = GEMMA3_SPECIAL if kind == "gemma3" else GEMMA3N_SPECIAL
        tokenizer = AutoTokenizer.from_pretrained(tok_src, extra_special_tokens=names)
        _add_missing(tokenizer, names)
        shutil.rmtree(tok_src)
        if kind == "gemma3":
            _write_gemma3(tmp, tokenizer)
        else:
            _write_gemma3n(tmp, tokenizer)
        (tmp / "README.md").write_text(_readme(kind))
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _add_missing(tokenizer, names: dict[str, str]) -> None:
    """Add the multimodal control tokens the vocabulary lacks (Gemma 3's <image_soft_token>)."""
    from tokenizers import AddedToken

    missing = [v for v in names.values() if tokenizer.convert_tokens_to_ids(v) in
               (None, tokenizer.unk_token_id)]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing],
                             special_tokens=True)


def _write_gemma3(out: Path, tokenizer) -> None:
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    image_size, patch, mm_tokens = 64, 8, 16  # 8x8 patches pooled to 4x4 = 16 image tokens
    config = Gemma3Config(
        text_config=Gemma3TextConfig(
            vocab_size=GEMMA3_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=32,
            layer_types=["sliding_attention", "full_attention"], max_position_embeddings=4096),
        vision_config=SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=image_size, patch_size=patch, vision_use_head=False),
        mm_tokens_per_image=mm_tokens,
        boi_token_index=tokenizer.convert_tokens_to_ids(GEMMA3_SPECIAL["boi_token"]),
        eoi_token_index=tokenizer.convert_tokens_to_ids(GEMMA3_SPECIAL["eoi_token"]),
        image_token_index=tokenizer.convert_tokens_to_ids(GEMMA3_SPECIAL["image_token"]),
        architectures=["Gemma3ForConditionalGeneration"],
    )
    model = Gemma3ForConditionalGeneration(config).to(torch.bfloat16)  # type: ignore[arg-type]
    model.save_pretrained(out)
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                    image_seq_length=mm_tokens).save_pretrained(out)


def _write_gemma3n(out: Path, tokenizer) -> None:
    import torch
    from transformers import (
        Gemma3nAudioConfig,
        Gemma3nAudioFeatureExtractor,
        Gemma3nConfig,
        Gemma3nProcessor,
        Gemma3nTextConfig,
        Gemma3nVisionConfig,
        SiglipImageProcessorPil,
    )

    from gemmakit.hf.gemma3n import Gemma3nTextAudioForConditionalGeneration

    n_layers = 2
    config = Gemma3nConfig(
        text_config=Gemma3nTextConfig(
            vocab_size=GEMMA3N_VOCAB, hidden_size=32, intermediate_size=[64] * n_layers,
            num_hidden_layers=n_layers, num_attention_heads=2, num_key_value_heads=1,
            head_dim=16, sliding_window=32, layer_types=["sliding_attention", "full_attention"],
            hidden_size_per_layer_input=8, num_kv_shared_layers=0, laurel_rank=4,
            altup_num_inputs=2, activation_sparsity_pattern=[0.0] * n_layers,
            max_position_embeddings=4096),
        # The vision tower (timm MobileNetV5) is not built here: see hf/gemma3n.py.
        vision_config=Gemma3nVisionConfig(hidden_size=32),
        audio_config=Gemma3nAudioConfig(
            hidden_size=32, conf_num_attention_heads=2, conf_num_hidden_layers=2,
            sscp_conv_channel_size=[8, 4]),
        architectures=["Gemma3nForConditionalGeneration"],
    )
    model = Gemma3nTextAudioForConditionalGeneration(config).to(
        torch.bfloat16)  # type: ignore[arg-type]
    model.save_pretrained(out)
    Gemma3nProcessor(feature_extractor=Gemma3nAudioFeatureExtractor(),
                     image_processor=SiglipImageProcessorPil(size={"height": 768, "width": 768}),
                     tokenizer=tokenizer).save_pretrained(out)
