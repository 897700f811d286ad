"""Fine-tuning: JSONL data rendered by the server's own Gemma renderer (data.py), LoRA training
with transformers + PEFT (train.py), the adapter store (store.py), adapter-only GGUF
(lora_gguf.py) and merged export (export.py). Heavy imports (torch, peft) stay inside functions."""
