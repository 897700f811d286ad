"""Quality evaluation (`gemmakit eval quality`): JSONL suites, scorers, targets and reports."""
