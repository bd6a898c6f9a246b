"""The `helix` subcommands, one module each: `add_parser(sub)` wires its options into argparse
and `run(args) -> int` does its work (checks first, then jax, then the report layer prints).
`helix_jax.cli` builds the parser from them and dispatches; `args` holds the options several
commands share. Nothing here imports jax at module level, so host devices can still be set."""
