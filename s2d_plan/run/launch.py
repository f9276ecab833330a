"""How the executor starts a runner: an argument list, never a shell string.

One GPU (or the CPU): ``python -m <the kind's module> SPEC.json`` (``s2d_plan.contract.KINDS``). Several (``resources.gpus
> 1``): the same module under ``accelerate launch``, one process per GPU, FSDP by default
(full sharding, transformer-layer wrapping, bf16). Without CUDA, ``gpus > 1`` means that
many CPU processes on gloo under ``torchrun``, which is how the multi-process path is tested on a laptop.
Only rank 0 writes metrics and finalizes (runners/common.run_main).

Kinds that only sample (rollout, eval, probe) run as one process whatever ``gpus`` says,
on one GPU (vLLM where installed); spreading their sampling over GPUs is not done yet.
"""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

from s2d_plan.contract import kind_of


def cuda_present() -> bool:
    """A cheap check that does not import torch (the executor stays light)."""
    return shutil.which("nvidia-smi") is not None and Path("/dev/nvidia0").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_command(kind: str, spec_path: str | Path, gpus: int = 1, device: str = "auto", *,
                  nnodes: int = 1, node_rank: int = 0, master: tuple[str, int] | None = None) -> list[str]:
    """The argv that runs one stage of ``kind`` on ``spec_path``: ``gpus`` processes on this
    node; with ``nnodes > 1`` this node's share of a job that spans nodes, meeting the
    others at ``master`` (host, port of node rank 0).

    >>> stage_command("grpo", "/tmp/s.json")[1:]
    ['-P', '-m', 'runners.grpo', '/tmp/s.json']
    >>> cmd = stage_command("opd", "/tmp/s.json", gpus=2, device="cpu")
    >>> cmd[2:6], cmd[-3:]
    (['-m', 'torch.distributed.run', '--nproc_per_node', '2'], ['-m', 'runners.opd', '/tmp/s.json'])
    >>> cmd = stage_command("fkl", "/s.json", 1, "cpu", nnodes=2, node_rank=1, master=("10.0.0.5", 29500))
    >>> cmd[cmd.index("--nnodes"):cmd.index("--nnodes") + 8]
    ['--nnodes', '2', '--node_rank', '1', '--master_addr', '10.0.0.5', '--master_port', '29500']
    """
    spec = kind_of(kind)
    module = ["-m", spec.module, str(spec_path)]
    python = [sys.executable, "-P"]  # safe path: nothing is imported from the working directory
    if (gpus <= 1 and nnodes <= 1) or not spec.trains:
        return [*python, *module]
    host, port = master or ("127.0.0.1", free_port())
    cuda = device == "cuda" or (device == "auto" and cuda_present())
    if not cuda:
        # accelerate's --cpu path starts one process unless MPI is set up; torchrun starts N on
        # gloo, and accelerate inside the runner picks up its RANK / WORLD_SIZE environment.
        return [*python, "-m", "torch.distributed.run", "--nproc_per_node", str(gpus),
                "--nnodes", str(nnodes), "--node_rank", str(node_rank),
                "--master_addr", host, "--master_port", str(port), *module]
    # accelerate counts processes over all machines
    launch = [*python, "-m", "accelerate.commands.launch", "--num_processes", str(gpus * nnodes),
              "--num_machines", str(nnodes), "--machine_rank", str(node_rank), "--main_process_ip", host,
              "--mixed_precision", "bf16", "--dynamo_backend", "no",
              "--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
              "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_cpu_ram_efficient_loading", "true",
              "--fsdp_reshard_after_forward", "true", "--main_process_port", str(port), *module]
    return launch
