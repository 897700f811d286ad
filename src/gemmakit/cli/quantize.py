"""`gemmakit quantize MODEL --type T -o OUT.gguf`: llama.cpp's quantizer and a fidelity report
against the source (catalog/quantize.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gemmakit.cli.common import load_settings, settings_flags
from gemmakit.errors import ConfigError

HELP = "Quantize a GGUF with llama.cpp and report its fidelity to the source."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="MODEL", help="A GGUF: a catalog alias (gemma-3-270m), a "
                   "pulled model's name or a .gguf path.")
    p.add_argument("--type", required=True, metavar="TYPE", help="llama.cpp file type: Q8_0, "
                   "Q6_K, Q5_K_M, Q4_K_M, Q4_0, ... (an unknown one lists them all).")
    p.add_argument("-o", "--output", required=True, metavar="OUT.gguf", help="The file to "
                   "write (must not exist).")
    p.add_argument("--allow-requantize", action="store_true", help="Quantize a file that is "
                   "already quantized (the errors of both quantizations compound).")
    p.add_argument("--json", action="store_true", help="Print the report as JSON.")
    settings_flags(p, ("home", "log_level", "threads"))


def run(ns: argparse.Namespace) -> int:
    from gemmakit.catalog import resolve
    from gemmakit.catalog.quantize import check_type, quantize_with_report

    settings = load_settings(ns)
    check_type(ns.type)  # before anything is resolved or assembled
    ref = resolve(ns.source, settings.models_dir)
    if ref.format != "gguf":
        raise ConfigError(f"'{ns.source}' is a Hugging Face folder: quantize takes a GGUF "
                          "(convert it with llama.cpp's convert_hf_to_gguf.py first)")
    out = Path(ns.output).expanduser()
    report = quantize_with_report(ref.path, out, ns.type, allow_requantize=ns.allow_requantize,
                                  threads=settings.threads)
    if ns.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    f = report.fidelity
    print(f"{report.output}: {report.type} from {report.source_type}, "
          f"{report.source_bytes / 1e6:.1f} MB -> {report.output_bytes / 1e6:.1f} MB in "
          f"{report.quantize_seconds:.1f} s\n"
          f"fidelity on the reference text ({f.tokens} tokens, teacher-forced):\n"
          f"  top-1 agreement   {f.top1_agreement:.3f}\n"
          f"  mean KL           {f.mean_kl:.4f} nats\n"
          f"  perplexity        {f.perplexity_source:.2f} (source) -> "
          f"{f.perplexity_quantized:.2f} (quantized)")
    return 0
