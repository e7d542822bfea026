"""The IR: index expressions, the symbolic dependence graph, its verifier and errors."""
