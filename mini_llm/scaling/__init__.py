"""Stage 4: scaling laws and compute trade-offs.

  table.py       the run table (runs.csv) the fits read
  isoflop.py     approach 2 of Hoffmann et al.: a parabola per compute budget, power laws in C
  parametric.py  approach 3: L(N, D) = E + A/N^alpha + B/D^beta by Huber loss and L-BFGS
  fit.py         both, with bootstrap intervals: `mini-llm scaling fit`
  plots.py       the fit's figures
  costs.py       parameters, FLOPs, memory, KV cache and step time of a model: `mini-llm costs`
"""
