"""The paper's dense table: TP=8 x PP=2 against Helix m=4 x n=4 (and the better attention cores).

Rows tp-pp, helix (the paper's score_psum core), helix:core=seq_a2a, helix:core=qk_gather, dp.
Each: the paper's claim, paper-dense compiled on 16 fake devices and priced on h100-paper, and
small-dense timed on the local mesh. Writes results/dense_table.{json,md} and
dense_table_{tokens,comm,step}.png.

    python experiments/dense_table.py [--out results] [--quick]
"""

import sys

from _table import main

if __name__ == "__main__":
    sys.exit(main("dense", __doc__))
