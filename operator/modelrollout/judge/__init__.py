"""The judge: pairwise LLM-as-judge verdicts on the stable's and the canary's answers to the same prompt.

Pure parts so far (the service that replays evaluation sets, accepts live pairs and exports Prometheus
metrics builds on them):
rubric   the judge prompt and the strict parsing of its JSON answer
blind    which answer is shown as A (randomised, recorded) and the verdict mapped back to the variants
redact   what is removed from prompts and answers before anything is kept for a report
"""
