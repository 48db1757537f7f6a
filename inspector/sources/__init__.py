"""Where rollouts come from: sampled in process (`generation`) or by a serving engine (`engine`, started by
`serving`), then scored into a `Rollout` (`runner`); read from a trainer's files (`files`) or a saved
example (`examples`). A source makes or reads records; the trainers' quantities are computed elsewhere."""
