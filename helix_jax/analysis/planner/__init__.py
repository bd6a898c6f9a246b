"""The planner: the space of layouts for a model and device count, lower bounds that prune it, a
search that projects what the bounds cannot rule out (through the cost model, with a compiler it
is handed), and the cache of compiled programs that makes a second search cheap."""
