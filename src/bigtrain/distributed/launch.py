"""``bigtrain launch``: check the job, then hand it to ``torch.distributed.run`` (torchrun).

Nothing here re-implements rendezvous or process management: the arguments become torchrun's
and torchrun starts, watches and restarts the workers, each running ``python -m
bigtrain.cli.main train ...``. What is added: bad input fails once, before any worker starts;
a free port and a fixed run folder are chosen for single-machine jobs (so a restarted group
finds its checkpoints); the thread pool is split between the workers; and a failure ends as
one line.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

from bigtrain.distributed.process_group import threads_per_process
from bigtrain.errors import BigtrainError, ConfigError

WORKER_MODULE = "bigtrain.cli.main"


@dataclass(frozen=True)
class LaunchPlan:
    """A checked job: what torchrun is asked to start on this machine."""

    nproc_per_node: int
    nnodes: int
    node_rank: int
    rdzv_endpoint: str
    rdzv_id: str
    max_restarts: int
    monitor_interval: float
    worker_args: list[str]

    def torchrun_args(self) -> list[str]:
        return [
            "--nnodes", str(self.nnodes),
            "--nproc-per-node", str(self.nproc_per_node),
            # c10d: torchrun's own TCP-store rendezvous (etcd is not needed); restarts
            # re-form the group through it
            "--rdzv-backend", "c10d",
            "--rdzv-endpoint", self.rdzv_endpoint,
            "--rdzv-id", self.rdzv_id,
            *self._host_conf(),
            "--max-restarts", str(self.max_restarts),
            "--monitor-interval", str(self.monitor_interval),
            "-m", WORKER_MODULE,
            *self.worker_args,
        ]  # fmt: skip

    def _host_conf(self) -> list[str]:
        # (torchrun itself ignores --node-rank with c10d: ranks come from the rendezvous)
        # node 0 hosts the rendezvous store, the others only connect: left to torchrun, every
        # node whose address matches the endpoint (all of them on one test machine) races to
        # host it, and one whose store lost the race waits forever
        if self.nnodes == 1:
            return []
        return ["--rdzv-conf", f"is_host={'true' if self.node_rank == 0 else 'false'}"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port_free(host: str, port: int) -> None:
    """ConfigError when ``port`` cannot be listened on here (another job holds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            raise ConfigError(
                f"port {port} on {host} is in use (another job or program holds it); choose "
                "another --rdzv-endpoint HOST:PORT"
            ) from None


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--rdzv-endpoint must be HOST:PORT, got {endpoint!r}")
    return host, int(port)


def _is_local(host: str) -> bool:
    if host in ("localhost", "127.0.0.1", "::1", "0.0.0.0"):
        return True
    try:
        return socket.gethostbyname(host) in {
            "127.0.0.1",
            socket.gethostbyname(socket.gethostname()),
        }
    except OSError:
        return False


def check_job(nproc_per_node: int, nnodes: int, node_rank: int, max_restarts: int) -> None:
    """ConfigError naming the first launch option out of range."""
    if nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node must be at least 1, got {nproc_per_node}")
    if nnodes < 1:
        raise ConfigError(f"--nnodes must be at least 1, got {nnodes}")
    if not 0 <= node_rank < nnodes:
        raise ConfigError(f"--node-rank must be in [0, {nnodes - 1}], got {node_rank}")
    if max_restarts < 0:
        raise ConfigError(f"--max-restarts must be 0 or more, got {max_restarts}")


def plan_launch(
    nproc_per_node: int,
    nnodes: int,
    node_rank: int,
    rdzv_endpoint: str | None,
    max_restarts: int,
    worker_args: list[str],
    rdzv_id: str = "bigtrain",
    monitor_interval: float = 1.0,
) -> LaunchPlan:
    """Check the job (the worker's ``train`` arguments are checked by the CLI, which also
    names the run folder); ConfigError on bad input."""
    check_job(nproc_per_node, nnodes, node_rank, max_restarts)
    if rdzv_endpoint is None:
        if nnodes > 1:
            raise ConfigError("a multi-node run needs --rdzv-endpoint HOST:PORT (node 0's address)")
        rdzv_endpoint = f"127.0.0.1:{free_port()}"
    else:
        host, port = parse_endpoint(rdzv_endpoint)
        if node_rank == 0 and _is_local(host):
            check_port_free(host, port)
    return LaunchPlan(nproc_per_node, nnodes, node_rank, rdzv_endpoint, rdzv_id, max_restarts,
                      monitor_interval, list(worker_args))  # fmt: skip


def launch(plan: LaunchPlan) -> int:
    """Run the job through torch.distributed.run; returns the exit code for the shell."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # with torchrun's shared rendezvous store, a restarted group on gloo often fails to
    # reconnect to the stale store; a store per rendezvous round does not
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    # one intra-op pool per worker, the cores split between the workers of this machine
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_process(plan.nproc_per_node)))
    # the agent logs each failed worker as an error line; the worker said why, and a crash
    # without a message becomes LaunchError's one line (restart notices stay: warnings)
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    try:
        run(get_args_parser().parse_args(plan.torchrun_args()))
    except ChildFailedError as e:
        codes = sorted({f.exitcode for f in e.failures.values()})
        if 2 in codes:  # a worker printed a bigtrain error line already
            return 2
        rank, failure = e.get_first_failure()  # the root cause; the others were stopped
        raise LaunchError(
            f"worker rank {rank} failed with exit code {failure.exitcode}"
            f"{' (' + failure.signal_name() + ')' if failure.exitcode < 0 else ''}; its output "
            "is above"
        ) from None
    return 0


class LaunchError(BigtrainError):
    """A worker of a launched job died without a bigtrain error of its own."""
