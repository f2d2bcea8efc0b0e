"""Research workflow on top of training: ablation sweeps and reports (`ablate`), the QoS-threshold
tuner (`tune`, `predict`), and the shared readers, plots and child processes they use (`runs`,
`report`, `plots`, `children`).

Nothing here changes training: runs are launched through `launch/train.py` (or `Trainer`) and read
back from their run directories (`metrics.jsonl`, `summary.json`, docs/architecture.md).
"""
