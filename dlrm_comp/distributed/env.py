"""Process-group start-up from torchrun (env://), mpiexec (rank/size from mpi4py), or one process.

The CPU torch build has no MPI backend, so under mpiexec we read rank and size from MPI, agree on
a TCP rendezvous through MPI, and run torch.distributed over gloo (CPU) or NCCL (CUDA).
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist

from dlrm_comp.config import ConfigError

_MPI_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "HYDRA_CONTROL_FD")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "single"  # single | torchrun | mpi
    backend: str = ""  # gloo | nccl ("" when no process group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def detect_launcher(environ: Mapping[str, str] = os.environ) -> str:
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return "torchrun"
    if any(name in environ for name in _MPI_VARS):
        return "mpi"
    return "single"


def resolve_backend(requested: str, device: torch.device) -> str:
    """gloo on CPU, NCCL on CUDA; a backend that does not fit the device is a start-up error."""
    if requested == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if requested == "nccl" and device.type != "cuda":
        raise ConfigError("dist.backend: 'nccl' needs CUDA tensors, but train.device resolved to "
                          f"{device.type}; use gloo (or auto) on CPU")
    if requested not in ("gloo", "nccl"):
        raise ConfigError(f"dist.backend: {requested!r} is not one of: auto, gloo, nccl")
    return requested


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def init_distributed(requested_backend: str, device: torch.device, timeout_s: float = 300.0,
                     environ: Mapping[str, str] = os.environ) -> DistEnv:
    """Start the process group this launcher implies (none for a single process)."""
    launcher = detect_launcher(environ)
    timeout = datetime.timedelta(seconds=timeout_s)
    if launcher == "torchrun":
        rank, world = int(environ["RANK"]), int(environ["WORLD_SIZE"])
        local = int(environ.get("LOCAL_RANK", "0"))
        if world == 1:
            return _one_process(requested_backend, rank, local, launcher)
        backend = resolve_backend(requested_backend, device)
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=timeout,
                                **_device_kwargs(device, local))
        return DistEnv(rank, world, local, launcher, backend)
    if launcher == "mpi":
        try:
            from mpi4py import MPI
        except ImportError:
            raise ConfigError("mpiexec launch needs mpi4py: pip install -e '.[mpi]'") from None
        comm = MPI.COMM_WORLD
        rank, world = comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        if world == 1:
            return _one_process(requested_backend, rank, local, launcher)
        backend = resolve_backend(requested_backend, device)
        address = comm.bcast((socket.gethostname(), _free_port()) if rank == 0 else None, root=0)
        dist.init_process_group(backend, init_method=f"tcp://{address[0]}:{address[1]}", rank=rank,
                                world_size=world, timeout=timeout, **_device_kwargs(device, local))
        return DistEnv(rank, world, local, launcher, backend)
    return _one_process(requested_backend)


def _one_process(requested_backend: str, rank: int = 0, local: int = 0, launcher: str = "single") -> DistEnv:
    """One process has no process group, so a backend named for it would be ignored: refused."""
    if requested_backend != "auto":
        raise ConfigError(f"dist.backend: {requested_backend!r} picks the process group of a multi-process run; "
                          "this run has one process and none: leave dist.backend=auto (or launch several "
                          "processes with torchrun or mpiexec)")
    return DistEnv(rank, 1, local, launcher, "")


def local_device(device: torch.device, local_rank: int) -> torch.device:
    """Each rank's own GPU (``cuda:LOCAL_RANK``); CPU stays CPU."""
    return torch.device("cuda", local_rank) if device.type == "cuda" else device


def _device_kwargs(device: torch.device, local_rank: int) -> dict:
    """NCCL: bind the rank to its GPU before the first collective (set_device + device_id)."""
    if device.type != "cuda":
        return {}
    torch.cuda.set_device(local_rank)
    return {"device_id": local_device(device, local_rank)}


def shutdown(env: DistEnv) -> None:
    if env.backend and dist.is_initialized():
        dist.destroy_process_group()


def abort_on_error(env: DistEnv, code: int = 1) -> None:
    """Under mpiexec a rank that fails must take the job down, not leave the others waiting.

    Print the error before calling this. MPI_Abort kills the job at once and the launcher drops
    output still in flight (the error text was lost in 5 of 8 runs), so this rank exits instead,
    without MPI_Finalize: its output reaches mpiexec up to end-of-file, and mpiexec then ends the
    other ranks (Hydra's default clean-up of a job whose process exited badly)."""
    if env.launcher == "mpi" and env.distributed:
        import sys
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
