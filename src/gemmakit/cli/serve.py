"""`gemmakit serve`"""

from __future__ import annotations

import argparse
import logging

from gemmakit.cli.common import load_settings, settings_flags

HELP = "OpenAI-compatible HTTP server."
log = logging.getLogger("gemmakit")


def add_arguments(p: argparse.ArgumentParser) -> None:
    settings_flags(p)


def run(ns: argparse.Namespace) -> int:
    settings = load_settings(ns)
    try:
        import uvicorn
    except ImportError:
        print("gemmakit serve needs the server extra: pip install 'gemmakit[server]'")
        return 2
    from gemmakit.server.app import app_from_settings

    app = app_from_settings(settings)
    log.info("serving on http://%s:%d/v1 (model %s, engine %s)", settings.host, settings.port,
             settings.served_model_name or settings.model, settings.engine)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                h11_max_incomplete_event_size=64 * 1024)
    return 0
