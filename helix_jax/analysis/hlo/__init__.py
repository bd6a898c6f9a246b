"""Read an XLA program: its HLO text parsed into ops and loops, matmul FLOPs, collectives with
their replica groups and trip counts, and what XLA's cost and memory analysis report. Knows
nothing of models, layouts or hardware."""
