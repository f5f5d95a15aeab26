"""Shared pieces of several trainers: CoOp's prompt (CoOp, APT) and deep prompts' keys and builder (the FAP family)."""
