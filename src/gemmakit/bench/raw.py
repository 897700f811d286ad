"""Raw llama-cpp-python batched greedy decoding: the physical reference for the llama.cpp engine.

No server, no scheduler, no sampler chain: one `llama_batch` per step holding every sequence,
argmax over each sequence's logits. Two workloads:

- `greedy`: every sequence decodes the whole time (all prompts in one step, then one token per
  sequence per step) — the decode-only ceiling. Its step schedule mirrors the engine's, so the two
  can be compared token for token (llama.cpp's kernels are not bit-exact across batch shapes).
- `continuous`: the same work as the HTTP bench's clients — streams running requests back to back,
  out of step, each arriving prompt read in the step's batch beside the others' next tokens.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class RawBatch:
    def __init__(self, model_path: str | Path, *, n_seq: int, context_length: int,
                 threads: int, batch_size: int = 512) -> None:
        from gemmakit.engines.llamacpp import UBATCH, _lib

        ll = _lib()  # llama_cpp, with its log routed into Python logging
        self.ll = ll
        self.model = ll.llama_model_load_from_file(str(model_path).encode(),
                                                   ll.llama_model_default_params())
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.n_vocab = ll.llama_vocab_n_tokens(self.vocab)
        p = ll.llama_context_default_params()
        p.n_ctx = context_length * n_seq
        p.n_seq_max = n_seq
        p.kv_unified = False
        p.swa_full = False  # as the engine: sliding-window layers keep window + micro-batch
        p.n_batch = batch_size
        p.n_ubatch = min(batch_size, UBATCH)
        p.n_threads = p.n_threads_batch = threads
        p.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = ll.llama_init_from_model(self.model, p)
        self.mem = ll.llama_get_memory(self.ctx)
        self.n_seq = n_seq
        self.batch = ll.llama_batch_init(max(batch_size, n_seq), 0, n_seq)

    def close(self) -> None:
        self.ll.llama_batch_free(self.batch)
        self.ll.llama_free(self.ctx)
        self.ll.llama_model_free(self.model)

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """items: (token, position, sequence id, wants logits)."""
        b = self.batch
        for i, (tok, pos, seq, logits) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, logits
            b.seq_id[i][0] = seq
        b.n_tokens = len(items)
        rc = self.ll.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _argmax(self, idx: int) -> int:
        ptr = self.ll.llama_get_logits_ith(self.ctx, idx)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))))

    def greedy(self, prompts: Sequence[Sequence[int]], n_tokens: int
               ) -> tuple[list[list[int]], list[float]]:
        """Decode `n_tokens` greedily for every prompt together (no end-of-generation stop).
        Returns the tokens per sequence and the wall time of each decode step."""
        assert len(prompts) <= self.n_seq
        self.ll.llama_memory_clear(self.mem, True)
        out: list[list[int]] = [[] for _ in prompts]
        step_times = []
        t = time.perf_counter()
        items = [(tok, pos, s, pos == len(p) - 1) for s, p in enumerate(prompts)
                 for pos, tok in enumerate(p)]
        self._decode(items)
        last = [i for i, it in enumerate(items) if it[3]]  # batch index of each prompt's end
        for s in range(len(prompts)):
            out[s].append(self._argmax(last[s]))
        step_times.append(time.perf_counter() - t)
        for k in range(1, n_tokens):
            t = time.perf_counter()
            self._decode([(out[s][-1], len(p) + k - 1, s, True) for s, p in enumerate(prompts)])
            for s in range(len(prompts)):
                out[s].append(self._argmax(s))
            step_times.append(time.perf_counter() - t)
        return out, step_times

    def continuous(self, prompts: Sequence[Sequence[int]], n_streams: int, n_tokens: int,
                   n_steps: int) -> float:
        """Continuous batching with nothing in the way: `n_streams` sequences, each running
        requests of `n_tokens` greedy tokens back to back, stream s's j-th request with prompt
        `prompts[(s + j) % len(prompts)]`. The streams are out of step as the bench's ramp-up
        puts its clients: stream s's first request is s/n_streams of a request shorter, so requests
        end, and new prompts arrive, evenly over time. An arriving prompt goes into the same
        llama_batch as the other streams' next tokens (as llama.cpp's server does), and its last
        position gives the request's first token. Returns the tokens/s of the `n_steps` steps after
        the first one (which reads every stream's first prompt); each step makes one token a
        stream."""
        assert n_streams <= self.n_seq
        ll = self.ll
        ll.llama_memory_clear(self.mem, True)
        left = [n_tokens - (s * n_tokens) // n_streams for s in range(n_streams)]
        done = [0] * n_streams  # requests each stream has finished
        pos = [0] * n_streams
        last = [0] * n_streams
        arriving = set(range(n_streams))
        seconds = 0.0
        for step in range(n_steps + 1):
            t = time.perf_counter()
            items: list[tuple[int, int, int, bool]] = []
            at = []  # batch index of each stream's logits
            for s in range(n_streams):
                if s in arriving:
                    p = prompts[(s + done[s]) % len(prompts)]
                    ll.llama_memory_seq_rm(self.mem, s, -1, -1)
                    items += [(tok, i, s, i == len(p) - 1) for i, tok in enumerate(p)]
                    pos[s] = len(p)
                else:
                    items.append((last[s], pos[s], s, True))
                    pos[s] += 1
                at.append(len(items) - 1)
            self._decode(items)
            arriving = set()
            for s in range(n_streams):
                last[s] = self._argmax(at[s])
                left[s] -= 1
                if left[s] == 0:
                    arriving.add(s)
                    done[s] += 1
                    left[s] = n_tokens
            if step:
                seconds += time.perf_counter() - t
        return n_streams * n_steps / seconds
