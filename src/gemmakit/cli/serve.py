"""`gemmakit serve`"""

from __future__ import annotations

import argparse
import asyncio
import logging

from gemmakit.cli.common import load_settings, settings_flags

HELP = "OpenAI-compatible HTTP server."
log = logging.getLogger("gemmakit")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", metavar="[NAME=]MODEL",
                   help="Model to serve: a catalog alias (gemma-3-270m), a pulled model or a "
                   "path to a .gguf file (or a Hugging Face folder on the transformers engine). "
                   "Repeat it to serve several models from one server; NAME= gives the id the "
                   "API serves it as (default: the alias or the file's stem).")
    p.add_argument("--adapters", action="append", metavar="NAME[,NAME...]", help="LoRA "
                   "adapters from the store (gemmakit finetune; gemmakit adapters list) to "
                   "serve: a request whose model is NAME runs on NAME's base with it (each "
                   "must have been trained on a served model). Repeatable.")
    settings_flags(p, skip=("model", "models"))


def run(ns: argparse.Namespace) -> int:
    models = ns.model or []
    # The first --model is settings.model, the others settings.models (flags win over the
    # config file's and the environment's only when given).
    ns.model = models[0] if models else None
    ns.models = models[1:] or None
    settings = load_settings(ns)
    try:
        import uvicorn
    except ImportError:
        print("gemmakit serve needs the server extra: pip install 'gemmakit[server]'")
        return 2
    from gemmakit.server.app import app_from_settings, drain

    adapters = [n.strip() for v in ns.adapters or () for n in v.split(",") if n.strip()]
    app = app_from_settings(settings, adapters)
    log.info("serving on http://%s:%d/v1 (%s %s, engine %s)", settings.host, settings.port,
             "models" if settings.models else "model",
             ", ".join(app.state.runtime.names), settings.engine)

    class GracefulServer(uvicorn.Server):
        """First SIGTERM/SIGINT: drain (see server.app.drain), then exit 0. A second signal
        ends the requests still running at once, each with its final event (finish_reason
        "shutdown"), and the server exits 0 as soon as they have. A third exits without
        waiting for anything."""

        signals = 0

        def handle_exit(self, sig: int, frame) -> None:  # called in the main thread
            self.signals += 1
            if self.signals == 1:
                log.info("signal %d: draining for up to %.0f s", sig, settings.shutdown_timeout)
                timeout = settings.shutdown_timeout
            elif self.signals == 2:
                log.info("signal %d again: ending the running requests now", sig)
                timeout = 0.0
            else:
                self.should_exit = self.force_exit = True
                return
            self._loop.call_soon_threadsafe(
                lambda: asyncio.ensure_future(self._drain(timeout)))

        async def _drain(self, timeout: float) -> None:
            await drain(app, timeout)
            self.should_exit = True

        async def serve(self, sockets=None) -> None:
            self._loop = asyncio.get_running_loop()
            await super().serve(sockets)

    config = uvicorn.Config(app, host=settings.host, port=settings.port,
                            log_level=settings.log_level, timeout_graceful_shutdown=5)
    GracefulServer(config).run()
    return 0
