"""POST /tokenize, POST /detokenize and GET /tokenizer_info, in vLLM's shapes: the server's own
tokenizer for clients that count or score tokens (evaluation harnesses). The ids are exactly
what the server prefills for the same prompt or messages. Behind --auth like every route."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gemmakit.pipeline import TokenizeJob
from gemmakit.prompts.gemma import BOS, EOS, SPECIAL_TOKENS
from gemmakit.prompts.template import gemma_chat_template
from gemmakit.server.protocol import DetokenizeRequest, TokenizeRequest
from gemmakit.server.routes.common import begin, pipeline_for

router = APIRouter()


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    run = await begin(request, body.model or request.app.state.runtime.model_name,
                      body.keep_alive)
    ids = await run.tokenize(TokenizeJob(
        prompt=body.prompt, messages=body.to_messages(), tools=body.tools_json(),
        add_special_tokens=body.add_special_tokens is not False,
        add_generation_prompt=body.add_generation_prompt))
    engine = run.pipeline.engine
    return {"count": len(ids), "max_model_len": engine.context_length, "tokens": ids,
            "token_strs": [engine.detokenize([t]) for t in ids] if body.return_token_strs
            else None}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, Any]:
    run = await begin(request, body.model or request.app.state.runtime.model_name,
                      body.keep_alive)
    return {"prompt": await run.detokenize(body.tokens)}


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request) -> dict[str, Any]:
    # ?model= names one of several served models; default: the first.
    name = request.query_params.get("model") or request.app.state.runtime.model_name
    pipeline = await pipeline_for(request, name)
    engine = pipeline.engine
    special = {}
    for token in SPECIAL_TOKENS:
        ids = engine.tokenize(token, special=True)
        if len(ids) == 1:  # the vocabulary has it as a control token
            special[token] = ids[0]
    return {"model": pipeline.model_name, "tokenizer_class": f"gemmakit/{engine.name}",
            "bos_token": BOS, "eos_token": EOS, "bos_token_id": special.get(BOS),
            "eos_token_id": special.get(EOS), "vocab_size": engine.n_vocab,
            "model_max_length": engine.context_length,
            "chat_template": gemma_chat_template(), "special_tokens": special,
            "model_file_chat_template": engine.chat_template}
