"""Safety: API keys, per-key rate limits, the usage ledger, request validation, content policy and
media/path hardening. The HTTP glue lives in `gemmakit.server.guard`; everything here is usable
without the web stack."""
