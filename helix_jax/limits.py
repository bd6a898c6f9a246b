"""The bounds on how much work one command may ask for, in one place: every check that refuses a
size (a flag, a layout, a plan) reads its number from here, and its message quotes it."""

# The most devices of any layout (and the largest value of a numeric layout option, --devices):
# a plan of more is composed from one stage; nothing published runs on more.
MAX_DEVICES = 65_536
# The most fake CPU devices a command starts: each holds buffers and threads of its own, and a
# program partitioned 256 ways already takes minutes to compile on a laptop.
MAX_HOST_DEVICES = 256
# Training steps of more devices than this are composed from one pipeline stage (tp-pp only).
MAX_WHOLE_DEVICES = 64
# The most layouts one plan enumerates: beyond this a search takes hours, whatever it prunes.
MAX_SPECS = 10_000
