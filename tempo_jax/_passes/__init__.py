"""Program passes: autodiff (gradients as recurrences)."""
