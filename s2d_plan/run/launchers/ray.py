"""The Ray launcher: each stage attempt as detached Ray actors, one per node it spans.

A stage asking ``g`` GPUs on nodes of ``n`` GPUs gets a placement group of
``ceil(g / n)`` bundles (``STRICT_SPREAD``: one bundle per node, its GPUs together). One
actor (``_NodeWorker``) is placed in each bundle; it starts ``python -m
s2d_plan.run.launchers.node`` as its own process group, which execs the runner (under
torchrun / accelerate with ``--nnodes`` and node rank 0's address as the rendezvous).
Logs and metrics go to the home on the shared filesystem, which the executor tails.

Actors are *detached* and named ``<job name>-<rank>`` in the cluster's namespace, and
their placement group is detached too, so they outlive the executor (a normal task or
actor dies with its driver): a restarted executor finds them by the name kept in
``placements`` and re-attaches (``attach``: a new handle waiting on the same runner
processes). A node that dies takes its actor with it: the call waiting on the runner
raises, and the handle reports ``lost`` with Ray's cause, which makes the executor retry
the stage elsewhere.

s2d-plan must be importable on every node (installed in the nodes' environment). The
executor's settings (``remote_env``: S2D_*, HF_*, PYTHONPATH, ...) travel with each
``start`` call, not as a job ``runtime_env``: with one, every stage actor needed a fresh
worker process set up for that environment (about 1 s a stage here); without, Ray hands
the actor a worker it already started.

Ray is imported only when this launcher is used (``pip install 's2d-plan[cluster]'``).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import subprocess

    from s2d_plan.cluster import RayCluster
    from s2d_plan.contract import Stage

from s2d_plan.run.launchers import Busy, ClusterError, Job, Placement, Slot, remote_env, split_nodes

CONNECT_TIMEOUT_S = 60.0
PLACE_WAIT_S = 5.0  # how long a start waits for its placement group before yielding
REFRESH_S = 2.0  # how often the live nodes are re-read
MAX_NODES = 1024


def _ray():
    try:
        import ray
    except ImportError:
        raise ClusterError("the ray backend needs Ray: pip install 's2d-plan[cluster]'") from None
    return ray


def ray_ip() -> str:
    """This node's IP as Ray knows it, an IPv4-mapped IPv6 one (``::ffff:10.0.0.5``, what a
    node that joined at ``[::ffff:HEAD]:PORT`` reports) in its IPv4 form: the form an
    AF_INET socket binds and torchrun's rendezvous parses."""
    import ipaddress

    import ray
    ip = ray.util.get_node_ip_address()
    try:
        return str(getattr(ipaddress.ip_address(ip), "ipv4_mapped", None) or ip)
    except ValueError:  # a host name
        return ip


class _NodeWorker:
    """Runs one node's share of a stage attempt (a Ray actor; its methods run concurrently)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.idle = False

    def where(self) -> dict:
        import ray
        ctx = ray.get_runtime_context()
        return {"host": socket.gethostname(), "ip": ray_ip(),
                "node_id": ctx.get_node_id(), "pid": os.getpid()}

    def free_port(self) -> int:
        with socket.socket() as s:
            s.bind((ray_ip(), 0))
            return s.getsockname()[1]

    def check_home(self, home: str, token: str) -> str | None:
        """None when ``home`` is visible here with the executor's token file in it."""
        try:
            return None if (Path(home) / token).read_text() == token else f"{home}/{token} differs"
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"

    def start(self, args: list[str], env: dict[str, str], log_path: str) -> dict:
        """Start this node's share; returns where it runs (``where()`` plus the pid)."""
        from s2d_plan.run import procs
        from s2d_plan.run.launchers.node import build
        if self.proc is None and not self.idle:  # idempotent: a re-attaching executor may ask again
            os.environ.update(env)  # plugins (S2D_STAGE_PLUGINS) must be known to build the argv
            sys.path[:0] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
            argv = build(args)  # built here, not by a second Python: saves an interpreter start
            if argv is None:
                self.idle = True  # a sampling stage runs on node rank 0 only
            else:
                self.proc = procs.start(argv, Path(log_path), dict(os.environ, **env))
        return dict(self.where(), runner_pid=self.proc.pid if self.proc else None)

    def wait(self) -> int:
        return 0 if self.proc is None else self.proc.wait()

    def signal(self, sig: int) -> None:
        from s2d_plan.run import procs
        if self.proc is not None and self.proc.poll() is None:
            procs.signal_group(self.proc.pid, sig)


