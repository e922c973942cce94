"""Structured pruning: channels and hidden units removed for real, with Torch-Pruning.

docs/pipeline.md, "Compress": a pruned network is a smaller dense network (fewer channels in each
convolution, fewer units in each hidden layer) that exports and runs as usual; PyTorch's own
``torch.nn.utils.prune`` only masks weights and saves nothing. Importance is the L2 magnitude of
each coupled group (Torch-Pruning's dependency graph keeps the layers that share a channel
consistent, batch norm included); the output layer is kept whole. Used by the compress stage
(``python -m pipeline.compress``) and ``bench/compress.py``.
"""

from __future__ import annotations

from typing import Any

import torch


def network_input(model: Any, n_raw: int) -> torch.Tensor:
    """One zero row as the network sees it: the feature transform's output for ``n_raw`` raw
    features."""
    with torch.no_grad():
        return model.transform(torch.zeros(1, n_raw))


def prune(model: Any, share: float, n_raw: int) -> None:
    """Remove ``share`` of every prunable layer's channels and units of ``model.net`` in place.

    ``model``: a classifier or regressor (a feature transform in front of ``net``)."""
    import torch_pruning as tp

    net = model.net
    was_training = net.training
    net.eval()
    example = network_input(model, n_raw).repeat(2, 1)
    last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(
        net,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=share,
        ignored_layers=[last],
    )
    pruner.step()
    net.train(was_training)


def size(model: Any, n_raw: int) -> tuple[int, int]:
    """(MACs, parameters) of ``model.net`` for one row."""
    import torch_pruning as tp

    was_training = model.net.training
    model.net.eval()
    macs, params = tp.utils.count_ops_and_params(model.net, network_input(model, n_raw))
    model.net.train(was_training)
    return int(macs), int(params)
