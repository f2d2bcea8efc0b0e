"""Which ranks share this rank's node (``compress.peers=inter_node`` and ``auto``).

A node is torchrun's node rank where torchrun started the run (``GROUP_RANK``: nodes that share a
host name, such as the link benchmark's network namespaces, still count apart), else the host
name (mpiexec, one process per host slot). Every rank contributes its own, so all ranks agree.
"""
from __future__ import annotations

import os
import socket
from typing import Mapping

import torch.distributed as dist


def node_id(environ: Mapping[str, str] = os.environ) -> str:
    if "GROUP_RANK" in environ:
        return f"torchrun node {environ['GROUP_RANK']}"
    return f"host {socket.gethostname()}"


def node_ids() -> list[str]:
    """Every rank's node, by rank of the default group (the same list on every rank)."""
    ids: list = [None] * dist.get_world_size()
    dist.all_gather_object(ids, node_id())
    return ids


def same_node_peers(ids: list[str] | None = None) -> list[bool]:
    """Per rank of the default group: whether it is on this rank's node (itself included)."""
    ids = node_ids() if ids is None else ids
    mine = ids[dist.get_rank()]
    return [i == mine for i in ids]