class RayHandle:
    """The actors of one attempt: poll them, signal them, release them."""

    pid = None
    note = None

    def __init__(self, ray: Any, name: str, actors: list[Any], pg: Any, placements: list[Placement]):
        self.ray, self.ref, self.actors, self.pg = ray, name, actors, pg
        self.placements = placements
        self.waits = [a.wait.remote() for a in actors]
        self.returncode: int | None = None
        self.lost: str | None = None

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        ready, _ = self.ray.wait(self.waits, num_returns=len(self.waits), timeout=0)
        codes = []
        for ref in ready:
            try:
                codes.append(self.ray.get(ref))
            except self.ray.exceptions.RayError as exc:
                self.lost = _cause(exc)
                return self._end(-int(signal.SIGKILL))
        failed = [c for c in codes if c != 0]
        if failed:  # one node failed: the rest cannot finish without it
            self.signal(signal.SIGKILL)
            return self._end(failed[0])
        return self._end(0) if len(ready) == len(self.waits) else None

    def _end(self, code: int) -> int:
        self.returncode = code
        for actor in self.actors:
            self.ray.kill(actor)
        if self.pg is not None:
            self.ray.util.remove_placement_group(self.pg)
        return code

    def wait(self) -> int:
        while self.poll() is None:
            self.ray.wait(self.waits, num_returns=len(self.waits), timeout=1.0)
        return self.returncode

    def signal(self, sig: int) -> None:
        for actor in self.actors:
            actor.signal.remote(int(sig))

    def describe(self) -> str:
        nodes = ", ".join(f"{p.node} x{p.gpus}" for p in self.placements)
        return f"ray {self.ref} on {nodes})"


def _probe_gcs(address: str) -> None:
    """Fail in seconds on a HOST:PORT nobody listens on (``ray.init`` retries for minutes)."""
    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5.0).close()  # [IPv6]:PORT too
    except (OSError, ValueError) as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address!r}: {exc}; "
                           f"start it with `ray start --head` or fix compute.cluster.address") from None


