"""Secrets shaped like well-known API keys and tokens (formats their issuers document): OpenAI,
gemmakit, GitHub, AWS access key ids, Google API keys, Slack, Stripe, Hugging Face, GitLab, and PEM
private-key headers."""

PATTERN = r"(?<![\w-])(?:" + "|".join([
    r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}",   # OpenAI
    r"gk-[0-9a-f]{12}-[A-Za-z0-9_-]{43}",                  # gemmakit
    r"gh[pousr]_[A-Za-z0-9]{36,255}",                      # GitHub tokens
    r"github_pat_[A-Za-z0-9_]{22,255}",                    # GitHub fine-grained
    r"(?:AKIA|ASIA)[0-9A-Z]{16}",                          # AWS access key id
    r"AIza[0-9A-Za-z_-]{35}",                              # Google API key
    r"xox[abposr]-[A-Za-z0-9-]{10,250}",                   # Slack
    r"(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,247}",        # Stripe
    r"hf_[A-Za-z0-9]{30,40}",                              # Hugging Face
    r"glpat-[A-Za-z0-9_-]{20,}",                           # GitLab
    r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----",            # PEM private key
]) + r")(?![\w-])"
