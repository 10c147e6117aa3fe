"""losses: composable loss objects and metrics (placeholder until the losses land)."""