def _cause(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"node lost (ray {type(exc).__name__}): {text[:300]}"


class RayLauncher:
    name = "ray"

    def __init__(self, cluster: RayCluster):
        self.cluster = cluster
        self.retries = cluster.retries
        self.ray: Any = None  # the ray module, imported in check()
        self.node_gpus: list[int] = []
        self.refreshed = 0.0

    # -- before anything runs --------------------------------------------------------
    def check(self, home: Path) -> None:
        """Connect, learn the nodes, and prove one worker per node sees the home."""
        ray = _ray()
        _probe_gcs(self.cluster.address)
        try:
            if not ray.is_initialized():
                ray.init(address=self.cluster.address, namespace=self.cluster.namespace,
                         log_to_driver=False, logging_level="ERROR")
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError ...
            raise ClusterError(f"cannot reach the Ray cluster at {self.cluster.address!r}: "
                               f"{' '.join(str(exc).split())[:300]}") from None
        self.ray = ray
        nodes = self._refresh()
        self._check_home(home, nodes)

    def _refresh(self) -> list[dict]:
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        self.node_gpus = sorted((int(n["Resources"].get("GPU", 0)) for n in nodes), reverse=True)
        self.refreshed = time.monotonic()
        return nodes

    def _check_home(self, home: Path, nodes: list[dict]) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        home = Path(home).resolve()
        home.mkdir(parents=True, exist_ok=True)
        token = f".s2d-visible-{os.getpid()}"
        (home / token).write_text(token)
        try:
            worker = self.ray.remote(num_cpus=0)(_NodeWorker)
            probes = [worker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                      .remote() for n in nodes]
            answers = self.ray.get([p.check_home.remote(str(home), token) for p in probes], timeout=CONNECT_TIMEOUT_S)
            for p in probes:
                self.ray.kill(p)
        finally:
            (home / token).unlink(missing_ok=True)
        bad = [f"{n['NodeManagerHostname']} ({n['NodeID'][:8]}): {a}" for n, a in zip(nodes, answers) if a]
        if bad:
            raise ClusterError(f"the home {home} must be on a filesystem every Ray node sees; not seen on "
                               + "; ".join(bad))

    # -- scheduling ------------------------------------------------------------------
    def per_node(self) -> int:
        return self.cluster.gpus_per_node or (self.node_gpus[0] if self.node_gpus else 0)

    def allocate(self, stage: Stage, running: Sequence[Any]) -> Slot | None:
        """Admit a stage while the GPUs the executor has in flight fit the cluster's;
        Ray itself picks the nodes (and queues, if someone else holds them)."""
        if time.monotonic() - self.refreshed >= REFRESH_S:  # nodes die and join
            self._refresh()
        want = stage.resources.gpus
        nodes, per = split_nodes(want, self.per_node())
        if nodes > max(len(self.node_gpus), 1) or per > self.per_node() and want:
            raise ClusterError(f"stage {stage.id} asks {want} GPUs; the Ray cluster has "
                               f"{len(self.node_gpus)} node(s) of {self.node_gpus} GPUs")
        in_flight = sum(r.slot.gpus for r in running)
        if want and in_flight + nodes * per > sum(self.node_gpus):
            return None
        return Slot(nodes=nodes, gpus_per_node=per)

    def start(self, job: Job, slot: Slot) -> RayHandle:
        ray = self.ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        # a CPU-only stage still needs a CPU; a GPU stage's actor holds its GPUs, not a core
        bundle = {"GPU": slot.gpus_per_node} if slot.gpus_per_node else {"CPU": 1}
        pg = placement_group([dict(bundle) for _ in range(slot.nodes)], name=job.name, lifetime="detached",
                             strategy="STRICT_SPREAD" if slot.nodes > 1 else "PACK")
        try:
            ray.get(pg.ready(), timeout=PLACE_WAIT_S)
        except ray.exceptions.GetTimeoutError:
            ray.util.remove_placement_group(pg)
            raise Busy(job.name) from None
        worker = ray.remote(_NodeWorker)
        actors = [worker.options(name=f"{job.name}-{rank}", lifetime="detached", max_restarts=0,
                                 max_concurrency=8, num_cpus=bundle.get("CPU", 0), num_gpus=slot.gpus_per_node,
                                 scheduling_strategy=PlacementGroupSchedulingStrategy(pg, rank)).remote()
                  for rank in range(slot.nodes)]
        common = ["--kind", job.kind, "--spec", str(job.spec_path), "--nproc", str(max(slot.gpus_per_node, 1)),
                  "--nnodes", str(slot.nodes)]
        env = remote_env(job.env)
        if slot.nodes > 1:  # the rendezvous is node rank 0's address: ask it first
            ip, port = ray.get([actors[0].where.remote(), actors[0].free_port.remote()])
            common += ["--master", f"{ip['ip']}:{port}"]
        # one round trip: start every node's share and learn where it runs
        wheres = ray.get([a.start.remote([*common, "--rank", str(rank)], env, str(job.log_path))
                          for rank, a in enumerate(actors)])
        placements = [Placement(f"{w['host']}:{w['node_id'][:8]}", slot.gpus_per_node, f"{job.name}-{rank}")
                      for rank, w in enumerate(wheres)]
        return RayHandle(ray, job.name, actors, pg, placements)

    def _actors(self, ref: str) -> list[Any]:
        actors = []
        for rank in range(MAX_NODES):
            try:
                actors.append(self.ray.get_actor(f"{ref}-{rank}", namespace=self.cluster.namespace))
            except ValueError:
                break
        return actors

    def attach(self, ref: str, slot: Slot) -> RayHandle | None:
        """A handle on the actors ``<ref>-<rank>`` a dead executor left, when every node's
        actor is still alive (else they are cancelled, and None)."""
        actors = self._actors(ref)
        try:
            wheres = self.ray.get([a.where.remote() for a in actors], timeout=CONNECT_TIMEOUT_S)
        except self.ray.exceptions.RayError:
            wheres = []
        if not actors or len(wheres) != slot.nodes:
            self.cancel(ref)
            return None
        try:
            pg = self.ray.util.get_placement_group(ref)
        except ValueError:
            pg = None
        placements = [Placement(f"{w['host']}:{w['node_id'][:8]}", slot.gpus_per_node, f"{ref}-{rank}")
                      for rank, w in enumerate(wheres)]
        return RayHandle(self.ray, ref, actors, pg, placements)

    def cancel(self, ref: str) -> bool:
        """Kill the actors ``<ref>-<rank>`` and the placement group a dead executor left."""
        actors = self._actors(ref)
        for actor in actors:
            self.ray.kill(actor)
        try:
            self.ray.util.remove_placement_group(self.ray.util.get_placement_group(ref))
        except ValueError:
            pass
        return bool(actors)

    def close(self) -> None:
        pass  # the connection ends with the process; detached actors are killed per attempt
