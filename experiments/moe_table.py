"""The paper's MoE table: TP=8 x PP=2 against expert parallelism EP=16 (and other layouts).

Rows tp-pp, ep (the paper's EP=16), ep:chunks=4 (all-to-all overlapped with expert compute),
helix-ep, dp. Each: the paper's claim, paper-moe compiled on 16 fake devices and priced on
h100-paper, and small-moe timed on the local mesh. Writes results/moe_table.{json,md} and
moe_table_{tokens,comm,step}.png.

    python experiments/moe_table.py [--out results] [--quick]
"""

import sys

from _table import main

if __name__ == "__main__":
    sys.exit(main("moe", __doc__))
