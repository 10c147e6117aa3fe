"""render: differentiable rendering (placeholder until the renderer lands)."""
