"""The cost model: hardware profiles, the price of a collective and a kernel, and the projection
of one layout (compiled on fake devices, read with `analysis.hlo`, priced on a profile), whole or
composed from one pipeline stage."""
