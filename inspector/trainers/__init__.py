"""What each trainer computes from a record: pure functions from a `Rollout` (and a config) to that trainer's
per-token quantities, recomputed without a model pass when a setting changes; and the scoring passes
(`scoring`), the forward passes whose outputs a trainer reads (logprobs, values, rewards)."""
