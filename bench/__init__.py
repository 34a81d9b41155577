"""The benchmark suite, installed as mini_llm.bench (the bare name `bench` is taken on PyPI).

specs.py    what each op must move and compute, and its shapes
timing.py   device-event / torch.utils.benchmark medians
ceilings.py the device's measured copy bandwidth and matmul rate
run.py      validate then time every op x backend x shape x dtype x pass
e2e.py      training tokens/s and MFU, decode tokens/s with and without the KV cache
report.py   terminal table, JSON, markdown, roofline plot
suite.py    `mini-llm bench`, also `python -m bench` from the repository
"""
